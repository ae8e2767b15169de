"""Fixtures for tests of a real cluster (the daemons themselves: cluster_daemons.py).

A test whose head keeps its metadata in PostgreSQL asks for ``db_url`` or
``pg_schema_url`` *before* ``daemons``: pytest tears fixtures down in the reverse
order, so the daemons stop while their schema still exists. The other way round the
schema is dropped under a running head, whose last writes then fail and are retried
for seconds before it gives up.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_daemons import Daemons
from waiting import poll_for


@contextlib.contextmanager
def running_daemons(root: Path) -> Iterator[Daemons]:
    """Daemons under ``root``; every one stopped, and none of their processes left, after."""
    tmpdir = Path(tempfile.mkdtemp(prefix="hsc"))
    d = Daemons(root, tmpdir)
    try:
        yield d
    finally:
        d.stop_all()
        try:
            poll_for(lambda: not d.leftovers(), 20, what="every daemon's processes to exit")
        finally:
            for proc in d.leftovers():  # never leave a process behind, even failing
                proc.kill()
            shutil.rmtree(tmpdir, ignore_errors=True)
        for home in d.homes:
            assert not (home / "cluster" / "head.pid").exists()
            assert not (home / "cluster" / "node.pid").exists()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    with running_daemons(tmp_path) as d:
        yield d


@pytest.fixture(scope="module")
def module_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    """Daemons shared by a module's tests (a test must not kill or stop them)."""
    with running_daemons(tmp_path_factory.mktemp("cluster")) as d:
        yield d


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("pg_schema_url")
        return make()
    return None  # the head's home's SQLite file
