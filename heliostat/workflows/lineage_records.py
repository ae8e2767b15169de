"""What the lineage of a workflow run reads back as: runs, steps, attempts, log pages, WAL.

Frozen records made by :class:`~heliostat.workflows.lineage.LineageReader` from the
rows; the API, the CLI and the UI show them. Times are aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.states import AttemptStatus, StepStatus, WalKind, WorkflowStatus
from heliostat.workflows.lease import LeaseHolder

__all__ = ["AttemptRecord", "LogPage", "StepRecord", "WalEntry", "WorkflowRecord"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """A step as the lineage knows it."""

    task_id: str
    name: str
    status: StepStatus
    attempts: int
    idempotent: bool
    checkpoint: CheckpointRef | None
    output_format: str | None
    error: str | None
    error_type: str | None
    traceback: str | None
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    position: int
    metadata: dict[str, Any]
    idempotency_key: str | None = None
    code_hash: str | None = None
    input_hash: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds its latest attempt executed (not counting its time in the queue)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One attempt of a step."""

    task_id: str
    attempt: int
    status: AttemptStatus
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error: str | None
    error_type: str | None
    traceback: str | None
    worker: str | None

    @property
    def duration(self) -> float | None:
        """Seconds it executed (``None`` if it never reported its start or end)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def queue_seconds(self) -> float | None:
        """Seconds between its INTENT and the start of its execution."""
        if self.queued_at is None or self.started_at is None:
            return None
        return (self.started_at - self.queued_at).total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class LogPage:
    """A window of what one attempt printed, as stored (the last ``LOG_LIMIT`` kept).

    Offsets count characters of the stored text: ``text`` is characters
    ``offset .. offset + len(text)`` of ``length``.
    """

    attempt: int
    text: str
    offset: int
    length: int
    size: int
    """Characters the attempt wrote in all (more than ``length`` when its start was cut)."""
    truncated: bool
    """Whether the start of the output was dropped (past ``LOG_LIMIT``)."""

    @property
    def more_before(self) -> bool:
        return self.offset > 0

    @property
    def more_after(self) -> bool:
        return self.offset + len(self.text) < self.length


@dataclass(frozen=True, slots=True, kw_only=True)
class WalEntry:
    """One write-ahead-log row."""

    task_id: str
    attempt: int
    kind: WalKind
    idempotency_key: str | None
    created_at: dt.datetime
    location: str | None
    checksum: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRecord:
    """A workflow as the lineage knows it (``steps`` filled when loaded with them)."""

    workflow_id: str
    status: WorkflowStatus
    name: str
    metadata: dict[str, Any]
    output_task_id: str | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    resume_count: int
    schedule: str | None
    steps_total: int
    steps_done: int
    lease: LeaseHolder
    commit_seq: int
    steps: dict[str, StepRecord] = field(default_factory=dict)
