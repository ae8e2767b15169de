"""Fixtures of the CLI tests; the harness itself is ``cli_harness.py``.

* ``cli``: a :class:`~cli_harness.Cli` on a private home, working directory and
  ``TMPDIR`` (see the harness's docstring), removed after the test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    # A short TMPDIR: a runtime's Unix socket lives under it (108-byte path limit).
    tmpdir = Path(tempfile.mkdtemp(prefix="hscli"))
    try:
        yield Cli(tmp_path, tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
