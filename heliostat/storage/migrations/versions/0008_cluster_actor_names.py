"""A cluster head's actor names.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

New table ``cluster_actor_names``: one row per named actor of the cluster (its
namespace and name, its id, the node that owns it), written by the head as names are
claimed and released, so a restarted head still finds named and detached actors.
Nothing else changes.

Hand-written in the style of ``0007_cluster_nodes.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = 255
NODE_ID = 64


def upgrade() -> None:
    op.create_table(
        "cluster_actor_names",
        sa.Column("namespace", sa.String(length=NAME), nullable=False),
        sa.Column("name", sa.String(length=NAME), nullable=False),
        sa.Column("actor_id", sa.String(length=32), nullable=False),
        sa.Column("owner_node_id", sa.String(length=NODE_ID), nullable=False),
        sa.Column("class_name", sa.String(length=255), nullable=False),
        sa.Column("methods", sa.JSON(), nullable=False),
        sa.Column("detached", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", name=op.f("pk_cluster_actor_names")),
    )
    op.create_index(
        op.f("ix_cluster_actor_names_owner_node_id"),
        "cluster_actor_names",
        ["owner_node_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_cluster_actor_names_owner_node_id"), table_name="cluster_actor_names")
    op.drop_table("cluster_actor_names")
