"""Server times of the web UI's endpoints over a large lineage database.

Fills a database through the workflow store's own write code, as ``workflow.run``
writes a run: ``WorkflowStore.create`` (the run's row, steps, edges, DAG, transition and
count in one transaction), then one group commit (``WorkflowStore.commit``) with the
steps' INTENT and COMMIT records (or a failure) and the run's final status, or a cancel
(``WorkflowStore.move``). The outcomes are mixed (most succeed; some fail, are
canceled, resumable or still running), so the counts and the status filters have
something to show. Only durability is relaxed while filling (SQLite
``synchronous=OFF``, PostgreSQL ``synchronous_commit=off``): the rows are the ones a
real run writes.

It also stores one 2,000-step workflow (layers of 100 calls of one function, each step
fed by two of the layer before) and times its page, the DAG drawn on the server: folded
(one box per layer) by default, every step with ``?full=1``.

Then it times each endpoint in-process with FastAPI's test client (the whole request
through the app, without a network) and prints JSON with p50/p95 milliseconds::

    .venv/bin/python benchmarks/ui.py                       # 100,000 runs x 10 steps, SQLite
    .venv/bin/python benchmarks/ui.py --postgres            # the same on the local PostgreSQL
    .venv/bin/python benchmarks/ui.py --db-url sqlite:////tmp/ui.db --keep   # fill once

``--browser`` also loads the 2,000-step workflow's page, folded and in full, in
headless Chromium (``/usr/bin/chromium``) served by uvicorn, and reports where the time
goes: the server's answer, the document parsed, the load event, the DAG's pan/zoom
ready, and the frame of one zoom step (see :func:`_browser_load`).

A database that already holds the runs asked for is not filled again (``--keep`` keeps
it; otherwise the temp SQLite file, or the PostgreSQL schema, is removed at the end).
Progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "hs_uibench"
BIG_DAG_ID = "bench-dag-2000"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _outcome(i: int) -> str:
    """The fate of run ``i``: a fixed mix, spread evenly over time."""
    r = (i * 7919) % 100
    if r < 84:
        return "SUCCESSFUL"
    if r < 92:
        return "FAILED"
    if r < 95:
        return "CANCELED"
    if r < 97:
        return "RESUMABLE"
    return "RUNNING"


def _relax_durability(engine: sa.Engine) -> None:
    """Turn off the per-commit flush for this fill only (the rows are unchanged)."""

    @sa.event.listens_for(engine, "connect")
    def _fast(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("PRAGMA synchronous = OFF")
        else:
            cursor.execute("SET synchronous_commit TO off")
        cursor.close()


def _chain(steps: int) -> Any:
    import heliostat as hs
    from heliostat.workflows.compile import compile_dag

    @hs.remote
    def step(*xs: Any) -> int:
        return len(xs)

    node = step.bind()
    for _ in range(steps - 1):
        node = step.bind(node)
    return compile_dag(node)


def _big_dag(n: int) -> Any:
    """``n`` steps in layers of 100, each step fed by two of the layer before."""
    import heliostat as hs
    from heliostat.workflows.compile import compile_dag

    fns = []
    for k in range(5):

        def f(*xs: Any) -> int:
            return len(xs)

        f.__name__ = f.__qualname__ = f"stage_{k}"
        fns.append(hs.remote(f))
    width = 100
    layer = [fns[0].options(name=f"s0_{j}").bind() for j in range(width)]
    made = width
    depth = 1
    while made < n - 1:
        count = min(width, n - 1 - made)
        fn = fns[depth % len(fns)]
        layer = [
            fn.options(name=f"s{depth}_{j}").bind(
                layer[j % len(layer)], layer[(j + 1) % len(layer)]
            )
            for j in range(count)
        ]
        made += count
        depth += 1
    return compile_dag(fns[0].options(name="sink").bind(*layer))


def _run_records(compiled: Any, outcome: str, at: dt.datetime) -> tuple[list[Any], int]:
    """The group commit of a run that ended ``outcome``: its records, steps done."""
    from heliostat.storage.states import AttemptStatus, StepStatus
    from heliostat.workflows.events import AttemptEnded, Commit, Intent
    from heliostat.workflows.step import ErrorInfo

    order = list(compiled.steps)
    upto = {"SUCCESSFUL": len(order), "FAILED": len(order) // 2}.get(outcome, len(order) // 3)
    records: list[Any] = []
    for n, task_id in enumerate(order[: upto + (outcome != "SUCCESSFUL")]):
        t = at + dt.timedelta(seconds=n)
        records.append(Intent(task_id=task_id, attempt=1, key=f"k{n}", at=t))
        if n < upto:
            records.append(
                Commit(
                    task_id=task_id,
                    attempt=1,
                    start=StepStatus.RUNNING,
                    checkpoint=None,
                    output_format=None,
                    cause="finished",
                    at=t + dt.timedelta(seconds=1),
                    started_at=t,
                    finished_at=t + dt.timedelta(seconds=1),
                    worker="bench:1",
                )
            )
        elif outcome == "FAILED":
            records.append(
                AttemptEnded(
                    task_id=task_id,
                    attempt=1,
                    status=AttemptStatus.FAILED,
                    finish=StepStatus.FAILED,
                    cause="raised",
                    at=t + dt.timedelta(seconds=1),
                    error=ErrorInfo(
                        type_name="ValueError",
                        message="bad row 17",
                        traceback="Traceback (most recent call last):\nValueError: bad row 17\n",
                    ),
                    started_at=t,
                    finished_at=t + dt.timedelta(seconds=1),
                    worker="bench:1",
                )
            )
    return records, upto


def _fill(store: Any, url: str, workflows: int, steps: int, jobs: int) -> None:
    """Fill to ``workflows`` runs (plus the big DAG), in ``jobs`` processes."""
    from concurrent.futures import ProcessPoolExecutor

    from heliostat.workflows.lease import LeaseOwner

    if not store.exists(BIG_DAG_ID):
        store.create(
            workflow_id=BIG_DAG_ID,
            compiled=_big_dag(2000),
            metadata={},
            name="sink",
            schedule=None,
            owner=LeaseOwner.new(),
            timeout=1.0,
            now=START - dt.timedelta(days=1),
        )
    have = sum(store.status_counts().values()) - 1
    if have >= workflows:
        return
    # An interrupted parallel fill leaves gaps just below its count: redo that stretch
    # (runs that exist are skipped: create() returns None for them).
    start = max(0, have - 200 * jobs)
    t0 = time.perf_counter()
    if jobs == 1:
        _fill_part(url, start, workflows, steps, 0, 1)
    else:
        with ProcessPoolExecutor(jobs) as pool:
            done = [
                pool.submit(_fill_part, url, start, workflows, steps, job, jobs)
                for job in range(jobs)
            ]
            for f in done:
                f.result()
    print(
        f"filled {workflows - have} runs in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
        flush=True,
    )


def _fill_part(url: str, start: int, workflows: int, steps: int, job: int, jobs: int) -> None:
    """Runs ``start..workflows`` whose number is ``job`` modulo ``jobs``."""
    from heliostat.storage.db import make_engine
    from heliostat.storage.signing import default_signer
    from heliostat.storage.states import WorkflowStatus
    from heliostat.workflows.events import WorkflowMove
    from heliostat.workflows.lease import LeaseOwner
    from heliostat.workflows.store import WorkflowStore

    engine = make_engine(url)
    _relax_durability(engine)
    store = WorkflowStore(engine, signer=default_signer())
    compiled = _chain(steps)
    owner = LeaseOwner.new()
    t0 = time.perf_counter()
    for i in range(start + (job - start) % jobs, workflows, jobs):
        wid = f"bench-{i:07d}"
        at = START + dt.timedelta(seconds=30 * i)
        lease = store.create(
            workflow_id=wid,
            compiled=compiled,
            metadata={"batch": i // 1000},
            name="step",
            schedule="nightly" if i % 3 == 0 else None,
            owner=owner,
            timeout=3600.0,
            now=at,
        )
        if lease is None:
            continue  # written by an interrupted earlier fill
        outcome = _outcome(i)
        end = at + dt.timedelta(seconds=steps + 2)
        if outcome == "CANCELED":
            store.move(
                wid,
                lambda s: [WorkflowMove(start=s, finish=WorkflowStatus.CANCELED, cause="cancel()")],
                now=end,
            )
            store.commit(lease, 1, [], now=end, release=True)
            continue
        records, _ = _run_records(compiled, outcome, at)
        finish = (
            None
            if outcome == "RUNNING"
            else [
                WorkflowMove(
                    start=WorkflowStatus.RUNNING, finish=WorkflowStatus(outcome), cause="bench"
                )
            ]
        )
        store.commit(
            lease,
            1,
            records,
            now=end,
            finish=finish,
            error="ValueError: bad row 17" if outcome == "FAILED" else None,
            release=outcome != "RUNNING",
        )
        if job == 0 and (i - start) % (5000 * jobs) < jobs and i > start:
            rate = (i - start) / (time.perf_counter() - t0)
            print(f"filled {i}/{workflows} ({rate:.0f} runs/s)", file=sys.stderr, flush=True)
    store.close()


def _time(client: Any, url: str, reps: int) -> dict[str, float]:
    client.get(url)  # warm: templates compiled, statements prepared
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1),
        "max_ms": round(times[-1], 1),
    }


def _cursor(created_at: dt.datetime, workflow_id: str) -> str:
    """A page cursor as the UI makes it (the key of the last row of a page)."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{workflow_id}".encode()).decode()


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The URL to fill; removed afterwards unless ``--keep`` (or a given ``--db-url``)."""
    if args.postgres:
        admin = sa.create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{PG_SCHEMA}"'))
        url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={PG_SCHEMA}"})
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            if not args.keep:
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE'))
            admin.dispose()
        return
    if args.db_url:
        yield args.db_url
        return
    home = tempfile.mkdtemp(prefix="hsuibench")
    try:
        yield f"sqlite:///{home}/bench.db"
    finally:
        if args.keep:
            print(f"kept {home}/bench.db", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


_BROWSER_PROBE = """async () => {
  const nav = performance.getEntriesByType('navigation')[0];
  const ready = performance.getEntriesByName('dag-ready')[0];
  const svg = document.querySelector('svg.dag');
  // A zoom step as the wheel does it: change the viewBox, wait for the frame after.
  const frames = [];
  if (svg) {
    const vb = svg.viewBox.baseVal;
    for (let i = 0; i < 8; i++) {
      const t0 = performance.now();
      const f = i % 2 ? 1 / 1.15 : 1.15;
      vb.width *= f; vb.height *= f; vb.x += 7; vb.y += 3;
      await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
      frames.push(performance.now() - t0);
    }
  }
  return {
    server: nav.responseStart - nav.requestStart,
    transfer: nav.responseEnd - nav.responseStart,
    dom_ready: nav.domContentLoadedEventEnd - nav.startTime,
    load: nav.loadEventEnd - nav.startTime,
    interactive: ready ? ready.startTime : null,
    zoom_frame: frames.length ? frames.reduce((a, b) => a + b) / frames.length : null,
    html_bytes: nav.transferSize || nav.encodedBodySize,
    svg_elements: svg ? svg.getElementsByTagName('*').length : 0,
    dom_elements: document.getElementsByTagName('*').length,
  };
}"""


def _browser_load(app: Any, path: str, reps: int) -> dict[str, Any]:
    """One page in headless Chromium (``/usr/bin/chromium``) served by uvicorn.

    Milliseconds (p50/p95) from navigation start: ``server`` (request sent to first
    byte: the server's render), ``transfer`` (first to last byte), ``dom_ready``
    (DOMContentLoaded handled), ``load`` (the load event ended), ``interactive`` (the
    DAG's pan/zoom wired, the ``dag-ready`` mark of ``ui.js``), and ``zoom_frame`` (one
    zoom step to the next painted frame, the cost of panning or zooming); then the page's
    size: HTML bytes, SVG and DOM elements.
    """
    import socket

    import uvicorn
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.05)  # waiting for the server thread to listen
        samples: list[dict[str, Any]] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-background-networking"],
            )
            try:
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                for _ in range(reps + 1):
                    page.goto(f"http://127.0.0.1:{port}{path}", wait_until="load")
                    page.wait_for_selector("[data-panzoom][data-ready]")
                    samples.append(page.evaluate(_BROWSER_PROBE))
            finally:
                browser.close()
        samples = samples[1:]  # the first warms the browser's cache of ui.css / ui.js
        out: dict[str, Any] = {}
        for key in ("server", "transfer", "dom_ready", "load", "interactive", "zoom_frame"):
            times = sorted(s[key] for s in samples if s[key] is not None)
            if times:
                out[f"{key}_ms"] = {
                    "p50": round(statistics.median(times), 1),
                    "p95": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1),
                }
        for key in ("html_bytes", "svg_elements", "dom_elements"):
            out[key] = samples[-1][key]
        return out
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db-url", default=None, help="default: a SQLite file in a temp dir")
    where.add_argument("--postgres", action="store_true", help=f"schema {PG_SCHEMA} of {PG_URL}")
    parser.add_argument("--keep", action="store_true", help="keep the filled database")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes filling at once (PostgreSQL: try 4)"
    )
    parser.add_argument(
        "--browser", action="store_true", help="also time the 2,000-step page in Chromium"
    )
    args = parser.parse_args()
    if args.workflows < 100 or args.steps < 2 or args.jobs < 1:
        parser.error("--workflows must be 100 or more, --steps 2 or more, --jobs 1 or more")

    from fastapi.testclient import TestClient

    from heliostat.storage.db import ensure_schema, make_engine
    from heliostat.storage.signing import default_signer
    from heliostat.ui import create_app
    from heliostat.workflows.store import WorkflowStore

    home = tempfile.mkdtemp(prefix="hsuihome")
    os.environ.setdefault("HELIOSTAT_HOME", home)
    try:
        with _database(args) as url:
            engine = make_engine(url)
            _relax_durability(engine)
            ensure_schema(engine)
            store = WorkflowStore(engine, signer=default_signer())
            _fill(store, url, args.workflows, args.steps, args.jobs)
            counts = {str(k): v for k, v in store.status_counts().items()}
            middle = store.list_page(
                limit=1, after=(START + dt.timedelta(seconds=30 * (args.workflows // 2)), "~")
            )[0]
            store.close()
            steps_total = _count(url, "steps")

            with TestClient(create_app(db_url=url, storage=f"file://{home}/ckpt")) as client:
                deep = _cursor(middle.created_at, middle.workflow_id)
                some = f"bench-{args.workflows // 2:07d}"
                endpoints = {
                    "api_workflows_first_page": "/api/workflows?limit=50",
                    "api_workflows_deep_page": f"/api/workflows?limit=50&cursor={deep}",
                    "api_workflows_oldest_first": "/api/workflows?limit=50&order=asc",
                    "api_workflows_status_FAILED": "/api/workflows?limit=50&status=FAILED",
                    "api_workflows_status_FAILED_deep": (
                        f"/api/workflows?limit=50&status=FAILED&cursor={deep}"
                    ),
                    "api_workflows_status_two": (
                        "/api/workflows?limit=50&status=RUNNING&status=CANCELED"
                    ),
                    "api_workflows_search_few": f"/api/workflows?limit=50&search={some[:-2]}",
                    "api_workflows_search_all": "/api/workflows?limit=50&search=bench-",
                    "api_workflows_search_none": "/api/workflows?limit=50&search=nothing",
                    "page_workflows": "/workflows",
                    "page_workflows_filtered_deep": f"/workflows?status=FAILED&cursor={deep}",
                    "api_workflow": f"/api/workflows/{some}",
                    "page_workflow": f"/workflows/{some}",
                    "api_workflow_2000_steps": f"/api/workflows/{BIG_DAG_ID}",
                    "page_workflow_2000_steps": f"/workflows/{BIG_DAG_ID}",
                    "page_workflow_2000_steps_full": f"/workflows/{BIG_DAG_ID}?full=1",
                }
                out: dict[str, Any] = {
                    "backend": url.split(":", 1)[0].split("+", 1)[0],
                    "workflows": sum(counts.values()),
                    "steps": steps_total,
                    "counts": counts,
                    "endpoints": {
                        name: _time(client, u, args.reps) for name, u in endpoints.items()
                    },
                }
                if args.browser:
                    out["browser_2000_steps"] = _browser_load(
                        client.app, f"/workflows/{BIG_DAG_ID}", min(args.reps, 20)
                    )
                    out["browser_2000_steps_full"] = _browser_load(
                        client.app, f"/workflows/{BIG_DAG_ID}?full=1", min(args.reps, 20)
                    )
            print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
