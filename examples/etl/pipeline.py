"""An ETL pipeline on heliostat: extract CSV partitions, clean, join, aggregate, load.

Run it with ``make demo`` or ``python -m examples.etl.pipeline [--days N]``.

Steps, each a heliostat task:

1. ``generate`` writes one raw CSV of orders per day (stand-in for an upstream drop).
2. ``extract`` reads a partition with ``pyarrow.csv`` into an Arrow table; the table
   travels through the object store without copies.
3. ``clean`` drops rows without a customer or with a non-positive quantity.
4. ``enrich`` joins the customer dimension (region) and computes revenue.
5. ``aggregate`` sums revenue and orders per (day, region).
6. ``load`` writes the aggregate into a SQLite warehouse table keyed by (day, region):
   an upsert, so loading the same day twice leaves one row per key.
7. ``report`` prints the warehouse contents.

Outputs go under ``$HELIOSTAT_HOME/examples/etl`` (default ``~/.heliostat``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

import heliostat as hs
from examples.etl.data import CUSTOMERS, days_ending, generate_day

__all__ = ["main"]


def workdir() -> Path:
    home = Path(os.environ.get("HELIOSTAT_HOME", Path.home() / ".heliostat"))
    return home / "examples" / "etl"


@hs.remote
def generate(root: str, day: str) -> str:
    return str(generate_day(Path(root), day))


@hs.remote
def extract(path: str) -> pa.Table:
    return pacsv.read_csv(path)


@hs.remote
def clean(table: pa.Table) -> pa.Table:
    ok = pc.and_(pc.is_valid(table["customer_id"]), pc.greater(table["quantity"], 0))
    return table.filter(ok)


@hs.remote
def enrich(table: pa.Table) -> pa.Table:
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
    grouped = table.group_by(["day", "region"]).aggregate(
        [("revenue", "sum"), ("order_id", "count")]
    )
    return grouped.rename_columns(["day", "region", "revenue", "orders"])


@hs.remote(max_retries=3)
def load(db_path: str, table: pa.Table) -> int:
    """Upsert the aggregate into the warehouse (safe to repeat: keyed by day+region)."""
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS daily_revenue ("
            " day TEXT NOT NULL, region TEXT NOT NULL, revenue REAL NOT NULL,"
            " orders INTEGER NOT NULL, PRIMARY KEY (day, region))"
        )
        rows = list(
            zip(
                *(table[c].to_pylist() for c in ("day", "region", "revenue", "orders")), strict=True
            )
        )
        db.executemany(
            "INSERT INTO daily_revenue (day, region, revenue, orders) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (day, region) DO UPDATE SET revenue = excluded.revenue, "
            "orders = excluded.orders",
            rows,
        )
    return len(rows)


def report(db_path: str) -> str:
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT day, region, ROUND(revenue, 2), orders FROM daily_revenue ORDER BY day, region"
        ).fetchall()
    lines = [f"{'day':<12}{'region':<8}{'revenue':>14}{'orders':>9}"]
    lines += [f"{d:<12}{r:<8}{rev:>14,.2f}{o:>9}" for d, r, rev, o in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5, help="number of daily partitions")
    parser.add_argument("--last-day", default="2026-11-21", help="the newest day (ISO date)")
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args(argv)

    root = workdir()
    root.mkdir(parents=True, exist_ok=True)
    db_path = str(root / "warehouse.sqlite")
    days = days_ending(date.fromisoformat(args.last_day), args.days)

    started = time.perf_counter()
    hs.init(num_cpus=args.num_cpus)
    try:
        loads = []
        for day in days:
            raw = generate.remote(str(root), day)
            table = aggregate.remote(enrich.remote(clean.remote(extract.remote(raw))))
            loads.append(load.remote(db_path, table))
        pending = list(loads)
        done = 0
        while pending:
            ready, pending = hs.wait(pending, num_returns=1, timeout=30)
            done += len(ready)
            print(f"[etl] loaded {done}/{len(days)} days", flush=True)
        rows = sum(hs.get(loads))
    finally:
        hs.shutdown()
    print(report(db_path))
    print(
        f"\n[etl] {len(days)} days, {rows} warehouse rows in "
        f"{time.perf_counter() - started:.2f} s\n"
        f"[etl] raw CSV partitions: {root / 'raw'}\n[etl] warehouse: {db_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
