"""Server times of the web UI's endpoints over a large lineage database.

Fills a database through the real store code (``WorkflowStore.create``: each run's
row, steps, edges, DAG and transition in one transaction, as ``workflow.run`` writes
them), then times each endpoint in-process with FastAPI's test client and prints JSON
with p50/p95 milliseconds per endpoint::

    .venv/bin/python benchmarks/ui.py --workflows 100000 --steps 10
    .venv/bin/python benchmarks/ui.py --db-url postgresql+psycopg://postgres@127.0.0.1/test

The database is filled only if it holds fewer runs than asked for (a second run reuses
it). Progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any


def _fill(url: str, workflows: int, steps: int) -> None:
    import heliostat as hs
    from heliostat.storage.signing import default_signer
    from heliostat.workflows.compile import compile_dag
    from heliostat.workflows.lease import LeaseOwner
    from heliostat.workflows.store import WorkflowStore

    @hs.remote
    def step(*xs: Any) -> int:
        return len(xs)

    node = step.bind()
    for _ in range(steps - 1):
        node = step.bind(node)
    compiled = compile_dag(node)
    store = WorkflowStore.open(url, signer=default_signer())
    have = len(store.list_page(limit=workflows))
    owner = LeaseOwner.new()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    t0 = time.perf_counter()
    for i in range(have, workflows):
        store.create(
            workflow_id=f"bench-{i:07d}",
            compiled=compiled,
            metadata={},
            name="step",
            schedule="nightly" if i % 3 == 0 else None,
            owner=owner,
            timeout=1.0,
            now=start + dt.timedelta(seconds=30 * i),
        )
        if i % 5000 == 0:
            rate = (i - have + 1) / (time.perf_counter() - t0)
            print(f"filled {i}/{workflows} ({rate:.0f}/s)", file=sys.stderr, flush=True)
    store.close()


def _time(client: Any, url: str, reps: int) -> dict[str, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--db-url", default=None, help="default: a SQLite file in a temp dir, removed after"
    )
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="hsuibench")
    os.environ.setdefault("HELIOSTAT_HOME", home)
    url = args.db_url or f"sqlite:///{home}/bench.db"
    _fill(url, args.workflows, args.steps)

    from fastapi.testclient import TestClient

    from heliostat.ui import create_app

    client = TestClient(create_app(db_url=url, storage=f"file://{home}/ckpt"))
    first = client.get("/api/workflows", params={"limit": 50}).json()
    cursor = first["next_cursor"]
    deep = "bench-0050000" if args.workflows > 50_000 else "bench-0000010"
    endpoints = {
        "api_workflows_first_page": "/api/workflows?limit=50",
        "api_workflows_next_page": f"/api/workflows?limit=50&cursor={cursor}",
        "api_workflows_status_filter": "/api/workflows?limit=50&status=RUNNING",
        "api_workflows_search": "/api/workflows?limit=50&search=bench-00999",
        "page_workflows": "/workflows",
        "api_workflow": f"/api/workflows/{deep}",
        "page_workflow": f"/workflows/{deep}",
    }
    out = {
        "workflows": args.workflows,
        "steps_per_workflow": args.steps,
        "backend": url.split(":", 1)[0],
        "endpoints": {name: _time(client, u, args.reps) for name, u in endpoints.items()},
    }
    client.close()
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
