"""Durable DAG workflows: ``from heliostat import workflow``.

Build a DAG with ``f.bind(...)``, run it with ``workflow.run(dag, workflow_id=...)``.
Lineage goes to SQL, step outputs to checkpoint storage; a crashed or failed workflow
resumes without redoing finished steps.
"""

from __future__ import annotations

from heliostat.storage.states import StepStatus, WorkflowStatus
from heliostat.workflows.api import (
    cancel,
    delete,
    get_metadata,
    get_output,
    get_status,
    list_all,
    resolve,
    resume,
    resume_all,
    resume_async,
    run,
    run_async,
)
from heliostat.workflows.compile import CompiledWorkflow, compile_dag
from heliostat.workflows.context import WorkflowContext, get_context
from heliostat.workflows.executor import RERUN
from heliostat.workflows.options import options
from heliostat.workflows.step import continuation

__all__ = [
    "RERUN",
    "CompiledWorkflow",
    "StepStatus",
    "WorkflowContext",
    "WorkflowStatus",
    "cancel",
    "compile_dag",
    "continuation",
    "delete",
    "get_context",
    "get_metadata",
    "get_output",
    "get_status",
    "list_all",
    "options",
    "resolve",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
]
