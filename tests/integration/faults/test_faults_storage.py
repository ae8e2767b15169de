"""Storage that cannot take a write: a full checkpoint disk, a full disk under the SQLite
lineage, and checkpoint URLs nothing can serve.

The full disks are small tmpfs mounts (``mount -t tmpfs -o size=...``), filled with a
ballast file; room is made by deleting the ballast. Steps run in real worker processes
of a runtime in this process and append ``"<task id> <attempt>"`` to a log.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faultlab import poll

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import (
    StorageError,
    WorkflowExecutionError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
)
from heliostat.workflows import WorkflowStatus
from heliostat.workflows.services import runtime_services

KIB = 1024
SQL_TEXT = ("INSERT", "UPDATE ", "SELECT", "[SQL", "sqlite3.", "OperationalError", "%(")


@hs.remote
def produce(log: str, size: int, *inputs: Any) -> Any:
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    if size < 0:
        raise RuntimeError("this step always fails")
    if size:
        return b"x" * size
    return sum(len(i) if isinstance(i, bytes) else i for i in inputs) + 1


def _runs(log: Path) -> Counter[str]:
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


def _step(task_id: str, log: Path, size: int, *parents: Any, idempotent: bool = True) -> Any:
    opts = workflow.options(task_id=task_id, idempotent=idempotent)
    return produce.options(**opts).bind(str(log), size, *parents)


def _fill(directory: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``directory``'s disk."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    ballast = directory / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return ballast


def _resume_refusal(wid: str) -> StorageError | None:
    """The StorageError of a resume; ``None`` while a stopped run's lease is live."""
    try:
        workflow.resume(wid)
    except WorkflowLeaseError:
        return None
    except StorageError as exc:
        return exc
    pytest.fail(f"{wid} resumed to the end on a full disk")


def _reopen_stores() -> None:
    services = runtime_services()
    if services is not None:
        services.close_stores()


@hs.remote
def charge(log: str, ledger: str, size: int, *inputs: Any) -> bytes:
    """Not idempotent: its effect is a ledger line, once per idempotency key."""
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    with open(ledger, "a") as f:
        f.write(f"{ctx.idempotency_key}\n")
    return b"x" * size


def _charged_already(ledger: Path, size: int) -> Callable[[str], Any]:
    def on_in_doubt(key: str) -> Any:
        done = ledger.exists() and key in ledger.read_text().splitlines()
        return b"x" * size if done else workflow.RERUN

    return on_in_doubt


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
def test_full_checkpoint_disk_stops_resumable_with_storage_error_and_resumes(
    runtime: Runtime,
    home: Path,
    tmp_path: Path,
    tmpfs: Callable[[Path, int], Path],
    monkeypatch: pytest.MonkeyPatch,
    idempotent: bool,
) -> None:
    disk = tmpfs(tmp_path / "checkpoints", 1024 * KIB)
    monkeypatch.setenv("HELIOSTAT_STORAGE", disk.as_uri())
    _reopen_stores()
    ballast = _fill(disk, 300 * KIB)
    log, ledger, size = tmp_path / "steps.log", tmp_path / "ledger", 600 * KIB
    # "first" is not idempotent: its output goes to a file (a small one fits).
    first = _step("first", log, 0, 41, idempotent=False)
    if idempotent:
        big = _step("big", log, size, first)
    else:  # its effect happened, its output was lost: its hook must settle it
        opts = workflow.options(
            task_id="big", idempotent=False, on_in_doubt=_charged_already(ledger, size)
        )
        big = charge.options(**opts).bind(str(log), str(ledger), size, first)
    dag = _step("last", log, 0, big)

    with pytest.raises(StorageError) as stopped:
        workflow.run(dag, workflow_id="full-disk")

    message = str(stopped.value)
    assert str(disk) in message and "HELIOSTAT_STORAGE" in message, message
    assert "big" in message and "ENOSPC" in message, message
    assert workflow.get_status("full-disk") is WorkflowStatus.RESUMABLE
    assert workflow.get_metadata("full-disk", "first")["status"] == "SUCCESSFUL"
    assert _runs(log) == Counter({"first 1": 1, "big 1": 1})
    assert not [p for p in disk.rglob("*.tmp-*")], "a partial checkpoint was left"

    ballast.unlink()
    assert workflow.resume("full-disk") == size + 1
    # "first" committed before the disk filled: not run again. "big" runs again if it
    # is idempotent; if not, its hook found its effect done and gave its result.
    again = {"big 2": 1} if idempotent else {}
    assert _runs(log) == Counter({"first 1": 1, "big 1": 1, "last 1": 1, **again})
    if not idempotent:
        assert ledger.read_text().splitlines() == ["full-disk:big"]
    assert workflow.get_status("full-disk") is WorkflowStatus.SUCCESSFUL


def test_full_disk_under_the_sqlite_lineage_gives_storage_error_and_stays_resumable(
    runtime: Runtime,
    tmp_path: Path,
    tmpfs: Callable[[Path, int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmpfs(tmp_path / "home", 2048 * KIB)
    monkeypatch.setenv("HELIOSTAT_HOME", str(home))
    monkeypatch.setenv("HELIOSTAT_STORAGE", (tmp_path / "checkpoints").as_uri())
    monkeypatch.setenv("HELIOSTAT_LEASE_TIMEOUT", "1")
    monkeypatch.delenv("HELIOSTAT_DB_URL", raising=False)
    _reopen_stores()
    assert workflow.list_all() == []  # the database and its schema exist now
    log = tmp_path / "steps.log"
    node: Any = None
    for i in range(12):  # each ~40 KiB output is kept inline, in the database
        node = _step(f"s{i}", log, 40 * KIB, *([node] if node is not None else []))
    ballast = _fill(home, 200 * KIB)

    with pytest.raises(StorageError) as stopped:
        workflow.run(node, workflow_id="full-db")

    message = str(stopped.value)
    db = home / "heliostat.db"
    assert type(stopped.value) is StorageError
    assert str(db) in message and "HELIOSTAT_HOME" in message, message
    assert "HELIOSTAT_DB_URL" in message, message
    assert not [w for w in SQL_TEXT if w in message], message
    ran = _runs(log)
    assert 0 < len(ran) < 12, ran
    # Still full: a resume stops the same way (once the stopped run's lease lapses).
    again = poll(lambda: _resume_refusal("full-db"), 10, "a resume on the full disk")
    assert type(again) is StorageError and str(db) in str(again), again
    assert not [w for w in SQL_TEXT if w in str(again)], again

    ballast.unlink()
    poll(
        lambda: workflow.get_status("full-db") is WorkflowStatus.RESUMABLE,
        10,
        "the stopped resume to read as RESUMABLE",
        interval=0.05,
    )
    committed = {
        t
        for t in (f"s{i}" for i in range(12))
        if workflow.get_metadata("full-db", t)["status"] == "SUCCESSFUL"
    }
    assert committed, "nothing committed before the disk filled"
    before = len(log.read_text().splitlines())
    assert workflow.resume("full-db") == b"x" * (40 * KIB)
    later = [line.split()[0] for line in log.read_text().splitlines()[before:]]
    assert not set(later) & committed, (later, committed)
    assert set(later) | committed == {f"s{i}" for i in range(12)}
    assert workflow.get_status("full-db") is WorkflowStatus.SUCCESSFUL


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("bogus://x", ["'bogus'", "HELIOSTAT_STORAGE"]),
        ("s3://bucket/checkpoints", ["pip install s3fs", "HELIOSTAT_STORAGE"]),
    ],
)
def test_unusable_checkpoint_url_is_refused_before_any_row_is_written(
    runtime: Runtime,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    words: list[str],
) -> None:
    log = tmp_path / "steps.log"
    with pytest.raises(WorkflowExecutionError):  # with good storage: FAILED, resumable
        workflow.run(_step("only", log, -1), workflow_id="earlier")
    before = workflow.get_metadata("earlier")
    monkeypatch.setenv("HELIOSTAT_STORAGE", url)
    # As if s3fs were not installed, whether or not it is here.
    monkeypatch.setitem(sys.modules, "s3fs", None)
    registry = importlib.import_module("fsspec.registry")._registry
    monkeypatch.delitem(registry, "s3", raising=False)
    _reopen_stores()
    ran = _runs(log)

    with pytest.raises(StorageError) as refused:
        workflow.run(_step("only", log, 0, 1), workflow_id="bad-url")
    with pytest.raises(StorageError) as refused_resume:
        workflow.resume("earlier")

    for error in (refused.value, refused_resume.value):
        assert all(w in str(error) for w in words), error
    assert _runs(log) == ran, "a step ran"
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("bad-url")
    assert workflow.list_all() == [("earlier", WorkflowStatus.FAILED)]
    assert workflow.get_metadata("earlier") == before, "the refused resume wrote lineage"
