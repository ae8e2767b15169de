"""The ETL example's decisions, without processes: run ids, --crash-at, the load log."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from examples.etl.data import days_ending
from examples.etl.pipeline import (
    build_dag,
    crash_refusal,
    forget_loads,
    fresh_workflow_id,
    step_ids,
)
from heliostat.workflows import compile_dag

DAYS = days_ending(datetime(2026, 11, 21).date(), 3)


def test_step_ids_are_the_dags_task_ids(tmp_path: Path) -> None:
    compiled = compile_dag(build_dag(tmp_path, DAYS))
    assert sorted(compiled.graph.nodes) == sorted(step_ids(DAYS))


def test_fresh_workflow_id_is_the_utc_start_time_and_skips_taken_ids() -> None:
    berlin = timezone(timedelta(hours=1))
    now = datetime(2026, 11, 21, 3, 4, 5, tzinfo=berlin)
    taken = {"etl-x-20261121T020405Z", "etl-x-20261121T020405Z-2"}
    assert fresh_workflow_id("etl-x", now, lambda wid: False) == "etl-x-20261121T020405Z"
    assert fresh_workflow_id("etl-x", now, taken.__contains__) == "etl-x-20261121T020405Z-3"


def test_crash_at_is_allowed_on_a_new_run_and_on_a_step_still_to_run() -> None:
    known = step_ids(DAYS)
    assert crash_refusal("load-2026-11-20", known, "w", None, None) is None
    assert crash_refusal("load-2026-11-20", known, "w", "RESUMABLE", "IN_DOUBT") is None
    assert crash_refusal("report", known, "w", "FAILED", "FAILED") is None


def test_crash_at_is_refused_where_it_cannot_take_effect() -> None:
    known = step_ids(DAYS)
    unknown = crash_refusal("load-1999-01-01", known, "w", None, None)
    assert unknown is not None and "names no step" in unknown and "report" in unknown
    done = crash_refusal("load-2026-11-20", known, "w", "SUCCESSFUL", "SUCCESSFUL")
    assert done is not None and "already succeeded" in done
    committed = crash_refusal("load-2026-11-20", known, "w", "RESUMABLE", "SUCCESSFUL")
    assert committed is not None and "already committed" in committed
    canceled = crash_refusal("report", known, "w", "CANCELED", None)
    assert canceled is not None and "canceled" in canceled


def test_forget_loads_drops_only_that_runs_rows(tmp_path: Path) -> None:
    db_path = str(tmp_path / "warehouse.sqlite")
    forget_loads(db_path, "w")  # creates the schema
    keys = ["w:load-a", "w:load-b", "w2:load-a", "w_x:load-a", "%:load-a"]
    with sqlite3.connect(db_path) as db:
        db.executemany(
            "INSERT INTO load_log (idempotency_key, day, rows, loaded_at) VALUES (?, '', 1, 0)",
            [(k,) for k in keys],
        )
    forget_loads(db_path, "w")
    forget_loads(db_path, "%")
    with sqlite3.connect(db_path) as db:
        left = sorted(k for (k,) in db.execute("SELECT idempotency_key FROM load_log"))
    assert left == ["w2:load-a", "w_x:load-a"]
