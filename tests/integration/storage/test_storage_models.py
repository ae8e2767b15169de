"""The lineage models on a migrated SQLite database: defaults, times, constraints, cascades."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from heliostat.storage import db
from heliostat.storage.models import (
    AttemptLog,
    Edge,
    Step,
    StepAttempt,
    Transition,
    WalRecord,
    Workflow,
    utcnow,
)
from heliostat.storage.states import AttemptStatus, StepStatus, WalKind, WorkflowStatus


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated SQLite metadata database in ``tmp_path``."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    db.ensure_schema(engine)
    yield engine
    engine.dispose()


def _workflow_with_steps(session: Session) -> Workflow:
    wf = Workflow(workflow_id="etl", name="load", metadata_={"owner": "ana"})
    session.add(wf)
    session.add_all(
        [
            Step(workflow_id="etl", task_id="extract", function_name="m.extract", position=0),
            Step(
                workflow_id="etl",
                task_id="load",
                function_name="m.load",
                idempotent=False,
                position=1,
            ),
        ]
    )
    session.flush()
    session.add(Edge(workflow_id="etl", parent_task_id="extract", child_task_id="load", position=0))
    return wf


def test_defaults_and_json_round_trip(sqlite_store: sa.Engine) -> None:
    with Session(sqlite_store) as session, session.begin():
        _workflow_with_steps(session)
    with Session(sqlite_store) as session:
        wf = session.get_one(Workflow, "etl")
        assert wf.status is WorkflowStatus.PENDING
        assert wf.metadata_ == {"owner": "ana"}
        assert wf.resume_count == 0
        step = session.get_one(Step, ("etl", "load"))
        assert (step.status, step.attempts, step.max_retries) == (StepStatus.PENDING, 0, 3)
        assert (step.idempotent, step.checkpoint) == (False, True)


def test_attempt_status_takes_attempt_outcomes_only(sqlite_store: sa.Engine) -> None:
    with Session(sqlite_store) as session, session.begin():
        _workflow_with_steps(session)
        session.add(
            StepAttempt(
                workflow_id="etl", task_id="load", attempt=1, status=AttemptStatus.INTERRUPTED
            )
        )
    with pytest.raises(sa.exc.IntegrityError), sqlite_store.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO step_attempts (workflow_id, task_id, attempt, status) "
                "VALUES ('etl', 'load', 2, 'IN_DOUBT')"
            )
        )


def test_a_new_workflow_row_holds_no_lease(sqlite_store: sa.Engine) -> None:
    with Session(sqlite_store) as session, session.begin():
        _workflow_with_steps(session)
    with Session(sqlite_store) as session:
        wf = session.get_one(Workflow, "etl")
        assert (wf.lease_owner, wf.lease_expires_at) == (None, None)
        assert (wf.lease_generation, wf.commit_seq) == (0, 0)
        assert (wf.steps_total, wf.steps_done) == (0, 0)


def test_times_come_back_aware_in_utc(sqlite_store: sa.Engine) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    local = dt.datetime(2026, 11, 21, 13, 30, tzinfo=paris)
    with Session(sqlite_store) as session, session.begin():
        session.add(Workflow(workflow_id="w", created_at=local))
    with Session(sqlite_store) as session:
        got = session.get_one(Workflow, "w").created_at
    assert got == local
    assert got.tzinfo is dt.UTC
    assert got.hour == 12


def test_naive_datetimes_are_refused(sqlite_store: sa.Engine) -> None:
    with (
        pytest.raises(sa.exc.StatementError, match="naive datetime"),
        Session(sqlite_store) as session,
        session.begin(),
    ):
        session.add(Workflow(workflow_id="w", created_at=dt.datetime(2026, 1, 1)))


def test_times_sort_chronologically_across_zones(sqlite_store: sa.Engine) -> None:
    base = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
    zones = [dt.timezone(dt.timedelta(hours=h)) for h in (-5, 0, 9)]
    with Session(sqlite_store) as session, session.begin():
        for i, tz in enumerate(zones):
            at = (base + dt.timedelta(minutes=i)).astimezone(tz)
            session.add(Workflow(workflow_id=f"w{i}", created_at=at))
    with Session(sqlite_store) as session:
        ids = session.scalars(sa.select(Workflow.workflow_id).order_by(Workflow.created_at)).all()
    assert ids == ["w0", "w1", "w2"]


def test_deleting_a_workflow_cascades_to_all_its_rows(sqlite_store: sa.Engine) -> None:
    now = utcnow()
    with Session(sqlite_store) as session, session.begin():
        wf = _workflow_with_steps(session)
        session.add(StepAttempt(workflow_id="etl", task_id="load", attempt=1))
        session.add(
            WalRecord(
                workflow_id="etl",
                task_id="load",
                attempt=1,
                kind=WalKind.INTENT,
                idempotency_key="etl/load/1",
            )
        )
        session.add(AttemptLog(workflow_id="etl", task_id="load", attempt=1, text="hi", size=2))
        session.add(
            Transition(entity="workflow", workflow_id="etl", finish="RUNNING", cause="run", at=now)
        )
        wf.lease_owner = "driver-1"
    with sqlite_store.begin() as conn:
        conn.execute(sa.delete(Workflow).where(Workflow.workflow_id == "etl"))
    with sqlite_store.connect() as conn:
        for model in (Step, StepAttempt, Edge, WalRecord, AttemptLog, Transition):
            count = conn.scalar(sa.select(sa.func.count()).select_from(model))
            assert count == 0, model.__tablename__


def test_attempt_numbers_are_unique_per_step(sqlite_store: sa.Engine) -> None:
    with Session(sqlite_store) as session, session.begin():
        _workflow_with_steps(session)
    with pytest.raises(sa.exc.IntegrityError), Session(sqlite_store) as session, session.begin():
        session.add(StepAttempt(workflow_id="etl", task_id="load", attempt=1))
        session.add(StepAttempt(workflow_id="etl", task_id="load", attempt=1))


def test_wal_kind_is_constrained(sqlite_store: sa.Engine) -> None:
    with Session(sqlite_store) as session, session.begin():
        _workflow_with_steps(session)
    with pytest.raises(sa.exc.IntegrityError), sqlite_store.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO wal (workflow_id, task_id, attempt, kind, created_at) "
                "VALUES ('etl', 'load', 1, 'MAYBE', '2026-01-01 00:00:00')"
            )
        )
