"""Fixtures of the workflow integration tests: a private workflow home, PostgreSQL schemas.

* ``wf_home``: ``HELIOSTAT_HOME`` set to a new directory of this test (so its SQLite
  database and its checkpoints are its own), ``HELIOSTAT_DB_URL`` / ``HELIOSTAT_STORAGE``
  unset, and the workflow API's per-URL store caches emptied before and after (their
  engines disposed).
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

from heliostat.workflows import api


def reset_workflow_caches() -> None:
    """Dispose the API's cached database engines and forget its cached stores."""
    with api._lock:
        stores = list(api._stores.values())
        api._stores.clear()
        api._checkpoint_stores.clear()
    for store in stores:
        store.close()


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
