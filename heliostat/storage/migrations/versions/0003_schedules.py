"""Schedules and the runs they fired: ``schedules``, ``schedule_runs``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Hand-written in the style of ``0001_initial.py`` (nothing imported from the models,
every constraint and index named with ``op.f``). ``schedule_runs`` is unique on
``(schedule_name, logical_time, kind)``: inserting a row claims an interval, and a
second scheduler (or a restarted one) trying the same interval gets a conflict.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_KINDS = ("scheduled", "manual")

ID = 255


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _time(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(length=ID), nullable=False),
        sa.Column("target", sa.String(length=1024), nullable=False),
        sa.Column("cron", sa.String(length=ID), nullable=True),
        sa.Column("interval_seconds", sa.BigInteger(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("kwargs", sa.JSON(), nullable=False),
        sa.Column("catchup", sa.Boolean(), nullable=False),
        sa.Column("max_active_runs", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        _time("start_at", nullable=True),
        _time("end_at", nullable=True),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        _time("cursor", nullable=True),
        _time("next_fire_at", nullable=True),
        sa.CheckConstraint(
            "(cron IS NULL) <> (interval_seconds IS NULL)", name=op.f("ck_schedules_timing")
        ),
        sa.CheckConstraint("max_active_runs >= 1", name=op.f("ck_schedules_max_active_runs")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_schedules")),
    )
    op.create_index(
        op.f("ix_schedules_paused_next_fire_at"), "schedules", ["paused", "next_fire_at"]
    )

    op.create_table(
        "schedule_runs",
        sa.Column("workflow_id", sa.String(length=ID), nullable=False),
        sa.Column("schedule_name", sa.String(length=ID), nullable=False),
        _time("logical_time", nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        _time("fired_at", nullable=False),
        _time("started_at", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(_in("kind", RUN_KINDS), name=op.f("ck_schedule_runs_kind")),
        sa.ForeignKeyConstraint(
            ["schedule_name"],
            ["schedules.name"],
            name=op.f("fk_schedule_runs_schedule_name_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workflow_id", name=op.f("pk_schedule_runs")),
        sa.UniqueConstraint(
            "schedule_name",
            "logical_time",
            "kind",
            name=op.f("uq_schedule_runs_schedule_name_logical_time_kind"),
        ),
    )
    op.create_index(op.f("ix_schedule_runs_started_at"), "schedule_runs", ["started_at"])


def downgrade() -> None:
    op.drop_table("schedule_runs")
    op.drop_table("schedules")
