"""A cluster head's node table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

New table ``cluster_nodes``: one row per node that ever joined the cluster, written by
the head at each change of the node's state (joined, suspect, dead, left, back), so a
restarted head knows its nodes and they rejoin without restarting. Nothing else
changes.

Hand-written in the style of ``0005_timers_step_exceptions.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NODE_ID = 64
STATE = 16


def upgrade() -> None:
    op.create_table(
        "cluster_nodes",
        sa.Column("node_id", sa.String(length=NODE_ID), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("is_head", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=STATE), nullable=False),
        sa.Column("incarnation", sa.Integer(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('ALIVE', 'SUSPECT', 'DEAD', 'LEFT')",
            name=op.f("ck_cluster_nodes_state"),
        ),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_cluster_nodes")),
    )
    op.create_index(op.f("ix_cluster_nodes_state"), "cluster_nodes", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_cluster_nodes_state"), table_name="cluster_nodes")
    op.drop_table("cluster_nodes")
