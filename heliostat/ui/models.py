"""Typed responses of the JSON API (documented at ``/api/openapi.json``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "ActionResult",
    "AttemptOut",
    "LogOut",
    "ScheduleOut",
    "ScheduleRunOut",
    "StepDetail",
    "StepOut",
    "WalOut",
    "WorkflowDetail",
    "WorkflowPage",
    "WorkflowSummary",
]


class WorkflowSummary(BaseModel):
    """One run in a listing."""

    workflow_id: str
    name: str
    status: str = Field(description="effective status: RUNNING whose driver is gone is RESUMABLE")
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration: float | None = Field(description="seconds run (so far, if running)")
    steps_done: int
    steps_total: int
    schedule: str | None
    error: str | None


class WorkflowPage(BaseModel):
    """A page of runs, the counts per status, and the cursor of the next page."""

    items: list[WorkflowSummary]
    counts: dict[str, int]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class StepOut(BaseModel):
    task_id: str
    name: str
    status: str
    attempts: int
    idempotent: bool
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration: float | None
    error: str | None
    error_type: str | None
    position: int


class AttemptOut(BaseModel):
    task_id: str
    attempt: int
    status: str
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration: float | None
    worker: str | None
    error: str | None
    error_type: str | None
    traceback: str | None


class WorkflowDetail(WorkflowSummary):
    """One run with its steps, edges and attempts."""

    metadata: dict[str, Any]
    resume_count: int
    steps: list[StepOut]
    edges: list[tuple[str, str]]
    attempts: list[AttemptOut]


class WalOut(BaseModel):
    attempt: int
    kind: str
    idempotency_key: str | None
    created_at: dt.datetime
    location: str | None
    checksum: str | None


class LogOut(BaseModel):
    """A page of one attempt's captured output (stdout and stderr as printed).

    Offsets and lengths count characters (Unicode code points), never bytes: ``text``
    is characters ``offset .. offset + len(text)`` of the ``length`` stored, and the
    ``offset`` / ``limit`` parameters of
    ``/api/workflows/{id}/steps/{task}/logs?attempt=N&offset=M&limit=L`` take
    characters too, so a page never splits a character (``size`` as well: what was
    printed in all, of which the last ``length`` are kept).
    """

    attempt: int
    text: str
    unit: Literal["characters"] = Field(
        default="characters", description="what offset, length and the limit parameter count"
    )
    offset: int = Field(description="characters of the stored log before this page")
    length: int = Field(
        description="characters stored for the attempt (its last 1,048,576 are kept)"
    )
    size: int = Field(description="characters the attempt printed in all, kept or not")
    truncated: bool = Field(description="the start of the output was not kept")
    more_before: bool = Field(description="characters before this page are stored")
    more_after: bool = Field(description="characters after this page are stored")


class StepDetail(StepOut):
    """One step with its attempts, error, logs, WAL records and output preview."""

    workflow_id: str
    traceback: str | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    checkpoint: str | None
    checkpoint_size: int | None
    attempts_list: list[AttemptOut]
    logs: list[LogOut]
    wal: list[WalOut]
    preview: dict[str, Any] | None


class ScheduleRunOut(BaseModel):
    logical_time: dt.datetime
    workflow_id: str
    kind: str
    fired_at: dt.datetime | None
    started_at: dt.datetime | None
    error: str | None
    status: str | None
    waiting: str | None = Field(
        default=None, description="why it has not started yet (None once it has)"
    )


class ScheduleOut(BaseModel):
    name: str
    target: str
    cron: str | None
    interval_seconds: float | None
    timezone: str
    paused: bool
    catchup: bool
    max_active_runs: int
    next_fire_times: list[dt.datetime] = Field(description="the next 5 logical times, UTC")
    runs: list[ScheduleRunOut]


class ActionResult(BaseModel):
    """What an action did, and the state it left."""

    ok: bool
    message: str
    status: str | None = None
    workflow_id: str | None = None
