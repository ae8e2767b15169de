"""A PostgreSQL connection lost after the server committed, before the client heard.

What a server restart does to a transaction caught at the wrong moment: the server
committed it, the client sees a lost connection, and the lineage write is retried. A
retry must recognise its own committed first try instead of doing the work again or
refusing itself. The fault is made at the client boundary (psycopg's ``commit`` runs,
then the connection is closed and the call raises the driver's OperationalError for a
closed connection), against a real PostgreSQL schema, in the test process's runtime.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import WorkflowExecutionError
from heliostat.storage.models import Transition, WalRecord, Workflow
from heliostat.workflows import WorkflowStatus
from heliostat.workflows.services import runtime_services


class LostAcks:
    """Loses the acknowledgement of the n-th commits (from arming) that ``lose(n)`` picks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lose: Callable[[int], bool] = lambda n: False
        self.commits = 0
        self.lost = 0
        self._lock = threading.Lock()
        real = psycopg.Connection.commit

        def commit(conn: psycopg.Connection) -> None:
            real(conn)
            with self._lock:
                self.commits += 1
                lose = self.lose(self.commits)
                self.lost += lose
            if lose:
                conn.close()
                raise psycopg.OperationalError(
                    "consuming input failed: server closed the connection unexpectedly"
                )

        monkeypatch.setattr(psycopg.Connection, "commit", commit)

    def arm(self, lose: Callable[[int], bool]) -> None:
        with self._lock:
            self.commits = 0
            self.lose = lose


@pytest.fixture
def on_postgres(
    runtime: Runtime,
    home: Path,
    pg_shared: None,
    pg_schema_url: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    url = pg_schema_url()
    monkeypatch.setenv("HELIOSTAT_DB_URL", url)
    services = runtime_services()
    assert services is not None
    services.close_stores()
    assert workflow.list_all() == []  # the schema is made now, before any fault
    yield url
    services.close_stores()


@pytest.fixture
def lost_acks(on_postgres: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LostAcks]:
    acks = LostAcks(monkeypatch)
    yield acks
    acks.arm(lambda n: False)  # before the schema is dropped


@hs.remote
def add(log: str, k: int, *inputs: int) -> int:
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    if k < 0 and not Path(log).with_name("fixed").exists():
        raise RuntimeError("not fixed yet")
    return abs(k) + sum(inputs)


def _chain(log: Path, length: int, fail_last: bool = False) -> Any:
    node = None
    for i in range(length):
        k = -i if fail_last and i == length - 1 else i
        opts = workflow.options(task_id=f"s{i}", idempotent=i % 2 == 0)
        node = add.options(**opts).bind(str(log), k, *([node] if node is not None else []))
    return node


def _runs(log: Path) -> Counter[str]:
    return Counter(log.read_text().splitlines())


def _lineage(url: str, wid: str) -> tuple[list[tuple[str, str]], list[str], int]:
    """(workflow transitions (start, finish), WAL COMMIT task ids, resume_count)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            moves = conn.execute(
                sa.select(Transition.start, Transition.finish)
                .where(Transition.workflow_id == wid, Transition.entity == "workflow")
                .order_by(Transition.id)
            ).all()
            commits = conn.execute(
                sa.select(WalRecord.task_id).where(
                    WalRecord.workflow_id == wid, WalRecord.kind == "COMMIT"
                )
            ).all()
            resumes = conn.execute(
                sa.select(Workflow.resume_count).where(Workflow.workflow_id == wid)
            ).scalar_one()
    finally:
        engine.dispose()
    return [(str(s), str(f)) for s, f in moves], [c[0] for c in commits], resumes


@pytest.mark.parametrize("parity", [0, 1])
def test_lost_acks_of_group_commits_are_retried_without_rerunning_a_step(
    lost_acks: LostAcks, on_postgres: str, tmp_path: Path, parity: int
) -> None:
    log = tmp_path / "steps.log"
    dag = _chain(log, 8)
    # Every other commit after the create (the create's own has a test below).
    lost_acks.arm(lambda n: n > 1 and n % 2 == parity)

    assert workflow.run(dag, workflow_id="acks") == sum(range(8))

    assert lost_acks.lost >= 4, lost_acks.lost
    assert _runs(log) == Counter(f"s{i} 1" for i in range(8))
    moves, commits, resumes = _lineage(on_postgres, "acks")
    assert moves == [("None", "RUNNING"), ("RUNNING", "SUCCESSFUL")], moves
    assert Counter(commits) == Counter(f"s{i}" for i in range(8))
    assert resumes == 0


def test_lost_ack_of_the_create_does_not_refuse_the_run_itself(
    lost_acks: LostAcks, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    dag = _chain(log, 3)
    lost_acks.arm(lambda n: n == 1)  # the first commit of the run: the create

    assert workflow.run(dag, workflow_id="created") == 3

    assert lost_acks.lost == 1
    assert _runs(log) == Counter({"s0 1": 1, "s1 1": 1, "s2 1": 1})


def test_lost_ack_of_a_resume_takeover_records_the_resume_once(
    lost_acks: LostAcks, on_postgres: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    with pytest.raises(WorkflowExecutionError):
        workflow.run(_chain(log, 3, fail_last=True), workflow_id="retaken")
    assert workflow.get_status("retaken") is WorkflowStatus.FAILED
    (tmp_path / "fixed").touch()
    lost_acks.arm(lambda n: n == 1)  # the first commit of the resume: the takeover

    assert workflow.resume("retaken") == 3

    assert lost_acks.lost == 1
    assert _runs(log) == Counter({"s0 1": 1, "s1 1": 1, "s2 1": 1, "s2 2": 1})
    moves, _, resumes = _lineage(on_postgres, "retaken")
    assert moves == [
        ("None", "RUNNING"),
        ("RUNNING", "FAILED"),
        ("FAILED", "RUNNING"),
        ("RUNNING", "SUCCESSFUL"),
    ], moves
    assert resumes == 1


def test_lost_ack_of_a_delete_still_deletes_cleanly(
    lost_acks: LostAcks, on_postgres: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    assert workflow.run(_chain(log, 2), workflow_id="deleted") == 1
    lost_acks.arm(lambda n: n == 1)

    workflow.delete("deleted")

    assert lost_acks.lost == 1
    assert workflow.list_all() == []
