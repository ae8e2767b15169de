"""Small step outputs stored in the step's row: ``steps.output_inline``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

A step whose pickled output is small is checkpointed in the same transaction as its
COMMIT record instead of in a file: one fsync makes both durable (the WAL record and
the data cannot disagree), and the directory fsync a file needs is saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("output_inline", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("output_inline")
