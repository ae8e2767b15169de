"""The durable executor: the I/O around the workflow state machine, in the driver.

The machine (:mod:`heliostat.workflows.machine`) decides; this module acts: it submits
steps to the engine, turns their completions into events, writes the machine's records
to SQL as group commits fenced by the run's lease, calls ``on_in_doubt`` hooks, and
polls for a cancel.

Crash-safety protocol (the SQL log *is* the write-ahead log):

1. Before a step is submitted, its INTENT (step, attempt, idempotency key) is
   committed, and the step's status becomes RUNNING, in the same transaction.
2. The step runs in a worker. If it is checkpointed, the worker writes its output to
   checkpoint storage (temporary name, fsync, rename, checksum) before it returns; a
   small output of an idempotent step comes back inline instead, to be stored in the
   SQL row (one fsync for data and record; see ``INLINE_LIMIT``).
3. The executor commits a COMMIT row with the checkpoint's location, checksum and
   signature (and the inline bytes); the step's status becomes SUCCESSFUL.
4. Records ready at the same moment share one transaction (group commit): the COMMITs
   of steps that just finished and the INTENTs of the steps they unblock cost one
   fsync together. Every group commit first checks the run's lease generation (the
   fencing token, see :mod:`heliostat.workflows.lease`): a driver whose lease was
   taken over writes nothing more and starts no further step.

What a resume does with each step is decided by
:func:`heliostat.workflows.resume_plan.plan_resume` from the lineage:

* committed: not re-run; consumers read its checkpoint;
* INTENT without COMMIT: if that attempt's checkpoint exists and verifies, the step
  did finish (the crash came between steps 2 and 3): commit it now. Otherwise an
  idempotent step is re-run and a non-idempotent one is IN_DOUBT: only its
  ``on_in_doubt(idempotency_key)`` hook may settle it (return the result, or
  ``RERUN``); without a hook the workflow stops in NEEDS_ATTENTION naming the step;
* failed: re-run (resume is how a user retries after fixing the cause).

Data never makes an extra trip through the driver: consumers take the producer's
ObjectRef (the engine resolves it in the worker) or its checkpoint record (the worker
reads and verifies it).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import cloudpickle

import heliostat.engine as hs
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.remote_function import RemoteFunction
from heliostat.engine.runtime import current_client
from heliostat.exceptions import (
    HeliostatInternalError,
    StorageError,
    TaskCancelledError,
    TaskError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowLeaseError,
    WorkflowNeedsAttentionError,
)
from heliostat.storage.checkpoints import INLINE_LIMIT, CheckpointRef, SupportsCheckpoints
from heliostat.storage.states import StepStatus, WorkflowStatus
from heliostat.workflows.beacon import LeaseBeacon, fence_margin
from heliostat.workflows.clock import Clock
from heliostat.workflows.compile import CompiledWorkflow, StepSpec, compile_dag
from heliostat.workflows.context import idempotency_key
from heliostat.workflows.events import (
    AskHook,
    CancelRequested,
    Commit,
    HookAnswered,
    InputCorrupt,
    Instruction,
    Intent,
    IntentsRefused,
    Interrupt,
    LeaseLost,
    LostCause,
    Outcome,
    Record,
    StartTimer,
    StepDone,
    StepLost,
    StepRaised,
    Submit,
    Tick,
)
from heliostat.workflows.lease import Lease, LeaseKeeper
from heliostat.workflows.lineage import StepRecord
from heliostat.workflows.machine import (
    WorkflowMachine,
)
from heliostat.workflows.resume_plan import Decision, StepFacts, plan_resume
from heliostat.workflows.step import (
    Continuation,
    ErrorInfo,
    Failure,
    StepCall,
    StepEnv,
    StepMeta,
)
from heliostat.workflows.store import CommitResult, WorkflowStore
from heliostat.workflows.transitions import (
    outcome_moves,
)

__all__ = ["RERUN", "WorkflowExecutor", "plan_from_lineage"]

log = logging.getLogger("heliostat.workflows")


class _Rerun:
    def __repr__(self) -> str:
        return "workflow.RERUN"


RERUN: Any = _Rerun()
"""Return this from an ``on_in_doubt`` hook to run the in-doubt step again."""

_HOST = socket.gethostname()  # workers run on the driver's node (one machine)
_CANCEL_POLL_S = 0.5
_COMMIT_DELAY_S = 0.05  # longest a COMMIT waits for company (see _must_commit)
_MAX_DEFERRED_COMMITS = 512
_EXCEPTION_LIMIT = 1 << 20  # bytes of a failed step's pickled exception kept in SQL


def plan_from_lineage(
    machine: WorkflowMachine, records: dict[str, StepRecord], checkpoints: SupportsCheckpoints
) -> dict[str, Decision]:
    """The resume plan of a run whose steps' lineage is ``records``.

    The I/O half of resume planning: it attaches the continuations the lineage
    committed (reading their checkpoints), and looks for the checkpoint each
    interrupted attempt may have left; :func:`~heliostat.workflows.resume_plan.plan_resume`
    decides.
    """
    wid = machine.workflow_id
    changed = True
    while changed:  # continuations add steps, whose records may continue further
        changed = False
        for task_id in list(machine.steps):
            record = records.get(task_id)
            if (
                record is None
                or machine.continued(task_id) is not None
                or record.status is not StepStatus.SUCCESSFUL
                or record.output_format != "continuation"
                or record.checkpoint is None
            ):
                continue
            cont: Continuation = checkpoints.read(record.checkpoint)
            sub = compile_dag(
                cont.dag, prefix=f"{task_id}.", start_position=machine.next_free_position
            )
            machine.expand(task_id, sub)
            changed = True
    facts = {}
    alias = {}
    for task_id, run in machine.steps.items():
        record = records.get(task_id)
        sub_output = machine.continued(task_id)
        if sub_output is not None:
            alias[task_id] = sub_output
        found = None
        if (
            record is not None
            and record.status is StepStatus.RUNNING
            and run.spec.options.checkpoint
        ):
            found = checkpoints.find(wid, task_id, record.attempts)
        facts[task_id] = StepFacts(
            parents=run.spec.parents,
            status=record.status if record else None,
            idempotent=record.idempotent if record else run.spec.options.idempotent,
            checkpoint=record.checkpoint if record else None,
            continued=sub_output is not None,
            found=found,
        )
    return plan_resume(facts, output=machine.compiled.output, alias=alias)


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


class WorkflowExecutor:
    """Runs one workflow to completion (or to a stop) in the calling thread.

    Args:
        workflow_id: the run's id.
        compiled: its DAG (as stored, or the caller's of the same shape on a resume).
        store: the lineage store.
        checkpoints: the checkpoint store.
        lease: the lease this run holds (taken by the caller).
        seq: the run's last committed group-commit number.
        clock: stamps records and times retries.
        keeper: renews the lease while the run goes on.
        records: the steps' lineage, for a resume (``None`` for a new run).
        on_progress: called with (steps done, steps known, failed attempts).
        beacon: the run's lease beacon, published by the caller from the moment it
            took the lease (its non-idempotent steps watch it; see beacon.py).
    """

    def __init__(
        self,
        *,
        workflow_id: str,
        compiled: CompiledWorkflow,
        store: WorkflowStore,
        checkpoints: SupportsCheckpoints,
        lease: Lease,
        seq: int,
        clock: Clock,
        keeper: LeaseKeeper,
        records: dict[str, StepRecord] | None = None,
        on_progress: Callable[[int, int, int], None] | None = None,
        beacon: LeaseBeacon | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.beacon = beacon
        self.compiled = compiled
        self.store = store
        self.checkpoints = checkpoints
        self.lease = lease
        self._seq = seq
        self.clock = clock
        self.keeper = keeper
        self._records = records
        # One timestamp per turn of the loop: the records of a turn share it, so the
        # group commit converts one datetime for all of them, not one per record.
        self._turn_now = clock.now()
        self.machine = WorkflowMachine(workflow_id, compiled, now=self._now)
        self._inflight: dict[ObjectRef, tuple[str, int, ObjectRef]] = {}  # meta ref -> step
        self._running: dict[str, tuple[ObjectRef, ObjectRef]] = {}  # step -> (value, meta)
        self._timers: dict[str, tuple[dt.datetime, int]] = {}  # sleeping step -> (wake, attempt)
        self._events: deque[Any] = deque()  # finished meta refs and control events
        self._cond = threading.Condition()
        self._remote_cache: dict[tuple[int, bool], RemoteFunction] = {}
        self._on_progress = on_progress
        self._last_commit = time.monotonic()
        self._released = False
        # memory:// lives in one process: there the driver writes the checkpoints.
        self._worker_writes = checkpoints.shared_across_processes
        # The node whose session holds the run's beacon (this driver's): a step that
        # runs elsewhere follows the lease through a copy (engine/beacon_mirror.py).
        self._node_index = current_client().minter.node_index if beacon is not None else 0

    def _now(self) -> dt.datetime:
        return self._turn_now

    # --- control from other threads ----------------------------------------------------

    def request_cancel(self) -> None:
        """The workflow was canceled (in this process): act on it at once."""
        self._post(CancelRequested())

    def lease_lost(self) -> None:
        """The lease keeper found the lease taken over."""
        self._post(
            LeaseLost(message=f"workflow {self.workflow_id!r}: lease lost to another driver")
        )

    def _post(self, event: Any) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify()

    def _on_step_ready(self, ref: ObjectRef) -> None:
        self._post(ref)  # runs on the node manager's thread: only hand it over

    # --- set-up ------------------------------------------------------------------------

    def _prepare(self) -> list[Instruction]:
        """Rebuild the state from the lineage (a no-op plan for a new workflow)."""
        records = self._records
        machine = self.machine
        if records is None:
            return machine.load({}, {})
        plan = plan_from_lineage(machine, records, self.checkpoints)
        return machine.load(
            plan,
            {t: r.attempts for t, r in records.items()},
            self.store.timers(self.workflow_id),
        )

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> Any:
        """Run until the output step is committed; return its value.

        Raises:
            WorkflowExecutionError: a step failed after its retries.
            WorkflowNeedsAttentionError: a non-idempotent step is in doubt.
            WorkflowCancelledError: the workflow was canceled meanwhile.
            WorkflowLeaseError: another driver took the workflow over (``fenced``).
            StorageError: the lineage database or checkpoint storage failed; the
                workflow is left resumable.
        """
        self.keeper.hold(self.lease, self.store, self.lease_lost, beacon=self.beacon)
        try:
            instructions = self._prepare()
            self._report_progress()
            return self._loop(instructions)
        finally:
            self.keeper.drop(self.lease)
            if not self._released:
                self._abandon()
            if self.beacon is not None:
                self.beacon.close()

    def _loop(self, instructions: list[Instruction]) -> Any:
        machine = self.machine
        last_cancel_check = time.monotonic()
        while True:
            self._turn_now = self.clock.now()
            instructions.extend(self._drain_events())
            if self._timers:
                instructions.extend(self._fire_timers())
            now = time.monotonic()
            if now - last_cancel_check > _CANCEL_POLL_S:
                last_cancel_check = now
                if self.store.status(self.workflow_id) is WorkflowStatus.CANCELED:
                    instructions.extend(machine.handle(CancelRequested()))
            if machine.next_retry() is not None:
                machine.handle(Tick())
            submits = machine.start_ready()
            if machine.records and self._must_commit(now):
                batch = machine.take_records()
                refused = self._commit(batch)
                if refused:  # canceled meanwhile: nothing was written; all but the
                    submits = []  # INTENTs go again, with what the cancel adds
                    instructions.extend(machine.handle(IntentsRefused(task_ids=refused)))
                    rest: list[Record] = [r for r in batch if not isinstance(r, Intent)]
                    self._commit(rest + machine.take_records())
            instructions.extend(submits)
            for instruction in instructions:
                self._act(instruction)
            instructions = []
            outcome = machine.outcome()
            if outcome is not None:
                return self._finish(outcome)
            self._wait()

    def _must_commit(self, now: float) -> bool:
        """Whether to write the records now, or let more COMMITs join them.

        INTENTs (steps about to run), failures and other changes go out at once.
        COMMITs alone may wait a little while other steps are in flight: nothing
        depends on them being durable yet (a crash meanwhile is recovered from the
        step's checkpoint, or re-runs an idempotent step), and a fan-out then pays one
        fsync for many steps instead of one per handful.
        """
        records = self.machine.records
        if not all(isinstance(r, Commit) and r.attempt_ended for r in records):
            return True
        if not self._inflight or self.machine.stopping:
            return True
        return len(records) >= _MAX_DEFERRED_COMMITS or (now - self._last_commit >= _COMMIT_DELAY_S)

    def _commit(
        self,
        records: list[Record],
        *,
        outcome: Outcome | None = None,
    ) -> tuple[str, ...]:
        """One fenced group commit; returns the step ids whose INTENTs were refused."""
        if any(
            isinstance(r, Commit) and r.checkpoint is not None and not r.checkpoint.inline
            for r in records
        ):
            # Workers renamed their checkpoints without a directory fsync: one here
            # covers them all, before any COMMIT names them.
            self.checkpoints.sync_workflow_dir(self.workflow_id)
        self._seq += 1
        try:
            result = self.store.commit(
                self.lease,
                self._seq,
                records,
                now=self._turn_now,
                finish=outcome_moves(outcome) if outcome is not None else None,
                error=outcome.message or None if outcome is not None else None,
                release=outcome is not None,
            )
        except WorkflowLeaseError:
            self._seq -= 1
            self._released = True  # not ours to release any more
            self.machine.handle(LeaseLost(message="fenced"))
            self._interrupt_all()
            raise
        except BaseException:
            self._seq -= 1
            raise
        self._last_commit = time.monotonic()
        if outcome is not None:
            self._released = True
        if result == CommitResult.INTENTS_REFUSED:
            self._seq -= 1
            return tuple(r.task_id for r in records if isinstance(r, Intent))
        return ()

    def _finish(self, outcome: Outcome) -> Any:
        machine = self.machine
        if outcome.status is None:  # the lease was lost: nothing may be written
            self._released = True
            self._interrupt_all()
            raise WorkflowLeaseError(
                f"Workflow {self.workflow_id!r}: this driver lost its lease to another "
                "driver, which now runs the workflow; this run stopped without writing "
                "anything more.",
                workflow_id=self.workflow_id,
                fenced=True,
            )
        value: Any = None
        if outcome.status is WorkflowStatus.SUCCESSFUL:
            handle = machine.output_value()
            value = (
                hs.get(handle) if isinstance(handle, ObjectRef) else self.checkpoints.read(handle)
            )
        records = machine.finish_records(outcome)
        refused = self._commit(records, outcome=outcome)
        if refused:  # cannot be: the final batch starts nothing
            raise HeliostatInternalError(f"final commit of {self.workflow_id!r} refused {refused}")
        self._report_progress()
        wid = self.workflow_id
        if outcome.status is WorkflowStatus.SUCCESSFUL:
            return value
        if outcome.status is WorkflowStatus.CANCELED:
            raise WorkflowCancelledError(f"Workflow {wid!r} was cancelled.", workflow_id=wid)
        if outcome.status is WorkflowStatus.NEEDS_ATTENTION:
            raise WorkflowNeedsAttentionError(
                outcome.message, workflow_id=wid, task_id=outcome.task_id or ""
            )
        if outcome.status is WorkflowStatus.RESUMABLE:
            raise StorageError(outcome.message)
        exc = outcome.exception
        raise WorkflowExecutionError(
            outcome.message, workflow_id=wid, task_id=outcome.task_id or "", cause=exc
        ) from exc

    def _abandon(self) -> None:
        """The run ends by an error of its own: release the lease if the store can.

        The workflow stays RUNNING in the lineage; with no owner it reads as
        RESUMABLE, and whoever resumes it marks its interrupted attempts.
        """
        self._released = True
        self._interrupt_all()
        try:
            self.store.commit(self.lease, self._seq + 1, [], now=self.clock.now(), release=True)
        except Exception:  # the database is what failed: the lease simply expires
            log.debug("could not release the lease of %r", self.workflow_id, exc_info=True)

    def _interrupt_all(self) -> None:
        self._timers.clear()  # a sleep holds nothing to cancel
        for task_id, (value_ref, meta_ref) in list(self._running.items()):
            run = self.machine.steps.get(task_id)
            if run is not None and run.idempotent:
                for ref in (value_ref, meta_ref):
                    try:
                        hs.cancel(ref)
                    except Exception:  # the runtime is going down with us
                        log.debug("could not cancel step %r", task_id, exc_info=True)

    # --- acting ----------------------------------------------------------------------------

    def _act(self, instruction: Instruction) -> None:
        if isinstance(instruction, Submit):
            self._submit(instruction)
        elif isinstance(instruction, StartTimer):
            self._timers[instruction.task_id] = (instruction.wake_at, instruction.attempt)
        elif isinstance(instruction, Interrupt) and instruction.task_id in self._timers:
            _, attempt = self._timers.pop(instruction.task_id)
            stop = TaskCancelledError(f"sleep step {instruction.task_id!r} interrupted")
            self._post(
                StepLost(
                    task_id=instruction.task_id,
                    attempt=attempt,
                    cause=LostCause.INTERRUPTED,
                    error=ErrorInfo.of(stop),
                    exception=stop,
                )
            )
        elif isinstance(instruction, Interrupt):
            refs = self._running.get(instruction.task_id)
            if refs is not None:
                for ref in refs:
                    hs.cancel(ref)
        elif isinstance(instruction, AskHook):
            self._post(self._ask_hook(instruction))
        else:
            raise HeliostatInternalError(f"unknown instruction {instruction!r}")

    def _remote_for(self, spec: StepSpec) -> RemoteFunction:
        key = (id(spec.function), spec.options.idempotent)
        rf = self._remote_cache.get(key)
        if rf is None:
            base = spec.function
            engine_opts = {
                k: v
                for k, v in base.task_options.raw
                if k in ("num_cpus", "num_gpus", "resources", "scheduling_strategy", "memory")
            }
            # The engine never retries nor rebuilds a step: each attempt is the
            # workflow's own decision, with its own INTENT.
            engine_opts["max_retries"] = 0
            engine_opts["num_returns"] = 2
            engine_opts["name"] = spec.name
            rf = hs.remote(**engine_opts)(StepCall(base.underlying_function))
            self._remote_cache[key] = rf
        return rf

    def _submit(self, submit: Submit) -> None:
        spec = self.machine.steps[submit.task_id].spec
        opts = spec.options
        env = StepEnv(
            workflow_id=self.workflow_id,
            task_id=submit.task_id,
            attempt=submit.attempt,
            idempotency_key=idempotency_key(self.workflow_id, submit.task_id),
            checkpoint_url=self.checkpoints.url
            if opts.checkpoint and self._worker_writes
            else None,
            inline_limit=INLINE_LIMIT if spec.options.idempotent else 0,
            catch_exceptions=opts.catch_exceptions,
            beacon=None if opts.idempotent or self.beacon is None else self.beacon.path,
            beacon_node=self._node_index,
            fence_margin=fence_margin(self.lease.timeout),
        )
        inputs = list(submit.inputs)
        try:
            if not self._worker_writes:  # workers cannot read this storage: hand values over
                inputs = [
                    hs.put(self.checkpoints.read(v)) if isinstance(v, CheckpointRef) else v
                    for v in inputs
                ]
            value_ref, meta_ref = self._remote_for(spec).remote(
                env, spec.args, spec.kwargs, spec.parents, *inputs
            )
        except Exception as exc:
            # Submitting failed (an input checkpoint unreadable, the engine refusing the
            # task): the attempt failed before it started. Tell the machine as it would
            # hear of a step that raised, or nothing would ever finish this attempt.
            error = ErrorInfo.of(exc, "".join(traceback.format_exception(exc)))
            failed = StepRaised(
                task_id=submit.task_id, attempt=submit.attempt, error=error, exception=exc
            )
            self._post(failed)
            return
        self._inflight[meta_ref] = (submit.task_id, submit.attempt, value_ref)
        self._running[submit.task_id] = (value_ref, meta_ref)
        hs.current_client().on_ready(meta_ref, self._on_step_ready)

    def _ask_hook(self, ask: AskHook) -> HookAnswered:
        """Call an in-doubt step's ``on_in_doubt`` hook (user code, in this thread)."""
        spec = self.machine.steps[ask.task_id].spec
        hook = spec.options.on_in_doubt
        assert hook is not None  # the machine asks only steps that have one
        try:
            result = hook(ask.key)
        except Exception as exc:  # the hook's failure fails the step
            error = ErrorInfo.of(exc, "".join(traceback.format_exception(exc)))
            return HookAnswered(task_id=ask.task_id, error=error, exception=exc)
        if result is RERUN:
            return HookAnswered(task_id=ask.task_id, rerun=True)
        ref = None
        if spec.options.checkpoint:
            attempt = max(self.machine.steps[ask.task_id].attempt, 1)
            ref = self.checkpoints.write(self.workflow_id, ask.task_id, attempt, result)
        return HookAnswered(task_id=ask.task_id, value=hs.put(result), checkpoint=ref)

    # --- events ---------------------------------------------------------------------------

    def _fire_timers(self) -> list[Instruction]:
        """Complete the sleep steps whose wake-up time has come (output ``None``)."""
        now = self._turn_now
        out: list[Instruction] = []
        for task_id, (wake, attempt) in list(self._timers.items()):
            if wake > now:
                continue
            del self._timers[task_id]
            # Stored inline, in the step's row: no file to write for a None.
            ref = self.checkpoints.write(
                self.workflow_id, task_id, attempt, None, inline_limit=INLINE_LIMIT
            )
            out.extend(
                self.machine.handle(
                    StepDone(
                        task_id=task_id,
                        attempt=attempt,
                        value=ref,
                        checkpoint=ref,
                        finished_at=now,
                    )
                )
            )
        return out

    def _wait(self) -> None:
        timeout = _CANCEL_POLL_S
        retry = self.machine.next_retry()
        if retry is not None:
            timeout = min(timeout, max(0.0, (retry - self.clock.now()).total_seconds()))
        if self._timers:
            wake = min(w for w, _ in self._timers.values())
            timeout = min(timeout, max(0.0, (wake - self.clock.now()).total_seconds()))
        if self.machine.records:  # wake up in time to write the deferred COMMITs
            due = self._last_commit + _COMMIT_DELAY_S - time.monotonic()
            timeout = max(0.0, min(timeout, due))
        with self._cond:
            if not self._events:
                self._cond.wait(timeout)

    def _drain_events(self) -> list[Instruction]:
        with self._cond:
            events = list(self._events)
            self._events.clear()
        out: list[Instruction] = []
        for event in events:
            if isinstance(event, ObjectRef):
                entry = self._inflight.pop(event, None)
                if entry is None:
                    continue
                step_event = self._completed(event, *entry)
                out.extend(self.machine.handle(step_event))
                self._report_progress()
            else:
                out.extend(self.machine.handle(event))
        return out

    def _completed(
        self, meta_ref: ObjectRef, task_id: str, attempt: int, value_ref: ObjectRef
    ) -> Any:
        """Turn a finished step task into the machine's event."""
        self._running.pop(task_id, None)
        spec = self.machine.steps[task_id].spec
        try:
            meta: StepMeta = hs.get(meta_ref)
        except TaskCancelledError as exc:
            return StepLost(
                task_id=task_id,
                attempt=attempt,
                cause=LostCause.INTERRUPTED,
                error=ErrorInfo.of(exc),
                exception=exc,
            )
        except TaskError as exc:  # StepCall itself could not run (its arguments, say)
            error = ErrorInfo(
                type_name=type(exc.cause).__name__ if exc.cause else "TaskError",
                message=str(exc.cause) if exc.cause else exc.cause_repr,
                traceback=exc.remote_traceback,
            )
            return StepRaised(task_id=task_id, attempt=attempt, error=error, exception=exc)
        except Exception as exc:  # the worker died, the object was lost ...
            pid = getattr(exc, "pid", 0)
            return StepLost(
                task_id=task_id,
                attempt=attempt,
                cause=LostCause.WORKER_DIED,
                error=ErrorInfo.of(exc),
                exception=exc,
                worker=f"{_HOST}:{pid}" if pid else None,
            )
        if meta.failure is not None:
            assert meta.error is not None  # set with every failure
            failure = self._exception_of(spec, meta)
            if meta.failure is Failure.CORRUPT_INPUT:
                return InputCorrupt(
                    task_id=task_id,
                    attempt=attempt,
                    location=meta.corrupt_location or "",
                    error=meta.error,
                    exception=failure,
                )
            if meta.failure is Failure.NOT_STARTED:
                return StepLost(
                    task_id=task_id,
                    attempt=attempt,
                    cause=LostCause.NOT_STARTED,
                    error=meta.error,
                    exception=failure,
                    worker=meta.worker,
                )
            if meta.failure is Failure.OUTPUT_NOT_STORED:
                return StepLost(
                    task_id=task_id,
                    attempt=attempt,
                    cause=LostCause.OUTPUT_NOT_STORED,
                    error=meta.error,
                    exception=failure,
                )
            return StepRaised(
                task_id=task_id,
                attempt=attempt,
                error=meta.error,
                exception=failure,
                started_at=_utc(meta.started),
                finished_at=_utc(meta.finished),
                worker=meta.worker,
                logs=meta.logs,
                exception_data=(
                    meta.exception
                    if meta.exception is not None and len(meta.exception) <= _EXCEPTION_LIMIT
                    else None
                ),
            )
        ref = meta.checkpoint
        try:
            if spec.options.checkpoint and ref is None:
                # Storage the workers cannot reach (memory://): the driver writes it.
                ref = self.checkpoints.write(
                    self.workflow_id,
                    task_id,
                    attempt,
                    hs.get(value_ref),
                    inline_limit=INLINE_LIMIT if spec.options.idempotent else 0,
                )
            sub = None
            if meta.continuation:
                cont: Continuation = hs.get(value_ref)
                sub = compile_dag(
                    cont.dag,
                    prefix=f"{task_id}.",
                    start_position=self.machine.next_free_position,
                )
        except WorkflowError as bad:  # a continuation that cannot run
            return StepRaised(
                task_id=task_id, attempt=attempt, error=ErrorInfo.of(bad), exception=bad
            )
        return StepDone(
            task_id=task_id,
            attempt=attempt,
            value=value_ref,
            checkpoint=ref,
            continuation=sub,
            started_at=_utc(meta.started),
            finished_at=_utc(meta.finished),
            worker=meta.worker,
            logs=meta.logs,
        )

    @staticmethod
    def _exception_of(spec: StepSpec, meta: StepMeta) -> BaseException:
        """The step's exception as the driver sees it (``TaskError`` of its class)."""
        assert meta.error is not None
        cause: BaseException | None = None
        if meta.exception is not None:
            try:
                cause = cloudpickle.loads(meta.exception)
            except Exception:  # its class is not importable here: keep its text
                cause = None
        pid = int(meta.worker.rsplit(":", 1)[-1]) if meta.worker else 0
        err = TaskError(
            spec.name, meta.error.traceback, cause, pid=pid, cause_repr=meta.error.summary
        )
        return err.as_instanceof_cause()

    def _report_progress(self) -> None:
        """Tell ``on_progress`` (steps done, steps known, failed attempts so far)."""
        if self._on_progress is not None:
            m = self.machine
            self._on_progress(m.n_done, len(m.steps), m.n_failed)
