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
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "check_transition": "states",
    "CheckpointFormat": "checkpoints",
    "CheckpointRef": "checkpoints",
    "CheckpointStore": "checkpoints",
    "current_revision": "db",
    "default_db_url": "db",
    "default_storage_url": "checkpoints",
    "Edge": "models",
    "ensure_schema": "db",
    "head_revision": "db",
    "Lease": "models",
    "make_engine": "db",
    "metadata": "models",
    "Schedule": "models",
    "ScheduleRun": "models",
    "ScheduleRunKind": "models",
    "Step": "models",
    "STEP_TRANSITIONS": "states",
    "StepAttempt": "models",
    "StepStatus": "states",
    "SupportsCheckpoints": "checkpoints",
    "Transition": "models",
    "TransitionEntity": "states",
    "upgrade": "db",
    "utcnow": "models",
    "WalKind": "states",
    "WalRecord": "models",
    "Workflow": "models",
    "WORKFLOW_TRANSITIONS": "states",
    "WorkflowStatus": "states",
}
"""Where each public name lives. Imported on first use: a worker that only needs the
checkpoint store must not pay for SQLAlchemy and Alembic (``import heliostat.storage``
would otherwise cost about 0.3 s)."""


__all__ = [
    "STEP_TRANSITIONS",
    "WORKFLOW_TRANSITIONS",
    "CheckpointFormat",
    "CheckpointRef",
    "CheckpointStore",
    "Edge",
    "Lease",
    "Schedule",
    "ScheduleRun",
    "ScheduleRunKind",
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
    "default_storage_url",
    "ensure_schema",
    "head_revision",
    "make_engine",
    "metadata",
    "upgrade",
    "utcnow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'heliostat.storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"heliostat.storage.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
