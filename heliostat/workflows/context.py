"""``workflow.get_context()``: which workflow step is running here, and with what key."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

__all__ = ["WorkflowContext", "get_context", "idempotency_key", "step_context"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowContext:
    """What a step knows about itself while it runs.

    ``idempotency_key`` is the same for every attempt of a step and across resumes
    (it is derived from the workflow id and the step id only): use it to make a side
    effect happen once, e.g. as the key of an upsert or a payment request.
    """

    workflow_id: str
    task_id: str
    attempt: int
    idempotency_key: str


step_context: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar(
    "heliostat_workflow_step", default=None
)


def idempotency_key(workflow_id: str, task_id: str) -> str:
    """The stable key of one step of one workflow."""
    return f"{workflow_id}:{task_id}"


def get_context() -> WorkflowContext:
    """The context of the workflow step running in this thread.

    Raises:
        RuntimeError: called outside a workflow step.
    """
    ctx = step_context.get()
    if ctx is None:
        raise RuntimeError("workflow.get_context() is only available inside a workflow step.")
    return ctx
