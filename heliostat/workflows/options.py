"""``workflow.options(...)``: per-step durability settings, validated at the boundary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from heliostat.engine.remote_function import WORKFLOW_OPTIONS_KEY, RemoteFunction

__all__ = ["STEP_OPTION_NAMES", "StepOptions", "WorkflowOptions", "options", "step_options"]

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


def _flag(raw: dict[str, Any], name: str, default: bool) -> bool:
    """A bool option: a real ``True`` / ``False`` only (``"false"`` is not False)."""
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise TypeError(
            f"workflow option {name} must be True or False, not {value!r} ({type(value).__name__})."
        )
    return value


def _validate(raw: dict[str, Any]) -> StepOptions:
    """Check every option's type (TypeError) and value (ValueError)."""
    unknown = sorted(set(raw) - STEP_OPTION_NAMES)
    if unknown:
        raise ValueError(
            f"Unknown workflow option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(STEP_OPTION_NAMES))}."
        )
    task_id = raw.get("task_id")
    if task_id is not None and not isinstance(task_id, str):
        raise TypeError(f"workflow option task_id must be a str, not {type(task_id).__name__}.")
    if task_id is not None and not task_id.strip():
        raise ValueError(f"task_id must be a non-empty string, got {task_id!r}.")
    if task_id is not None and ("/" in task_id or task_id.startswith(".")):
        raise ValueError(f"task_id {task_id!r} may not contain '/' or start with '.'.")
    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"workflow option metadata must be a dict, not {type(metadata).__name__}.")
    hook = raw.get("on_in_doubt")
    if hook is not None and not callable(hook):
        raise TypeError(
            f"workflow option on_in_doubt must be callable, hook(idempotency_key) -> result; "
            f"got {type(hook).__name__}."
        )
    max_retries = raw.get("max_retries", 3)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool):
        raise TypeError(
            f"workflow option max_retries must be an int, not {type(max_retries).__name__}."
        )
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}.")
    retry = raw.get("retry_exceptions", False)
    if not isinstance(retry, bool):
        if isinstance(retry, type):
            retry = (retry,)
        if not isinstance(retry, (list, tuple)) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in retry
        ):
            raise TypeError(
                "workflow option retry_exceptions must be True, False, an exception class "
                f"or a list of them; got {retry!r}."
            )
        retry = tuple(retry)
    backoff = raw.get("retry_backoff", 0.0)
    if not isinstance(backoff, (int, float)) or isinstance(backoff, bool):
        raise TypeError(
            f"workflow option retry_backoff must be seconds (a number), not {backoff!r}."
        )
    if backoff < 0:
        raise ValueError(f"retry_backoff must be seconds >= 0, got {backoff!r}.")
    return StepOptions(
        task_id=task_id,
        metadata=dict(metadata),
        checkpoint=_flag(raw, "checkpoint", True),
        idempotent=_flag(raw, "idempotent", True),
        on_in_doubt=hook,
        catch_exceptions=_flag(raw, "catch_exceptions", False),
        max_retries=max_retries,
        retry_exceptions=retry,
        retry_backoff=float(backoff),
    )


class WorkflowOptions(dict[str, Any]):
    """What :func:`options` returns: a mapping for ``f.options(**...)``, and a decorator.

    As a mapping it holds the validated options under the engine's workflow key. As a
    decorator it goes on top of ``@hs.remote`` (as in Ray) and returns the remote
    function with these workflow options as its defaults::

        @workflow.options(task_id="load", checkpoint=False)
        @hs.remote
        def load(rows): ...
    """

    def __call__(self, fn: Any) -> RemoteFunction:
        """Give the remote function ``fn`` these workflow options.

        Raises:
            TypeError: ``fn`` is not a remote function (``@workflow.options`` must sit
                above ``@hs.remote``, which must have made the function remote first).
        """
        if not isinstance(fn, RemoteFunction):
            raise TypeError(
                "@workflow.options(...) applies to a remote function: put it above "
                f"@hs.remote (got {type(fn).__name__} {getattr(fn, '__qualname__', fn)!r})."
            )
        return fn.options(**self)


def options(**kwargs: Any) -> WorkflowOptions:
    """Workflow options for ``f.options(**workflow.options(...))``, or a decorator.

    Returns a mapping with the validated options under the engine's workflow key; used
    as a decorator above ``@hs.remote`` it sets them on the remote function (see
    :class:`WorkflowOptions`). The executor derives the task's own engine options from
    them (an idempotent step's ``max_retries`` also covers worker crashes; a
    non-idempotent one is never re-run by the engine).

    Raises:
        TypeError: an option of the wrong type (``idempotent="false"`` is refused, not
            read as true).
        ValueError: an unknown option (the message lists the known ones) or a bad value.
    """
    _validate(kwargs)
    return WorkflowOptions({WORKFLOW_OPTIONS_KEY: dict(kwargs)})


def step_options(raw: dict[str, Any]) -> StepOptions:
    """Parse the options stored on a task (as ``workflow.options`` put them there)."""
    return _validate(raw)
