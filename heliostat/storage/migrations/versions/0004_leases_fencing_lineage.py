"""Fenced leases in the workflow row, attempt outcomes, logs, definition hashes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

* The lease moves from its own table into ``workflows`` (``lease_*`` columns), with a
  fencing generation that only grows and a group-commit sequence number: the one
  UPDATE that fences a group commit then also renews the lease. Live leases are
  copied over; the ``leases`` table is dropped.
* The pickled DAG moves out of ``workflows`` into ``workflow_dags`` with its HMAC
  signature (empty for DAGs stored before signing: they are refused, never unpickled):
  every group commit updates the workflow row, and SQLite rewrites a whole row, a
  megabyte of DAG included, on any update.
* ``workflows`` also gains ``schedule`` (the schedule that fired the run) and the step
  counters the listings read.
* ``step_attempts.status`` takes attempt outcomes (RUNNING, SUCCESSFUL, FAILED,
  INTERRUPTED) instead of step states; attempts gain ``queued_at`` (``started_at`` is
  now the start of execution, NULL when nobody saw it), ``error_type`` and
  ``traceback``. Old attempts in a state an attempt cannot have become INTERRUPTED.
* ``steps`` gain ``queued_at``, ``error_type``, ``output_signature``, ``code_hash``
  and ``input_hash``.
* New table ``attempt_logs``: the last megabyte an attempt printed.
* ``schedule_runs.fired_at`` may be NULL: a manual run recorded as a request that no
  scheduler has taken yet. Old unstarted manual runs become such requests.

Hand-written in the style of ``0001_initial.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 255
SIGNATURE = 96
HASH = 64
ATTEMPT_STATES = ("RUNNING", "SUCCESSFUL", "FAILED", "INTERRUPTED")
STEP_STATES = ("PENDING", "RUNNING", "SUCCESSFUL", "FAILED", "SKIPPED", "IN_DOUBT")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _time(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _bigint() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(sa.Column("schedule", sa.String(length=ID), nullable=True))
        batch.add_column(sa.Column("steps_total", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("steps_done", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("lease_owner", sa.String(length=ID), nullable=True))
        batch.add_column(sa.Column("lease_host", sa.String(length=ID), nullable=True))
        batch.add_column(sa.Column("lease_pid", sa.Integer(), nullable=True))
        batch.add_column(_time("lease_acquired_at"))
        batch.add_column(_time("lease_heartbeat_at"))
        batch.add_column(_time("lease_expires_at"))
        batch.add_column(
            sa.Column("lease_generation", _bigint(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("commit_seq", _bigint(), nullable=False, server_default="0"))

    # Carry live leases over, and the counters of existing workflows.
    for column in ("owner", "host", "pid", "acquired_at", "heartbeat_at", "expires_at"):
        op.execute(
            f"UPDATE workflows SET lease_{column} = "
            f"(SELECT leases.{column} FROM leases "
            "WHERE leases.workflow_id = workflows.workflow_id)"
        )
    op.execute("UPDATE workflows SET lease_generation = 1 WHERE lease_owner IS NOT NULL")
    op.execute(
        "UPDATE workflows SET steps_total = "
        "(SELECT count(*) FROM steps WHERE steps.workflow_id = workflows.workflow_id), "
        "steps_done = (SELECT count(*) FROM steps WHERE steps.workflow_id = "
        "workflows.workflow_id AND steps.status = 'SUCCESSFUL')"
    )
    op.drop_index(op.f("ix_leases_expires_at"), table_name="leases")
    op.drop_table("leases")

    op.create_table(
        "workflow_dags",
        sa.Column("workflow_id", sa.String(length=ID), nullable=False),
        sa.Column("dag", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.String(length=SIGNATURE), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.workflow_id"],
            name=op.f("fk_workflow_dags_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workflow_id", name=op.f("pk_workflow_dags")),
    )
    # Unsigned: a DAG written before this version is refused until its run is deleted.
    op.execute(
        "INSERT INTO workflow_dags (workflow_id, dag, signature) "
        "SELECT workflow_id, dag, '' FROM workflows WHERE dag IS NOT NULL"
    )
    with op.batch_alter_table("workflows") as batch:
        batch.drop_column("dag")

    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("output_signature", sa.String(length=SIGNATURE), nullable=True))
        batch.add_column(sa.Column("error_type", sa.String(length=ID), nullable=True))
        batch.add_column(_time("queued_at"))
        batch.add_column(sa.Column("code_hash", sa.String(length=HASH), nullable=True))
        batch.add_column(sa.Column("input_hash", sa.String(length=HASH), nullable=True))

    # The old CHECK allows no INTERRUPTED: drop it, map the old values, then add the new.
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_constraint(op.f("ck_step_attempts_status"), type_="check")
        batch.add_column(_time("queued_at"))
        batch.add_column(sa.Column("error_type", sa.String(length=ID), nullable=True))
        batch.add_column(sa.Column("traceback", sa.Text(), nullable=True))
        batch.alter_column("started_at", existing_type=sa.DateTime(timezone=True), nullable=True)
    op.execute(
        "UPDATE step_attempts SET status = 'INTERRUPTED' "
        f"WHERE NOT ({_in('status', ATTEMPT_STATES)})"
    )
    op.execute("UPDATE step_attempts SET queued_at = started_at")
    with op.batch_alter_table("step_attempts") as batch:
        batch.create_check_constraint(
            op.f("ck_step_attempts_status"), _in("status", ATTEMPT_STATES)
        )

    with op.batch_alter_table("schedule_runs") as batch:
        batch.alter_column("fired_at", existing_type=sa.DateTime(timezone=True), nullable=True)
    op.execute(
        "UPDATE schedule_runs SET fired_at = NULL WHERE kind = 'manual' "
        "AND started_at IS NULL AND error IS NULL"
    )

    op.create_table(
        "attempt_logs",
        sa.Column("workflow_id", sa.String(length=ID), nullable=False),
        sa.Column("task_id", sa.String(length=ID), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id", "task_id"],
            ["steps.workflow_id", "steps.task_id"],
            name=op.f("fk_attempt_logs_workflow_id_task_id_steps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workflow_id", "task_id", "attempt", name=op.f("pk_attempt_logs")),
    )


def downgrade() -> None:
    op.drop_table("attempt_logs")
    op.execute("UPDATE schedule_runs SET fired_at = logical_time WHERE fired_at IS NULL")
    with op.batch_alter_table("schedule_runs") as batch:
        batch.alter_column("fired_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_constraint(op.f("ck_step_attempts_status"), type_="check")
    op.execute("UPDATE step_attempts SET status = 'FAILED' WHERE status = 'INTERRUPTED'")
    op.execute("UPDATE step_attempts SET started_at = queued_at WHERE started_at IS NULL")
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_column("traceback")
        batch.drop_column("error_type")
        batch.drop_column("queued_at")
        batch.create_check_constraint(op.f("ck_step_attempts_status"), _in("status", STEP_STATES))
        batch.alter_column("started_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    with op.batch_alter_table("steps") as batch:
        for column in ("input_hash", "code_hash", "queued_at", "error_type", "output_signature"):
            batch.drop_column(column)
    op.create_table(
        "leases",
        sa.Column("workflow_id", sa.String(length=ID), nullable=False),
        sa.Column("owner", sa.String(length=ID), nullable=False),
        sa.Column("host", sa.String(length=ID), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.workflow_id"],
            name=op.f("fk_leases_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workflow_id", name=op.f("pk_leases")),
    )
    op.create_index(op.f("ix_leases_expires_at"), "leases", ["expires_at"])
    op.execute(
        "INSERT INTO leases (workflow_id, owner, host, pid, acquired_at, heartbeat_at, "
        "expires_at) SELECT workflow_id, lease_owner, coalesce(lease_host, ''), "
        "coalesce(lease_pid, 0), lease_acquired_at, lease_heartbeat_at, lease_expires_at "
        "FROM workflows WHERE lease_owner IS NOT NULL"
    )
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(sa.Column("dag", sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE workflows SET dag = (SELECT workflow_dags.dag FROM workflow_dags "
        "WHERE workflow_dags.workflow_id = workflows.workflow_id)"
    )
    op.drop_table("workflow_dags")
    with op.batch_alter_table("workflows") as batch:
        for column in (
            "commit_seq",
            "lease_generation",
            "lease_expires_at",
            "lease_heartbeat_at",
            "lease_acquired_at",
            "lease_pid",
            "lease_host",
            "lease_owner",
            "steps_done",
            "steps_total",
            "schedule",
        ):
            batch.drop_column(column)
