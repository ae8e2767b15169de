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

Crash and resume (each run without --workflow-id / --resume is a fresh one)::

    python -m examples.etl.pipeline --crash-at load-2026-11-20   # the driver dies
    python -m examples.etl.pipeline --resume                     # goes on with that run

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
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

import heliostat as hs
from examples.etl.data import CUSTOMERS, days_ending, generate_day
from heliostat import workflow
from heliostat.exceptions import HeliostatError, WorkflowNotFoundError

__all__ = [
    "build_dag",
    "crash_refusal",
    "forget_loads",
    "fresh_workflow_id",
    "main",
    "step_ids",
]

_CRASH_ENV = "HELIOSTAT_ETL_CRASH_AT"
_DRIVER_ENV = "HELIOSTAT_ETL_DRIVER_PID"


def workdir() -> Path:
    home = Path(os.environ.get("HELIOSTAT_HOME", Path.home() / ".heliostat"))
    return home / "examples" / "etl"


def _maybe_crash() -> None:
    """Kill the driver when this step is the one named by --crash-at."""
    ctx = workflow.get_context()
    if os.environ.get(_CRASH_ENV) != ctx.task_id:
        return
    # Straight to the inherited stderr: the driver dies before it could print a
    # forwarded line.
    stream = sys.__stderr__ or sys.stderr
    print(f"[etl] --crash-at {ctx.task_id}: killing the driver now", file=stream, flush=True)
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
        db.execute(  # one row per step of a run: a re-run of the load rewrites it
            "INSERT INTO load_log (idempotency_key, day, rows, loaded_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (idempotency_key) DO UPDATE SET day = excluded.day, "
            "rows = excluded.rows, loaded_at = excluded.loaded_at",
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


_UNFINISHED = ("RESUMABLE", "FAILED", "NEEDS_ATTENTION", "PENDING", "RUNNING")
"""Statuses of a run that ``--resume`` can go on with."""


class UsageError(Exception):
    """A request the example refuses before anything runs (exit status 2)."""


def step_ids(days: list[str]) -> list[str]:
    """The task ids of the DAG for ``days``, in pipeline order."""
    names = ("generate", "extract", "clean", "enrich", "aggregate", "load")
    return [f"{name}-{day}" for day in days for name in names] + ["report"]


def fresh_workflow_id(prefix: str, now: datetime, exists: Callable[[str], bool]) -> str:
    """A new run id: ``{prefix}-{UTC time}``, with ``-2``, ``-3`` ... if that one is taken."""
    base = f"{prefix}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    candidate, n = base, 1
    while exists(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def crash_refusal(
    crash_at: str, known: list[str], workflow_id: str, status: str | None, step_status: str | None
) -> str | None:
    """Why ``--crash-at`` cannot take effect on this run, or ``None`` if it can.

    Args:
        crash_at: the step named by ``--crash-at``.
        known: the DAG's step ids.
        workflow_id: the run it would apply to.
        status: that run's status, ``None`` if it does not exist yet.
        step_status: the step's status in that run, ``None`` if it has none yet.
    """
    if crash_at not in known:
        return (
            f"--crash-at {crash_at!r} names no step of this workflow (steps: {', '.join(known)})."
        )
    if status == "SUCCESSFUL":
        return (
            f"--crash-at {crash_at} cannot take effect: workflow {workflow_id} already "
            "succeeded, so none of its steps runs again. Leave out --workflow-id / --resume "
            "to start a fresh run."
        )
    if status == "CANCELED":
        return f"--crash-at {crash_at} cannot take effect: workflow {workflow_id} was canceled."
    if step_status == "SUCCESSFUL":
        return (
            f"--crash-at {crash_at} cannot take effect: step {crash_at} of workflow "
            f"{workflow_id} is already committed and is not run again on resume. Name a step "
            "that has not run yet, or leave out --workflow-id / --resume to start a fresh run."
        )
    return None


def forget_loads(db_path: str, workflow_id: str) -> None:
    """Drop load_log rows of an earlier, deleted run that had this id.

    The log answers the in-doubt hook ("did this run's load happen?"), so a new run
    must not find the rows of another run that once had the same id.
    """
    with sqlite3.connect(db_path) as db:
        db.executescript(_SCHEMA)
        prefix = f"{workflow_id}:"  # the keys of a run's steps: "{workflow_id}:{task_id}"
        db.execute(
            "DELETE FROM load_log WHERE substr(idempotency_key, 1, ?) = ?", (len(prefix), prefix)
        )


def _newest_unfinished(prefix: str) -> str | None:
    for workflow_id, status in workflow.list_all():
        if workflow_id.startswith(prefix + "-") and str(status) in _UNFINISHED:
            return workflow_id
    return None


def _choose_run(args: argparse.Namespace, prefix: str, known: list[str]) -> tuple[str, bool]:
    """The run this invocation works on, and whether it exists already."""
    if args.resume:
        workflow_id = _newest_unfinished(prefix)
        if workflow_id is None:
            raise UsageError(
                f"--resume: no unfinished run of this example ({prefix}-...) to resume; "
                "run it without --resume to start one."
            )
    elif args.workflow_id:
        workflow_id = args.workflow_id
    else:
        workflow_id = fresh_workflow_id(prefix, datetime.now(UTC), _exists)
    record = None
    if _exists(workflow_id):
        record = workflow.describe(workflow_id)
    if args.crash_at:
        step = record.steps.get(args.crash_at) if record is not None else None
        reason = crash_refusal(
            args.crash_at,
            known,
            workflow_id,
            str(record.status) if record is not None else None,
            str(step.status) if step is not None else None,
        )
        if reason is not None:
            raise UsageError(reason)
    return workflow_id, record is not None


def _exists(workflow_id: str) -> bool:
    try:
        workflow.get_status(workflow_id)
    except WorkflowNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5, help="number of daily partitions")
    parser.add_argument("--last-day", default="2026-11-21", help="the newest day (ISO date)")
    parser.add_argument("--num-cpus", type=int, default=None)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--workflow-id",
        default=None,
        help="run (or go on with) this id; default: a fresh run etl-{last day}-{days}d-{time}",
    )
    which.add_argument(
        "--resume",
        action="store_true",
        help="go on with the newest unfinished run of this example (same --days/--last-day)",
    )
    parser.add_argument(
        "--crash-at",
        default=None,
        metavar="TASK_ID",
        help="kill the driver when this step runs (e.g. load-2026-11-20), to try resume",
    )
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")

    root = workdir()
    root.mkdir(parents=True, exist_ok=True)
    db_path = str(root / "warehouse.sqlite")
    days = days_ending(date.fromisoformat(args.last_day), args.days)
    prefix = f"etl-{args.last_day}-{args.days}d"
    known = step_ids(days)
    try:
        workflow_id, existed = _choose_run(args, prefix, known)
    except (UsageError, HeliostatError) as exc:
        print(f"[etl] error: {exc}", file=sys.stderr)
        return 2
    if not existed:
        forget_loads(db_path, workflow_id)
    if args.crash_at:
        print(f"[etl] --crash-at {args.crash_at}: the driver is killed when that step runs")
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
    if existed:
        print(
            f"[etl] workflow {workflow_id} exists ({workflow.get_status(workflow_id)}): "
            "going on with it",
            flush=True,
        )
    else:
        print(f"[etl] starting workflow {workflow_id}", flush=True)
    hs.init(num_cpus=args.num_cpus)
    try:
        try:
            output = workflow.run(
                build_dag(root, days), workflow_id=workflow_id, on_progress=progress
            )
        except HeliostatError as exc:
            if redraw:
                print()
            print(f"[etl] workflow {workflow_id} did not finish: {exc}", file=sys.stderr)
            return 1
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
        f"[etl] warehouse:      {db_path}\n"
        f"[etl] lineage:        {home / 'heliostat.db'}\n"
        f"[etl] checkpoints:    {home / 'checkpoints' / workflow_id}",
        file=sys.stdout,
    )
    if args.crash_at:  # it ran to the end: the step was settled without running
        print(
            f"[etl] --crash-at {args.crash_at} did not take effect: the step did not run in "
            f"this invocation (its in-doubt hook settled it).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
