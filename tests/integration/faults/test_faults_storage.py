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
from heliostat.exceptions import StorageError, WorkflowNotFoundError
from heliostat.workflows import WorkflowStatus
from heliostat.workflows.services import runtime_services

KIB = 1024
SQL_TEXT = ("INSERT", "UPDATE ", "SELECT", "[SQL", "sqlite3.", "OperationalError", "%(")


@hs.remote
def produce(log: str, size: int, *inputs: Any) -> Any:
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
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


def _reopen_stores() -> None:
    services = runtime_services()
    if services is not None:
        services.close_stores()


def test_full_checkpoint_disk_stops_resumable_with_storage_error_and_resumes(
    runtime: Runtime,
    home: Path,
    tmp_path: Path,
    tmpfs: Callable[[Path, int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disk = tmpfs(tmp_path / "checkpoints", 1024 * KIB)
    monkeypatch.setenv("HELIOSTAT_STORAGE", disk.as_uri())
    _reopen_stores()
    ballast = _fill(disk, 300 * KIB)
    log = tmp_path / "steps.log"
    # "first" is not idempotent: its output goes to a file (a small one fits).
    first = _step("first", log, 0, 41, idempotent=False)
    dag = _step("last", log, 0, _step("big", log, 600 * KIB, first))

    with pytest.raises(StorageError) as stopped:
        workflow.run(dag, workflow_id="full-disk")

    message = str(stopped.value)
    print(message)
    assert str(disk) in message and "HELIOSTAT_STORAGE" in message, message
    assert "'big'" in message and "ENOSPC" in message, message
    assert workflow.get_status("full-disk") is WorkflowStatus.RESUMABLE
    assert workflow.get_metadata("full-disk", "first")["status"] == "SUCCESSFUL"
    assert _runs(log) == Counter({"first 1": 1, "big 1": 1})
    assert not [p for p in disk.rglob("*.tmp-*")], "a partial checkpoint was left"

    ballast.unlink()
    assert workflow.resume("full-disk") == 600 * KIB + 1
    # "first" committed before the disk filled: not run again.
    assert _runs(log) == Counter({"first 1": 1, "big 1": 1, "big 2": 1, "last 1": 1})
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
    node = None
    for i in range(12):  # each ~40 KiB output is kept inline, in the database
        node = _step(f"s{i}", log, 40 * KIB, *([node] if node is not None else []))
    ballast = _fill(home, 200 * KIB)

    with pytest.raises(StorageError) as stopped:
        workflow.run(node, workflow_id="full-db")

    message = str(stopped.value)
    print(message)
    db = home / "heliostat.db"
    assert type(stopped.value) is StorageError
    assert str(db) in message and "HELIOSTAT_HOME" in message, message
    assert "HELIOSTAT_DB_URL" in message, message
    assert not [w for w in SQL_TEXT if w in message], message
    ran = _runs(log)
    assert 0 < len(ran) < 12, ran

    ballast.unlink()
    poll(
        lambda: workflow.get_status("full-db") is WorkflowStatus.RESUMABLE,
        10,
        "the stopped run to read as RESUMABLE",
        interval=0.05,
    )
    committed = {
        t
        for t in (f"s{i}" for i in range(12))
        if workflow.get_metadata("full-db", t)["status"] == "SUCCESSFUL"
    }
    assert committed, "nothing committed before the disk filled"
    assert workflow.resume("full-db") == b"x" * (40 * KIB)
    after = _runs(log)
    for task_id in committed:
        assert after[f"{task_id} 1"] == 1 and after[f"{task_id} 2"] == 0, (task_id, after)
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
    monkeypatch.setenv("HELIOSTAT_STORAGE", url)
    # As if s3fs were not installed, whether or not it is here.
    monkeypatch.setitem(sys.modules, "s3fs", None)
    registry = importlib.import_module("fsspec.registry")._registry
    monkeypatch.delitem(registry, "s3", raising=False)
    _reopen_stores()
    log = tmp_path / "steps.log"

    with pytest.raises(StorageError) as refused:
        workflow.run(_step("only", log, 0, 1), workflow_id="bad-url")

    message = str(refused.value)
    assert all(w in message for w in words), message
    assert not log.exists(), "a step ran"
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("bad-url")
    assert workflow.list_all() == []
