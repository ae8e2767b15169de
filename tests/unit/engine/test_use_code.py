"""A worker taking on another node's job environment before a task, and letting it go."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.engine import runtime_env
from heliostat.engine.runtime_env import use_code


@pytest.fixture
def worker_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore what use_code changes in this process: cwd, sys.path, the variables."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(runtime_env, "_cwd_before_code", None)
    monkeypatch.setattr(runtime_env, "_env_before_code", {})
    cwd = os.getcwd()
    monkeypatch.setenv("HS_TEST_KEPT", "node")
    monkeypatch.delenv("HS_TEST_NEW", raising=False)
    yield
    os.chdir(cwd)


def test_a_jobs_env_vars_hold_for_its_tasks_and_go_with_the_next_job(
    worker_state: None, tmp_path: Path
) -> None:
    job = ((str(tmp_path),), str(tmp_path), (("HS_TEST_KEPT", "job"), ("HS_TEST_NEW", "1")))
    use_code(job)
    assert os.environ["HS_TEST_KEPT"] == "job" and os.environ["HS_TEST_NEW"] == "1"
    assert sys.path[0] == str(tmp_path) and os.getcwd() == str(tmp_path)
    use_code(job)  # the next task of the same job: the node's value is still remembered
    other = ((), "", (("HS_TEST_NEW", "2"),))
    use_code(other)
    assert os.environ["HS_TEST_KEPT"] == "node" and os.environ["HS_TEST_NEW"] == "2"
    use_code(None)  # the node's own task
    assert os.environ["HS_TEST_KEPT"] == "node" and "HS_TEST_NEW" not in os.environ
    assert os.getcwd() != str(tmp_path)
