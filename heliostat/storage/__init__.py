"""Storage: SQL lineage (models, migrations, engines) and the checkpoint store.

The bottom layer of heliostat next to the scheduler: it imports nothing from the
engine, workflows, UI or CLI.

* :mod:`~heliostat.storage.states`: workflow / step / WAL state enums and their
  transition tables.
* :mod:`~heliostat.storage.models`: SQLAlchemy models of the lineage schema.
* :mod:`~heliostat.storage.db`: engines (SQLite pragmas, PostgreSQL pooling) and
  Alembic migrations shipped in the package (``ensure_schema``).
* :mod:`~heliostat.storage.checkpoints`: step outputs in fsspec storage, atomic and
  checksummed.
* :mod:`~heliostat.storage.signing`: the installation's secret key and HMAC signatures
  over what is unpickled later.
* :mod:`~heliostat.storage.packages`: ``working_dir`` / ``py_modules`` code as
  content-addressed archives, and a node's cache that installs them checked.
* :mod:`~heliostat.storage.home`: ``HELIOSTAT_HOME``, and files and directories private
  to the user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from heliostat._lazy import lazy_exports

if TYPE_CHECKING:
    from heliostat.storage.checkpoints import (
        CheckpointFormat,
        CheckpointRef,
        CheckpointStore,
        SupportsCheckpoints,
        default_storage_url,
        validate_storage_url,
    )
    from heliostat.storage.db import (
        current_revision,
        default_db_url,
        ensure_schema,
        head_revision,
        is_transient_db_error,
        make_engine,
        storage_error_from,
        upgrade,
    )
    from heliostat.storage.models import (
        AttemptLog,
        Edge,
        Schedule,
        ScheduleRun,
        ScheduleRunKind,
        Step,
        StepAttempt,
        Transition,
        WalRecord,
        Workflow,
        metadata,
        utcnow,
    )
    from heliostat.storage.signing import Signer, default_signer
    from heliostat.storage.states import (
        STEP_TRANSITIONS,
        WORKFLOW_TRANSITIONS,
        StepStatus,
        TransitionEntity,
        WalKind,
        WorkflowStatus,
        check_transition,
    )

_EXPORTS: dict[str, tuple[str, ...]] = {
    "heliostat.storage.checkpoints": (
        "CheckpointFormat",
        "CheckpointRef",
        "CheckpointStore",
        "default_storage_url",
        "SupportsCheckpoints",
        "validate_storage_url",
    ),
    "heliostat.storage.db": (
        "current_revision",
        "default_db_url",
        "ensure_schema",
        "head_revision",
        "is_transient_db_error",
        "make_engine",
        "storage_error_from",
        "upgrade",
    ),
    "heliostat.storage.models": (
        "AttemptLog",
        "Edge",
        "metadata",
        "Schedule",
        "ScheduleRun",
        "ScheduleRunKind",
        "Step",
        "StepAttempt",
        "Transition",
        "utcnow",
        "WalRecord",
        "Workflow",
    ),
    "heliostat.storage.states": (
        "check_transition",
        "STEP_TRANSITIONS",
        "StepStatus",
        "TransitionEntity",
        "WalKind",
        "WORKFLOW_TRANSITIONS",
        "WorkflowStatus",
    ),
    "heliostat.storage.signing": (
        "default_signer",
        "Signer",
    ),
}
"""Where each public name lives. Imported on first use: a worker that only needs the
checkpoint store must not pay for SQLAlchemy and Alembic (``import heliostat.storage``
would otherwise cost about 0.3 s)."""


__all__ = [
    "STEP_TRANSITIONS",
    "WORKFLOW_TRANSITIONS",
    "AttemptLog",
    "CheckpointFormat",
    "CheckpointRef",
    "CheckpointStore",
    "Edge",
    "Schedule",
    "ScheduleRun",
    "ScheduleRunKind",
    "Signer",
    "Step",
    "StepAttempt",
    "StepStatus",
    "SupportsCheckpoints",
    "Transition",
    "TransitionEntity",
    "WalKind",
    "WalRecord",
    "Workflow",
    "WorkflowStatus",
    "check_transition",
    "current_revision",
    "default_db_url",
    "default_signer",
    "default_storage_url",
    "ensure_schema",
    "head_revision",
    "is_transient_db_error",
    "make_engine",
    "metadata",
    "storage_error_from",
    "upgrade",
    "utcnow",
    "validate_storage_url",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
