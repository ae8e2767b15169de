"""Tampered lineage rows: what someone who can write the database could plant.

The payload is a pickle that creates a marker file when it is unpickled (checked on a
control copy first, so the test would notice a payload that does nothing). Planted as a
workflow's stored DAG, or as a step's output row (the inline bytes, the location, the
checksum), it must never be unpickled: a resume refuses with UnauthenticatedDataError
where a signed field changed, and bytes that no longer match their recorded checksum
are treated as corrupt (never decoded) and recomputed. The marker never appears.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import (
    CorruptCheckpointError,
    UnauthenticatedDataError,
    WorkflowExecutionError,
)
from heliostat.storage import models
from heliostat.storage.models import Step
from heliostat.workflows import WorkflowStatus

# Where the pickled DAG lives: its own table (workflow_dags), or the workflows row.
DAG_TABLE: Any = getattr(models, "WorkflowDag", None) or models.Workflow


class _WritesMarker:
    """Unpickling this calls ``open(path, "w")``: the marker file proves it ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _payload(marker: Path, control: Path) -> bytes:
    data = pickle.dumps(_WritesMarker(marker))
    # Control: the same payload, aimed elsewhere, does create its file when unpickled.
    pickle.loads(pickle.dumps(_WritesMarker(control))).close()
    assert control.exists()
    return data


@hs.remote
def add(log: str, k: int, *inputs: int) -> int:
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    return k + sum(inputs)


@hs.remote
def needs_fix(log: str, fixed: str, *inputs: int) -> int:
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    if not os.path.exists(fixed):
        raise RuntimeError("not fixed yet")
    return sum(inputs)


def _failed_workflow(wid: str, log: Path, fixed: Path) -> None:
    """a (idempotent: inline output) -> b (not idempotent: a file) -> c(b, a), which
    fails until ``fixed`` exists: the workflow ends FAILED, a and b committed."""
    a = add.options(**workflow.options(task_id="a")).bind(str(log), 1)
    b = add.options(**workflow.options(task_id="b", idempotent=False)).bind(str(log), 10, a)
    c = needs_fix.options(**workflow.options(task_id="c")).bind(str(log), str(fixed), b, a)
    with pytest.raises(WorkflowExecutionError):
        workflow.run(c, workflow_id=wid)
    assert workflow.get_status(wid) is WorkflowStatus.FAILED


def _runs(log: Path) -> Counter[str]:
    return Counter(log.read_text().splitlines())


def _update(home: Path, table: Any, wid: str, task_id: str | None, **values: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{home / 'heliostat.db'}")
    try:
        where = table.workflow_id == wid
        if task_id is not None:
            where = where & (table.task_id == task_id)
        with engine.begin() as conn:
            assert conn.execute(sa.update(table).where(where).values(**values)).rowcount == 1
    finally:
        engine.dispose()


def _step_row(home: Path, wid: str, task_id: str) -> dict[str, Any]:
    engine = sa.create_engine(f"sqlite:///{home / 'heliostat.db'}")
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(Step).where(Step.workflow_id == wid, Step.task_id == task_id)
            ).first()
            assert row is not None
            return dict(row._mapping)
    finally:
        engine.dispose()


def test_tampered_dag_row_is_refused_and_never_unpickled(
    runtime: Runtime, home: Path, tmp_path: Path
) -> None:
    log, fixed, marker = tmp_path / "steps.log", tmp_path / "fixed", tmp_path / "PWNED"
    _failed_workflow("dag", log, fixed)
    fixed.touch()
    _update(home, DAG_TABLE, "dag", None, dag=_payload(marker, tmp_path / "control"))
    ran = _runs(log)

    with pytest.raises(UnauthenticatedDataError, match="compiled DAG of workflow 'dag'"):
        workflow.resume("dag")
    (_, ref), *_ = workflow.resume_all(include_failed=True)
    with pytest.raises(UnauthenticatedDataError):
        hs.get(ref, timeout=30)

    assert not marker.exists(), "the tampered DAG was unpickled"
    assert _runs(log) == ran, "a step ran from a tampered DAG"
    assert workflow.get_status("dag") is WorkflowStatus.FAILED


@pytest.mark.parametrize(
    "tamper",
    ["inline bytes and checksum", "location and checksum", "location"],
)
def test_tampered_signed_output_row_is_refused_and_never_unpickled(
    runtime: Runtime, home: Path, tmp_path: Path, tamper: str
) -> None:
    log, fixed, marker = tmp_path / "steps.log", tmp_path / "fixed", tmp_path / "PWNED"
    wid = "out-" + tamper.replace(" ", "-")
    _failed_workflow(wid, log, fixed)
    fixed.touch()
    payload = _payload(marker, tmp_path / "control")
    checksum = f"sha256:{hashlib.sha256(payload).hexdigest()}"
    if tamper == "inline bytes and checksum":
        _update(home, Step, wid, "a", output_inline=payload, output_checksum=checksum)
        task_id = "a"
    else:
        planted = tmp_path / "planted.pkl"
        planted.write_bytes(payload)
        values: dict[str, Any] = {"output_location": planted.as_uri()}
        if tamper == "location and checksum":
            values["output_checksum"] = checksum
        _update(home, Step, wid, "b", **values)
        task_id = "b"
    ran = _runs(log)

    with pytest.raises(UnauthenticatedDataError, match=f"step '{task_id}'"):
        workflow.get_output(wid, task_id=task_id)
    with pytest.raises(UnauthenticatedDataError, match=f"step '{task_id}'"):
        workflow.resume(wid)

    assert not marker.exists(), "a tampered output was unpickled"
    assert _runs(log) == ran, "a step ran on a tampered record"


def test_output_bytes_changed_under_their_checksum_are_never_decoded(
    runtime: Runtime, home: Path, tmp_path: Path
) -> None:
    log, fixed, marker = tmp_path / "steps.log", tmp_path / "fixed", tmp_path / "PWNED"
    _failed_workflow("bytes", log, fixed)
    fixed.touch()
    assert _step_row(home, "bytes", "a")["output_inline"] is not None
    _update(home, Step, "bytes", "a", output_inline=_payload(marker, tmp_path / "control"))

    with pytest.raises(CorruptCheckpointError):
        workflow.get_output("bytes", task_id="a")
    # c reads a's output: found corrupt in the worker, a (idempotent) is computed again.
    assert workflow.resume("bytes") == 12
    assert not marker.exists(), "bytes that fail their checksum were unpickled"
    # c's attempt 2 stopped at its corrupt input, before its code ran (no line).
    assert _runs(log) == Counter({"a 1": 1, "b 1": 1, "c 1": 1, "a 2": 1, "c 3": 1})
    assert workflow.get_output("bytes", task_id="a") == 1
