"""Durable timers, and the exception of a failed step.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

* New table ``workflow_timers``: one row per ``workflow.sleep`` step that has started,
  with the moment it wakes up. The row is written in the group commit of the step's
  first INTENT and never changed, so a resumed workflow waits only for what is left.
* ``steps`` gain ``exception`` (the exception a failed step raised, cloudpickled) and
  ``exception_signature`` (its HMAC with the installation key, checked before it is
  unpickled): ``workflow.get_output`` of a failed workflow raises the step's own error.

Hand-written in the style of ``0004_leases_fencing_lineage.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 255
SIGNATURE = 96


def upgrade() -> None:
    op.create_table(
        "workflow_timers",
        sa.Column("workflow_id", sa.String(length=ID), nullable=False),
        sa.Column("task_id", sa.String(length=ID), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wake_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id", "task_id"],
            ["steps.workflow_id", "steps.task_id"],
            name=op.f("fk_workflow_timers_workflow_id_task_id_steps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workflow_id", "task_id", name=op.f("pk_workflow_timers")),
    )
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("exception", sa.LargeBinary(), nullable=True))
        batch.add_column(
            sa.Column("exception_signature", sa.String(length=SIGNATURE), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("exception_signature")
        batch.drop_column("exception")
    op.drop_table("workflow_timers")
