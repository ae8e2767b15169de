"""``workflow.options(...)``: per-step durability settings, validated at the boundary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from heliostat.engine.remote_function import WORKFLOW_OPTIONS_KEY

__all__ = ["STEP_OPTION_NAMES", "StepOptions", "options", "step_options"]

STEP_OPTION_NAMES = frozenset(
    {
        "task_id",
        "metadata",
        "checkpoint",
        "idempotent",
        "on_in_doubt",
        "catch_exceptions",
        "max_retries",
        "retry_exceptions",
        "retry_backoff",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepOptions:
    """How a step runs durably.

    Attributes:
        task_id: explicit, stable step id (else derived from the function name and
            the step's position in the graph).
        metadata: user metadata stored with the step.
        checkpoint: persist the output; ``False`` for cheap steps that re-run on resume.
        idempotent: safe to re-run after a crash. ``False`` makes an interrupted step
            IN_DOUBT: only ``on_in_doubt`` may resolve it.
        on_in_doubt: ``hook(idempotency_key)`` for an in-doubt step; returns the
            step's result, or :data:`RERUN` to run the step again.
        catch_exceptions: the step's value becomes ``(result, None)`` or
            ``(None, exception)`` instead of failing the workflow.
        max_retries: application-error retries (with ``retry_exceptions``) and, for
            idempotent steps, worker-crash retries.
        retry_exceptions: ``True`` or a tuple of exception classes worth retrying.
        retry_backoff: seconds before the first retry; doubles each time.
    """

    task_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint: bool = True
    idempotent: bool = True
    on_in_doubt: Callable[[str], Any] | None = None
    catch_exceptions: bool = False
    max_retries: int = 3
    retry_exceptions: bool | tuple[type[BaseException], ...] = False
    retry_backoff: float = 0.0


def _validate(raw: dict[str, Any]) -> StepOptions:
    unknown = sorted(set(raw) - STEP_OPTION_NAMES)
    if unknown:
        raise ValueError(
            f"Unknown workflow option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(STEP_OPTION_NAMES))}."
        )
    task_id = raw.get("task_id")
    if task_id is not None and (not isinstance(task_id, str) or not task_id.strip()):
        raise ValueError(f"task_id must be a non-empty string, got {task_id!r}.")
    if task_id is not None and ("/" in task_id or task_id.startswith(".")):
        raise ValueError(f"task_id {task_id!r} may not contain '/' or start with '.'.")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}.")
    hook = raw.get("on_in_doubt")
    if hook is not None and not callable(hook):
        raise ValueError("on_in_doubt must be callable: hook(idempotency_key) -> result.")
    max_retries = raw.get("max_retries", 3)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}.")
    retry = raw.get("retry_exceptions", False)
    if not isinstance(retry, bool):
        if isinstance(retry, type):
            retry = (retry,)
        retry = tuple(retry)
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in retry):
            raise ValueError("retry_exceptions must be a bool or exception classes.")
    backoff = raw.get("retry_backoff", 0.0)
    if not isinstance(backoff, (int, float)) or backoff < 0:
        raise ValueError(f"retry_backoff must be seconds >= 0, got {backoff!r}.")
    return StepOptions(
        task_id=task_id,
        metadata=dict(metadata),
        checkpoint=bool(raw.get("checkpoint", True)),
        idempotent=bool(raw.get("idempotent", True)),
        on_in_doubt=hook,
        catch_exceptions=bool(raw.get("catch_exceptions", False)),
        max_retries=max_retries,
        retry_exceptions=retry,
        retry_backoff=float(backoff),
    )


def options(**kwargs: Any) -> dict[str, Any]:
    """Workflow options for ``f.options(**workflow.options(...))``.

    Returns a dict with the validated options under the engine's workflow key. The
    executor derives the task's own engine options from them (an idempotent step's
    ``max_retries`` also covers worker crashes; a non-idempotent one is never re-run
    by the engine).

    Raises:
        ValueError: an unknown option (the message lists the known ones) or a bad value.
    """
    _validate(kwargs)
    out: dict[str, Any] = {WORKFLOW_OPTIONS_KEY: dict(kwargs)}
    return out


def step_options(raw: dict[str, Any]) -> StepOptions:
    """Parse the options stored on a task (as ``workflow.options`` put them there)."""
    return _validate(raw)
