"""Timer steps (``workflow.sleep``) in the pure state machine: no processes, no SQL.

The machine fixes a timer's wake-up time at its first start (a TimerSet record that
goes out with the INTENT), asks the executor to wait (StartTimer, never a Submit), and
on a resume reuses the stored time, so only the remainder is waited for.
"""

from __future__ import annotations

import datetime as dt
import math
import pickle
from typing import Any

import pytest

import heliostat as hs
from heliostat import workflow
from heliostat.storage.checkpoints import inline_ref
from heliostat.storage.states import StepStatus
from heliostat.workflows.clock import FakeClock
from heliostat.workflows.compile import compile_dag
from heliostat.workflows.events import (
    CancelRequested,
    Intent,
    Interrupt,
    StartTimer,
    StepDone,
    Submit,
    TimerSet,
)
from heliostat.workflows.machine import WorkflowMachine
from heliostat.workflows.resume_plan import Rerun
from heliostat.workflows.waits import timer_duration

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@hs.remote
def after(x: Any) -> str:
    return f"woke with {x!r}"


def _none_ref(task_id: str, attempt: int) -> Any:
    return inline_ref("wf", task_id, attempt, pickle.dumps(None))


def test_sleep_validates_its_duration() -> None:
    with pytest.raises(TypeError, match="number"):
        workflow.sleep("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="number"):
        workflow.sleep(True)
    for bad in (-1, math.inf, math.nan):
        with pytest.raises(ValueError, match=">= 0"):
            workflow.sleep(bad)
    node = workflow.sleep(5)
    assert timer_duration(node.remote_function, node.args) == 5.0
    other = after.bind(1)
    assert timer_duration(other.remote_function, other.args) is None


def test_first_start_sets_the_wake_up_time_and_waits_without_a_worker() -> None:
    clock = FakeClock(T0)
    machine = WorkflowMachine("wf", compile_dag(after.bind(workflow.sleep(30))), now=clock.now)
    machine.load({}, {})

    out = machine.start_ready()

    assert out == [StartTimer(task_id="sleep", attempt=1, wake_at=T0 + dt.timedelta(seconds=30))]
    records = machine.take_records()
    assert [type(r) for r in records] == [Intent, TimerSet]
    assert records[1] == TimerSet(task_id="sleep", set_at=T0, wake_at=T0 + dt.timedelta(seconds=30))
    assert machine.outcome() is None  # the timer is in flight

    ref = _none_ref("sleep", 1)
    machine.handle(StepDone(task_id="sleep", attempt=1, value=ref, checkpoint=ref))
    submits = machine.start_ready()
    assert [type(s) for s in submits] == [Submit]
    assert submits[0].task_id == "after" and submits[0].inputs == (ref,)


def test_resume_keeps_the_stored_wake_up_time() -> None:
    """A resumed timer waits for the stored time, not a new full duration."""
    clock = FakeClock(T0 + dt.timedelta(seconds=20))
    stored = T0 + dt.timedelta(seconds=30)
    machine = WorkflowMachine("wf", compile_dag(after.bind(workflow.sleep(30))), now=clock.now)
    plan = {"sleep": Rerun(recorded=StepStatus.RUNNING, recorded_idempotent=True, reason="x")}

    machine.load(plan, {"sleep": 1}, {"sleep": stored})
    out = machine.start_ready()

    assert out == [StartTimer(task_id="sleep", attempt=2, wake_at=stored)]
    assert not any(isinstance(r, TimerSet) for r in machine.take_records())


def test_cancel_interrupts_a_sleeping_step() -> None:
    clock = FakeClock(T0)
    machine = WorkflowMachine("wf", compile_dag(workflow.sleep(60)), now=clock.now)
    machine.load({}, {})
    machine.start_ready()
    machine.take_records()

    assert machine.handle(CancelRequested()) == [Interrupt(task_id="sleep")]
