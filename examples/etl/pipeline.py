"""A durable ETL workflow on heliostat: extract, clean, join, aggregate, load, report.

Run it with ``make demo`` or ``python -m examples.etl.pipeline [--days N]``.

The DAG, per day: ``generate`` (writes the raw CSV partition, standing in for an
upstream drop) -> ``extract`` (``pyarrow.csv``) -> ``clean`` (drops rows without a
customer or with a non-positive quantity) -> ``enrich`` (joins the customer dimension,
computes revenue) -> ``aggregate`` (revenue and orders per day and region) -> ``load``.
A final ``report`` step reads the warehouse.

``load`` has a side effect, so it is declared ``idempotent=False``: if a crash leaves
it in doubt, heliostat does not re-run it blindly but asks ``load_in_doubt`` with the
step's idempotency key. The load writes its rows *and* a ``load_log`` row keyed by that
idempotency key in one SQLite transaction, so the hook can tell for sure whether the
load happened. That is a non-idempotent step done right.

Crash and resume::

    python -m examples.etl.pipeline --crash-at load-2026-11-20   # the driver dies
    python -m examples.etl.pipeline                              # resumes, same id

The second run finds the workflow in the lineage database, skips every committed step
(their outputs load from checkpoints) and finishes the rest.

Outputs go under ``$HELIOSTAT_HOME`` (default ``~/.heliostat``): the lineage database
``heliostat.db``, checkpoints in ``checkpoints/``, and ``examples/etl/`` for the raw
partitions and the warehouse.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

import heliostat as hs
from examples.etl.data import CUSTOMERS, days_ending, generate_day
from heliostat import workflow

__all__ = ["build_dag", "main"]

_CRASH_ENV = "HELIOSTAT_ETL_CRASH_AT"
_DRIVER_ENV = "HELIOSTAT_ETL_DRIVER_PID"


def workdir() -> Path:
    home = Path(os.environ.get("HELIOSTAT_HOME", Path.home() / ".heliostat"))
    return home / "examples" / "etl"


def _maybe_crash() -> None:
    """Kill the driver when this step is the one named by --crash-at (once)."""
    ctx = workflow.get_context()
    if os.environ.get(_CRASH_ENV) != ctx.task_id:
        return
    marker = workdir() / f".crashed-{ctx.workflow_id}-{ctx.task_id}"
    if marker.exists():
        return
    marker.touch()
    print(f"[etl] --crash-at {ctx.task_id}: killing the driver now", flush=True)
    os.kill(int(os.environ[_DRIVER_ENV]), signal.SIGKILL)
    time.sleep(30)  # the node goes down with its driver


@hs.remote
def generate(root: str, day: str) -> str:
    _maybe_crash()
    return str(generate_day(Path(root), day))


@hs.remote
def extract(path: str) -> pa.Table:
    _maybe_crash()
    return pacsv.read_csv(path)


@hs.remote
def clean(table: pa.Table) -> pa.Table:
    _maybe_crash()
    ok = pc.and_(pc.is_valid(table["customer_id"]), pc.greater(table["quantity"], 0))
    return table.filter(ok)


@hs.remote
def enrich(table: pa.Table) -> pa.Table:
    _maybe_crash()
    customers = pa.table(
        {
            "customer_id": pa.array(list(CUSTOMERS), pa.int64()),
            "region": pa.array(list(CUSTOMERS.values())),
        }
    )
    joined = table.join(customers, "customer_id", join_type="inner")
    revenue = pc.multiply(pc.cast(joined["quantity"], pa.float64()), joined["unit_price"])
    return joined.append_column("revenue", revenue)


@hs.remote
def aggregate(table: pa.Table) -> pa.Table:
    _maybe_crash()
    grouped = table.group_by(["day", "region"]).aggregate(
        [("revenue", "sum"), ("order_id", "count")]
    )
    return grouped.rename_columns(["day", "region", "revenue", "orders"])


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS daily_revenue ("
    " day TEXT NOT NULL, region TEXT NOT NULL, revenue REAL NOT NULL,"
    " orders INTEGER NOT NULL, PRIMARY KEY (day, region));"
    "CREATE TABLE IF NOT EXISTS load_log ("
    " idempotency_key TEXT PRIMARY KEY, day TEXT NOT NULL, rows INTEGER NOT NULL,"
    " loaded_at REAL NOT NULL);"
)


@hs.remote
def load(db_path: str, table: pa.Table) -> int:
    """Write the day's aggregate and a load_log row, in one transaction."""
    key = workflow.get_context().idempotency_key
    rows = list(
        zip(*(table[c].to_pylist() for c in ("day", "region", "revenue", "orders")), strict=True)
    )
    with sqlite3.connect(db_path) as db:
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO daily_revenue (day, region, revenue, orders) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (day, region) DO UPDATE SET revenue = excluded.revenue, "
            "orders = excluded.orders",
            rows,
        )
        db.execute(
            "INSERT INTO load_log (idempotency_key, day, rows, loaded_at) VALUES (?, ?, ?, ?)",
            (key, rows[0][0] if rows else "", len(rows), time.time()),
        )
    _maybe_crash()  # a crash here leaves the load done but not committed: in doubt
    return len(rows)


def load_in_doubt_hook(db_path: str) -> Any:
    """The on_in_doubt hook of ``load``: did the load with this key happen?"""

    def hook(idempotency_key: str) -> Any:
        with sqlite3.connect(db_path) as db:
            db.executescript(_SCHEMA)
            row = db.execute(
                "SELECT rows FROM load_log WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        if row is not None:
            print(f"[etl] {idempotency_key} was loaded before the crash: not loading again")
            return row[0]
        print(f"[etl] {idempotency_key} never reached the warehouse: loading it")
        return workflow.RERUN

    return hook


@hs.remote
def report(db_path: str, *loaded: int) -> str:
    _maybe_crash()
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT day, region, ROUND(revenue, 2), orders FROM daily_revenue ORDER BY day, region"
        ).fetchall()
    lines = [f"{'day':<12}{'region':<8}{'revenue':>14}{'orders':>9}"]
    lines += [f"{d:<12}{r:<8}{rev:>14,.2f}{o:>9}" for d, r, rev, o in rows]
    lines.append(f"({sum(loaded)} rows loaded by this workflow)")
    return "\n".join(lines)


def build_dag(root: Path, days: list[str]) -> Any:
    """The workflow's DAG: one pipeline per day, then a report over all of them."""
    db_path = str(root / "warehouse.sqlite")
    loads = []
    for day in days:

        def step(fn: Any, name: str, day: str = day) -> Any:
            return fn.options(**workflow.options(task_id=f"{name}-{day}"))

        raw = step(generate, "generate").bind(str(root), day)
        table = step(aggregate, "aggregate").bind(
            step(enrich, "enrich").bind(
                step(clean, "clean").bind(step(extract, "extract").bind(raw))
            )
        )
        loads.append(
            load.options(
                **workflow.options(
                    task_id=f"load-{day}",
                    idempotent=False,
                    on_in_doubt=load_in_doubt_hook(db_path),
                )
            ).bind(db_path, table)
        )
    return report.options(**workflow.options(task_id="report")).bind(db_path, *loads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5, help="number of daily partitions")
    parser.add_argument("--last-day", default="2026-11-21", help="the newest day (ISO date)")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--workflow-id", default=None, help="default: etl-{last day}-{days}d")
    parser.add_argument(
        "--crash-at",
        default=None,
        metavar="TASK_ID",
        help="kill the driver when this step runs (e.g. load-2026-11-20), to try resume",
    )
    args = parser.parse_args(argv)

    root = workdir()
    root.mkdir(parents=True, exist_ok=True)
    days = days_ending(date.fromisoformat(args.last_day), args.days)
    workflow_id = args.workflow_id or f"etl-{args.last_day}-{args.days}d"
    if args.crash_at:
        os.environ[_CRASH_ENV] = args.crash_at
        os.environ[_DRIVER_ENV] = str(os.getpid())

    redraw = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    shown = {"at": 0.0, "done": -1}

    def progress(done: int, total: int, failed: int) -> None:
        text = f"[etl] {workflow_id}: {done}/{total} steps done"
        if redraw:  # a terminal: one line, redrawn in place
            print(f"\r{text}", end="", flush=True)
            return
        now = time.monotonic()  # a log or a pipe: plain lines, about one a second
        if done != shown["done"] and (done == total or now - shown["at"] >= 1.0):
            shown.update(at=now, done=done)
            print(text, flush=True)

    started = time.perf_counter()
    hs.init(num_cpus=args.num_cpus)
    try:
        previous = None
        try:
            previous = workflow.get_status(workflow_id)
        except KeyError:
            pass
        if previous is not None:
            print(f"[etl] workflow {workflow_id} exists ({previous}): resuming it")
        output = workflow.run(build_dag(root, days), workflow_id=workflow_id, on_progress=progress)
        if redraw:
            print()
        status = workflow.get_status(workflow_id)
    finally:
        hs.shutdown()
    print(output)
    home = Path(os.environ.get("HELIOSTAT_HOME", Path.home() / ".heliostat"))
    print(
        f"\n[etl] workflow {workflow_id}: {status} in {time.perf_counter() - started:.2f} s\n"
        f"[etl] raw partitions: {root / 'raw'}\n"
        f"[etl] warehouse:      {root / 'warehouse.sqlite'}\n"
        f"[etl] lineage:        {home / 'heliostat.db'}\n"
        f"[etl] checkpoints:    {home / 'checkpoints' / workflow_id}",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
