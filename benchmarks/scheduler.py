"""Scheduler overhead: 1,000 schedules with a 1-minute cron over a simulated day.

Prints one JSON object. A :class:`~heliostat.workflows.triggers.TriggerLoop` runs
against a fresh SQLite database (every COMMIT fsynced, as in production) or the
database named by ``--db-url``, with a fake clock that moves one minute per tick; its
``start_run`` only records the run, so the figures are the scheduler's own cost
(claiming, bookkeeping, the next-wake query), not the runs'. Figures:

* ``scheduler_s``: wall time of all ticks (``run_once`` + the next-wake query the daemon
  makes after each pass), ``ms_per_fired_run`` = that / ``fired_runs``. Target: < 1 ms.
* ``tick_ms_median`` / ``tick_ms_p95``: one tick (all schedules due at once);
  ``tick_ms_median_first_hour`` / ``_last_hour``: whether it stays flat as the runs
  table grows (1.44 million rows after the full day).
* ``db_rows_written_per_tick`` / ``db_transactions_per_tick``: rows inserted or updated,
  and commits, per tick (from SQLAlchemy cursor events).
* ``next_fire_time_us_utc`` / ``next_fire_time_us_zoned``: computing one next fire time
  (``ScheduleSpec.next_fire_time``) of a 1-minute cron in UTC and in America/New_York;
  ``plan_us``: planning one due schedule (``plan_fires``).
* ``exactly_once``: every (schedule, minute) fired exactly once.

Usage: ``python benchmarks/scheduler.py [--schedules 1000] [--hours 24] [--db-url URL]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from heliostat.scheduler.cron import ScheduleSpec, plan_fires
from heliostat.workflows.schedule_store import FiredRun, ScheduleStore
from heliostat.workflows.triggers import FakeClock, TriggerLoop

T0 = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)


class _Recorder:
    def __init__(self) -> None:
        self.count = 0
        self.ids: set[str] = set()

    def __call__(self, run: FiredRun) -> None:
        self.count += 1
        self.ids.add(run.workflow_id)


class _Writes:
    """Counts rows updated or deleted, and commits, from the engine's events. (Inserted
    rows are counted from the table: an INSERT ... RETURNING reports no rowcount.)"""

    def __init__(self, engine: sa.Engine) -> None:
        self.rows = 0
        self.commits = 0
        sa.event.listen(engine, "after_cursor_execute", self._after)
        sa.event.listen(engine, "commit", self._commit)

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.lstrip()[:6].upper()
        if verb in ("UPDATE", "DELETE") and cursor.rowcount and cursor.rowcount > 0:
            self.rows += cursor.rowcount

    def _commit(self, conn: Any) -> None:
        self.commits += 1


def _per_call_us(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _arithmetic() -> dict[str, float]:
    utc = ScheduleSpec(cron="* * * * *")
    zoned = ScheduleSpec(cron="* * * * *", timezone="America/New_York")
    after = T0 + dt.timedelta(seconds=30)
    return {
        "next_fire_time_us_utc": round(_per_call_us(lambda: utc.next_fire_time(after), 5000), 1),
        "next_fire_time_us_zoned": round(
            _per_call_us(lambda: zoned.next_fire_time(after), 5000), 1
        ),
        "plan_us": round(
            _per_call_us(
                lambda: plan_fires(
                    utc, next_due=T0, cursor=None, now=after, catchup=False, slots=1
                ),
                5000,
            ),
            1,
        ),
    }


def run(schedules: int, hours: float, db_url: str) -> dict[str, Any]:
    store = ScheduleStore.open(db_url)
    try:
        spec = ScheduleSpec(cron="* * * * *")
        for i in range(schedules):
            store.upsert(
                name=f"s{i:05d}",
                target="benchmarks.scheduler:job",
                spec=spec,
                kwargs={},
                catchup=False,
                max_active_runs=1,
                paused=False,
                now=T0,
                replace=False,
            )
        clock = FakeClock(T0)
        recorder = _Recorder()
        loop = TriggerLoop(store, clock=clock, start_run=recorder, resume_run=None)
        writes = _Writes(store.engine)
        ticks = int(hours * 60)
        tick_s: list[float] = []
        for _ in range(ticks):
            clock.advance(dt.timedelta(minutes=1))
            start = time.perf_counter()
            loop.run_once()
            store.next_fire_after(clock.now())  # what run_forever asks before sleeping
            tick_s.append(time.perf_counter() - start)
        total = sum(tick_s)
        expected = schedules * ticks
        ordered = sorted(tick_s)
        inserted = sum(store.run_counts().values())
        return {
            "schedules": schedules,
            "hours": hours,
            "ticks": ticks,
            "fired_runs": recorder.count,
            "exactly_once": recorder.count == expected == len(recorder.ids) == inserted,
            "scheduler_s": round(total, 3),
            "ms_per_fired_run": round(total / max(recorder.count, 1) * 1e3, 4),
            "tick_ms_median": round(statistics.median(tick_s) * 1e3, 2),
            "tick_ms_p95": round(ordered[int(0.95 * (len(ordered) - 1))] * 1e3, 2),
            # Flat over the run, or growing with the runs table?
            "tick_ms_median_first_hour": round(statistics.median(tick_s[:60]) * 1e3, 2),
            "tick_ms_median_last_hour": round(statistics.median(tick_s[-60:]) * 1e3, 2),
            "db_rows_written_per_tick": round((writes.rows + inserted) / ticks, 1),
            "db_transactions_per_tick": round(writes.commits / ticks, 2),
        }
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--db-url", default=None, help="default: SQLite in a temporary dir")
    args = parser.parse_args(argv)
    home = tempfile.mkdtemp(prefix="heliostat-schedbench-")
    try:
        url = args.db_url or f"sqlite:///{Path(home) / 'heliostat.db'}"
        print(f"scheduler benchmark: {args.schedules} schedules, {args.hours} h", file=sys.stderr)
        started = time.perf_counter()
        result = {
            **run(args.schedules, args.hours, url),
            **_arithmetic(),
            "db": sa.make_url(url).get_backend_name(),
            "wall_s": 0.0,
        }
        result["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
