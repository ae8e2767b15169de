"""PostgreSQL going away under a running workflow.

* A restart of a few seconds (``pg_ctlcluster ... restart``) while a chain of ~0.5 s
  steps runs: lineage writes retry the lost connections, the run ends SUCCESSFUL and
  every step ran once.
* An outage longer than ``HELIOSTAT_DB_RETRY_TIMEOUT`` (2 s here): the driver gives up
  with a StorageError in words (no SQL), the workflow is RESUMABLE once the server is
  back, and a fresh driver resumes it to the right output without re-running a
  committed step.

Both stop the server that other tests may use: they hold the directory's PostgreSQL
lock exclusively (see ``conftest.py``) and are marked ``postgres_outage``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from faultlab import Lab, PostgresServer, chain, expected_output, poll, workflow_cfg

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
    driver = lab.start([workflow_cfg(wid, spec, "run")])
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
