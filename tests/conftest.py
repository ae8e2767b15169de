"""Shared fixtures: a local runtime (shared or fresh) and a polling ``wait_for``.

* ``runtime``: a 2-CPU local node shared by the tests of one module. Tests that kill
  workers, fill memory or need other ``init`` arguments use ``fresh_runtime`` instead;
  the shared node is started again, lazily, by the next test that asks for it.
* ``fresh_runtime``: a factory, ``fresh_runtime(**init_kwargs)``, whose node is shut
  down when the test ends.
* ``wait_for``: poll a predicate with short sleeps; fail naming what was awaited.

The session starts by compiling heliostat's modules to bytecode once (see
:func:`pytest_sessionstart`).
"""

from __future__ import annotations

import compileall
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from waiting import poll_for

import heliostat as hs
from heliostat.engine import Runtime, current_runtime

DEFAULT_CPUS = 2


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile heliostat's modules to bytecode once, before any test starts a process.

    The tests start hundreds of Python processes (CLI commands, daemons, drivers). In an
    environment with ``PYTHONDONTWRITEBYTECODE`` set, an editable install never gets its
    ``__pycache__``, so each of them compiled every heliostat module it imported from
    source again: about 0.2 s per command and 0.5 s per daemon. Up-to-date files are
    skipped; a package that cannot be written to is left as it is.
    """
    package = Path(hs.__file__).parent
    try:
        compileall.compile_dir(package, quiet=2, workers=1)
    except OSError:
        pass


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=10, what="...")``: see :func:`poll_for`."""
    return poll_for


def _stop_current() -> None:
    if current_runtime() is not None:
        hs.shutdown()


@pytest.fixture(scope="module")
def _shared_runtime_slot() -> Iterator[dict[str, Runtime | None]]:
    slot: dict[str, Runtime | None] = {"runtime": None}
    yield slot
    shared = slot["runtime"]
    if shared is not None:
        if current_runtime() is shared:
            hs.shutdown()
        else:
            shared.shutdown()


@pytest.fixture
def runtime(_shared_runtime_slot: dict[str, Runtime | None]) -> Runtime:
    """A ``hs.init(num_cpus=2)`` node shared by the module's tests, shut down after them."""
    shared = _shared_runtime_slot["runtime"]
    if shared is None or current_runtime() is not shared:
        _stop_current()
        shared = hs.init(num_cpus=DEFAULT_CPUS)
        _shared_runtime_slot["runtime"] = shared
    return shared


@pytest.fixture
def fresh_runtime() -> Iterator[Callable[..., Runtime]]:
    """A factory for a node of this test only: ``fresh_runtime(resources={"db": 1})``."""
    started: list[Runtime] = []

    def start(**init_kwargs: Any) -> Runtime:
        _stop_current()
        init_kwargs.setdefault("num_cpus", DEFAULT_CPUS)
        rt = hs.init(**init_kwargs)
        started.append(rt)
        return rt

    yield start
    for rt in started:
        if current_runtime() is rt:
            hs.shutdown()
        else:
            rt.shutdown()


# --- PostgreSQL: a fresh schema per test ---------------------------------------------

PG_URL = os.environ.get(
    "HELIOSTAT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI but unusable at {PG_URL}: {reason}")
    pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({reason}); set HELIOSTAT_TEST_PG_URL")


@pytest.fixture
def pg_schema_url() -> Iterator[Callable[[], str]]:
    """``make()`` -> the URL of a new PostgreSQL schema, dropped when the test ends.

    Under ``CI=true`` an unreachable server fails the test instead of skipping it.
    """
    admin = sa.create_engine(PG_URL)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to connect: driver, network, auth
        admin.dispose()
        _pg_unavailable(f"{type(exc).__name__}: {exc}".splitlines()[0])
    schemas: list[str] = []

    def make() -> str:
        schema = f"hs_test_{uuid.uuid4().hex[:12]}"
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
