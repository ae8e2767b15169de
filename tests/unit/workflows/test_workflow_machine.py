"""The workflow state machine, driven by events alone: no processes, no SQL.

Each test feeds events and checks the instructions and records that come out, and that
every step record is an edge of the transition table (the machine never records an
edge that did not happen).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import heliostat as hs
from heliostat import workflow
from heliostat.exceptions import InvalidTransition, TaskCancelledError
from heliostat.storage.checkpoints import inline_ref
from heliostat.storage.states import STEP_TRANSITIONS, AttemptStatus, StepStatus, WorkflowStatus
from heliostat.workflows.clock import FakeClock
from heliostat.workflows.compile import compile_dag
from heliostat.workflows.events import (
    AskHook,
    AttemptEnded,
    CancelRequested,
    Commit,
    HookAnswered,
    InputCorrupt,
    Intent,
    IntentsRefused,
    Interrupt,
    LeaseLost,
    LostCause,
    Record,
    StepDone,
    StepLost,
    StepMoved,
    StepRaised,
    Submit,
    Tick,
)
from heliostat.workflows.machine import (
    WorkflowMachine,
)
from heliostat.workflows.resume_plan import InDoubt, Recommit, Rerun, Skip
from heliostat.workflows.step import ErrorInfo
from heliostat.workflows.transitions import (
    cancel_moves,
    outcome_moves,
    resolve_records,
    resume_moves,
)

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@hs.remote
def src(x: int) -> int:
    return x


@hs.remote
def add(*xs: int) -> int:
    return sum(xs)


def _hook(key: str) -> Any:
    return workflow.RERUN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def _machine(dag: Any, clock: FakeClock) -> WorkflowMachine:
    return WorkflowMachine("wf", compile_dag(dag), now=clock.now)


def _chain(*opts: dict[str, Any]) -> Any:
    """a -> b -> c, with workflow options per step."""
    a = src.options(**workflow.options(task_id="a", **(opts[0] if opts else {}))).bind(1)
    b = add.options(**workflow.options(task_id="b", **(opts[1] if len(opts) > 1 else {}))).bind(a)
    c = add.options(**workflow.options(task_id="c", **(opts[2] if len(opts) > 2 else {}))).bind(b)
    return c


def _ref(task: str, attempt: int = 1) -> Any:
    return inline_ref("wf", task, attempt, b"x")


def _error(message: str = "boom") -> ErrorInfo:
    return ErrorInfo(type_name="ValueError", message=message, traceback="tb")


def _done(task: str, attempt: int = 1, value: Any = None) -> StepDone:
    return StepDone(
        task_id=task, attempt=attempt, value=value or f"v-{task}", checkpoint=_ref(task, attempt)
    )


def _raised(task: str, attempt: int = 1, exc: BaseException | None = None) -> StepRaised:
    exc = exc or ValueError("boom")
    return StepRaised(task_id=task, attempt=attempt, error=_error(str(exc)), exception=exc)


def _lost(task: str, cause: LostCause, attempt: int = 1) -> StepLost:
    exc = TaskCancelledError()
    return StepLost(task_id=task, attempt=attempt, cause=cause, error=_error(), exception=exc)


def _started(m: WorkflowMachine) -> list[str]:
    return [s.task_id for s in m.start_ready()]


def _assert_edges(records: list[Record]) -> None:
    """Every step record is an edge of the table."""
    for r in records:
        if isinstance(r, (StepMoved, Commit)):
            start, finish = (
                r.start,
                (r.finish if isinstance(r, StepMoved) else StepStatus.SUCCESSFUL),
            )
        elif isinstance(r, AttemptEnded):
            start, finish = StepStatus.RUNNING, r.finish
        elif isinstance(r, Intent):
            start, finish = StepStatus.PENDING, StepStatus.RUNNING
        else:
            continue
        assert finish in STEP_TRANSITIONS[start], f"{r} is not an edge"


# --- the ordinary path ---------------------------------------------------------------


def test_a_chain_runs_step_by_step_intent_before_submit(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    assert m.load({}, {}) == []
    submits = m.start_ready()
    assert [(s.task_id, s.attempt, s.inputs) for s in submits] == [("a", 1, ())]
    assert [type(r) for r in m.records] == [Intent]
    m.take_records()

    m.handle(_done("a"))
    assert m.start_ready() == [Submit(task_id="b", attempt=1, inputs=("v-a",))]
    records = m.take_records()
    assert [type(r) for r in records] == [Commit, Intent]
    assert records[0].start is StepStatus.RUNNING and records[0].cause == "finished"
    m.handle(_done("b"))
    assert _started(m) == ["c"]
    assert m.outcome() is None
    m.handle(_done("c"))
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.SUCCESSFUL
    assert m.output_value() == "v-c"
    assert m.n_done == 3


def test_a_fan_out_starts_every_ready_step_in_one_batch(clock: FakeClock) -> None:
    leaves = [src.bind(i) for i in range(5)]
    m = _machine(add.bind(*leaves), clock)
    m.load({}, {})
    started = _started(m)
    assert len(started) == 5 and "add" not in started
    for task_id in started[:-1]:
        m.handle(_done(task_id))
        assert m.start_ready() == []  # the reduce waits for every leaf
    m.handle(_done(started[-1]))
    [reduce] = m.start_ready()
    assert reduce.task_id == "add"
    assert reduce.inputs == tuple(f"v-{t}" for t in m.steps["add"].spec.parents)


def test_stale_reports_are_ignored(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    assert m.handle(_done("a", attempt=7)) == []
    assert m.records == []
    assert m.steps["a"].status is StepStatus.RUNNING


# --- failures and retries ------------------------------------------------------------


def test_a_raise_without_retries_fails_the_step_and_the_run(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    m.handle(_raised("a"))
    records = m.take_records()
    assert records == [
        AttemptEnded(
            task_id="a",
            attempt=1,
            status=AttemptStatus.FAILED,
            finish=StepStatus.FAILED,
            cause="raised",
            at=T0,
            error=_error(),
        )
    ]
    assert m.start_ready() == []
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.FAILED
    assert outcome.task_id == "a" and "ValueError: boom" in outcome.message
    assert outcome_moves(outcome)[0].finish is WorkflowStatus.FAILED


def test_retry_goes_back_to_pending_then_runs_a_new_attempt(clock: FakeClock) -> None:
    m = _machine(_chain({"max_retries": 2, "retry_exceptions": True}), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    m.handle(_raised("a"))
    assert [s.attempt for s in m.start_ready()] == [2]
    records = m.take_records()
    _assert_edges(records)
    assert [(type(r).__name__, getattr(r, "finish", None)) for r in records] == [
        ("AttemptEnded", StepStatus.PENDING),
        ("Intent", None),
    ]
    assert "retry now" in records[0].cause
    m.handle(_raised("a", attempt=2))
    m.start_ready()
    m.handle(_raised("a", attempt=3))
    assert m.steps["a"].status is StepStatus.FAILED
    assert m.n_failed == 3


def test_retry_exceptions_by_class_and_backoff_on_the_clock(clock: FakeClock) -> None:
    m = _machine(
        _chain({"max_retries": 3, "retry_exceptions": (KeyError,), "retry_backoff": 2.0}), clock
    )
    m.load({}, {})
    m.start_ready()
    m.handle(_raised("a", exc=KeyError("k")))
    assert m.start_ready() == []  # waiting out the backoff
    assert m.next_retry() == T0 + dt.timedelta(seconds=2)
    clock.advance(1.9)
    m.handle(Tick())
    assert m.start_ready() == []
    clock.advance(0.1)
    m.handle(Tick())
    assert [s.attempt for s in m.start_ready()] == [2]
    m.handle(_raised("a", attempt=2, exc=ValueError("not retried")))
    assert m.steps["a"].status is StepStatus.FAILED


def test_a_dead_worker_retries_an_idempotent_step(clock: FakeClock) -> None:
    m = _machine(_chain({"max_retries": 1}), clock)
    m.load({}, {})
    m.start_ready()
    m.handle(_lost("a", LostCause.WORKER_DIED))
    assert [s.attempt for s in m.start_ready()] == [2]
    m.handle(_lost("a", LostCause.WORKER_DIED, attempt=2))
    assert m.steps["a"].status is StepStatus.FAILED


def test_a_dead_worker_puts_a_non_idempotent_step_in_doubt(clock: FakeClock) -> None:
    m = _machine(_chain({"idempotent": False, "max_retries": 3}), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    m.handle(_lost("a", LostCause.WORKER_DIED))
    records = m.take_records()
    assert [(r.status, r.finish) for r in records] == [
        (AttemptStatus.INTERRUPTED, StepStatus.IN_DOUBT)
    ]
    assert m.n_failed == 0  # interrupted, not failed: progress must not say otherwise
    assert m.start_ready() == []
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.NEEDS_ATTENTION
    assert outcome.attention == ("a",)
    assert "heliostat workflow resolve wf a --result VALUE" in outcome.message
    assert "heliostat workflow resolve wf a --rerun" in outcome.message
    assert "workflow.resolve('wf', 'a'" in outcome.message


def test_in_doubt_with_a_hook_asks_it_and_a_rerun_is_one_real_edge(clock: FakeClock) -> None:
    m = _machine(_chain({"idempotent": False, "on_in_doubt": _hook}), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    assert m.handle(_lost("a", LostCause.WORKER_DIED)) == [AskHook(task_id="a", key="wf:a")]
    assert m.outcome() is None  # waiting for the hook
    m.handle(HookAnswered(task_id="a", rerun=True))
    assert [s.attempt for s in m.start_ready()] == [2]
    records = m.take_records()
    _assert_edges(records)
    assert [
        (type(r).__name__, getattr(r, "start", None), getattr(r, "finish", None)) for r in records
    ] == [
        ("AttemptEnded", None, StepStatus.IN_DOUBT),
        ("StepMoved", StepStatus.IN_DOUBT, StepStatus.PENDING),
        ("Intent", None, None),
    ]


def test_a_hook_result_commits_the_step_from_in_doubt(clock: FakeClock) -> None:
    m = _machine(_chain({"idempotent": False, "on_in_doubt": _hook}), clock)
    m.load({}, {})
    m.start_ready()
    m.handle(_lost("a", LostCause.WORKER_DIED))
    m.take_records()
    m.handle(HookAnswered(task_id="a", value="from-hook", checkpoint=_ref("a")))
    assert _started(m) == ["b"]
    commit = m.take_records()[0]
    assert isinstance(commit, Commit)
    assert commit.start is StepStatus.IN_DOUBT and not commit.attempt_ended
    assert commit.cause == "resolved by on_in_doubt"


def test_a_hook_that_raises_fails_the_step(clock: FakeClock) -> None:
    m = _machine(_chain({"idempotent": False, "on_in_doubt": _hook}), clock)
    m.load({}, {})
    m.start_ready()
    m.handle(_lost("a", LostCause.WORKER_DIED))
    m.take_records()
    m.handle(HookAnswered(task_id="a", error=_error("hook broke"), exception=RuntimeError()))
    moved = m.take_records()[0]
    assert isinstance(moved, StepMoved) and moved.finish is StepStatus.FAILED
    assert m.outcome() is not None and m.outcome().status is WorkflowStatus.FAILED


def test_output_not_stored_suspends_the_run_as_resumable(clock: FakeClock) -> None:
    m = _machine(_chain({"max_retries": 3}), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    m.handle(_lost("a", LostCause.OUTPUT_NOT_STORED))
    assert m.start_ready() == []  # no retry: storage is broken, the run stops
    records = m.take_records()
    assert [(r.status, r.finish) for r in records] == [(AttemptStatus.FAILED, StepStatus.PENDING)]
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.RESUMABLE
    assert "heliostat workflow resume wf" in outcome.message


def test_a_corrupt_input_reruns_its_producer_and_the_consumer_waits(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    m.load({}, {})
    m.start_ready()
    m.handle(_done("a"))
    m.start_ready()
    m.take_records()
    location = m.steps["a"].checkpoint.location
    m.handle(
        InputCorrupt(
            task_id="b", attempt=1, location=location, error=_error(), exception=ValueError()
        )
    )
    assert _started(m) == ["a"]
    records = m.take_records()
    _assert_edges(records)
    assert [(type(r).__name__, r.task_id) for r in records] == [
        ("AttemptEnded", "b"),
        ("StepMoved", "a"),
        ("Intent", "a"),
    ]
    m.handle(_done("a", attempt=2))
    assert m.start_ready() == [Submit(task_id="b", attempt=2, inputs=("v-a",))]


# --- cancel and lease loss ---------------------------------------------------------------


def test_cancel_interrupts_idempotent_steps_and_skips_the_rest(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    assert m.handle(CancelRequested()) == [Interrupt(task_id="a")]
    assert m.start_ready() == []
    assert m.outcome() is None  # a is still in flight
    m.handle(_lost("a", LostCause.INTERRUPTED))
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.CANCELED
    records = m.finish_records(outcome)
    _assert_edges(records)
    assert [(r.task_id, getattr(r, "finish", None)) for r in records] == [
        ("a", StepStatus.PENDING),
        ("a", StepStatus.SKIPPED),
        ("b", StepStatus.SKIPPED),
        ("c", StepStatus.SKIPPED),
    ]


def test_cancel_lets_a_non_idempotent_step_finish_and_starts_nothing_after(
    clock: FakeClock,
) -> None:
    m = _machine(_chain({"idempotent": False}), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    assert m.handle(CancelRequested()) == []  # not interrupted
    m.handle(_done("a"))
    assert m.start_ready() == []
    records = m.take_records()
    assert [type(r) for r in records] == [Commit]  # its result is recorded
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.CANCELED


def test_refused_intents_are_undone_and_the_run_is_canceled(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    m.load({}, {})
    m.start_ready()
    assert [type(r) for r in m.take_records()] == [Intent]  # the batch the store refused
    m.handle(IntentsRefused(task_ids=("a",)))
    assert m.records == []
    assert m.steps["a"].status is StepStatus.PENDING and m.steps["a"].attempt == 0
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.CANCELED


def test_a_lost_lease_stops_at_once_and_writes_nothing(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    m.load({}, {})
    m.start_ready()
    m.take_records()
    assert m.handle(LeaseLost(message="taken")) == [Interrupt(task_id="a")]
    m.handle(_done("a"))
    assert m.records == [] and m.start_ready() == []
    outcome = m.outcome()
    assert outcome is not None and outcome.status is None
    assert outcome_moves(outcome) == []


# --- loading a resume plan ------------------------------------------------------------------


def test_load_applies_a_plan_with_one_real_edge_per_step(clock: FakeClock) -> None:
    m = _machine(_chain({}, {"idempotent": False}, {}), clock)
    plan = {
        "a": Skip(recorded=StepStatus.SUCCESSFUL, recorded_idempotent=True, checkpoint=_ref("a")),
        "b": InDoubt(recorded=StepStatus.RUNNING, recorded_idempotent=False, reason="interrupted"),
        "c": Rerun(recorded=None, recorded_idempotent=None, reason="not run yet"),
    }
    assert m.load(plan, {"a": 1, "b": 1}) == []
    records = m.take_records()
    _assert_edges(records)
    assert [(r.task_id, r.status, r.finish) for r in records] == [
        ("b", AttemptStatus.INTERRUPTED, StepStatus.IN_DOUBT)
    ]
    outcome = m.outcome()
    assert outcome is not None and outcome.status is WorkflowStatus.NEEDS_ATTENTION


def test_load_recommits_and_reruns(clock: FakeClock) -> None:
    m = _machine(_chain(), clock)
    plan = {
        "a": Recommit(recorded=StepStatus.RUNNING, recorded_idempotent=True, checkpoint=_ref("a")),
        "b": Rerun(recorded=StepStatus.FAILED, recorded_idempotent=True, reason="failed before"),
        "c": Rerun(recorded=StepStatus.PENDING, recorded_idempotent=True, reason="not run yet"),
    }
    m.load(plan, {"a": 1, "b": 2})
    assert m.start_ready() == [Submit(task_id="b", attempt=3, inputs=(_ref("a"),))]
    records = m.take_records()
    _assert_edges(records)
    assert [(type(r).__name__, r.task_id) for r in records] == [
        ("Commit", "a"),
        ("StepMoved", "b"),
        ("Intent", "b"),
    ]


def test_the_recorded_idempotency_wins_over_the_resuming_code(clock: FakeClock) -> None:
    m = _machine(_chain({"max_retries": 3}), clock)  # now declared idempotent
    plan = {
        "a": Rerun(recorded=StepStatus.PENDING, recorded_idempotent=False, reason="x"),
        "b": Rerun(recorded=None, recorded_idempotent=None, reason="x"),
        "c": Rerun(recorded=None, recorded_idempotent=None, reason="x"),
    }
    m.load(plan, {})
    m.start_ready()
    m.handle(_lost("a", LostCause.WORKER_DIED))
    assert m.steps["a"].status is StepStatus.IN_DOUBT


# --- transitions outside a run --------------------------------------------------------------


def test_workflow_moves_are_checked_against_the_table() -> None:
    moves = resume_moves("wf", "resume()")
    assert [(m.start, m.finish) for m in moves(WorkflowStatus.RUNNING, False)] == [
        (WorkflowStatus.RUNNING, WorkflowStatus.RESUMABLE),
        (WorkflowStatus.RESUMABLE, WorkflowStatus.RUNNING),
    ]
    assert [(m.start, m.finish) for m in moves(WorkflowStatus.FAILED, False)] == [
        (WorkflowStatus.FAILED, WorkflowStatus.RUNNING)
    ]
    assert cancel_moves("wf")(WorkflowStatus.SUCCESSFUL) == []
    assert cancel_moves("wf")(WorkflowStatus.RUNNING)[0].finish is WorkflowStatus.CANCELED


def test_resolve_records_only_from_in_doubt() -> None:
    records = resolve_records("wf", "a", StepStatus.IN_DOUBT, 1, checkpoint=None, rerun=True, at=T0)
    assert records == [
        StepMoved(
            task_id="a",
            start=StepStatus.IN_DOUBT,
            finish=StepStatus.PENDING,
            cause="resolve(rerun=True)",
            at=T0,
        )
    ]
    with pytest.raises(InvalidTransition):
        resolve_records("wf", "a", StepStatus.PENDING, 1, checkpoint=None, rerun=False, at=T0)
