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

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from heliostat.workflows import api

PG_URL = os.environ.get(
    "HELIOSTAT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


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


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI but unusable at {PG_URL}: {reason}")
    pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({reason}); set HELIOSTAT_TEST_PG_URL")


@pytest.fixture
def pg_schema_url() -> Iterator[Callable[[], str]]:
    """``make()`` -> the URL of a new PostgreSQL schema, dropped when the test ends."""
    admin = sa.create_engine(PG_URL)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to connect: driver, network, auth
        admin.dispose()
        _pg_unavailable(f"{type(exc).__name__}: {exc}".splitlines()[0])
    schemas: list[str] = []

    def make() -> str:
        schema = f"hs_wf_test_{uuid.uuid4().hex[:12]}"
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    yield make
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


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
