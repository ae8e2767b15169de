"""Durable DAG workflows: ``from heliostat import workflow``.

Build a DAG with ``f.bind(...)``, run it with ``workflow.run(dag, workflow_id=...)``.
Lineage goes to SQL, step outputs to checkpoint storage; a crashed or failed workflow
resumes without redoing finished steps.
"""

from __future__ import annotations

import importlib
from typing import Any

# Eager, and light: the function ``options`` shares its name with its module, which
# would otherwise shadow it here once anything imports ``heliostat.workflows.options``.
from heliostat.workflows.options import options

_EXPORTS: dict[str, str] = {
    "cancel": "heliostat.workflows.api",
    "compile_dag": "heliostat.workflows.compile",
    "CompiledWorkflow": "heliostat.workflows.compile",
    "continuation": "heliostat.workflows.step",
    "delete": "heliostat.workflows.api",
    "describe": "heliostat.workflows.api",
    "get_context": "heliostat.workflows.context",
    "get_metadata": "heliostat.workflows.api",
    "get_output": "heliostat.workflows.api",
    "get_status": "heliostat.workflows.api",
    "list_all": "heliostat.workflows.api",
    "RERUN": "heliostat.workflows.executor",
    "resolve": "heliostat.workflows.api",
    "resume": "heliostat.workflows.api",
    "resume_all": "heliostat.workflows.api",
    "resume_async": "heliostat.workflows.api",
    "run": "heliostat.workflows.api",
    "run_async": "heliostat.workflows.api",
    "StepStatus": "heliostat.storage.states",
    "WorkflowContext": "heliostat.workflows.context",
    "WorkflowStatus": "heliostat.storage.states",
}
"""Where each public name lives, imported on first use. Workers import
``heliostat.workflows.step`` to run steps, which imports this package first: it must not
pull in SQLAlchemy, networkx and the rest of the driver-side API (about 0.7 s)."""


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
    "describe",
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'heliostat.workflows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
