"""The trigger loop against a real database (SQLite file, PostgreSQL), with a fake clock.

No runtime here: loops start runs with a ``start_run`` that records them (and, where a
test needs active runs, writes a workflow row the way the engine would). The loop with
real workflows is in ``test_schedules_api.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from heliostat.scheduler.cron import ScheduleSpec, manual_run_id, run_id
from heliostat.storage.models import Schedule, ScheduleRunKind, Workflow
from heliostat.storage.models import ScheduleRun as ScheduleRunRow
from heliostat.storage.states import WorkflowStatus
from heliostat.workflows.schedule_store import FiredRun, ScheduleInfo, ScheduleStore
from heliostat.workflows.triggers import POLL_INTERVAL, STRANDED_GRACE, FakeClock, TriggerLoop

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 1, 0, 0, tzinfo=UTC)  # the New York fall-back day (UTC)
NO_GRACE = dt.timedelta(0)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("pg_schema_url")
        return make()
    return f"sqlite:///{tmp_path / 'schedules.db'}"


@pytest.fixture
def open_store(db_url: str) -> Iterator[Callable[[], ScheduleStore]]:
    """``open_store()`` -> a new store (own engine) on the test's database."""
    stores: list[ScheduleStore] = []

    def make() -> ScheduleStore:
        store = ScheduleStore.open(db_url)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], ScheduleStore]) -> ScheduleStore:
    return open_store()


class Recorder:
    """A ``start_run`` that records what it is given (thread-safe)."""

    def __init__(self) -> None:
        self.runs: list[FiredRun] = []
        self._lock = threading.Lock()

    def __call__(self, run: FiredRun) -> None:
        with self._lock:
            self.runs.append(run)

    def ids(self) -> list[str]:
        with self._lock:
            return [r.workflow_id for r in self.runs]


def add(
    store: ScheduleStore,
    name: str,
    now: dt.datetime,
    *,
    cron: str | None = None,
    every: dt.timedelta | None = None,
    timezone: str = "UTC",
    catchup: bool = False,
    max_active_runs: int = 1,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    kwargs: dict[str, Any] | None = None,
    replace: bool = False,
) -> ScheduleInfo:
    return store.upsert(
        name=name,
        target="jobs:build",
        spec=ScheduleSpec(cron=cron, interval=every, timezone=timezone, start=start, end=end),
        kwargs=kwargs or {},
        catchup=catchup,
        max_active_runs=max_active_runs,
        paused=False,
        now=now,
        replace=replace,
    )


def loop_of(store: ScheduleStore, clock: FakeClock, start_run: Any, **kw: Any) -> TriggerLoop:
    kw.setdefault("starting_grace", NO_GRACE)
    return TriggerLoop(store, clock=clock, start_run=start_run, resume_run=None, **kw)


def set_workflow(store: ScheduleStore, workflow_id: str, status: WorkflowStatus) -> None:
    """Write a workflow row in ``status``, as the engine would for a started run."""
    table: sa.Table = Workflow.__table__  # type: ignore[assignment]
    now = dt.datetime.now(UTC)
    with store.engine.begin() as conn:
        updated = conn.execute(
            table.update().where(table.c.workflow_id == workflow_id).values(status=status)
        )
        if updated.rowcount == 0:
            conn.execute(
                table.insert().values(
                    workflow_id=workflow_id,
                    status=status,
                    name="build",
                    created_at=now,
                    updated_at=now,
                    metadata={},
                    resume_count=0,
                )
            )


def claimed_rows(store: ScheduleStore) -> list[tuple[str, dt.datetime]]:
    table: sa.Table = ScheduleRunRow.__table__  # type: ignore[assignment]
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.schedule_name, table.c.logical_time).order_by(
                table.c.schedule_name, table.c.logical_time
            )
        ).all()
    return [(r[0], r[1]) for r in rows]


# --- exactly once ----------------------------------------------------------------------


def test_two_loops_fire_every_interval_of_a_day_exactly_once(
    open_store: Callable[[], ScheduleStore],
) -> None:
    clock = FakeClock(T0)
    first, second = open_store(), open_store()
    day_end = T0 + dt.timedelta(days=1)
    definitions: dict[str, dict[str, Any]] = {
        "quarter": {"cron": "*/15 * * * *"},
        "hourly-ny": {"cron": "0 * * * *", "timezone": "America/New_York"},
        "daily-ny": {"cron": "30 1 * * *", "timezone": "America/New_York"},
        "daily-berlin": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
        "every-7m": {"every": dt.timedelta(minutes=7)},
        "minutely": {"cron": "* * * * *", "catchup": True, "max_active_runs": 10},
    }
    for name, options in definitions.items():
        add(first, name, T0, **options)
    recorder = Recorder()
    loops = [loop_of(s, clock, recorder) for s in (first, second)]
    threads = [threading.Thread(target=loop.run_forever, daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        clock.wait_for_sleepers(2)
        while clock.now() < day_end:
            clock.advance(dt.timedelta(minutes=5))
            clock.wait_for_sleepers(2)  # both loops did their pass and sleep again
    finally:
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)

    expected = {
        run_id(name, t)
        for name, options in definitions.items()
        for t in ScheduleSpec(
            cron=options.get("cron"),
            interval=options.get("every"),
            timezone=options.get("timezone", "UTC"),
        ).fire_times_between(T0, day_end)
    }
    started = recorder.ids()
    assert Counter(started).most_common(1)[0][1] == 1, "an interval was started twice"
    assert set(started) == expected
    assert len(claimed_rows(first)) == len(expected)
    per_schedule = Counter(r.schedule for r in recorder.runs)
    assert per_schedule["hourly-ny"] == 24  # every real hour, through the repeated one
    assert per_schedule["daily-ny"] == 1  # 01:30 EDT only, not again at 01:30 EST
    assert per_schedule["quarter"] == 96
    assert per_schedule["minutely"] == 24 * 60


def test_a_second_claim_of_an_interval_is_refused(store: ScheduleStore) -> None:
    add(store, "hourly", T0, cron="0 * * * *")
    table: sa.Table = ScheduleRunRow.__table__  # type: ignore[assignment]
    row = {
        "workflow_id": "other-id",
        "schedule_name": "hourly",
        "logical_time": utc(2026, 11, 1, 1),
        "kind": ScheduleRunKind.SCHEDULED,
        "fired_at": T0,
    }
    with store.engine.begin() as conn:
        conn.execute(table.insert().values(row))
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(table.insert().values({**row, "workflow_id": "another-id"}))
    # A manual run at the same instant is not the interval's run.
    with store.engine.begin() as conn:
        conn.execute(
            table.insert().values({**row, "workflow_id": "m", "kind": ScheduleRunKind.MANUAL})
        )


def test_an_interval_claimed_elsewhere_is_not_started_here(store: ScheduleStore) -> None:
    clock = FakeClock(T0)
    add(store, "hourly", T0, cron="0 * * * *", max_active_runs=5)
    # A manual run at the same instant, started by its trigger: not a conflict.
    store.record_manual("hourly", at=T0, workflow_id="unrelated", taken_at=T0)
    store.mark_started([("unrelated", T0, None)])
    table: sa.Table = ScheduleRunRow.__table__  # type: ignore[assignment]
    with store.engine.begin() as conn:  # another scheduler got 01:00 but its cursor lags
        conn.execute(
            table.insert().values(
                workflow_id=run_id("hourly", utc(2026, 11, 1, 1)),
                schedule_name="hourly",
                logical_time=utc(2026, 11, 1, 1),
                kind=ScheduleRunKind.SCHEDULED,
                fired_at=T0,
                started_at=T0,
            )
        )
    recorder = Recorder()
    clock.set(utc(2026, 11, 1, 1, 0, 30))
    assert loop_of(store, clock, recorder).run_once() == []
    assert recorder.runs == []
    assert store.get("hourly").next_fire_time == utc(2026, 11, 1, 2)


# --- catch-up --------------------------------------------------------------------------


def test_catch_up_after_a_three_hour_outage(store: ScheduleStore) -> None:
    clock = FakeClock(T0)
    add(store, "backfill", T0, cron="*/15 * * * *", catchup=True, max_active_runs=100)
    add(store, "latest", T0, cron="*/15 * * * *", catchup=False)
    recorder = Recorder()
    loop = loop_of(store, clock, recorder)
    clock.set(utc(2026, 11, 1, 0, 15))
    assert [r.workflow_id for r in loop.run_once()] == [
        "backfill@2026-11-01T00:15:00Z",
        "latest@2026-11-01T00:15:00Z",
    ]
    clock.advance(dt.timedelta(hours=3, minutes=5))  # down from 00:15 to 03:20
    fired = loop.run_once()
    backfill = [r.logical_time for r in fired if r.schedule == "backfill"]
    latest = [r.logical_time for r in fired if r.schedule == "latest"]
    assert backfill == [utc(2026, 11, 1, 0, 30) + dt.timedelta(minutes=15 * k) for k in range(12)]
    assert latest == [utc(2026, 11, 1, 3, 15)]
    assert loop.run_once() == []
    assert store.get("backfill").next_fire_time == utc(2026, 11, 1, 3, 30)
    assert store.get("latest").next_fire_time == utc(2026, 11, 1, 3, 30)
    assert store.get("latest").last_logical_time == utc(2026, 11, 1, 3, 15)


def test_catch_up_with_one_slot_fires_the_missed_intervals_one_by_one(
    store: ScheduleStore,
) -> None:
    clock = FakeClock(T0)
    add(store, "hourly", T0, cron="0 * * * *", catchup=True, max_active_runs=1)

    def start_run(run: FiredRun) -> None:
        set_workflow(store, run.workflow_id, WorkflowStatus.RUNNING)

    loop = loop_of(store, clock, start_run)
    clock.set(utc(2026, 11, 1, 3, 30))  # 01:00, 02:00 and 03:00 are due
    fired: list[dt.datetime] = []
    for _ in range(3):
        fired += [r.logical_time for r in loop.run_once()]
        assert loop.run_once() == [], "the next interval waits while one run is active"
        set_workflow(store, run_id("hourly", fired[-1]), WorkflowStatus.SUCCESSFUL)
    assert fired == [utc(2026, 11, 1, h) for h in (1, 2, 3)]
    assert loop.run_once() == []


# --- max_active_runs -------------------------------------------------------------------


@pytest.mark.parametrize("status", [WorkflowStatus.PENDING, WorkflowStatus.RESUMABLE])
def test_max_active_runs_counts_pending_running_and_resumable_runs(
    store: ScheduleStore, status: WorkflowStatus
) -> None:
    clock = FakeClock(T0)
    add(store, "q", T0, cron="*/15 * * * *", catchup=True, max_active_runs=2)

    def start_run(run: FiredRun) -> None:
        set_workflow(store, run.workflow_id, status)

    loop = loop_of(store, clock, start_run)
    clock.set(utc(2026, 11, 1, 1, 0))  # four intervals due
    first = loop.run_once()
    assert [r.logical_time for r in first] == [utc(2026, 11, 1, 0, 15), utc(2026, 11, 1, 0, 30)]
    assert loop.run_once() == []
    assert store.get("q").next_fire_time == utc(2026, 11, 1, 0, 45)  # waiting, not dropped
    set_workflow(store, first[0].workflow_id, WorkflowStatus.FAILED)
    assert [r.logical_time for r in loop.run_once()] == [utc(2026, 11, 1, 0, 45)]
    set_workflow(store, first[1].workflow_id, WorkflowStatus.CANCELED)
    assert [r.logical_time for r in loop.run_once()] == [utc(2026, 11, 1, 1, 0)]


def test_a_started_run_counts_as_active_until_its_workflow_appears(
    store: ScheduleStore,
) -> None:
    clock = FakeClock(T0)
    add(store, "q", T0, cron="*/15 * * * *", catchup=True, max_active_runs=1)
    recorder = Recorder()  # starts nothing that the database would see
    loop = loop_of(store, clock, recorder, starting_grace=dt.timedelta(seconds=30))
    clock.set(utc(2026, 11, 1, 0, 30))
    assert len(loop.run_once()) == 1
    assert loop.run_once() == []  # the run has no workflow row yet: still "starting"
    clock.advance(dt.timedelta(seconds=31))  # it never appeared: it no longer counts
    assert len(loop.run_once()) == 1


# --- pause, edit, end ------------------------------------------------------------------


@pytest.mark.parametrize("catchup", [True, False])
def test_a_paused_schedule_fires_nothing_and_catches_up_on_resume(
    store: ScheduleStore, catchup: bool
) -> None:
    clock = FakeClock(T0)
    add(store, "hourly", T0, cron="0 * * * *", catchup=catchup, max_active_runs=10)
    loop = loop_of(store, clock, Recorder())
    store.set_paused("hourly", True, now=clock.now())
    clock.set(utc(2026, 11, 1, 3, 30))
    assert loop.run_once() == []
    assert store.get("hourly").paused
    store.set_paused("hourly", False, now=clock.now())
    fired = [r.logical_time for r in loop.run_once()]
    expected = [utc(2026, 11, 1, h) for h in (1, 2, 3)] if catchup else [utc(2026, 11, 1, 3)]
    assert fired == expected


def test_editing_a_schedule_never_refires_an_interval(store: ScheduleStore) -> None:
    clock = FakeClock(T0)
    add(store, "job", T0, cron="0 * * * *")
    recorder = Recorder()
    loop = loop_of(store, clock, recorder)
    clock.set(utc(2026, 11, 1, 1, 10))
    assert [r.logical_time for r in loop.run_once()] == [utc(2026, 11, 1, 1)]
    # New kwargs, same timing: nothing fires again, the next interval stays.
    edited = add(store, "job", clock.now(), cron="0 * * * *", kwargs={"x": 1}, replace=True)
    assert edited.last_logical_time == utc(2026, 11, 1, 1)
    assert edited.next_fire_time == utc(2026, 11, 1, 2)
    assert loop.run_once() == []
    # New timing that also matches 01:00 and 00:30: it starts after the edit, no backfill.
    edited = add(store, "job", clock.now(), cron="0,30 * * * *", catchup=True, replace=True)
    assert edited.next_fire_time == utc(2026, 11, 1, 1, 30)
    assert loop.run_once() == []
    # Even recreated with a start in the past, the cursor holds.
    edited = add(
        store, "job", clock.now(), cron="*/30 * * * *", start=T0, catchup=True, replace=True
    )
    assert edited.next_fire_time == utc(2026, 11, 1, 1, 30)
    clock.set(utc(2026, 11, 1, 1, 30))
    assert [r.logical_time for r in loop.run_once()] == [utc(2026, 11, 1, 1, 30)]
    assert Counter(recorder.ids()).most_common(1)[0][1] == 1


def test_a_new_schedule_with_a_past_start_backfills_only_with_catchup(
    store: ScheduleStore,
) -> None:
    clock = FakeClock(utc(2026, 11, 1, 3, 10))
    add(store, "back", clock.now(), cron="0 * * * *", start=T0, catchup=True, max_active_runs=9)
    add(store, "noback", clock.now(), cron="0 * * * *", start=T0)
    fired = loop_of(store, clock, Recorder()).run_once()
    assert [r.logical_time.hour for r in fired if r.schedule == "back"] == [0, 1, 2, 3]
    assert [r.logical_time.hour for r in fired if r.schedule == "noback"] == [3]


def test_end_stops_a_schedule(store: ScheduleStore) -> None:
    clock = FakeClock(T0)
    add(store, "short", T0, cron="0 * * * *", end=utc(2026, 11, 1, 2), catchup=True)
    loop = loop_of(store, clock, Recorder(), batch_size=1)
    fired = []
    for hour in range(1, 5):
        clock.set(utc(2026, 11, 1, hour, 1))
        fired += [r.logical_time for r in loop.run_once()]
    assert fired == [utc(2026, 11, 1, 1), utc(2026, 11, 1, 2)]
    assert store.get("short").next_fire_time is None


# --- failures and recovery ---------------------------------------------------------------


def test_a_run_that_cannot_start_is_recorded_and_the_loop_goes_on(
    store: ScheduleStore,
) -> None:
    clock = FakeClock(T0)
    add(store, "bad", T0, cron="0 * * * *")
    add(store, "good", T0, cron="0 * * * *")

    def start_run(run: FiredRun) -> None:
        if run.schedule == "bad":
            raise ValueError("target 'jobs:build' returned int, not a DAG\nsecond line")

    loop = loop_of(store, clock, start_run)
    clock.set(utc(2026, 11, 1, 1))
    assert {r.schedule for r in loop.run_once()} == {"bad", "good"}
    (bad,) = store.runs("bad")
    assert bad.error == "ValueError: target 'jobs:build' returned int, not a DAG"
    assert bad.started_at == utc(2026, 11, 1, 1) and bad.status is None
    (good,) = store.runs("good")
    assert good.error is None and good.started_at == utc(2026, 11, 1, 1)
    clock.advance(dt.timedelta(hours=1, minutes=1))
    assert loop.recover() == []  # a failed run is done, not stranded
    assert {r.schedule for r in loop.run_once()} == {"bad", "good"}


def test_a_run_claimed_by_a_loop_that_died_is_started_by_the_next(
    open_store: Callable[[], ScheduleStore],
) -> None:
    clock = FakeClock(T0)
    dead, alive = open_store(), open_store()
    add(dead, "hourly", T0, cron="0 * * * *")
    clock.set(utc(2026, 11, 1, 1, 0, 5))
    loop = loop_of(dead, clock, Recorder())
    # The dead loop's last act: the claim committed, nothing started.
    claim = dead.claim_due(
        clock.now(),
        planner=loop._planner(clock.now()),
        limit=10,
        starting_grace=NO_GRACE,
    )
    assert [r.workflow_id for r in claim.fired] == ["hourly@2026-11-01T01:00:00Z"]
    recorder = Recorder()
    survivor = loop_of(alive, clock, recorder)
    assert survivor.run_once() == []  # the interval is taken
    assert survivor.recover() == []  # within the grace period the claimer may be alive
    clock.advance(dt.timedelta(seconds=31))
    stranded = survivor.recover()
    assert [s.run.workflow_id for s in stranded] == ["hourly@2026-11-01T01:00:00Z"]
    assert recorder.ids() == ["hourly@2026-11-01T01:00:00Z"]
    assert survivor.recover() == []
    (run,) = alive.runs("hourly")
    assert run.started_at == clock.now()


def test_recover_resumes_scheduled_runs_whose_driver_died(store: ScheduleStore) -> None:
    clock = FakeClock(T0)
    add(store, "hourly", T0, cron="0 * * * *")
    clock.set(utc(2026, 11, 1, 1))
    resumed: list[str] = []
    loop = TriggerLoop(
        store,
        clock=clock,
        start_run=lambda run: set_workflow(store, run.workflow_id, WorkflowStatus.RUNNING),
        resume_run=resumed.append,
        starting_grace=NO_GRACE,
    )
    (run,) = loop.run_once()
    # RUNNING without a lease row: nobody drives it.
    assert [s.run.workflow_id for s in loop.recover() if s.resume] == [run.workflow_id]
    assert resumed == [run.workflow_id]
    set_workflow(store, run.workflow_id, WorkflowStatus.SUCCESSFUL)
    assert loop.recover() == []


# --- manual runs ---------------------------------------------------------------------------


def test_a_manual_run_triggered_elsewhere_is_started_at_the_next_poll(
    open_store: Callable[[], ScheduleStore],
    wait_for: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="heliostat.schedules")
    clock = FakeClock(T0)
    store, shell = open_store(), open_store()  # the daemon's, and `schedule trigger`'s
    add(store, "nightly", T0, cron="0 3 * * *")
    recorder = Recorder()
    loop = loop_of(store, clock, recorder)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        clock.wait_for_sleepers(1)
        assert clock.deadlines == [T0 + POLL_INTERVAL]
        # Another process records the request (it does not wake this loop) and exits.
        workflow_id = manual_run_id("nightly", clock.now())
        shell.record_manual("nightly", at=clock.now(), workflow_id=workflow_id)
        shell.close()
        clock.advance(POLL_INTERVAL)  # the loop's next poll, well before any sweep
        wait_for(lambda: recorder.ids() == [workflow_id], what="the loop to start the run")
        clock.wait_for_sleepers(1)
    finally:
        loop.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    (run,) = recorder.runs
    assert run.kind == ScheduleRunKind.MANUAL and run.logical_time == T0
    (row,) = store.runs("nightly")
    assert row.started_at == T0 + POLL_INTERVAL and row.error is None
    messages = [r.getMessage() for r in caplog.records]
    assert f"schedule 'nightly': started manual run {workflow_id} [pass-2]" in messages
    assert not [m for m in messages if "never started" in m]


def race(*calls: Callable[[], object]) -> None:
    """Run ``calls`` in threads released together."""
    barrier = threading.Barrier(len(calls))

    def go(call: Callable[[], object]) -> None:
        barrier.wait(timeout=10)
        call()

    threads = [threading.Thread(target=go, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


def test_two_loops_start_each_manual_run_once(open_store: Callable[[], ScheduleStore]) -> None:
    clock = FakeClock(T0 + dt.timedelta(minutes=1))
    first, second, shell = open_store(), open_store(), open_store()
    add(shell, "adhoc", T0, cron="0 3 * * *")
    recorder = Recorder()
    loops = [loop_of(s, clock, recorder) for s in (first, second)]
    asked: list[str] = []
    for k in range(10):
        at = T0 + dt.timedelta(seconds=k)
        asked.append(manual_run_id("adhoc", at))
        shell.record_manual("adhoc", at=at, workflow_id=asked[-1])
        race(*(loop.run_once for loop in loops))  # both passes at once
    for loop in loops:
        assert loop.run_once() == []
    clock.advance(STRANDED_GRACE * 2)
    for loop in loops:
        assert loop.recover() == []
    assert Counter(recorder.ids()) == Counter(asked)  # every one, none twice
    assert all(r.started_at is not None for r in shell.runs("adhoc"))


@pytest.mark.parametrize("taker", ["a loop", "the triggering process"])
def test_a_manual_run_taken_and_not_started_is_stranded_only_after_the_grace(
    open_store: Callable[[], ScheduleStore], taker: str
) -> None:
    clock = FakeClock(T0)
    dead, alive = open_store(), open_store()
    add(dead, "adhoc", T0, cron="0 3 * * *")
    workflow_id = manual_run_id("adhoc", T0)
    clock.advance(1)
    if taker == "a loop":  # its last act: the request taken, nothing started
        dead.record_manual("adhoc", at=T0, workflow_id=workflow_id)
        taken = dead.take_manual(clock.now(), limit=10)
        assert [r.workflow_id for r in taken] == [workflow_id]
    else:  # `trigger` with a runtime, killed before it started the run
        dead.record_manual("adhoc", at=T0, workflow_id=workflow_id, taken_at=clock.now())
    recorder = Recorder()
    survivor = loop_of(alive, clock, recorder)
    assert survivor.run_once() == []  # taken: whoever took it may be alive
    assert survivor.recover() == []
    clock.advance(STRANDED_GRACE + dt.timedelta(seconds=1))
    assert [s.run.workflow_id for s in survivor.recover()] == [workflow_id]
    assert recorder.ids() == [workflow_id]
    assert survivor.recover() == [] and survivor.run_once() == []


# --- sleeping and waking -------------------------------------------------------------------


def test_the_loop_sleeps_until_the_next_fire_time_and_wakes_on_a_change(
    store: ScheduleStore, wait_for: Callable[..., Any]
) -> None:
    clock = FakeClock(utc(2026, 11, 1, 0, 0, 1))
    add(store, "hourly", clock.now(), cron="0 * * * *")
    recorder = Recorder()
    loop = loop_of(store, clock, recorder, poll_interval=dt.timedelta(hours=2))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        clock.wait_for_sleepers(1)
        assert clock.deadlines == [utc(2026, 11, 1, 1)]  # no polling before it is due
        add(store, "soon", clock.now(), cron="*/10 * * * *")  # this store wakes the loop
        wait_for(
            lambda: clock.deadlines == [utc(2026, 11, 1, 0, 10)],
            what="the loop to sleep until the new schedule's first fire time",
        )
        clock.set(utc(2026, 11, 1, 0, 10))  # times the sleeper out at once
        clock.wait_for_sleepers(1)
        assert recorder.ids() == ["soon@2026-11-01T00:10:00Z"]
        assert clock.deadlines == [utc(2026, 11, 1, 0, 20)]
    finally:
        loop.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_the_loop_polls_when_nothing_is_scheduled(store: ScheduleStore) -> None:
    clock = FakeClock(T0)
    loop = loop_of(store, clock, Recorder())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        clock.wait_for_sleepers(1)
        assert clock.deadlines == [T0 + dt.timedelta(seconds=5)]
    finally:
        loop.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_the_database_refuses_a_schedule_with_both_or_neither_timing(
    store: ScheduleStore,
) -> None:
    table: sa.Table = Schedule.__table__  # type: ignore[assignment]
    row = {
        "name": "x",
        "target": "jobs:build",
        "timezone": "UTC",
        "kwargs": {},
        "catchup": False,
        "max_active_runs": 1,
        "paused": False,
        "created_at": T0,
        "updated_at": T0,
    }
    for timing in ({}, {"cron": "* * * * *", "interval_seconds": 60}):
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(table.insert().values({**row, **timing}))
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(table.insert().values({**row, "cron": "@daily", "max_active_runs": 0}))
