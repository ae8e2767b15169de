"""Durable-workflow overhead: per-step cost of chains and fan-outs, durable or not.

Prints one JSON object. Figures (each in a fresh ``HELIOSTAT_HOME``, SQLite with every
COMMIT fsynced, checkpoints on the local disk with fsync):

* ``chain_{n}_durable_ms_per_step``: ``workflow.run`` of an n-step chain (each step
  takes the previous step's output), wall time / n.
* ``fanout_{n}_durable_ms_per_step``: n independent steps and one that sums them.
* ``*_nondurable_ms_per_step``: the same DAG with ``dag.execute()`` (plain tasks).
* ``rss_mb_after_{n}``: the driver's resident memory after the n-step runs, to show
  memory stays flat in the number of steps.
* ``floor_fsync_ms`` / ``floor_sqlite_commit_ms``: one ``write`` + ``fsync`` of 4 KiB,
  and one one-row SQLite commit in WAL mode with ``synchronous=FULL``, in the same home
  directory: what one durable step cannot go below on this disk.

Usage: ``python benchmarks/workflows.py [--sizes 1000,10000] [--skip-large]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from typing import Any

import psutil


def _chain(hs: Any, n: int) -> Any:
    @hs.remote
    def inc(x: int) -> int:
        return x + 1

    node = inc.bind(0)
    for _ in range(n - 1):
        node = inc.bind(node)
    return node


def _fanout(hs: Any, n: int) -> Any:
    @hs.remote
    def square(x: int) -> int:
        return x * x

    @hs.remote
    def total(*xs: int) -> int:
        return sum(xs)

    return total.bind(*[square.bind(i) for i in range(n)])


def _floors(home: str, n: int = 300) -> dict[str, float]:
    """The disk's cost of one fsync and of one durable SQLite commit (ms)."""
    path = os.path.join(home, "floor.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        fsync_ms = (time.perf_counter() - t0) / n * 1e3
    finally:
        os.close(fd)
    db = sqlite3.connect(os.path.join(home, "floor.db"), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        t0 = time.perf_counter()
        for _ in range(n):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (v) VALUES ('x')")
            db.execute("COMMIT")
        commit_ms = (time.perf_counter() - t0) / n * 1e3
    finally:
        db.close()
    return {"floor_fsync_ms": round(fsync_ms, 3), "floor_sqlite_commit_ms": round(commit_ms, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    home = tempfile.mkdtemp(prefix="heliostat-wfbench-")
    os.environ["HELIOSTAT_HOME"] = home
    import heliostat as hs
    from heliostat import workflow

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        **_floors(home),
    }
    hs.init(num_cpus=args.num_cpus)
    try:
        # Open the database (and migrate it) outside the timings.
        workflow.run(_chain(hs, 2), workflow_id="warmup")
        proc = psutil.Process()
        for n in sizes:
            for shape, build in (("chain", _chain), ("fanout", _fanout)):
                dag = build(hs, n)
                print(f"[bench] {shape} of {n}: durable", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                workflow.run(dag, workflow_id=f"{shape}-{n}")
                durable = time.perf_counter() - t0
                print(f"[bench] {shape} of {n}: plain tasks", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                hs.get(dag.execute())
                plain = time.perf_counter() - t0
                steps = n if shape == "chain" else n + 1
                results[f"{shape}_{n}_durable_ms_per_step"] = round(durable / steps * 1e3, 3)
                results[f"{shape}_{n}_nondurable_ms_per_step"] = round(plain / steps * 1e3, 3)
            results[f"rss_mb_after_{n}"] = round(proc.memory_info().rss / 2**20, 1)
    finally:
        hs.shutdown()
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
