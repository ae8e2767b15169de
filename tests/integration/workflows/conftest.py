"""Fixtures of the workflow integration tests: a private workflow home, PostgreSQL schemas.

* ``wf_home``: ``HELIOSTAT_HOME`` set to a new directory of this test (so its SQLite
  database and its checkpoints are its own), ``HELIOSTAT_DB_URL`` / ``HELIOSTAT_STORAGE``
  unset, and the runtime's workflow stores closed before and after (their engines
  disposed).
* ``pg_schema_url``: a factory of URLs, each naming a new PostgreSQL schema (of the
  database at ``HELIOSTAT_TEST_PG_URL``) dropped at teardown. Unreachable PostgreSQL
  skips the test, except under ``CI=true``, where it fails.
* ``wf_backend``: parametrized ``"sqlite"`` / ``"postgresql"``; on PostgreSQL it points
  ``HELIOSTAT_DB_URL`` at a schema of this test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.workflows.services import runtime_services


def reset_workflow_caches() -> None:
    """Close the current runtime's workflow stores (their engines disposed): the next
    call opens the stores of the environment as it is then."""
    services = runtime_services()
    if services is not None:
        services.close_stores()


@pytest.fixture
def wf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workflow home of this test only (database and checkpoints under it)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HELIOSTAT_HOME", str(home))
    monkeypatch.delenv("HELIOSTAT_DB_URL", raising=False)
    monkeypatch.delenv("HELIOSTAT_STORAGE", raising=False)
    reset_workflow_caches()
    yield home
    reset_workflow_caches()


@pytest.fixture(params=["sqlite", "postgresql"])
def wf_backend(
    request: pytest.FixtureRequest, wf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The lineage database backend of this test; its database is private to the test."""
    if request.param == "postgresql":
        make = request.getfixturevalue("pg_schema_url")
        monkeypatch.setenv("HELIOSTAT_DB_URL", make())
    yield request.param
    # Before pg_schema_url drops the schema: no pooled connection may still use it.
    reset_workflow_caches()
