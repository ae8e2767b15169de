"""Fixtures for tests of a real cluster (the daemons themselves: cluster_daemons.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_daemons import Daemons


@pytest.fixture
def daemons(tmp_path: Path, wait_for: Callable[..., Any]) -> Iterator[Daemons]:
    tmpdir = Path(tempfile.mkdtemp(prefix="hsc"))
    d = Daemons(tmp_path, tmpdir)
    try:
        yield d
    finally:
        d.stop_all()
        try:
            wait_for(lambda: not d.leftovers(), 20, what="every daemon's processes to exit")
        finally:
            for proc in d.leftovers():  # never leave a process behind, even failing
                proc.kill()
            shutil.rmtree(tmpdir, ignore_errors=True)
        for home in d.homes:
            assert not (home / "cluster" / "head.pid").exists()
            assert not (home / "cluster" / "node.pid").exists()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("pg_schema_url")
        return make()
    return None  # the head's home's SQLite file
