"""What runs in the worker for one workflow step.

The executor wraps each step function in a :class:`StepCall` and submits it as an
ordinary task with two returns: the step's *value* (left in the object store, where
the step's consumers read it without a trip through the driver) and a small
:class:`StepMeta` for the executor. When the step is checkpointed, the worker writes
the checkpoint itself (atomic, checksummed) before it returns, so the executor only
commits a row: the data never passes through the driver (DESIGN §9). The exception is a
small output of an idempotent step (at most ``INLINE_LIMIT`` bytes pickled): it comes
back inline, and the executor stores it in the step's SQL row with the COMMIT, so one
fsync makes both durable.

A step's inputs arrive as live values (the parent's ObjectRef, resolved by the
engine) or, after a resume, as :class:`~heliostat.storage.checkpoints.CheckpointRef`
records that the worker loads (and verifies) itself.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from heliostat.engine.dag import DAGNode, map_leaves
from heliostat.storage.checkpoints import CheckpointRef, CheckpointStore, decode_checkpoint
from heliostat.workflows.compile import Upstream
from heliostat.workflows.context import WorkflowContext, step_context

__all__ = ["Continuation", "StepCall", "StepEnv", "StepMeta", "continuation", "substitute"]


class Continuation:
    """A step's request to continue with more DAG (``workflow.continuation(dag)``)."""

    __slots__ = ("dag",)

    def __init__(self, dag: DAGNode) -> None:
        self.dag = dag

    def __reduce__(self) -> tuple[Any, ...]:
        return (Continuation, (self.dag,))


def continuation(dag: DAGNode) -> Continuation:
    """Return this from a step to replace its output with the output of ``dag``.

    The sub-DAG's steps become part of the workflow (ids prefixed by the step's id),
    are checkpointed like the others, and survive resume.
    """
    if not isinstance(dag, DAGNode):
        raise TypeError(f"continuation() takes a DAG built with .bind(...), not {type(dag)}.")
    return Continuation(dag)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepEnv:
    """Everything a step needs to know besides its arguments."""

    workflow_id: str
    task_id: str
    attempt: int
    idempotency_key: str
    checkpoint_url: str | None  # None: the step writes no checkpoint itself
    inline_limit: int  # outputs pickled this small go to SQL with the COMMIT (0: never)
    catch_exceptions: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StepMeta:
    """What the executor learns from a finished step."""

    checkpoint: CheckpointRef | None
    continuation: bool
    started: float
    finished: float


_stores: dict[str, CheckpointStore] = {}


def checkpoint_store(url: str) -> CheckpointStore:
    """One store per URL per process (fsspec filesystems are cached anyway)."""
    store = _stores.get(url)
    if store is None:
        store = _stores[url] = CheckpointStore(url)
    return store


def substitute(value: Any, outputs: dict[str, Any]) -> Any:
    """Replace ``Upstream`` placeholders (anywhere in lists, tuples, dicts) by values."""
    return map_leaves(value, Upstream, lambda up: outputs[up.task_id])


class StepCall:
    """A step function wrapped to run inside its workflow context, in a worker."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(
        self,
        env: StepEnv,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_ids: tuple[str, ...],
        *parent_values: Any,
    ) -> tuple[Any, StepMeta]:
        started = time.time()
        outputs = {}
        for task_id, value in zip(parent_ids, parent_values, strict=True):
            if isinstance(value, CheckpointRef):
                if value.data is not None:  # kept in SQL, handed over with the ref
                    value = decode_checkpoint(
                        value.location, value.checksum, value.format, value.data
                    )
                else:
                    value = checkpoint_store(env.checkpoint_url or value.store_url).read(value)
            outputs[task_id] = value
        args = substitute(args, outputs)
        kwargs = substitute(kwargs, outputs)
        token = step_context.set(
            WorkflowContext(
                workflow_id=env.workflow_id,
                task_id=env.task_id,
                attempt=env.attempt,
                idempotency_key=env.idempotency_key,
            )
        )
        try:
            if env.catch_exceptions:
                try:
                    result: Any = (self.fn(*args, **kwargs), None)
                except Exception as exc:  # catch_exceptions hands the error to the caller
                    result = (None, exc)
            else:
                result = self.fn(*args, **kwargs)
        finally:
            step_context.reset(token)
        is_continuation = isinstance(result, Continuation)
        ref = None
        if env.checkpoint_url is not None:
            store = checkpoint_store(env.checkpoint_url)
            # The executor fsyncs the directory once per group commit (before COMMIT);
            # a small output comes back inline and is committed in the SQL row.
            ref = store.write(
                env.workflow_id,
                env.task_id,
                env.attempt,
                result,
                sync_dir=False,
                inline_limit=env.inline_limit,
            )
        meta = StepMeta(
            checkpoint=ref, continuation=is_continuation, started=started, finished=time.time()
        )
        return result, meta
