"""The core workflow API on both lineage backends: SQLite and PostgreSQL.

Each test gets a database of its own (``wf_backend``: a SQLite file in its home, or a
fresh PostgreSQL schema through ``HELIOSTAT_DB_URL``); checkpoints stay on local files.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import WorkflowExecutionError, WorkflowNotFoundError
from heliostat.storage.db import default_db_url
from heliostat.workflows import StepStatus, WorkflowStatus


def _mark(log: str) -> None:
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")


@hs.remote
def number(log: str, n: int) -> int:
    _mark(log)
    return n


@hs.remote
def combine(log: str, *parts: int) -> int:
    _mark(log)
    return sum(parts)


@hs.remote
def check_flag(log: str, flag: str, value: int) -> int:
    _mark(log)
    if not os.path.exists(flag):
        raise ValueError("the flag is missing")
    return value + 100


def _runs(log: Path) -> Counter[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def _dag(log: Path, flag: Path) -> Any:
    parts = [
        number.options(**workflow.options(task_id=f"n{i}")).bind(str(log), i) for i in range(4)
    ]
    summed = combine.options(**workflow.options(task_id="sum")).bind(str(log), *parts)
    return check_flag.options(**workflow.options(task_id="check")).bind(str(log), str(flag), summed)


def test_backend_is_the_one_configured(wf_backend: str) -> None:
    assert default_db_url().startswith("sqlite" if wf_backend == "sqlite" else "postgresql")


def test_run_get_output_and_rerun_by_id(wf_backend: str, runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    flag.touch()

    assert workflow.run(_dag(log, flag), workflow_id="ok", metadata={"b": wf_backend}) == 106
    assert workflow.run(_dag(log, flag), workflow_id="ok") == 106

    assert workflow.get_status("ok") is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("ok") == 106
    assert workflow.get_output("ok", task_id="sum") == 6
    assert workflow.get_output("ok", task_id="n3") == 3
    assert workflow.get_metadata("ok")["user_metadata"] == {"b": wf_backend}
    assert workflow.get_metadata("ok", "check")["attempts"] == 1
    assert set(_runs(log).values()) == {1}
    assert len(_runs(log)) == 6


def test_failed_then_resume(wf_backend: str, runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"

    with pytest.raises(WorkflowExecutionError) as info:
        workflow.run(_dag(log, flag), workflow_id="fails")
    assert info.value.task_id == "check"
    assert workflow.get_status("fails") is WorkflowStatus.FAILED
    assert workflow.get_metadata("fails", "check")["status"] == str(StepStatus.FAILED)

    flag.touch()
    assert workflow.resume("fails") == 106

    assert workflow.get_status("fails") is WorkflowStatus.SUCCESSFUL
    runs = _runs(log)
    assert runs.pop("check") == 2
    assert set(runs.values()) == {1}  # committed steps did not run again
    assert workflow.get_metadata("fails")["resume_count"] == 1


def test_list_all_and_delete(wf_backend: str, runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    with pytest.raises(WorkflowExecutionError):
        workflow.run(_dag(log, flag), workflow_id="red")
    flag.touch()
    workflow.run(_dag(log, flag), workflow_id="green")

    assert dict(workflow.list_all()) == {
        "red": WorkflowStatus.FAILED,
        "green": WorkflowStatus.SUCCESSFUL,
    }
    assert workflow.list_all(WorkflowStatus.FAILED) == [("red", WorkflowStatus.FAILED)]
    assert workflow.list_all(["SUCCESSFUL"]) == [("green", WorkflowStatus.SUCCESSFUL)]

    workflow.delete("red")

    assert workflow.list_all() == [("green", WorkflowStatus.SUCCESSFUL)]
    with pytest.raises(WorkflowNotFoundError, match="'red'"):
        workflow.get_status("red")


class OutOfStock(Exception):
    """A user's exception class: it must come back from the lineage as itself."""


@hs.remote
def sell(item: str) -> None:
    raise OutOfStock(item)


def test_timer_and_failed_step_exception_round_trip(wf_backend: str, runtime: Runtime) -> None:
    """The new lineage rows (workflow_timers, a step's signed exception) on each backend."""
    assert workflow.run(number.bind(os.devnull, workflow.sleep(0.2)), workflow_id="nap") is None
    assert workflow.get_metadata("nap", "sleep")["status"] == "SUCCESSFUL"
    with pytest.raises(WorkflowExecutionError):
        workflow.run(sell.bind("tea"), workflow_id="sold-out")
    with pytest.raises(WorkflowExecutionError) as info:
        workflow.get_output("sold-out")
    assert isinstance(info.value.cause, OutOfStock)
