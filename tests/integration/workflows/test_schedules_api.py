"""The ``heliostat.schedules`` API, and scheduled runs as real workflows on real workers.

Targets are functions of this module (``f"{__name__}:nightly"``). Steps that must stay
running until the test says so wait for a gate file the test creates.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import heliostat as hs
from heliostat import schedules, workflow
from heliostat.engine import Runtime
from heliostat.exceptions import (
    InvalidScheduleError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    ScheduleTargetError,
)
from heliostat.scheduler.cron import ScheduleSpec, parse_run_id, run_id
from heliostat.workflows import WorkflowStatus
from heliostat.workflows import schedules as schedules_module
from heliostat.workflows.schedule_store import FiredRun
from heliostat.workflows.triggers import FakeClock, TriggerLoop

UTC = dt.UTC
TERMINAL = {WorkflowStatus.SUCCESSFUL, WorkflowStatus.FAILED, WorkflowStatus.CANCELED}


def reset_schedule_stores() -> None:
    with schedules_module._lock:
        stores = list(schedules_module._stores.values())
        schedules_module._stores.clear()
    for store in stores:
        store.close()


@pytest.fixture(autouse=True)
def sched_home(wf_home: Path) -> Iterator[Path]:
    """Schedules and workflows of this test only (the API's store cache emptied)."""
    reset_schedule_stores()
    yield wf_home
    reset_schedule_stores()


# --- targets ---------------------------------------------------------------------------------


def _wait_gate(gate: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@hs.remote
def report(stamp: str, region: str, gate_dir: str | None) -> str:
    if gate_dir is not None and not _wait_gate(os.path.join(gate_dir, stamp)):
        raise TimeoutError(f"the test never opened the gate of {stamp}")
    return f"report {region} {stamp}"


def stamp_of(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def nightly(logical_time: dt.datetime, region: str = "eu", gate_dir: str | None = None) -> Any:
    return report.bind(stamp_of(logical_time), region, gate_dir)


def not_a_dag(logical_time: dt.datetime) -> int:
    return 42


def raises(logical_time: dt.datetime) -> Any:
    raise RuntimeError("no data source configured")


def no_logical_time() -> Any:
    return None


NOT_CALLABLE = 5
TARGET = f"{__name__}:nightly"


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


# --- the API without a runtime --------------------------------------------------------------


def test_create_get_list_pause_resume_delete() -> None:
    info = schedules.create(
        "nightly", TARGET, cron="0 2 * * *", timezone="Europe/Berlin", kwargs={"region": "us"}
    )
    assert info.name == "nightly" and info.cron == "0 2 * * *" and info.interval is None
    assert info.kwargs == {"region": "us"} and info.max_active_runs == 1 and not info.catchup
    assert info.last_logical_time is None
    assert info.next_fire_time == ScheduleSpec(
        cron="0 2 * * *", timezone="Europe/Berlin"
    ).next_fire_time(info.created_at)
    assert schedules.get("nightly") == info
    every = schedules.create("often", TARGET, every="15m", catchup=True, max_active_runs=3)
    assert every.interval == dt.timedelta(minutes=15)
    assert [s.name for s in schedules.list_all()] == ["nightly", "often"]

    paused = schedules.pause("nightly")
    assert paused.paused and paused.updated_at >= info.updated_at
    assert schedules.get("nightly").paused
    assert not schedules.resume("nightly").paused

    schedules.delete("often")
    assert [s.name for s in schedules.list_all()] == ["nightly"]
    known = r"No schedule named 'often' \(known: nightly\)"
    with pytest.raises(ScheduleNotFoundError, match=known):
        schedules.get("often")
    for call in (schedules.pause, schedules.resume, schedules.delete, schedules.runs):
        with pytest.raises(ScheduleNotFoundError):
            call("often")


def test_schedule_info_to_json_is_json() -> None:
    info = schedules.create("j", TARGET, every=dt.timedelta(hours=1), start=now_utc())
    data = json.loads(json.dumps(info.to_json()))
    assert data["name"] == "j" and data["interval_seconds"] == 3600 and data["cron"] is None
    assert data["next_fire_time"] == info.next_fire_time.isoformat()  # type: ignore[union-attr]
    assert data["last_logical_time"] is None


def test_next_fire_times() -> None:
    schedules.create("q", TARGET, cron="*/15 * * * *")
    times = schedules.next_fire_times("q", 4)
    assert len(times) == 4 and times[0] > now_utc()
    assert all(b - a == dt.timedelta(minutes=15) for a, b in itertools.pairwise(times))
    assert schedules.next_fire_times("q", 0) == []


def test_next_fire_times_lists_due_intervals_first() -> None:
    start = now_utc().replace(second=0, microsecond=0) - dt.timedelta(minutes=3)
    schedules.create("back", TARGET, cron="* * * * *", start=start, catchup=True)
    times = schedules.next_fire_times("back", 6)
    assert times[:3] == [start + dt.timedelta(minutes=k) for k in range(3)]
    schedules.create("latest", TARGET, cron="* * * * *", start=start)
    times = schedules.next_fire_times("latest", 2)
    assert times[0] >= start + dt.timedelta(minutes=3) and times[1] > now_utc()


def test_a_name_clash_needs_replace() -> None:
    schedules.create("dup", TARGET, cron="0 * * * *")
    with pytest.raises(ScheduleExistsError, match="replace=True"):
        schedules.create("dup", TARGET, cron="*/5 * * * *")
    assert schedules.get("dup").cron == "0 * * * *"
    assert schedules.create("dup", TARGET, cron="*/5 * * * *", replace=True).cron == "*/5 * * * *"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"cron": "0 25 * * *"}, InvalidScheduleError, "bad hour field '25'"),
        ({"cron": "0 * * *"}, InvalidScheduleError, "has 4 fields, expected 5"),
        ({"cron": "0 * * * *", "timezone": "Europe/Atlantis"}, InvalidScheduleError, "time zone"),
        ({}, InvalidScheduleError, "exactly one of a cron expression or an interval"),
        ({"every": "0s"}, InvalidScheduleError, "must be positive"),
        ({"every": "soon"}, InvalidScheduleError, "Invalid interval 'soon'"),
        ({"every": 0.5}, InvalidScheduleError, "whole number of seconds"),
        ({"cron": "@daily", "max_active_runs": 0}, InvalidScheduleError, "at least 1"),
        ({"cron": "@daily", "kwargs": {"x": object()}}, InvalidScheduleError, "JSON values"),
        ({"cron": "@daily", "kwargs": {"logical_time": 1}}, InvalidScheduleError, "logical_time"),
        ({"cron": "@daily", "kwargs": {"nope": 1}}, ScheduleTargetError, "unexpected keyword"),
        ({"cron": "@daily", "target": "no_such_module_xyz:job"}, ScheduleTargetError, "import"),
        ({"cron": "@daily", "target": f"{__name__}:missing"}, ScheduleTargetError, "no attribute"),
        ({"cron": "@daily", "target": f"{__name__}:NOT_CALLABLE"}, ScheduleTargetError, "int"),
        ({"cron": "@daily", "target": "just_a_module"}, ScheduleTargetError, "module:function"),
        (
            {"cron": "@daily", "target": f"{__name__}:no_logical_time"},
            ScheduleTargetError,
            "logical_time",
        ),
        ({"cron": "@daily", "name": "bad name"}, InvalidScheduleError, "Invalid schedule name"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    name = kwargs.pop("name", "bad")
    target = kwargs.pop("target", TARGET)
    with pytest.raises(error) as info:
        schedules.create(name, target, **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)
    assert schedules.list_all() == []


def test_trigger_without_a_runtime_records_a_manual_run_for_the_daemon() -> None:
    schedules.create("manual", TARGET, cron="0 0 1 1 *")
    workflow_id = schedules.trigger("manual")
    parts = parse_run_id(workflow_id)
    assert parts.schedule == "manual" and parts.manual
    (run,) = schedules.runs("manual")
    assert run.workflow_id == workflow_id and run.kind == "manual"
    assert run.started_at is None and run.status is None and run.error is None
    # A request, not a stranded claim: the sweep leaves it to the next pass, which
    # starts it.
    started: list[FiredRun] = []
    clock = FakeClock(now_utc() + dt.timedelta(minutes=1))
    loop = TriggerLoop(schedules_module._store(), clock=clock, start_run=started.append)
    assert loop.recover() == []
    assert [r.workflow_id for r in loop.run_once()] == [workflow_id]
    assert [(r.workflow_id, r.logical_time) for r in started] == [(workflow_id, parts.logical_time)]
    assert schedules.runs("manual")[0].started_at == clock.now()


def test_an_unimportable_target_at_fire_time_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mods" / "vanishing_jobs.py"
    module.parent.mkdir()
    module.write_text(f"from {__name__} import nightly as build\n")
    monkeypatch.syspath_prepend(str(module.parent))
    start = now_utc().replace(microsecond=0) - dt.timedelta(minutes=5)
    schedules.create("vanishing", "vanishing_jobs:build", every="1m", start=start)
    module.unlink()
    sys.modules.pop("vanishing_jobs", None)
    importlib.invalidate_caches()
    fired = schedules.make_loop(clock=FakeClock(now_utc())).run_once()
    assert [r.schedule for r in fired] == ["vanishing"]
    (run,) = schedules.runs("vanishing")
    assert run.error is not None
    assert run.error.startswith("ScheduleTargetError: Cannot import module 'vanishing_jobs'")
    assert run.status is None


# --- real workflows on a real runtime -------------------------------------------------------


def wait_status(
    wait_for: Callable[..., Any], workflow_id: str, statuses: set[WorkflowStatus]
) -> None:
    wait_for(
        lambda: status_of(workflow_id) in statuses,
        timeout=60,
        what=f"workflow {workflow_id} to be {'/'.join(sorted(statuses))}",
    )


def backfill_start(minutes: int) -> dt.datetime:
    return now_utc().replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes)


def status_of(workflow_id: str) -> WorkflowStatus | None:
    try:
        return workflow.get_status(workflow_id)
    except KeyError:
        return None


def test_a_scheduled_run_is_a_durable_workflow_with_a_deterministic_id(
    runtime: Runtime, wait_for: Callable[..., Any]
) -> None:
    start = backfill_start(2)
    schedules.create("etl", TARGET, cron="* * * * *", start=start, kwargs={"region": "us"})
    loop = schedules.make_loop(clock=FakeClock(now_utc()))
    (fired,) = loop.run_once()  # catchup=False: only the latest due minute
    assert fired.workflow_id == run_id("etl", fired.logical_time)
    wait_status(wait_for, fired.workflow_id, TERMINAL)
    assert workflow.get_status(fired.workflow_id) is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output(fired.workflow_id) == f"report us {stamp_of(fired.logical_time)}"
    meta = workflow.get_metadata(fired.workflow_id)["user_metadata"]
    assert meta == {
        "schedule": "etl",
        "logical_time": fired.logical_time.isoformat(),
        "kind": "scheduled",
    }
    (run,) = schedules.runs("etl")
    assert run.status is WorkflowStatus.SUCCESSFUL and run.started_at is not None
    assert schedules.get("etl").last_logical_time == fired.logical_time


def test_max_active_runs_is_honoured_with_real_workflows(
    runtime: Runtime, wait_for: Callable[..., Any], tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    start = backfill_start(3)
    schedules.create(
        "gated",
        TARGET,
        cron="* * * * *",
        start=start,
        catchup=True,
        max_active_runs=1,
        kwargs={"gate_dir": str(gates)},
    )
    spec = ScheduleSpec(cron="* * * * *", start=start)
    due = list(spec.fire_times_between(start - dt.timedelta(seconds=1), now_utc()))
    assert len(due) >= 3
    clock = FakeClock(now_utc())
    loop = schedules.make_loop(clock=clock)
    fired: list[FiredRun] = []
    try:
        for logical_time in due:
            (run,) = loop.run_once()
            assert run.logical_time == logical_time  # oldest first
            fired.append(run)
            wait_status(wait_for, run.workflow_id, {WorkflowStatus.RUNNING})
            assert loop.run_once() == [], "a second run started while one is active"
            (gates / stamp_of(logical_time)).touch()
            wait_status(wait_for, run.workflow_id, {WorkflowStatus.SUCCESSFUL})
    finally:
        for logical_time in due:  # never leave a worker waiting on a gate
            (gates / stamp_of(logical_time)).touch()
        for run in fired:
            wait_status(wait_for, run.workflow_id, TERMINAL)
    assert [r.logical_time for r in fired] == due


def test_a_target_that_returns_no_dag_is_an_error_of_that_run(
    runtime: Runtime, wait_for: Callable[..., Any]
) -> None:
    start = backfill_start(1)
    schedules.create("nodag", f"{__name__}:not_a_dag", cron="* * * * *", start=start)
    schedules.create("raising", f"{__name__}:raises", cron="* * * * *", start=start)
    schedules.create("fine", TARGET, cron="* * * * *", start=start)
    fired = schedules.make_loop(clock=FakeClock(now_utc())).run_once()
    assert sorted(r.schedule for r in fired) == ["fine", "nodag", "raising"]
    (nodag,) = schedules.runs("nodag")
    assert nodag.error == (
        f"ScheduleTargetError: Target '{__name__}:not_a_dag' returned int, not a DAG; "
        "it must return a workflow graph such as step.bind(...)."
    )
    (raising,) = schedules.runs("raising")
    assert raising.error == (
        f"ScheduleTargetError: Target '{__name__}:raises' raised RuntimeError: "
        "no data source configured"
    )
    (fine,) = schedules.runs("fine")
    wait_status(wait_for, fine.workflow_id, TERMINAL)
    assert status_of(fine.workflow_id) is WorkflowStatus.SUCCESSFUL
    # trigger() builds the DAG before it records anything.
    with pytest.raises(ScheduleTargetError, match="returned int, not a DAG"):
        schedules.trigger("nodag")
    assert len(schedules.runs("nodag")) == 1


def test_trigger_with_a_runtime_starts_a_manual_run(
    runtime: Runtime, wait_for: Callable[..., Any]
) -> None:
    schedules.create("adhoc", TARGET, cron="0 0 1 1 *", kwargs={"region": "apac"})
    workflow_id = schedules.trigger("adhoc")
    assert workflow_id.startswith("adhoc@manual-")
    wait_status(wait_for, workflow_id, TERMINAL)
    logical_time = parse_run_id(workflow_id).logical_time
    assert workflow.get_output(workflow_id) == f"report apac {stamp_of(logical_time)}"
    (run,) = schedules.runs("adhoc")
    assert run.kind == "manual" and run.status is WorkflowStatus.SUCCESSFUL
    assert schedules.get("adhoc").last_logical_time is None  # manual runs move no cursor


def test_run_scheduler_fires_in_real_time_and_stops_on_its_event(
    runtime: Runtime, wait_for: Callable[..., Any]
) -> None:
    schedules.create("tick", TARGET, every="1s")
    stop = threading.Event()
    thread = threading.Thread(target=schedules.run_scheduler, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: sum(r.status is WorkflowStatus.SUCCESSFUL for r in schedules.runs("tick")) >= 2,
            timeout=60,
            what="two scheduled runs to succeed",
        )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    runs = schedules.runs("tick", limit=1000)
    wait_for(
        lambda: all(status_of(r.workflow_id) in TERMINAL for r in runs),
        timeout=60,
        what="the runs in flight to end",
    )
    times = sorted(r.logical_time for r in runs)
    assert all(b - a == dt.timedelta(seconds=1) for a, b in itertools.pairwise(times))
