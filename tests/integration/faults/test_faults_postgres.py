"""PostgreSQL going away under a running workflow.

* A restart of a few seconds (``pg_ctlcluster ... restart``) while a chain of ~0.5 s
  steps runs: lineage writes retry the lost connections, the run ends SUCCESSFUL and
  every step ran once.
* An outage longer than the lease (2 s) but within ``HELIOSTAT_DB_RETRY_TIMEOUT``: the
  driver rides it out; a status read once the server is back must not take its lease.
* An outage longer than ``HELIOSTAT_DB_RETRY_TIMEOUT`` (2 s here): the driver gives up
  with a StorageError in words (no SQL), the workflow is RESUMABLE once the server is
  back, and a fresh driver resumes it to the right output without re-running a
  committed step.

Both stop the server that other tests may use: they hold the directory's PostgreSQL
lock exclusively (see ``conftest.py``) and are marked ``postgres_outage``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from faultlab import Lab, PostgresServer, chain, expected_output, poll, utcnow, workflow_cfg

from heliostat import workflow
from heliostat.workflows import WorkflowStatus

pytestmark = pytest.mark.postgres_outage

SQL_WORDS = ("SELECT", "UPDATE ", "INSERT", "DELETE ", "[SQL", "FROM ", "WHERE ", "%(")


def _on_postgres(
    lab: Lab, pg_schema_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> str:
    url = pg_schema_url()
    lab.use_database(url)
    monkeypatch.setenv("HELIOSTAT_DB_URL", url)
    return url


def test_postgres_restart_mid_run_is_survived_and_every_step_runs_once(
    pg_schema_url: Callable[[], str],
    postgres_server: PostgresServer,
    lab: Lab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _on_postgres(lab, pg_schema_url, monkeypatch)
    wid = "restarted"
    spec = chain("p", 8, non_idempotent=lambda i: i == 4, pre=0.5)
    # The default lease: a restart of a few seconds is within it.
    driver = lab.start([workflow_cfg(wid, spec, "run")], HELIOSTAT_LEASE_TIMEOUT=None)
    poll(
        lambda: len(lab.attempts()) >= 2 or not driver.alive(),
        90,
        "the second step to start",
    )
    assert driver.alive(), driver.text()

    postgres_server.restart()

    assert driver.result() == {wid: {"value": expected_output(*spec)}}, driver.text()
    assert lab.runs(wid) == Counter({s["task_id"]: 1 for s in spec[0]}), lab.attempts()
    assert [key for key, _ in lab.ledger()] == [f"{wid}:p4"]
    assert not lab.hook_calls()
    assert workflow.get_status(wid) is WorkflowStatus.SUCCESSFUL


def test_postgres_outage_past_the_retry_timeout_stops_with_storage_error_and_resumes(
    pg_schema_url: Callable[[], str],
    postgres_server: PostgresServer,
    lab: Lab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _on_postgres(lab, pg_schema_url, monkeypatch)
    wid = "outage"
    spec = chain("p", 6, pre=0.3)
    driver = lab.start([workflow_cfg(wid, spec, "run")], HELIOSTAT_DB_RETRY_TIMEOUT="2")
    poll(
        lambda: len(lab.attempts()) >= 3 or not driver.alive(),
        90,
        "the third step to start",
    )
    assert driver.alive(), driver.text()
    try:
        postgres_server.stop()
        got = driver.result(timeout=60)[wid]
    finally:
        postgres_server.start()

    assert got["error"] == "StorageError", got
    message = got["message"]
    assert "unreachable" in message and "HELIOSTAT_DB_RETRY_TIMEOUT" in message, message
    assert "resumed" in message, message
    assert not [w for w in SQL_WORDS if w in message], message
    committed = lab.committed(wid)
    assert {"p0", "p1"} <= committed and "p5" not in committed, committed
    since = len(lab.attempts())
    assert workflow.get_status(wid) is WorkflowStatus.RESUMABLE

    resumed = lab.start([workflow_cfg(wid, spec, "resume")])
    assert resumed.result() == {wid: {"value": expected_output(*spec)}}, resumed.text()
    again = lab.runs(wid, since=since)
    assert not set(again) & committed, (again, committed)
    assert set(again) | committed == {s["task_id"] for s in spec[0]}


def test_status_read_after_an_outage_does_not_fence_the_driver_that_rode_it_out(
    pg_schema_url: Callable[[], str],
    postgres_server: PostgresServer,
    lab: Lab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _on_postgres(lab, pg_schema_url, monkeypatch)
    wid = "survivor"
    spec = chain("p", 6, pre=0.5)
    driver = lab.start([workflow_cfg(wid, spec, "run")])  # 2 s leases, 60 s retries
    poll(
        lambda: len(lab.attempts()) >= 2 or not driver.alive(),
        90,
        "the second step to start",
    )
    assert driver.alive(), driver.text()
    # A status reader polling like the UI or `heliostat workflow list` in a loop
    # (here it does not wait for the database: it tries again 20 ms later).
    monkeypatch.setenv("HELIOSTAT_DB_RETRY_TIMEOUT", "0")
    seen: list[str] = []
    stop = threading.Event()

    def read_status() -> None:
        while not stop.is_set():
            try:
                seen.append(str(workflow.get_status(wid)))
            except Exception as exc:  # the database is down
                seen.append(type(exc).__name__)
            stop.wait(0.02)

    reader = threading.Thread(target=read_status, name="status-reader")
    try:
        postgres_server.stop()
        reader.start()
        lapsed = utcnow() + dt.timedelta(seconds=2.5)  # the lab's lease, and a margin
        poll(lambda: utcnow() > lapsed, 10, "the lease to lapse", interval=0.1)
        postgres_server.start()
        got = driver.result()[wid]
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(timeout=60)
        if not postgres_server.ready():
            postgres_server.start()

    status = Counter(seen)
    assert "RESUMABLE" not in status, (status, got)
    assert got == {"value": expected_output(*spec)}, got


def test_driver_started_while_postgres_restarts_waits_for_it(
    pg_schema_url: Callable[[], str],
    postgres_server: PostgresServer,
    lab: Lab,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _on_postgres(lab, pg_schema_url, monkeypatch)
    assert workflow.list_all() == []  # the schema exists before the outage
    wid = "early"
    spec = chain("p", 3)
    try:
        postgres_server.stop()
        driver = lab.start([workflow_cfg(wid, spec, "run")], HELIOSTAT_DB_RETRY_TIMEOUT="60")
        poll(
            lambda: "unreachable" in driver.text() or not driver.alive(),
            90,
            "the driver to find the database down",
        )
    finally:
        postgres_server.start()

    assert driver.result() == {wid: {"value": expected_output(*spec)}}, driver.text()
    assert lab.runs(wid) == Counter({s["task_id"]: 1 for s in spec[0]})
