"""Durable DAG workflows: ``from heliostat import workflow``.

Build a DAG with ``f.bind(...)``, run it with ``workflow.run(dag, workflow_id=...)``.
Lineage goes to SQL, step outputs to checkpoint storage; a crashed or failed workflow
resumes without redoing finished steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from heliostat._lazy import lazy_exports

# Ray's workflow errors, under ``workflow.`` as Ray has them (exceptions.py is light).
from heliostat.exceptions import (
    WorkflowCancelledError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
)

# Eager, and light: the function ``options`` shares its name with its module, which
# would otherwise shadow it here once anything imports ``heliostat.workflows.options``.
from heliostat.workflows.options import options

if TYPE_CHECKING:
    from heliostat.storage.states import (
        StepStatus,
        WorkflowStatus,
    )
    from heliostat.workflows.api import (
        attempts,
        cancel,
        delete,
        describe,
        get_metadata,
        get_output,
        get_output_async,
        get_status,
        init,
        list_all,
        list_records,
        logs,
        reconcile,
        resolve,
        resume,
        resume_all,
        resume_async,
        run,
        run_async,
    )
    from heliostat.workflows.compile import (
        CompiledWorkflow,
        compile_dag,
    )
    from heliostat.workflows.context import (
        WorkflowContext,
        get_context,
    )
    from heliostat.workflows.event_listener import (
        EventListener,
    )
    from heliostat.workflows.executor import (
        RERUN,
    )
    from heliostat.workflows.step import (
        continuation,
    )
    from heliostat.workflows.waits import (
        sleep,
        wait_for_event,
    )

_EXPORTS: dict[str, tuple[str, ...]] = {
    "heliostat.storage.states": (
        "StepStatus",
        "WorkflowStatus",
    ),
    "heliostat.workflows.api": (
        "attempts",
        "cancel",
        "delete",
        "describe",
        "get_metadata",
        "get_output",
        "get_output_async",
        "get_status",
        "init",
        "list_all",
        "list_records",
        "logs",
        "reconcile",
        "resolve",
        "resume",
        "resume_all",
        "resume_async",
        "run",
        "run_async",
    ),
    "heliostat.workflows.compile": (
        "compile_dag",
        "CompiledWorkflow",
    ),
    "heliostat.workflows.context": (
        "get_context",
        "WorkflowContext",
    ),
    "heliostat.workflows.event_listener": ("EventListener",),
    "heliostat.workflows.executor": ("RERUN",),
    "heliostat.workflows.step": ("continuation",),
    "heliostat.workflows.waits": ("sleep", "wait_for_event"),
}
"""Where each public name lives, imported on first use. Workers import
``heliostat.workflows.step`` to run steps, which imports this package first: it must not
pull in SQLAlchemy, networkx and the rest of the driver-side API (about 0.7 s)."""


__all__ = [
    "RERUN",
    "CompiledWorkflow",
    "EventListener",
    "StepStatus",
    "WorkflowCancelledError",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowNotResumableError",
    "WorkflowStatus",
    "attempts",
    "cancel",
    "compile_dag",
    "continuation",
    "delete",
    "describe",
    "get_context",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "list_all",
    "list_records",
    "logs",
    "options",
    "reconcile",
    "resolve",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
    "sleep",
    "wait_for_event",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
