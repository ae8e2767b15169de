"""The SQL lineage schema: SQLAlchemy 2 typed models for workflows, steps and the WAL.

One schema serves SQLite (the embedded default) and PostgreSQL (a cluster); the Alembic
migrations in ``heliostat/storage/migrations`` create exactly these tables, and a test
checks that autogenerate finds no difference on either backend.

Choices:

* **Constraint names** come from :data:`NAMING_CONVENTION`, so both backends (and every
  migration) use the same, predictable names: ``pk_steps``, ``fk_steps_workflow_id_workflows``,
  ``ck_workflows_status``, ``ix_workflows_status_created_at``. A later migration can
  then drop or alter a constraint by name without reflecting first.
* **States** are :class:`~enum.StrEnum` members stored as their string values in a
  ``VARCHAR`` with a CHECK constraint listing them (``native_enum=False``): adding a
  state is an ordinary migration on both backends, with no PostgreSQL ``ALTER TYPE``.
* **Times** are timezone-aware ``datetime`` objects in UTC (:class:`UTCDateTime`), not
  epoch floats: PostgreSQL stores them as ``timestamptz`` and a person reading the
  database (or the UI querying it) sees real times. SQLite has no time type, so they
  are stored as ISO text normalized to UTC, which sorts correctly as text. Naive
  datetimes are refused at bind time, the classic source of silent off-by-hours bugs.
* **Ids** are strings chosen by the user (workflow ids) or derived deterministically
  (task ids), so they are natural primary keys; log-like tables (attempts, WAL,
  transitions) use an auto-increment surrogate key.
* **State changes** are decided in one place, the pure workflow state machine
  (``heliostat.workflows.machine``), against the tables in
  :mod:`heliostat.storage.states`; the workflow store writes what it decided. The
  models hold no behaviour.
* **The lease** of a running workflow lives in its ``workflows`` row (owner, expiry,
  fencing generation), so the one UPDATE that fences a group commit also renews it.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from heliostat.storage.cluster_names import ClusterActorName
from heliostat.storage.cluster_nodes import ClusterNode
from heliostat.storage.sql_base import (
    NAMING_CONVENTION,
    Base,
    UTCDateTime,
    metadata,
    utcnow,
)
from heliostat.storage.sql_base import STATE_LENGTH as _STATE_LENGTH
from heliostat.storage.sql_base import state_column_type as _state_column_type
from heliostat.storage.states import (
    AttemptStatus,
    StepStatus,
    TransitionEntity,
    WalKind,
    WorkflowStatus,
)

__all__ = [
    "COUNT_SHARDS",
    "ID_LENGTH",
    "LOG_LIMIT",
    "NAMING_CONVENTION",
    "AttemptLog",
    "Base",
    "ClusterActorName",
    "ClusterNode",
    "Edge",
    "Schedule",
    "ScheduleRun",
    "ScheduleRunKind",
    "Step",
    "StepAttempt",
    "Transition",
    "UTCDateTime",
    "WalRecord",
    "Workflow",
    "WorkflowDag",
    "WorkflowStatusCount",
    "WorkflowTimer",
    "metadata",
    "utcnow",
]

ID_LENGTH = 255
"""Longest workflow id or task id, in characters."""

LOG_LIMIT = 1 << 20
"""Most characters (code points, not bytes) of one attempt's printed output that are
kept (the last ones). Log pages count offsets in the same unit."""

COUNT_SHARDS = 16
"""Rows per status in ``workflow_status_counts`` (see :class:`WorkflowStatusCount`)."""

_CHECKSUM_LENGTH = 80  # "sha256:" + 64 hex digits
_SIGNATURE_LENGTH = 96  # "hmac-sha256:" + 64 hex digits
_HASH_LENGTH = 64
_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite rowid needs INTEGER


class Workflow(Base):
    """One workflow run: its compiled DAG, status, outcome and lease.

    The lease: a running workflow is run by exactly one driver, named by ``lease_owner``
    (NULL once released), alive while ``lease_expires_at`` is in the future.
    Invariant: ``lease_generation`` only grows; it is bumped by every take-over, and
    every lineage write of a run checks it in the same transaction (the fencing token),
    so a driver whose lease was taken over can write nothing more. ``commit_seq``
    counts the run's group commits (a retried commit whose first try did commit is
    recognised by it).
    """

    __tablename__ = "workflows"
    __table_args__ = (
        # Keyset paging of the UI's list, newest first: (created_at, workflow_id) is the
        # page key, so a page is one index range whatever its depth.
        sa.Index(None, "created_at", "workflow_id"),
        sa.Index(None, "status", "created_at", "workflow_id"),  # the same, one status
        # Prefix search on the id. PostgreSQL: byte-wise operators (varchar_pattern_ops),
        # which the primary key's index, in the database's collation, cannot serve.
        # SQLite compares bytes anyway; there it duplicates the primary key's index.
        sa.Index(None, "workflow_id", postgresql_ops={"workflow_id": "varchar_pattern_ops"}),
    )

    workflow_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    status: Mapped[WorkflowStatus] = mapped_column(
        _state_column_type(WorkflowStatus, "status"), default=WorkflowStatus.PENDING
    )
    name: Mapped[str] = mapped_column(sa.String(ID_LENGTH), default="")
    """A display name: the output step's function name unless the user gave one."""
    entrypoint: Mapped[str | None] = mapped_column(sa.String(1024))
    """``module:function`` that built the DAG, when known (scheduled runs, the CLI)."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    output_task_id: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    error: Mapped[str | None] = mapped_column(sa.Text)
    resume_count: Mapped[int] = mapped_column(default=0)
    schedule: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    """The schedule that fired this run, if one did."""
    steps_total: Mapped[int] = mapped_column(default=0, server_default="0")
    steps_done: Mapped[int] = mapped_column(default=0, server_default="0")
    """Steps known / committed, kept current by the group commit (listings read them)."""
    lease_owner: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    lease_host: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    lease_pid: Mapped[int | None]
    lease_acquired_at: Mapped[dt.datetime | None]
    lease_heartbeat_at: Mapped[dt.datetime | None]
    lease_expires_at: Mapped[dt.datetime | None]
    lease_generation: Mapped[int] = mapped_column(_BIGINT, default=0, server_default="0")
    commit_seq: Mapped[int] = mapped_column(_BIGINT, default=0, server_default="0")

    # Relationships also tell the unit of work to INSERT parents before children.
    # passive_deletes: deleting a workflow leaves the cascade to the database.
    steps: Mapped[list[Step]] = relationship(
        back_populates="workflow", passive_deletes=True, order_by="Step.position"
    )


class WorkflowStatusCount(Base):
    """How many workflows are in each status, kept current at write time.

    The workflows page shows the count of every status; counting 100,000 rows per
    request is what makes other UIs slow. Instead the workflow store adds and subtracts
    here in the transaction that changes a workflow's status (create, take-over,
    cancel, finish, delete): one UPDATE of two rows per change, never per step.

    A status has :data:`COUNT_SHARDS` rows and a workflow always counts in the same one
    (``crc32(workflow_id) % COUNT_SHARDS``): concurrent drivers finishing different
    workflows on PostgreSQL then rarely wait on one row's lock. A status's count is the
    sum of its rows. Invariant: every (status, shard) row exists (the migration writes
    them), so the store only ever updates. A single row may be negative (the migration
    counted existing workflows in shard 0); sums never are.
    """

    __tablename__ = "workflow_status_counts"

    status: Mapped[WorkflowStatus] = mapped_column(
        _state_column_type(WorkflowStatus, "status"), primary_key=True
    )
    shard: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    runs: Mapped[int] = mapped_column(_BIGINT, default=0, server_default="0")


class WorkflowDag(Base):
    """A workflow's compiled graph, pickled, so a resume needs no user code to rebuild it.

    In a table of its own: the workflow row is updated by every group commit (lease,
    counters), and SQLite rewrites a whole row, blob included, on any update.
    """

    __tablename__ = "workflow_dags"

    workflow_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH),
        sa.ForeignKey("workflows.workflow_id", ondelete="CASCADE"),
        primary_key=True,
    )
    dag: Mapped[bytes]
    signature: Mapped[str] = mapped_column(sa.String(_SIGNATURE_LENGTH))
    """HMAC of ``dag`` with the installation key: checked before ``dag`` is unpickled."""


class Step(Base):
    """One step of a workflow: its options, state, attempts and checkpointed output.

    ``status`` is decided by the workflow state machine only. Invariant:
    ``output_checksum`` is set, with either ``output_location`` (a checkpoint file) or
    ``output_inline`` (a small checkpoint kept in the row), only when the step's COMMIT
    record is written (a step with ``checkpoint=False`` has none).
    """

    __tablename__ = "steps"

    workflow_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH),
        sa.ForeignKey("workflows.workflow_id", ondelete="CASCADE"),
        primary_key=True,
    )
    task_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    function_name: Mapped[str] = mapped_column(sa.String(1024), default="")
    status: Mapped[StepStatus] = mapped_column(
        _state_column_type(StepStatus, "status"), default=StepStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    """Attempts started so far (the number of the latest one, attempts count from 1)."""
    max_retries: Mapped[int] = mapped_column(default=3)
    idempotent: Mapped[bool] = mapped_column(default=True)
    checkpoint: Mapped[bool] = mapped_column(default=True)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    output_location: Mapped[str | None] = mapped_column(sa.Text)
    output_checksum: Mapped[str | None] = mapped_column(sa.String(_CHECKSUM_LENGTH))
    output_format: Mapped[str | None] = mapped_column(sa.String(16))
    output_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    output_inline: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    """The checkpoint's bytes when it is small enough to live in this row (then
    ``output_location`` is NULL and ``output_checksum`` covers these bytes)."""
    output_signature: Mapped[str | None] = mapped_column(sa.String(_SIGNATURE_LENGTH))
    """HMAC, with the installation key, of the output's location, checksum and format:
    checked before the output is read, so a row nobody with the key wrote is refused."""
    error: Mapped[str | None] = mapped_column(sa.Text)
    """The latest failed attempt's exception, ``Type: message``."""
    error_type: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    traceback: Mapped[str | None] = mapped_column(sa.Text)
    queued_at: Mapped[dt.datetime | None]
    """When the latest attempt was handed to the engine (its INTENT)."""
    started_at: Mapped[dt.datetime | None]
    """When the latest attempt began executing in its worker."""
    finished_at: Mapped[dt.datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    position: Mapped[int] = mapped_column(default=0)
    """Order of the step in the compiled graph (a topological order), for display."""
    code_hash: Mapped[str | None] = mapped_column(sa.String(_HASH_LENGTH))
    """Hash of the step function's code, to tell a changed definition from a resume."""
    input_hash: Mapped[str | None] = mapped_column(sa.String(_HASH_LENGTH))
    """Hash of the step's arguments (upstream outputs stand in by their step id)."""
    exception: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    """The exception of the attempt that failed the step, cloudpickled (NULL if it could
    not be pickled): what ``workflow.get_output`` of a failed workflow raises."""
    exception_signature: Mapped[str | None] = mapped_column(sa.String(_SIGNATURE_LENGTH))
    """HMAC of ``exception`` with the installation key, checked before it is unpickled."""

    workflow: Mapped[Workflow] = relationship(back_populates="steps")


class StepAttempt(Base):
    """One execution attempt of a step (attempts count from 1).

    Times: ``queued_at`` is the INTENT (handed to the engine), ``started_at`` and
    ``finished_at`` bracket the execution in the worker, so the attempt's duration is
    its execution time and ``started_at - queued_at`` its time in the queue. An
    interrupted attempt has no ``started_at`` when nobody saw it start.
    """

    __tablename__ = "step_attempts"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["workflow_id", "task_id"],
            ["steps.workflow_id", "steps.task_id"],
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("workflow_id", "task_id", "attempt"),
    )

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH))
    task_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH))
    attempt: Mapped[int]
    status: Mapped[AttemptStatus] = mapped_column(
        _state_column_type(AttemptStatus, "status"), default=AttemptStatus.RUNNING
    )
    queued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    """``Type: message`` of what it raised, or why it was interrupted."""
    error_type: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    """The qualified class name of the exception it raised."""
    traceback: Mapped[str | None] = mapped_column(sa.Text)
    """The traceback as the worker formatted it (the user's file names and lines)."""
    worker: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    """Where it ran: ``host:pid`` of the worker, or a node id."""

    step: Mapped[Step] = relationship()


class Edge(Base):
    """A data dependency: ``parent``'s output is argument ``position`` of ``child``.

    ``position`` counts the child's arguments, positional ones first, then keyword ones
    in call order, so a parent feeding two arguments of one child gives two rows.
    """

    __tablename__ = "edges"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["workflow_id", "parent_task_id"],
            ["steps.workflow_id", "steps.task_id"],
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id", "child_task_id"],
            ["steps.workflow_id", "steps.task_id"],
            ondelete="CASCADE",
        ),
        sa.Index(None, "workflow_id", "child_task_id"),  # parents of a step
    )

    workflow_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    parent_task_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    child_task_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    parent: Mapped[Step] = relationship(
        foreign_keys="[Edge.workflow_id, Edge.parent_task_id]", overlaps="child"
    )
    child: Mapped[Step] = relationship(
        foreign_keys="[Edge.workflow_id, Edge.child_task_id]", overlaps="parent"
    )


class WalRecord(Base):
    """One write-ahead-log record: INTENT before an attempt, COMMIT / ABORT after.

    A COMMIT carries the checkpoint's ``location`` and ``checksum`` (both empty for a
    step with ``checkpoint=False``). The log is append-only; the latest record of a
    ``(workflow_id, task_id)`` decides what a resume does with the step.
    """

    __tablename__ = "wal"
    __table_args__ = (sa.Index(None, "workflow_id", "task_id"),)

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("workflows.workflow_id", ondelete="CASCADE")
    )
    task_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH))
    attempt: Mapped[int]
    kind: Mapped[WalKind] = mapped_column(_state_column_type(WalKind, "kind"))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    location: Mapped[str | None] = mapped_column(sa.Text)
    checksum: Mapped[str | None] = mapped_column(sa.String(_CHECKSUM_LENGTH))

    workflow: Mapped[Workflow] = relationship()


class WorkflowTimer(Base):
    """The wake-up time of a ``workflow.sleep`` step, fixed when it first started.

    Written in the group commit of the step's first INTENT and never changed: a
    resumed workflow reads it and waits only for the rest of the duration.
    """

    __tablename__ = "workflow_timers"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["workflow_id", "task_id"],
            ["steps.workflow_id", "steps.task_id"],
            ondelete="CASCADE",
        ),
    )

    workflow_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    set_at: Mapped[dt.datetime]
    """When the timer was set (the step's first INTENT)."""
    wake_at: Mapped[dt.datetime]
    """When the step completes: ``set_at`` plus the sleep's duration."""


class AttemptLog(Base):
    """What one attempt of a step printed (stdout and stderr interleaved, as written).

    Bounded: only the last ``LOG_LIMIT`` bytes of an attempt's output are kept
    (``size`` says how much it wrote in all, ``truncated`` whether the start is gone).
    Its own table, so listings of attempts never carry the text.
    """

    __tablename__ = "attempt_logs"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["workflow_id", "task_id"],
            ["steps.workflow_id", "steps.task_id"],
            ondelete="CASCADE",
        ),
    )

    workflow_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    attempt: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.Text, default="")
    size: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    truncated: Mapped[bool] = mapped_column(default=False)


_WORKFLOW_VALUES = ", ".join(f"'{s.value}'" for s in WorkflowStatus)
_STEP_VALUES = ", ".join(f"'{s.value}'" for s in StepStatus)


class Transition(Base):
    """One state change of a workflow or a step (lineage; append-only).

    Every workflow change is here. A step's ordinary path, PENDING -> RUNNING -> SUCCESSFUL,
    is not: its WAL records say the same (INTENT, COMMIT, each with its time), and the
    group commit writes one row fewer per record. The step changes the WAL does not show
    are: failures, retries, IN_DOUBT, re-runs, recovery after a crash, resolutions.

    ``start`` is NULL for the row recording creation. The CHECK constraints make the
    two columns hold states of the entity's own enum.
    """

    __tablename__ = "transitions"
    __table_args__ = (
        sa.CheckConstraint(
            f"(entity = 'workflow' AND finish IN ({_WORKFLOW_VALUES}) "
            f"AND (start IS NULL OR start IN ({_WORKFLOW_VALUES}))) OR "
            f"(entity = 'step' AND finish IN ({_STEP_VALUES}) "
            f"AND (start IS NULL OR start IN ({_STEP_VALUES})))",
            name="states",
        ),
        sa.Index(None, "workflow_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    entity: Mapped[TransitionEntity] = mapped_column(_state_column_type(TransitionEntity, "entity"))
    workflow_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("workflows.workflow_id", ondelete="CASCADE")
    )
    task_id: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    start: Mapped[str | None] = mapped_column(sa.String(_STATE_LENGTH))
    finish: Mapped[str] = mapped_column(sa.String(_STATE_LENGTH))
    cause: Mapped[str] = mapped_column(sa.Text, default="")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    workflow: Mapped[Workflow] = relationship()


# --- schedules --------------------------------------------------------------------------


class ScheduleRunKind(StrEnum):
    """How a schedule's run came about: its cron or interval fired, or someone said "now"."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"


class Schedule(Base):
    """A cron or interval schedule that fires workflow runs of a ``module:function`` target.

    Exactly one of ``cron`` and ``interval_seconds`` is set (a CHECK constraint says so).
    The trigger loop's bookkeeping:

    * ``cursor``: the latest logical time fired (claimed); NULL before the first. Editing
      the schedule keeps it, so no interval at or before it fires again.
    * ``next_fire_at``: the first fire time after ``cursor`` (before the first fire: the
      first one after the start or the creation), NULL when the schedule has no more
      (past its end). The loop's one query for due work is "unpaused, ``next_fire_at``
      <= now, oldest first", served by the ``(paused, next_fire_at)`` index. It is at or
      before now while missed intervals wait for a free slot (``max_active_runs``).
    * ``updated_at`` changes when a person changes the schedule (create, edit, pause,
      resume), not when the loop fires it.
    """

    __tablename__ = "schedules"
    __table_args__ = (
        sa.CheckConstraint("(cron IS NULL) <> (interval_seconds IS NULL)", name="timing"),
        sa.CheckConstraint("max_active_runs >= 1", name="max_active_runs"),
        sa.Index(None, "paused", "next_fire_at"),
    )

    name: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    target: Mapped[str] = mapped_column(sa.String(1024))
    """``module:function`` called with the logical time to build the run's DAG."""
    cron: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    interval_seconds: Mapped[int | None] = mapped_column(sa.BigInteger)
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Keyword arguments for the target, besides ``logical_time`` (JSON)."""
    catchup: Mapped[bool] = mapped_column(default=False)
    max_active_runs: Mapped[int] = mapped_column(default=1)
    paused: Mapped[bool] = mapped_column(default=False)
    start_at: Mapped[dt.datetime | None]
    end_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    cursor: Mapped[dt.datetime | None]
    next_fire_at: Mapped[dt.datetime | None]


class ScheduleRun(Base):
    """One run a schedule fired: the claim of one interval, or a manual trigger.

    A row is the claim: inserting it is what fires an interval, and the unique
    ``(schedule_name, logical_time, kind)`` makes a second claim of the same interval
    fail, whichever process tries. Manual runs sit beside scheduled ones (a trigger at
    exactly 02:00 does not take the 02:00 interval) with ids of their own.

    ``started_at`` is set once the run was handed to the workflow engine, or starting
    it failed (then ``error`` says why: a target that gave no DAG, say). A row without
    ``started_at`` whose ``fired_at`` is older than a grace period was claimed by a
    scheduler that died before starting it, and is started again (under the same
    workflow id, so never twice). A manual run recorded where nothing could start it
    is a request (``fired_at`` NULL) that the next scheduler pass takes. Deleting the
    schedule deletes these rows; the runs' workflows stay.
    """

    __tablename__ = "schedule_runs"
    __table_args__ = (
        sa.UniqueConstraint("schedule_name", "logical_time", "kind"),
        sa.Index(None, "started_at"),  # runs not started yet, or started just now
    )

    workflow_id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    schedule_name: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("schedules.name", ondelete="CASCADE")
    )
    logical_time: Mapped[dt.datetime]
    kind: Mapped[ScheduleRunKind] = mapped_column(
        _state_column_type(ScheduleRunKind, "kind"), default=ScheduleRunKind.SCHEDULED
    )
    fired_at: Mapped[dt.datetime | None] = mapped_column(default=utcnow)
    """When a scheduler claimed it (or a process took it to start it); NULL for a manual
    run recorded as a request that no scheduler has taken yet."""
    started_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text)

    schedule: Mapped[Schedule] = relationship()
