"""Workflow counts per status kept at write time; indexes for keyset paging and id search.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

* New table ``workflow_status_counts``: ``COUNT_SHARDS`` (16) rows per workflow status,
  whose sum is the number of workflows in that status. The workflow store updates it in
  the transaction of every workflow status change, so the UI reads 128 small rows
  instead of counting the ``workflows`` table. Backfilled here: existing workflows are
  counted in shard 0, every other row starts at 0 (the store only ever updates, so
  every row must exist).
* ``workflows`` indexes: ``(created_at)`` and ``(status, created_at)`` become
  ``(created_at, workflow_id)`` and ``(status, created_at, workflow_id)``, the exact key
  of the UI's keyset pages (a row-value comparison on both columns is then one index
  range); a new index on ``workflow_id`` serves the id prefix search (on PostgreSQL with
  ``varchar_pattern_ops``, which compares bytes whatever the database's collation).

Hand-written in the style of ``0005_timers_step_exceptions.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARDS = 16  # COUNT_SHARDS when this revision was written; never changes here
WORKFLOW_STATES = (
    "PENDING",
    "RUNNING",
    "SUCCESSFUL",
    "FAILED",
    "RESUMABLE",
    "CANCELED",
    "NEEDS_ATTENTION",
)
STATE = 16


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _bigint() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    counts = op.create_table(
        "workflow_status_counts",
        sa.Column("status", sa.String(length=STATE), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("runs", _bigint(), nullable=False, server_default="0"),
        sa.CheckConstraint(
            _in("status", WORKFLOW_STATES), name=op.f("ck_workflow_status_counts_status")
        ),
        sa.PrimaryKeyConstraint("status", "shard", name=op.f("pk_workflow_status_counts")),
    )
    conn = op.get_bind()
    have = {
        str(status): int(n)
        for status, n in conn.execute(
            sa.text("SELECT status, count(*) FROM workflows GROUP BY status")
        )
    }
    op.bulk_insert(
        counts,
        [
            {"status": s, "shard": shard, "runs": have.get(s, 0) if shard == 0 else 0}
            for s in WORKFLOW_STATES
            for shard in range(SHARDS)
        ],
    )

    op.drop_index("ix_workflows_status_created_at", table_name="workflows")
    op.drop_index("ix_workflows_created_at", table_name="workflows")
    op.create_index(
        op.f("ix_workflows_created_at_workflow_id"), "workflows", ["created_at", "workflow_id"]
    )
    op.create_index(
        op.f("ix_workflows_status_created_at_workflow_id"),
        "workflows",
        ["status", "created_at", "workflow_id"],
    )
    op.create_index(
        op.f("ix_workflows_workflow_id"),
        "workflows",
        ["workflow_id"],
        postgresql_ops={"workflow_id": "varchar_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_workflows_workflow_id"), table_name="workflows")
    op.drop_index(op.f("ix_workflows_status_created_at_workflow_id"), table_name="workflows")
    op.drop_index(op.f("ix_workflows_created_at_workflow_id"), table_name="workflows")
    op.create_index("ix_workflows_created_at", "workflows", ["created_at"])
    op.create_index("ix_workflows_status_created_at", "workflows", ["status", "created_at"])
    op.drop_table("workflow_status_counts")
