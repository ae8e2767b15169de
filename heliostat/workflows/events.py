"""What flows through the workflow state machine: events in, instructions and records out.

* *Events* (executor -> machine): a step's task returned (:class:`StepDone`), raised
  (:class:`StepRaised`) or ended without an answer of its own (:class:`StepLost`); an
  input checkpoint was corrupt; an ``on_in_doubt`` hook answered; the database refused
  INTENTs (the workflow was canceled); cancel; the lease was lost; time passed.
* *Instructions* (machine -> executor): submit a step, interrupt one, ask a hook.
* *Records* (machine -> store), what happened, for the group commit:

  * :class:`Intent`: PENDING -> RUNNING, a new attempt: its INTENT row, committed
    before the step is submitted.
  * :class:`Commit`: -> SUCCESSFUL: the COMMIT row with the output's checkpoint.
  * :class:`AttemptEnded`: RUNNING -> PENDING / FAILED / IN_DOUBT: an attempt ended
    without a result (it raised, its worker died, it was interrupted).
  * :class:`StepMoved`: any other edge (a failed step retried by a resume, an in-doubt
    step settled, an output found lost, a step skipped by a cancel).
  * :class:`StepsAdded`: a continuation's sub-DAG joined the workflow.
  * :class:`TimerSet`: a ``workflow.sleep`` step started; when it wakes up.

Timer steps (``workflow.sleep``) never go to a worker: the machine tells the executor
to wait (:class:`StartTimer`), and the executor reports :class:`StepDone` (its output
``None``, inline) when the time has come.

All are frozen, typed dataclasses: nothing crosses from executor to store as a tuple.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.states import AttemptStatus, StepStatus, WorkflowStatus
from heliostat.workflows.compile import CompiledWorkflow
from heliostat.workflows.step import ErrorInfo, StepLogs

__all__ = [
    "AskHook",
    "AttemptEnded",
    "CancelRequested",
    "Commit",
    "ErrorInfo",
    "Event",
    "HookAnswered",
    "InputCorrupt",
    "Instruction",
    "Intent",
    "IntentsRefused",
    "Interrupt",
    "LeaseLost",
    "LostCause",
    "Outcome",
    "Record",
    "StartTimer",
    "StepDone",
    "StepLogs",
    "StepLost",
    "StepMoved",
    "StepRaised",
    "StepsAdded",
    "Submit",
    "Tick",
    "TimerSet",
    "WorkflowMove",
]


# --- values carried by events and records ----------------------------------------------


# --- events: executor -> machine -----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StepDone:
    """A step's attempt returned; its output is stored at ``checkpoint`` (if any)."""

    task_id: str
    attempt: int
    value: Any  # the live handle (ObjectRef) of the output
    checkpoint: CheckpointRef | None
    continuation: CompiledWorkflow | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    worker: str | None = None
    logs: StepLogs | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRaised:
    """A step's attempt raised an exception (in the user's code)."""

    task_id: str
    attempt: int
    error: ErrorInfo
    exception: BaseException
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    worker: str | None = None
    logs: StepLogs | None = None
    exception_data: bytes | None = None  # the exception cloudpickled, if it could be


class LostCause(StrEnum):
    """Why an attempt ended without an answer from the step itself."""

    WORKER_DIED = "worker died"
    INTERRUPTED = "interrupted"  # the executor interrupted it (cancel)
    OUTPUT_NOT_STORED = "output not stored"  # it returned, but its checkpoint failed
    NOT_STARTED = "not started"  # the lease was not renewed in time: its code never ran


@dataclass(frozen=True, slots=True, kw_only=True)
class StepLost:
    """A step's attempt ended without a result of its own (see :class:`LostCause`)."""

    task_id: str
    attempt: int
    cause: LostCause
    error: ErrorInfo
    exception: BaseException
    worker: str | None = None  # host:pid, when known (a dead worker's pid is)


@dataclass(frozen=True, slots=True, kw_only=True)
class InputCorrupt:
    """A step found the checkpoint at ``location`` (one of its inputs) corrupt."""

    task_id: str
    attempt: int
    location: str
    error: ErrorInfo
    exception: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class HookAnswered:
    """An ``on_in_doubt`` hook returned: a result (stored at ``checkpoint``), a re-run
    request (``rerun``), or raised (``error``)."""

    task_id: str
    value: Any = None
    checkpoint: CheckpointRef | None = None
    rerun: bool = False
    error: ErrorInfo | None = None
    exception: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IntentsRefused:
    """The database refused these INTENTs: the workflow was canceled meanwhile."""

    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequested:
    """The workflow was canceled: start nothing more, interrupt what may be."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseLost:
    """Another driver took the workflow over: stop at once, write nothing."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """Time passed: retries whose backoff ran out become ready."""


Event = (
    StepDone
    | StepRaised
    | StepLost
    | InputCorrupt
    | HookAnswered
    | IntentsRefused
    | CancelRequested
    | LeaseLost
    | Tick
)


# --- instructions: machine -> executor ------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit:
    """Run attempt ``attempt`` of a step; ``inputs`` are its parents' values in order."""

    task_id: str
    attempt: int
    inputs: tuple[Any, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrupt:
    """Cancel the engine task of a running step (it is idempotent)."""

    task_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AskHook:
    """Call the step's ``on_in_doubt`` hook with ``key``; answer with HookAnswered."""

    task_id: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTimer:
    """Wait until ``wake_at``, then report ``TimerFired`` for this attempt of the step."""

    task_id: str
    attempt: int
    wake_at: dt.datetime


Instruction = Submit | Interrupt | AskHook | StartTimer


# --- records: machine -> store --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """PENDING -> RUNNING: attempt ``attempt`` is about to be submitted."""

    task_id: str
    attempt: int
    key: str
    at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """``start`` -> SUCCESSFUL: the step's output is durable at ``checkpoint``."""

    task_id: str
    attempt: int
    start: StepStatus
    checkpoint: CheckpointRef | None
    output_format: str | None
    cause: str
    at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    worker: str | None = None
    logs: StepLogs | None = None
    attempt_ended: bool = True  # False: no attempt was running (an in-doubt resolution)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptEnded:
    """RUNNING -> ``finish``: attempt ``attempt`` ended ``status`` without a result."""

    task_id: str
    attempt: int
    status: AttemptStatus
    finish: StepStatus
    cause: str
    at: dt.datetime
    error: ErrorInfo | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    worker: str | None = None
    logs: StepLogs | None = None
    exception_data: bytes | None = None  # kept with a FAILED step (get_output raises it)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepMoved:
    """``start`` -> ``finish`` with no attempt ending (see the module docstring)."""

    task_id: str
    start: StepStatus
    finish: StepStatus
    cause: str
    at: dt.datetime
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepsAdded:
    """A continuation added these steps (all PENDING) to the workflow."""

    compiled: CompiledWorkflow
    at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerSet:
    """Timer step ``task_id`` started for the first time: it wakes up at ``wake_at``.

    Committed with the step's INTENT, so the wake-up time is durable before the wait
    begins, and a resume waits only for what is left.
    """

    task_id: str
    set_at: dt.datetime
    wake_at: dt.datetime


Record = Intent | Commit | AttemptEnded | StepMoved | StepsAdded | TimerSet


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowMove:
    """One workflow transition to write: ``start -> finish`` because ``cause``."""

    start: WorkflowStatus
    finish: WorkflowStatus
    cause: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How the run ended: the workflow's next status and why.

    ``status`` is ``None`` when nothing may be written (the lease was lost).
    """

    status: WorkflowStatus | None
    cause: str
    message: str = ""
    task_id: str | None = None
    exception: BaseException | None = None
    attention: tuple[str, ...] = ()
