"""The workflow state machine: the one place that decides the state of steps and runs.

Sans-IO, in the manner of dask's ``worker_state_machine``: the executor feeds it
*events* (a step's task returned, raised or was lost; an in-doubt hook answered; the
workflow was canceled; the lease was lost; time passed) and gets back *instructions*
(submit this step, interrupt that one, ask this hook) while the machine appends the
*records* of what happened to :attr:`WorkflowMachine.records`, for the executor to
write to the lineage database in one group commit. It does no I/O of its own: it
never touches the engine, SQL or storage, so its tests need no processes.

Every change of a step's state goes through :meth:`WorkflowMachine._move`, which
checks the edge against :data:`~heliostat.storage.states.STEP_TRANSITIONS` and emits
exactly one record for it; an edge that did not happen is never recorded to get
round the table. The run's own end state is decided by :meth:`WorkflowMachine.outcome`.

The events, instructions and records are in :mod:`heliostat.workflows.events`; what
the records mean to the store is said there. The workflow's own moves outside a run
(resume, cancel, reconcile) are decided in :mod:`heliostat.workflows.transitions`.

Values: the machine holds each finished step's value as an opaque handle (a live
``ObjectRef`` or a ``CheckpointRef``, whatever the executor passed in) and hands the
right ones back in :class:`Submit`; it never looks inside them.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from heliostat.exceptions import HeliostatInternalError
from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.states import (
    STEP_TRANSITIONS,
    AttemptStatus,
    StepStatus,
    WorkflowStatus,
    check_transition,
)
from heliostat.workflows.compile import CompiledWorkflow, StepSpec
from heliostat.workflows.context import idempotency_key
from heliostat.workflows.events import (
    AskHook,
    AttemptEnded,
    CancelRequested,
    Commit,
    Event,
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
    StepMoved,
    StepRaised,
    StepsAdded,
    Submit,
    Tick,
    TimerSet,
)
from heliostat.workflows.resume_plan import Decision, InDoubt, Recommit, Rerun, Skip
from heliostat.workflows.step import ErrorInfo
from heliostat.workflows.waits import timer_duration

__all__ = ["StepRun", "WorkflowMachine"]


# --- the machine ---------------------------------------------------------------------


@dataclass(slots=True)
class StepRun:
    """The machine's view of one step. Changed only by :class:`WorkflowMachine`."""

    spec: StepSpec
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0  # attempts started so far, across resumes
    idempotent: bool = True  # as recorded when it last ran (a resume may not change it)
    # Invariant: waiting == number of parents that are not done (see _done).
    waiting: int = 0
    children: list[str] = field(default_factory=list)
    unfinished_children: int = 0  # children not succeeded yet (see _release)
    value: Any = None  # live handle or CheckpointRef, once done
    checkpoint: CheckpointRef | None = None


class WorkflowMachine:
    """Decides every state of one workflow run; see the module docstring.

    Args:
        workflow_id: the run's id (for idempotency keys and messages).
        compiled: the compiled DAG.
        now: the clock (aware UTC datetimes) that stamps records and times retries.
    """

    def __init__(
        self,
        workflow_id: str,
        compiled: CompiledWorkflow,
        *,
        now: Callable[[], dt.datetime],
    ) -> None:
        self.workflow_id = workflow_id
        self.compiled = compiled
        self.now = now
        self.steps: dict[str, StepRun] = {}
        self.records: list[Record] = []
        self._alias: dict[str, str] = {}  # continued step -> its sub-DAG's output step
        self._continued_by: dict[str, str] = {}
        self._ready: deque[str] = deque()
        # Invariants: a step is in _inflight from its Submit until its report, in
        # _asking while its on_in_doubt hook is being asked, in _retry_at while it
        # waits out a retry backoff (PENDING, not in _ready).
        self._inflight: set[str] = set()
        self._asking: set[str] = set()
        self._retry_at: dict[str, dt.datetime] = {}
        # Invariant: a timer step (workflow.sleep) is in _wake_at from its first start
        # on, with the wake-up time the lineage keeps (TimerSet); it never changes.
        self._wake_at: dict[str, dt.datetime] = {}
        self._failure: tuple[str, ErrorInfo, BaseException] | None = None
        self._attention: list[str] = []
        self._canceled = False
        self._lease_lost: str | None = None
        self._suspended: tuple[str, ErrorInfo] | None = None  # storage failed: RESUMABLE
        self._next_position = max((s.position for s in compiled.steps.values()), default=0) + 1
        self.n_done = 0
        self.n_failed = 0  # failed attempts, retried or not
        self._add_steps(compiled)

    # --- set-up ----------------------------------------------------------------------

    def _add_steps(self, compiled: CompiledWorkflow) -> list[str]:
        added = compiled.order()
        for task_id in added:
            self.steps[task_id] = StepRun(
                spec=compiled.steps[task_id],
                idempotent=compiled.steps[task_id].options.idempotent,
            )
        for task_id in added:
            for parent in self.steps[task_id].spec.parents:
                self.steps[parent].children.append(task_id)
                self.steps[parent].unfinished_children += 1
        return added

    def continued(self, task_id: str) -> str | None:
        """The output step of the sub-DAG ``task_id`` continued with, if it did."""
        return self._alias.get(task_id)

    def expand(self, task_id: str, sub: CompiledWorkflow) -> list[str]:
        """Attach a continuation already in the lineage (while loading a resume)."""
        return self._attach(task_id, sub)

    def _attach(self, task_id: str, sub: CompiledWorkflow) -> list[str]:
        self._next_position = max(
            self._next_position, *(s.position + 1 for s in sub.steps.values())
        )
        added = self._add_steps(sub)
        self._alias[task_id] = sub.output
        self._continued_by[sub.output] = task_id
        return added

    @property
    def next_free_position(self) -> int:
        """The first display position no step has yet (for a continuation's steps)."""
        return self._next_position

    def load(
        self,
        plan: Mapping[str, Decision],
        attempts: Mapping[str, int],
        timers: Mapping[str, dt.datetime] | None = None,
    ) -> list[Instruction]:
        """Start from a resume plan (:func:`heliostat.workflows.resume_plan.plan_resume`).

        ``attempts`` are the attempts each step has had so far (attempt numbers go on);
        ``timers`` the wake-up times of the timer steps that have started.
        Returns the first instructions; :attr:`records` holds what the plan changes.
        """
        out: list[Instruction] = []
        self._wake_at.update(timers or {})
        for task_id, run in self.steps.items():
            run.attempt = attempts.get(task_id, 0)
        for task_id, decision in plan.items():
            run = self.steps[task_id]
            if decision.recorded_idempotent is not None:
                run.idempotent = decision.recorded_idempotent
            start = decision.recorded
            if isinstance(decision, Skip):
                run.status = StepStatus.SUCCESSFUL
                run.value = run.checkpoint = decision.checkpoint
            elif isinstance(decision, Recommit):
                run.status = StepStatus.RUNNING
                self._commit(
                    task_id, decision.checkpoint, None, decision.reason, attempt_ended=True
                )
                run.status = StepStatus.SUCCESSFUL
                run.value = run.checkpoint = decision.checkpoint
            elif isinstance(decision, Rerun):
                run.status = start or StepStatus.PENDING
                if run.status is StepStatus.RUNNING:  # its attempt was cut short
                    self._end_attempt(
                        task_id, AttemptStatus.INTERRUPTED, StepStatus.PENDING, decision.reason
                    )
                elif run.status is not StepStatus.PENDING:
                    self._move(task_id, StepStatus.PENDING, decision.reason)
            elif isinstance(decision, InDoubt):
                run.status = start or StepStatus.IN_DOUBT
                if run.status is StepStatus.RUNNING:
                    self._end_attempt(
                        task_id, AttemptStatus.INTERRUPTED, StepStatus.IN_DOUBT, decision.reason
                    )
                elif run.status is not StepStatus.IN_DOUBT:
                    self._move(task_id, StepStatus.IN_DOUBT, decision.reason)
        self.n_done = sum(1 for r in self.steps.values() if r.status is StepStatus.SUCCESSFUL)
        for run in self.steps.values():
            run.waiting = sum(1 for p in run.spec.parents if not self._done(p))
            if run.status is StepStatus.SUCCESSFUL:
                for parent in run.spec.parents:
                    self.steps[parent].unfinished_children -= 1
        for task_id, run in self.steps.items():
            if run.status is StepStatus.IN_DOUBT:
                out.extend(self._in_doubt(task_id))
            elif run.status is StepStatus.PENDING and run.waiting == 0:
                self._ready.append(task_id)
        return out

    # --- events -----------------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; return what the executor must do about it."""
        if isinstance(event, StepDone):
            return self._step_done(event)
        if isinstance(event, StepRaised):
            return self._step_raised(event)
        if isinstance(event, StepLost):
            return self._step_lost(event)
        if isinstance(event, InputCorrupt):
            return self._input_corrupt(event)
        if isinstance(event, HookAnswered):
            return self._hook_answered(event)
        if isinstance(event, IntentsRefused):
            return self._intents_refused(event)
        if isinstance(event, CancelRequested):
            return self._cancel()
        if isinstance(event, LeaseLost):
            return self._lost_lease(event)
        if isinstance(event, Tick):
            self._release_due_retries()
            return []
        raise HeliostatInternalError(f"unknown workflow event {event!r}")

    def start_ready(self) -> list[Submit | StartTimer]:
        """Start every ready step (unless the run is stopping): INTENTs and submits.

        A timer step (``workflow.sleep``) is started with :class:`StartTimer` instead
        of a submit; the first time, a :class:`TimerSet` record fixes its wake-up time.
        The executor must commit :attr:`records` (the INTENTs) before it acts on the
        returned instructions: that is the write-ahead rule.
        """
        if self.stopping:
            return []
        out: list[Submit | StartTimer] = []
        at = self.now()
        while self._ready:
            task_id = self._ready.popleft()
            run = self.steps[task_id]
            if run.status is not StepStatus.PENDING or run.waiting:
                continue
            run.attempt += 1
            self._check(task_id, StepStatus.RUNNING)
            run.status = StepStatus.RUNNING
            self._inflight.add(task_id)
            self.records.append(
                Intent(
                    task_id=task_id,
                    attempt=run.attempt,
                    key=idempotency_key(self.workflow_id, task_id),
                    at=at,
                )
            )
            duration = timer_duration(run.spec.function, run.spec.args)
            if duration is not None:
                wake = self._wake_at.get(task_id)
                if wake is None:
                    wake = self._wake_at[task_id] = at + dt.timedelta(seconds=duration)
                    self.records.append(TimerSet(task_id=task_id, set_at=at, wake_at=wake))
                out.append(StartTimer(task_id=task_id, attempt=run.attempt, wake_at=wake))
                continue
            inputs = tuple(self.steps[self.resolve(p)].value for p in run.spec.parents)
            out.append(Submit(task_id=task_id, attempt=run.attempt, inputs=inputs))
        return out

    def take_records(self) -> list[Record]:
        """The records made since the last call (the next group commit)."""
        records, self.records = self.records, []
        return records

    # --- the run's state ------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once nothing new may start: a failure, a doubt, a cancel, a lost lease."""
        return (
            self._failure is not None
            or bool(self._attention)
            or self._canceled
            or self._lease_lost is not None
            or self._suspended is not None
        )

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def next_retry(self) -> dt.datetime | None:
        """When the earliest backed-off retry becomes ready, if any waits."""
        return min(self._retry_at.values()) if self._retry_at else None

    def outcome(self) -> Outcome | None:
        """How the run ends, once it has ended; ``None`` while it goes on."""
        if self._lease_lost is not None:
            return Outcome(status=None, cause="lease lost", message=self._lease_lost)
        output = self.resolve(self.compiled.output)
        if self._done(output) and not self._canceled:
            return Outcome(status=WorkflowStatus.SUCCESSFUL, cause="finished", task_id=output)
        if self._inflight or self._asking:
            return None
        if self._canceled:
            return Outcome(status=WorkflowStatus.CANCELED, cause="cancel()")
        if self._suspended is not None:
            task_id, error = self._suspended
            return Outcome(
                status=WorkflowStatus.RESUMABLE,
                cause=f"step {task_id}: output not stored",
                message=(
                    f"Workflow {self.workflow_id!r} stopped: the output of step {task_id!r} "
                    f"could not be stored ({error.summary}). Fix the storage, then resume "
                    f"it: heliostat workflow resume {self.workflow_id}"
                ),
                task_id=task_id,
            )
        if self._failure is not None:
            task_id, error, exc = self._failure
            return Outcome(
                status=WorkflowStatus.FAILED,
                cause=f"step {task_id} failed",
                message=(
                    f"Workflow {self.workflow_id!r} failed: step {task_id!r} raised {error.summary}"
                ),
                task_id=task_id,
                exception=exc,
            )
        if not self._attention and (self._ready or self.next_retry() is not None):
            return None
        if not self._attention:
            self._attention.extend(
                t for t, r in self.steps.items() if r.status is StepStatus.IN_DOUBT
            )
        if self._attention:
            return self._needs_attention()
        stuck = sorted(t for t, r in self.steps.items() if r.status is StepStatus.PENDING)
        raise HeliostatInternalError(
            f"Workflow {self.workflow_id!r} cannot make progress: steps {stuck[:10]} are "
            "pending with nothing running. This is a bug in heliostat; please report it."
        )

    def _needs_attention(self) -> Outcome:
        steps = tuple(dict.fromkeys(self._attention))
        wid = self.workflow_id
        first = steps[0]
        names = ", ".join(repr(t) for t in steps)
        message = (
            f"Workflow {wid!r} needs attention: step {names} is in doubt: it was "
            "interrupted and may or may not have done its work. Check what happened "
            "(its idempotency key is "
            f"{idempotency_key(wid, first)!r}), then settle it with\n"
            f"  heliostat workflow resolve {wid} {first} --result VALUE   (it did its work)\n"
            f"  heliostat workflow resolve {wid} {first} --rerun          (it did not)\n"
            f"or in Python: workflow.resolve({wid!r}, {first!r}, result=...) or "
            "rerun=True; then resume the workflow "
            f"(heliostat workflow resume {wid}). An on_in_doubt= hook on the step "
            "settles such steps by itself."
        )
        return Outcome(
            status=WorkflowStatus.NEEDS_ATTENTION,
            cause="in doubt",
            message=message,
            task_id=first,
            attention=steps,
        )

    def finish_records(self, outcome: Outcome) -> list[Record]:
        """The last step records of a run that ends with ``outcome``.

        A canceled run's steps that never started are SKIPPED.
        """
        if outcome.status is WorkflowStatus.CANCELED:
            for task_id, run in self.steps.items():
                if run.status is StepStatus.PENDING and task_id not in self._alias:
                    self._retry_at.pop(task_id, None)
                    self._move(task_id, StepStatus.SKIPPED, "workflow canceled")
        return self.take_records()

    def output_value(self) -> Any:
        """The output step's value handle (live ref or CheckpointRef)."""
        return self.steps[self.resolve(self.compiled.output)].value

    # --- helpers ----------------------------------------------------------------------

    def resolve(self, task_id: str) -> str:
        """The step whose output stands for ``task_id``'s (through continuations)."""
        while task_id in self._alias:
            task_id = self._alias[task_id]
        return task_id

    def _done(self, task_id: str) -> bool:
        return self.steps[self.resolve(task_id)].status is StepStatus.SUCCESSFUL

    def _check(self, task_id: str, finish: StepStatus) -> None:
        start = self.steps[task_id].status
        allowed = STEP_TRANSITIONS.get(start)
        if allowed is None or finish not in allowed or type(finish) is not StepStatus:
            # Not an edge of the table: let check_transition raise, naming the step
            # (the id is formatted only then; this runs twice per step).
            check_transition("step", f"{self.workflow_id}/{task_id}", start, finish)

    def _move(
        self, task_id: str, finish: StepStatus, cause: str, error: ErrorInfo | None = None
    ) -> None:
        run = self.steps[task_id]
        self._check(task_id, finish)
        self.records.append(
            StepMoved(
                task_id=task_id,
                start=run.status,
                finish=finish,
                cause=cause,
                at=self.now(),
                error=error,
            )
        )
        run.status = finish

    def _end_attempt(
        self,
        task_id: str,
        status: AttemptStatus,
        finish: StepStatus,
        cause: str,
        *,
        error: ErrorInfo | None = None,
        event: StepRaised | None = None,
        worker: str | None = None,
    ) -> None:
        run = self.steps[task_id]
        self._check(task_id, finish)
        if status is AttemptStatus.FAILED:
            self.n_failed += 1
        self.records.append(
            AttemptEnded(
                task_id=task_id,
                attempt=run.attempt,
                status=status,
                finish=finish,
                cause=cause,
                at=self.now(),
                error=error,
                started_at=event.started_at if event else None,
                finished_at=event.finished_at if event else None,
                worker=event.worker if event else worker,
                logs=event.logs if event else None,
                exception_data=(
                    event.exception_data
                    if event is not None and finish is StepStatus.FAILED
                    else None
                ),
            )
        )
        run.status = finish
        self._inflight.discard(task_id)

    def _commit(
        self,
        task_id: str,
        checkpoint: CheckpointRef | None,
        event: StepDone | None,
        cause: str,
        *,
        output_format: str | None = None,
        attempt_ended: bool = True,
    ) -> None:
        run = self.steps[task_id]
        self._check(task_id, StepStatus.SUCCESSFUL)
        self.records.append(
            Commit(
                task_id=task_id,
                attempt=max(run.attempt, 1),
                start=run.status,
                checkpoint=checkpoint,
                output_format=output_format or (checkpoint.format if checkpoint else None),
                cause=cause,
                at=self.now(),
                started_at=event.started_at if event else None,
                finished_at=event.finished_at if event else None,
                worker=event.worker if event else None,
                logs=event.logs if event else None,
                attempt_ended=attempt_ended,
            )
        )
        run.status = StepStatus.SUCCESSFUL
        self._inflight.discard(task_id)

    # --- event handlers -------------------------------------------------------------------

    def _current(self, task_id: str, attempt: int) -> StepRun | None:
        """The step if ``attempt`` is its running attempt (else the report is stale)."""
        run = self.steps.get(task_id)
        if run is None or task_id not in self._inflight or run.attempt != attempt:
            return None
        return run

    def _step_done(self, event: StepDone) -> list[Instruction]:
        run = self._current(event.task_id, event.attempt)
        if run is None or self._lease_lost is not None:
            return []
        task_id = event.task_id
        if event.continuation is not None:
            self._commit(
                task_id, event.checkpoint, event, "continued", output_format="continuation"
            )
            added = self._attach(task_id, event.continuation)
            self.records.append(StepsAdded(compiled=event.continuation, at=self.now()))
            for new in added:
                sub = self.steps[new]
                sub.waiting = sum(1 for p in sub.spec.parents if not self._done(p))
                if sub.waiting == 0:
                    self._ready.append(new)
            return []
        self._commit(task_id, event.checkpoint, event, "finished")
        # The live value serves consumers; the checkpoint (without its inline bytes,
        # which the record carries) stands in once they are done (see _release).
        run.value = event.value
        run.checkpoint = event.checkpoint.without_data() if event.checkpoint else None
        self._succeeded(task_id)
        return []

    def _succeeded(self, task_id: str) -> None:
        run = self.steps[task_id]
        self.n_done += 1
        for parent in run.spec.parents:
            producer = self.steps[parent]
            producer.unfinished_children -= 1
            if producer.unfinished_children == 0:
                self._release(parent)
        done = [task_id]
        while done:
            finished = done.pop()
            for child in self.steps[finished].children:
                child_run = self.steps[child]
                child_run.waiting -= 1
                if child_run.waiting == 0 and child_run.status is StepStatus.PENDING:
                    self._ready.append(child)
            continued = self._continued_by.get(finished)
            if continued is not None:
                self.steps[continued].value = self.steps[finished].value
                done.append(continued)

    def _release(self, task_id: str) -> None:
        """Every consumer of ``task_id`` succeeded: stop holding its live value.

        The object store may then free it, and the step's checkpoint file stands in
        should anything read it again. Without this a chain of steps with large
        outputs would keep every one in memory to the end. Inline (small) outputs stay
        live: a file is what makes letting go cheap.
        """
        producer = self.resolve(task_id)
        if producer == self.resolve(self.compiled.output):
            return
        run = self.steps[producer]
        ref = run.checkpoint
        if ref is None or ref.inline or isinstance(run.value, CheckpointRef):
            return
        run.value = ref
        self.steps[task_id].value = ref

    def _step_raised(self, event: StepRaised) -> list[Instruction]:
        run = self._current(event.task_id, event.attempt)
        if run is None or self._lease_lost is not None:
            return []
        opts = run.spec.options
        retry = opts.retry_exceptions
        retryable = retry is True or (
            isinstance(retry, tuple) and isinstance(event.exception, retry)
        )
        if retryable and run.attempt <= opts.max_retries and not self.stopping:
            self._retry(event.task_id, AttemptStatus.FAILED, event.error, event)
            return []
        self._end_attempt(
            event.task_id,
            AttemptStatus.FAILED,
            StepStatus.FAILED,
            "raised",
            error=event.error,
            event=event,
        )
        if self._failure is None:
            self._failure = (event.task_id, event.error, event.exception)
        return []

    def _retry(
        self,
        task_id: str,
        status: AttemptStatus,
        error: ErrorInfo,
        event: StepRaised | None,
        *,
        worker: str | None = None,
    ) -> None:
        run = self.steps[task_id]
        backoff = run.spec.options.retry_backoff
        delay = backoff * (2 ** (run.attempt - 1)) if backoff else 0.0
        when = f"in {delay:g} s" if delay else "now"
        self._end_attempt(
            task_id,
            status,
            StepStatus.PENDING,
            f"attempt {run.attempt} failed; retry {when}",
            error=error,
            event=event,
            worker=worker,
        )
        if delay:
            self._retry_at[task_id] = self.now() + dt.timedelta(seconds=delay)
        else:
            self._ready.append(task_id)

    def _step_lost(self, event: StepLost) -> list[Instruction]:
        run = self._current(event.task_id, event.attempt)
        if run is None or self._lease_lost is not None:
            return []
        task_id = event.task_id
        if event.cause is LostCause.NOT_STARTED:  # nothing ran: safe to run it again
            self._end_attempt(
                task_id,
                AttemptStatus.INTERRUPTED,
                StepStatus.PENDING,
                "not started: the lease was not renewed in time",
                error=event.error,
                worker=event.worker,
            )
            if not self.stopping:
                self._ready.append(task_id)
            return []
        if event.cause is LostCause.INTERRUPTED:
            self._end_attempt(
                task_id,
                AttemptStatus.INTERRUPTED,
                StepStatus.PENDING,
                "interrupted: workflow canceled" if self._canceled else "interrupted",
                error=event.error,
                worker=event.worker,
            )
            return []
        if event.cause is LostCause.OUTPUT_NOT_STORED and self._suspended is None:
            self._suspended = (task_id, event.error)
        if not run.idempotent:
            # It may have done its work (it did, if only its output was lost): in doubt.
            status = (
                AttemptStatus.FAILED
                if event.cause is LostCause.OUTPUT_NOT_STORED
                else AttemptStatus.INTERRUPTED
            )
            self._end_attempt(
                task_id,
                status,
                StepStatus.IN_DOUBT,
                str(event.cause),
                error=event.error,
                worker=event.worker,
            )
            return self._in_doubt(task_id)
        if run.attempt <= run.spec.options.max_retries and not self.stopping:
            self._retry(task_id, AttemptStatus.FAILED, event.error, None, worker=event.worker)
            return []
        finish = StepStatus.PENDING if self._suspended is not None else StepStatus.FAILED
        self._end_attempt(
            task_id,
            AttemptStatus.FAILED,
            finish,
            str(event.cause),
            error=event.error,
            worker=event.worker,
        )
        if finish is StepStatus.FAILED and self._failure is None:
            self._failure = (task_id, event.error, event.exception)
        return []

    def _input_corrupt(self, event: InputCorrupt) -> list[Instruction]:
        run = self._current(event.task_id, event.attempt)
        if run is None or self._lease_lost is not None:
            return []
        task_id = event.task_id
        for parent_id in run.spec.parents:
            producer = self.resolve(parent_id)
            parent = self.steps[producer]
            if parent.checkpoint is None or parent.checkpoint.location != event.location:
                continue
            # This attempt never ran the step's code: back to waiting for its input.
            self._end_attempt(
                task_id,
                AttemptStatus.FAILED,
                StepStatus.PENDING,
                f"input of step {producer} is corrupt",
                error=event.error,
            )
            out: list[Instruction] = []
            if parent.status is StepStatus.SUCCESSFUL:
                parent.value = None
                parent.checkpoint = None
                self.n_done -= 1
                for child in parent.children:  # every consumer waits for it again
                    sibling = self.steps[child]
                    if sibling.status in (StepStatus.PENDING, StepStatus.RUNNING):
                        sibling.waiting += 1
                for child in self._continued_chain(producer):
                    for grandchild in self.steps[child].children:
                        if self.steps[grandchild].status in (
                            StepStatus.PENDING,
                            StepStatus.RUNNING,
                        ):
                            self.steps[grandchild].waiting += 1
                self._ready = deque(t for t in self._ready if self.steps[t].waiting == 0)
                if parent.idempotent:
                    self._move(producer, StepStatus.PENDING, "checkpoint corrupt; re-run")
                    if parent.waiting == 0:
                        self._ready.append(producer)
                else:
                    self._move(producer, StepStatus.IN_DOUBT, "checkpoint corrupt")
                    out.extend(self._in_doubt(producer))
            return out
        # Not one of its inputs: the step itself failed on it.
        return self._step_raised(
            StepRaised(
                task_id=task_id,
                attempt=event.attempt,
                error=event.error,
                exception=event.exception,
            )
        )

    def _continued_chain(self, producer: str) -> list[str]:
        """The steps whose output is ``producer``'s through continuations."""
        out = []
        current = producer
        while current in self._continued_by:
            current = self._continued_by[current]
            out.append(current)
        return out

    def _in_doubt(self, task_id: str) -> list[Instruction]:
        run = self.steps[task_id]
        if run.spec.options.on_in_doubt is None or self._lease_lost is not None:
            self._attention.append(task_id)
            return []
        self._asking.add(task_id)
        return [AskHook(task_id=task_id, key=idempotency_key(self.workflow_id, task_id))]

    def _hook_answered(self, event: HookAnswered) -> list[Instruction]:
        run = self.steps[event.task_id]
        if event.task_id not in self._asking or self._lease_lost is not None:
            return []
        self._asking.discard(event.task_id)
        task_id = event.task_id
        if event.error is not None:
            self._move(
                task_id,
                StepStatus.FAILED,
                f"on_in_doubt raised {event.error.summary}",
                error=event.error,
            )
            if self._failure is None:
                exc = event.exception or RuntimeError(event.error.summary)
                self._failure = (task_id, event.error, exc)
            return []
        if event.rerun:
            self._move(task_id, StepStatus.PENDING, "on_in_doubt asked to re-run")
            if run.waiting == 0:
                self._ready.append(task_id)
            return []
        self._commit(
            task_id, event.checkpoint, None, "resolved by on_in_doubt", attempt_ended=False
        )
        run.value = event.value
        run.checkpoint = event.checkpoint
        self._succeeded(task_id)
        return []

    def _intents_refused(self, event: IntentsRefused) -> list[Instruction]:
        # The INTENTs were never written (the executor drops them from its batch): as
        # far as lineage knows these steps never left PENDING, and neither do they here.
        for task_id in event.task_ids:
            run = self.steps[task_id]
            run.status = StepStatus.PENDING
            self._inflight.discard(task_id)
            run.attempt -= 1
        return self._cancel()

    def _cancel(self) -> list[Instruction]:
        if self._canceled:
            return []
        self._canceled = True
        self._ready.clear()
        # Idempotent steps in flight are interrupted (they re-run nothing); a
        # non-idempotent one is left to finish and its result is recorded.
        return [Interrupt(task_id=t) for t in sorted(self._inflight) if self.steps[t].idempotent]

    def _lost_lease(self, event: LeaseLost) -> list[Instruction]:
        if self._lease_lost is not None:
            return []
        self._lease_lost = event.message
        self._ready.clear()
        self.records.clear()  # nothing more may be written
        return [Interrupt(task_id=t) for t in sorted(self._inflight) if self.steps[t].idempotent]

    def _release_due_retries(self) -> None:
        now = self.now()
        for task_id, at in list(self._retry_at.items()):
            if at <= now:
                del self._retry_at[task_id]
                if not self.stopping:
                    self._ready.append(task_id)
