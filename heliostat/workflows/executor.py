"""The durable executor: an event loop in the driver over a compiled workflow.

Crash-safety protocol (the SQL log *is* the write-ahead log):

1. Before a step is submitted, an INTENT row (step, attempt, idempotency key) is
   committed, and the step's status becomes RUNNING, in the same transaction.
2. The step runs in a worker. If it is checkpointed, the worker writes its output to
   checkpoint storage (temporary name, fsync, rename, checksum) before it returns;
   a small output of an idempotent step instead comes back inline, to be stored in
   the SQL row (one fsync for data and record; see ``INLINE_LIMIT``).
3. The executor commits a COMMIT row with the checkpoint's location and checksum (and
   the inline bytes), and the step's status becomes SUCCESSFUL.
4. Records ready at the same moment share one transaction (group commit): the COMMITs
   of steps that just finished and the INTENTs of the steps they unblock cost one
   fsync together.

What a resume finds, and does:

* SUCCESSFUL (COMMIT present): not re-run; consumers read its checkpoint.
* RUNNING (INTENT, no COMMIT): if the checkpoint of that attempt exists and verifies,
  the step did finish (the crash came between steps 2 and 3): commit it now.
  Otherwise an idempotent step is re-run; a non-idempotent one is IN_DOUBT: only its
  ``on_in_doubt(idempotency_key)`` hook may resolve it (return the result, or
  ``RERUN``); without a hook the workflow stops in NEEDS_ATTENTION naming the step.
* FAILED: re-run (resume is how a user retries after fixing the cause).

Data never makes an extra trip through the driver: consumers take the producer's
ObjectRef (the engine resolves it in the worker) or its checkpoint record (the
worker reads and verifies it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import heliostat.engine as hs
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.remote_function import RemoteFunction
from heliostat.exceptions import (
    CorruptCheckpointError,
    HeliostatInternalError,
    TaskCancelledError,
    WorkerCrashedError,
    WorkflowCancelledError,
    WorkflowExecutionError,
    WorkflowNeedsAttentionError,
)
from heliostat.storage.checkpoints import INLINE_LIMIT, CheckpointRef, SupportsCheckpoints
from heliostat.storage.states import StepStatus, WorkflowStatus
from heliostat.workflows.compile import CompiledWorkflow, StepSpec, compile_dag
from heliostat.workflows.context import idempotency_key
from heliostat.workflows.step import Continuation, StepCall, StepEnv, StepMeta
from heliostat.workflows.store import Batch, StepRecord, WorkflowStore

__all__ = ["RERUN", "WorkflowExecutor"]

log = logging.getLogger("heliostat.workflows")


class _Rerun:
    def __repr__(self) -> str:
        return "workflow.RERUN"


RERUN: Any = _Rerun()
"""Return this from an ``on_in_doubt`` hook to run the in-doubt step again."""

_CANCEL_POLL_S = 0.5
_COMMIT_DELAY_S = 0.05  # longest a COMMIT waits for company (see _must_commit)
_MAX_DEFERRED_COMMITS = 512


@dataclass(slots=True)
class _StepState:
    """The executor's view of one step. Changed only by the executor's methods."""

    spec: StepSpec
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    waiting: int = 0  # parents (through continuations) not done yet
    value: Any = None  # ObjectRef (live) or CheckpointRef, once done
    checkpoint: CheckpointRef | None = None
    children: list[str] = field(default_factory=list)
    unfinished_children: int = 0  # children not succeeded yet (see _release)
    retry_at: float = 0.0


class WorkflowExecutor:
    """Runs one workflow to completion (or to a stop) in the calling thread."""

    def __init__(
        self,
        *,
        workflow_id: str,
        compiled: CompiledWorkflow,
        store: WorkflowStore,
        checkpoints: SupportsCheckpoints,
        records: dict[str, StepRecord] | None = None,
        on_progress: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.compiled = compiled
        self.store = store
        self.checkpoints = checkpoints
        self._records = records or {}
        self._steps: dict[str, _StepState] = {}
        self._alias: dict[str, str] = {}  # continued step -> the sub-DAG's output step
        self._continued_by: dict[str, str] = {}
        self._ready: deque[str] = deque()
        self._inflight: dict[ObjectRef, str] = {}
        # Refs of finished steps, handed over by the node manager (on_ready callbacks).
        self._finished_refs: deque[ObjectRef] = deque()
        self._finished_cond = threading.Condition()
        self._values: dict[str, ObjectRef] = {}
        self._retries: dict[str, float] = {}
        self._batch = Batch()
        self._failure: tuple[str, BaseException] | None = None
        self._attention: list[str] = []
        self._cancelled = False
        self._remote_cache: dict[tuple[int, bool], RemoteFunction] = {}
        self._next_position = max((s.position for s in compiled.steps.values()), default=0) + 1
        self._on_progress = on_progress
        self._n_done = 0
        self._n_failed = 0  # failed attempts, retried or not
        self._last_commit = time.monotonic()
        # memory:// lives in one process: there the driver writes the checkpoints.
        self._worker_writes = checkpoints.shared_across_processes

    # ------------------------------------------------------------------ setup --

    def _add_steps(self, compiled: CompiledWorkflow) -> list[str]:
        added = []
        for task_id in compiled.order():
            spec = compiled.steps[task_id]
            self._steps[task_id] = _StepState(spec=spec)
            added.append(task_id)
        for task_id in added:
            for parent in self._steps[task_id].spec.parents:
                self._steps[parent].children.append(task_id)
                self._steps[parent].unfinished_children += 1
        return added

    def _prepare(self) -> None:
        """Rebuild the executor's state from the log (a no-op for a new workflow)."""
        self._add_steps(self.compiled)
        records = self._records
        changed = True
        while changed:  # continuations add steps, whose records may continue further
            changed = False
            for task_id in list(self._steps):
                record = records.get(task_id)
                state = self._steps[task_id]
                if record is None or task_id in self._alias:
                    continue
                if (
                    record.status is StepStatus.SUCCESSFUL
                    and record.output_format == "continuation"
                ):
                    assert record.checkpoint is not None
                    cont = self.checkpoints.read(record.checkpoint)
                    self._continue(task_id, cont, persist=False)
                    state.status = StepStatus.SUCCESSFUL
                    state.attempt = record.attempts
                    changed = True
        for task_id, state in self._steps.items():
            record = records.get(task_id)
            if record is None:
                continue
            state.attempt = record.attempts
            status = record.status
            if task_id in self._alias:
                continue
            if status is StepStatus.SUCCESSFUL:
                if record.checkpoint is not None:
                    state.status = StepStatus.SUCCESSFUL
                    state.checkpoint = record.checkpoint
                    state.value = record.checkpoint
                # Not checkpointed: it re-runs if anything still needs it (below).
            elif status is StepStatus.RUNNING:
                self._recover_interrupted(state, record)
            elif status is StepStatus.IN_DOUBT:
                state.status = StepStatus.IN_DOUBT
            # FAILED and PENDING steps run again.
        for task_id, state in self._steps.items():
            if state.status is StepStatus.SUCCESSFUL and state.value is None:
                if task_id not in self._alias and self._needed(task_id):
                    state.status = StepStatus.PENDING
        for state in self._steps.values():
            state.waiting = sum(1 for p in state.spec.parents if not self._done(p))
        for task_id, state in self._steps.items():
            if state.status is StepStatus.IN_DOUBT:
                self._resolve_in_doubt(task_id)
            elif state.status is StepStatus.PENDING and state.waiting == 0:
                self._ready.append(task_id)

    def _needed(self, task_id: str) -> bool:
        if self._resolve(task_id) == self._resolve(self.compiled.output):
            return True
        return any(not self._done(c) for c in self._steps[task_id].children)

    def _recover_interrupted(self, state: _StepState, record: StepRecord) -> None:
        """INTENT without COMMIT: finished (checkpoint proves it), re-run, or in doubt."""
        task_id = state.spec.task_id
        if state.spec.options.checkpoint:
            ref = self.checkpoints.find(self.workflow_id, task_id, record.attempts)
            if ref is not None:
                log.info("step %r finished before the crash; committing it", task_id)
                state.status = StepStatus.SUCCESSFUL
                state.checkpoint = ref
                state.value = ref
                self._batch.commit(task_id, record.attempts, ref, "recovered from checkpoint")
                return
        if state.spec.options.idempotent:
            state.status = StepStatus.PENDING
            self._batch.step_status(task_id, StepStatus.PENDING, "re-run after a crash")
        else:
            state.status = StepStatus.IN_DOUBT
            self._batch.step_status(task_id, StepStatus.IN_DOUBT, "interrupted by a crash")

    # ------------------------------------------------------------------ the loop --

    def run(self) -> Any:
        """Run until the output step is committed; return its value.

        Raises:
            WorkflowExecutionError: a step failed after its retries.
            WorkflowNeedsAttentionError: a non-idempotent step is in doubt.
            WorkflowCancelledError: the workflow was cancelled meanwhile.
        """
        self._prepare()
        self._n_done = sum(1 for s in self._steps.values() if s.status is StepStatus.SUCCESSFUL)
        last_cancel_check = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_cancel_check > _CANCEL_POLL_S:
                last_cancel_check = now
                if self.store.is_cancelled(self.workflow_id):
                    self._cancel_inflight()
            self._release_due_retries(now)
            stopping = self._stopping()
            submit: list[str] = []
            if not stopping:
                while self._ready:
                    task_id = self._ready.popleft()
                    state = self._steps[task_id]
                    if state.status is not StepStatus.PENDING:
                        continue
                    state.attempt += 1
                    state.status = StepStatus.RUNNING
                    self._batch.intent(
                        task_id, state.attempt, idempotency_key(self.workflow_id, task_id)
                    )
                    submit.append(task_id)
            if self._must_commit(submit, now):
                if any(c[2] is not None and not c[2].inline for c in self._batch.commits):
                    # Workers renamed their checkpoints without a directory fsync: one
                    # here covers them all, before any COMMIT names them.
                    self.checkpoints.sync_workflow_dir(self.workflow_id)
                self.store.apply(self.workflow_id, self._batch)  # group commit
                self._batch = Batch()
                self._last_commit = now
            for task_id in submit:
                self._submit(task_id)
            if self._finished():
                return self._finish()
            self._wait()

    def _must_commit(self, submit: list[str], now: float) -> bool:
        """Whether to write the batch now, or let more COMMITs join it.

        INTENTs (steps about to run), failures and status changes go out at once.
        COMMITs alone may wait a little while other steps are in flight: nothing
        depends on them being durable yet (a crash meanwhile is recovered from the
        step's checkpoint, or re-runs an idempotent step), and a fan-out then pays one
        fsync for many steps instead of one per handful.
        """
        batch = self._batch
        if not batch:
            return False
        if submit or batch.intents or batch.failures or batch.statuses or batch.new_steps:
            return True
        if not self._inflight or self._stopping():
            return True
        return len(batch.commits) >= _MAX_DEFERRED_COMMITS or (
            now - self._last_commit >= _COMMIT_DELAY_S
        )

    def _stopping(self) -> bool:
        return self._failure is not None or bool(self._attention) or self._cancelled

    def _finished(self) -> bool:
        if self._done(self.compiled.output):
            return True
        if self._inflight:
            return False
        if self._stopping():
            return True
        if not self._ready and not self._retries:
            # Nothing runs and nothing can: a bug, or every path is blocked.
            self._attention.extend(
                t for t, s in self._steps.items() if s.status is StepStatus.IN_DOUBT
            )
            return True
        return False

    def _finish(self) -> Any:
        if self._done(self.compiled.output) and not self._cancelled:
            output = self._resolve(self.compiled.output)
            self.store.set_status(self.workflow_id, WorkflowStatus.SUCCESSFUL, cause="finished")
            value = self._steps[output].value
            if isinstance(value, ObjectRef):
                return hs.get(value)
            return self.checkpoints.read(value)
        if self._cancelled:
            self.store.set_status(self.workflow_id, WorkflowStatus.CANCELED, cause="cancel()")
            raise WorkflowCancelledError(
                f"Workflow {self.workflow_id!r} was cancelled.", workflow_id=self.workflow_id
            )
        if self._attention:
            names = ", ".join(repr(t) for t in self._attention)
            message = (
                f"Workflow {self.workflow_id!r} needs attention: step {names} is in doubt "
                "after a crash (it may or may not have run). Check what happened, then "
                "call workflow.resolve(workflow_id, task_id, result=... or rerun=True) "
                "and resume; or give the step an on_in_doubt= hook."
            )
            self.store.set_status(
                self.workflow_id, WorkflowStatus.NEEDS_ATTENTION, cause="in doubt", error=message
            )
            raise WorkflowNeedsAttentionError(
                message, workflow_id=self.workflow_id, task_id=self._attention[0]
            )
        if self._failure is None:
            stuck = sorted(t for t, st in self._steps.items() if st.status is StepStatus.PENDING)
            raise HeliostatInternalError(
                f"Workflow {self.workflow_id!r} cannot make progress: steps {stuck[:10]} are "
                "pending with nothing running. This is a bug in heliostat; please report it."
            )
        task_id, exc = self._failure
        message = f"Workflow {self.workflow_id!r} failed: step {task_id!r} raised {exc!r}"
        self.store.set_status(
            self.workflow_id, WorkflowStatus.FAILED, cause=f"step {task_id} failed", error=message
        )
        raise WorkflowExecutionError(
            message, workflow_id=self.workflow_id, task_id=task_id, cause=exc
        ) from exc

    # ------------------------------------------------------------------ steps --

    def _remote_for(self, spec: StepSpec) -> RemoteFunction:
        opts = spec.options
        key = (id(spec.function), opts.idempotent)
        rf = self._remote_cache.get(key)
        if rf is None:
            base = spec.function
            engine_opts = {
                k: v
                for k, v in base.task_options.raw
                if k in ("num_cpus", "num_gpus", "resources", "scheduling_strategy", "memory")
            }
            # A non-idempotent step is never re-run by the engine behind our back.
            engine_opts["max_retries"] = opts.max_retries if opts.idempotent else 0
            engine_opts["num_returns"] = 2
            engine_opts["name"] = spec.name
            rf = hs.remote(**engine_opts)(StepCall(base.underlying_function))
            self._remote_cache[key] = rf
        return rf

    def _submit(self, task_id: str) -> None:
        state = self._steps[task_id]
        spec = state.spec
        opts = spec.options
        env = StepEnv(
            workflow_id=self.workflow_id,
            task_id=task_id,
            attempt=state.attempt,
            idempotency_key=idempotency_key(self.workflow_id, task_id),
            checkpoint_url=self.checkpoints.url
            if opts.checkpoint and self._worker_writes
            else None,
            inline_limit=self._inline_limit(spec),
            catch_exceptions=opts.catch_exceptions,
        )
        parent_values = [self._steps[self._resolve(p)].value for p in spec.parents]
        if not self._worker_writes:  # workers cannot read this storage: hand values over
            parent_values = [
                hs.put(self.checkpoints.read(v)) if isinstance(v, CheckpointRef) else v
                for v in parent_values
            ]
        value_ref, meta_ref = self._remote_for(spec).remote(
            env, spec.args, spec.kwargs, spec.parents, *parent_values
        )
        self._values[task_id] = value_ref
        self._inflight[meta_ref] = task_id
        hs.current_client().on_ready(meta_ref, self._on_step_ready)

    @staticmethod
    def _inline_limit(spec: StepSpec) -> int:
        """How small an output must be to be committed inline in SQL (0: never).

        Only an idempotent step's: an inline output exists nowhere until its COMMIT,
        so a crash before that re-runs the step. A non-idempotent step always writes a
        file before it returns, which a resume finds and commits instead of declaring
        the step in doubt.
        """
        return INLINE_LIMIT if spec.options.idempotent else 0

    def _on_step_ready(self, ref: ObjectRef) -> None:
        with self._finished_cond:
            self._finished_refs.append(ref)
            self._finished_cond.notify()

    def _wait(self) -> None:
        timeout = None
        if self._retries:
            timeout = max(0.0, min(self._retries.values()) - time.monotonic())
        timeout = _CANCEL_POLL_S if timeout is None else min(timeout, _CANCEL_POLL_S)
        if self._batch.commits:  # wake up in time to write the deferred COMMITs
            due = self._last_commit + _COMMIT_DELAY_S - time.monotonic()
            timeout = max(0.0, min(timeout, due))
        with self._finished_cond:
            if not self._finished_refs:
                self._finished_cond.wait(timeout)
            ready = list(self._finished_refs)
            self._finished_refs.clear()
        for meta_ref in ready:
            if meta_ref in self._inflight:
                self._completed(meta_ref)

    def _completed(self, meta_ref: ObjectRef) -> None:
        task_id = self._inflight.pop(meta_ref)
        value_ref = self._values.pop(task_id)
        try:
            meta: StepMeta = hs.get(meta_ref)
        except BaseException as exc:  # the step's failure, whatever it raised
            self._failed(task_id, exc)
            return
        state = self._steps[task_id]
        if state.status is not StepStatus.RUNNING:
            return  # cancelled meanwhile
        ref = meta.checkpoint
        if state.spec.options.checkpoint and ref is None:
            # Storage the workers cannot reach (memory://): the driver writes it.
            ref = self.checkpoints.write(
                self.workflow_id,
                task_id,
                state.attempt,
                hs.get(value_ref),
                inline_limit=self._inline_limit(state.spec),
            )
        if meta.continuation:
            cont: Continuation = hs.get(value_ref)
            self._batch.commit(
                task_id, state.attempt, ref, "continued", output_format="continuation"
            )
            state.status = StepStatus.SUCCESSFUL
            self._continue(task_id, cont, persist=True)
            return
        state.value = value_ref
        # The batch keeps an inline output's bytes until they are committed; the
        # executor itself reads the live value, so it need not hold them.
        state.checkpoint = ref.without_data() if ref is not None else None
        self._batch.commit(task_id, state.attempt, ref, "finished")
        self._succeeded(task_id)

    def _continue(self, task_id: str, cont: Continuation, *, persist: bool) -> None:
        sub = compile_dag(cont.dag, prefix=f"{task_id}.", start_position=self._next_position)
        self._next_position += len(sub.steps) + 1
        added = self._add_steps(sub)
        self._alias[task_id] = sub.output
        self._continued_by[sub.output] = task_id
        if persist:
            self._batch.add_steps(sub)
            for new in added:
                state = self._steps[new]
                state.waiting = sum(1 for p in state.spec.parents if not self._done(p))
                if state.waiting == 0:
                    self._ready.append(new)

    def _succeeded(self, task_id: str) -> None:
        state = self._steps[task_id]
        state.status = StepStatus.SUCCESSFUL
        self._report_progress(done=1)
        for input_id in state.spec.parents:
            producer = self._steps[input_id]
            producer.unfinished_children -= 1
            if producer.unfinished_children == 0:
                self._release(input_id)
        done = [task_id]
        while done:
            finished = done.pop()
            for child in self._steps[finished].children:
                child_state = self._steps[child]
                child_state.waiting -= 1
                if child_state.waiting == 0 and child_state.status is StepStatus.PENDING:
                    self._ready.append(child)
            parent = self._continued_by.get(finished)
            if parent is not None:
                self._steps[parent].value = self._steps[finished].value
                done.append(parent)

    def _release(self, task_id: str) -> None:
        """Every consumer of ``task_id`` has succeeded: stop holding its live value.

        The object store may then free it; the step's checkpoint file stands in if
        anything reads it again (a resumed or re-run consumer). Without this, a chain of
        steps with large outputs would keep every output in memory to the end. Inline
        (small) outputs stay live: a file checkpoint is what makes letting go cheap.
        """
        producer = self._resolve(task_id)
        if producer == self._resolve(self.compiled.output):
            return
        state = self._steps[producer]
        ref = state.checkpoint
        if ref is None or ref.inline or not isinstance(state.value, ObjectRef):
            return
        state.value = ref
        self._steps[task_id].value = ref

    def _failed(self, task_id: str, exc: BaseException) -> None:
        self._report_progress(failed=1)
        state = self._steps[task_id]
        opts = state.spec.options
        if isinstance(exc, CorruptCheckpointError) and self._invalidate_input(task_id, exc):
            return
        crashed = isinstance(exc, (WorkerCrashedError, TaskCancelledError))
        if crashed and not opts.idempotent:
            state.status = StepStatus.IN_DOUBT
            self._batch.step_status(task_id, StepStatus.IN_DOUBT, f"worker lost: {exc}")
            self._resolve_in_doubt(task_id)
            return
        retry = opts.retry_exceptions
        retryable = (
            crashed or retry is True or (isinstance(retry, tuple) and isinstance(exc, retry))
        )
        if retryable and state.attempt <= opts.max_retries and not self._stopping():
            delay = opts.retry_backoff * (2 ** (state.attempt - 1)) if opts.retry_backoff else 0.0
            state.status = StepStatus.PENDING
            self._batch.attempt_failed(task_id, state.attempt, exc, final=False)
            if delay:
                self._retries[task_id] = time.monotonic() + delay
            else:
                self._ready.append(task_id)
            return
        state.status = StepStatus.FAILED
        self._batch.attempt_failed(task_id, state.attempt, exc, final=True)
        if self._failure is None:
            self._failure = (task_id, exc)

    def _invalidate_input(self, task_id: str, exc: CorruptCheckpointError) -> bool:
        """An input checkpoint of ``task_id`` is corrupt: re-run (or doubt) its producer.

        Returns False if the corrupt file is not one of the step's inputs.
        """
        state = self._steps[task_id]
        for parent_id in state.spec.parents:
            producer = self._resolve(parent_id)
            parent = self._steps[producer]
            if parent.checkpoint is None or parent.checkpoint.location != exc.location:
                continue
            log.warning("checkpoint of step %r is corrupt (%s); re-running it", producer, exc)
            parent.value = None
            parent.checkpoint = None
            # This step did not really run: back to waiting, attempt not counted.
            state.status = StepStatus.PENDING
            state.waiting += 1
            self._batch.attempt_failed(task_id, state.attempt, exc, final=False)
            for child in parent.children:  # siblings already queued wait as well
                sibling = self._steps[child]
                if child != task_id and sibling.status is StepStatus.PENDING:
                    sibling.waiting += 1
                    if child in self._ready:
                        self._ready.remove(child)
            if parent.spec.options.idempotent:
                parent.status = StepStatus.PENDING
                self._batch.step_status(producer, StepStatus.PENDING, "checkpoint corrupt")
                self._ready.append(producer)
            else:
                parent.status = StepStatus.IN_DOUBT
                self._batch.step_status(producer, StepStatus.IN_DOUBT, "checkpoint corrupt")
                self._resolve_in_doubt(producer)
            return True
        return False

    def _release_due_retries(self, now: float) -> None:
        for task_id, at in list(self._retries.items()):
            if at <= now:
                del self._retries[task_id]
                self._ready.append(task_id)

    def _resolve_in_doubt(self, task_id: str) -> None:
        state = self._steps[task_id]
        hook = state.spec.options.on_in_doubt
        if hook is None:
            self._attention.append(task_id)
            return
        key = idempotency_key(self.workflow_id, task_id)
        try:
            result = hook(key)
        except Exception as exc:  # the hook's failure fails the step
            state.status = StepStatus.FAILED
            self._batch.attempt_failed(task_id, state.attempt, exc, final=True)
            if self._failure is None:
                self._failure = (task_id, exc)
            return
        if result is RERUN:
            state.status = StepStatus.PENDING
            self._batch.step_status(task_id, StepStatus.RUNNING, "on_in_doubt asked to re-run")
            self._batch.step_status(task_id, StepStatus.PENDING, "re-run requested")
            if state.waiting == 0:
                self._ready.append(task_id)
            return
        ref = None
        if state.spec.options.checkpoint:
            ref = self.checkpoints.write(self.workflow_id, task_id, state.attempt, result)
        state.value = hs.put(result)
        state.checkpoint = ref
        self._batch.commit(
            task_id, state.attempt, ref, "resolved by on_in_doubt", start=StepStatus.IN_DOUBT
        )
        self._succeeded(task_id)

    def _cancel_inflight(self) -> None:
        self._cancelled = True
        for meta_ref, task_id in list(self._inflight.items()):
            hs.cancel(self._values[task_id])
            hs.cancel(meta_ref)

    # ------------------------------------------------------------------ helpers --

    def _resolve(self, task_id: str) -> str:
        while task_id in self._alias:
            task_id = self._alias[task_id]
        return task_id

    def _done(self, task_id: str) -> bool:
        state = self._steps[self._resolve(task_id)]
        return state.status is StepStatus.SUCCESSFUL and state.value is not None

    def _report_progress(self, *, done: int = 0, failed: int = 0) -> None:
        """Tell ``on_progress`` (steps done, steps known, failed attempts so far)."""
        self._n_done += done
        self._n_failed += failed
        if self._on_progress is not None:
            self._on_progress(self._n_done, len(self._steps), self._n_failed)
