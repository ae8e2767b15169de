"""Fixtures of the fault-injection tests.

* ``lab``: a :class:`faultlab.Lab` of this test: driver processes sharing a private
  ``HELIOSTAT_HOME`` (SQLite lineage and checkpoints) and a 2 s lease timeout. At
  teardown every driver is killed and reaped, and so is anything still running below
  one (a fork server, a worker): that fails the test, since fate sharing should have
  ended it.
* ``backend``: parametrized ``"sqlite"`` / ``"postgresql"``; on PostgreSQL the lab's
  drivers (and this process) use a schema of this test.
* ``pg_schema_url``: as in ``tests/conftest.py`` (a factory of schema URLs, dropped at
  teardown), without pooled connections, so it survives a server restart.
* ``home``: ``HELIOSTAT_HOME`` of this test for calls made in the test process itself
  (``HELIOSTAT_DB_URL`` and ``HELIOSTAT_STORAGE`` unset, the runtime's stores closed
  before and after).
* ``tmpfs``: ``mount(path, size)`` mounts a tmpfs of ``size`` bytes, unmounted at
  teardown. A mount that fails skips the test, except under ``CI=true``.
* ``postgres_server``: stop, start and restart the local PostgreSQL cluster; at teardown
  it is started again if it is down, and the test waits until ``pg_isready`` succeeds.

Tests that use PostgreSQL hold a shared lock (a file lock, so it holds across pytest
processes too); a test that stops the server holds it exclusively, so an outage never
overlaps another PostgreSQL test of this directory.

Environment: ``HELIOSTAT_FAULT_CAMPAIGN=N`` runs the SIGKILL campaign with N kills per
backend (default: a handful); ``HELIOSTAT_FAULT_SEED=S`` fixes its seed (default:
random, printed, and named in every failure).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from faultlab import Lab, PostgresServer, unavailable

from heliostat.workflows.services import runtime_services

PG_LOCK = Path("/tmp/heliostat-faults-postgresql.lock")
PG_URL = os.environ.get(
    "HELIOSTAT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "postgres_outage: stops or restarts the local PostgreSQL server (run serially; "
        "deselect with -m 'not postgres_outage' where PostgreSQL is shared)",
    )


def _reset_stores() -> None:
    services = runtime_services()
    if services is not None:
        services.close_stores()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workflow home of this test for calls in the test process."""
    path = tmp_path / "home"
    monkeypatch.setenv("HELIOSTAT_HOME", str(path))
    monkeypatch.delenv("HELIOSTAT_DB_URL", raising=False)
    monkeypatch.delenv("HELIOSTAT_STORAGE", raising=False)
    monkeypatch.delenv("HELIOSTAT_SECRET_KEY", raising=False)
    _reset_stores()
    yield path
    _reset_stores()


@contextlib.contextmanager
def _pg_lock(exclusive: bool) -> Iterator[None]:
    with open(PG_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def pg_shared() -> Iterator[None]:
    """Held by a test that uses PostgreSQL: no outage of this directory meanwhile."""
    with _pg_lock(exclusive=False):
        yield


@pytest.fixture
def pg_schema_url() -> Iterator[Callable[[], str]]:
    """``make()`` -> the URL of a new PostgreSQL schema, dropped when the test ends.

    Like the fixture of ``tests/conftest.py``, but it keeps no pooled connection, so it
    outlives a restart of the server. Under ``CI=true`` an unreachable server fails.
    """
    admin = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to connect: driver, network, auth
        unavailable(f"PostgreSQL at {PG_URL}: {type(exc).__name__}: {exc}".splitlines()[0])
    schemas: list[str] = []

    def make() -> str:
        schema = f"hs_faults_{uuid.uuid4().hex[:12]}"
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    yield make
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def lab(tmp_path: Path, home: Path) -> Iterator[Lab]:
    lab = Lab(dir=tmp_path / "lab", home=home)
    yield lab
    strays = lab.close()
    if strays:
        pytest.fail(f"processes outlived their drivers (killed at teardown): {strays}")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The lab's lineage backend; this process's own calls use it too."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_shared")
        url = request.getfixturevalue("pg_schema_url")()
        lab.use_database(url)
        monkeypatch.setenv("HELIOSTAT_DB_URL", url)
        _reset_stores()
    yield request.param
    lab.close()  # no driver may hold a connection when the schema is dropped
    _reset_stores()


# --- tmpfs ---------------------------------------------------------------------------


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, int], Path]]:
    """``mount(path, size_bytes)``: a tmpfs there, unmounted at teardown."""
    mounted: list[Path] = []

    def mount(path: Path, size: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            unavailable("no mount command to mount a tmpfs")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    _reset_stores()  # the runtime's SQLite engine may hold the file open
    failed = []
    for path in reversed(mounted):
        done = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
            failed.append(f"{path}: {done.stderr.strip()}")
    if failed:
        pytest.fail(f"tmpfs busy at teardown (lazily unmounted): {failed}")


# --- the PostgreSQL server -------------------------------------------------------------


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """Control of the local PostgreSQL server; it is up again when the test ends."""
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        unavailable("pg_ctlcluster and /etc/postgresql are needed to restart PostgreSQL")
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        unavailable("no PostgreSQL cluster under /etc/postgresql")
    server = PostgresServer(versions[-1])
    with _pg_lock(exclusive=True):
        try:
            yield server
        finally:
            if not server.ready():
                subprocess.run(
                    ["pg_ctlcluster", "--skip-systemctl-redirect", server.version, "main", "start"],
                    capture_output=True,
                    timeout=120,
                )
            server.wait_ready()
