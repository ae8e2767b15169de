"""What the schedule store reads back and hands the trigger loop: typed, frozen records.

:class:`ScheduleInfo` is a schedule's definition and cursor, :class:`ScheduleRun` one
fire in its history; :class:`FiredRun`, :class:`StrandedRun` and :class:`Claim` are
what :class:`~heliostat.workflows.schedule_store.ScheduleStore` gives the trigger loop
to start.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from heliostat.scheduler.cron import ScheduleSpec
from heliostat.storage.models import ScheduleRunKind
from heliostat.storage.states import WorkflowStatus

__all__ = ["Claim", "FiredRun", "ScheduleInfo", "ScheduleRun", "StrandedRun", "info_from_row"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleInfo:
    """A schedule as stored: its definition and where its firing stands.

    Attributes:
        name: the schedule's name (part of its runs' workflow ids).
        target: ``module:function`` called with ``logical_time=`` (and ``kwargs``) to
            build each run's DAG.
        cron: the cron expression, or None for an interval schedule.
        interval: the interval, or None for a cron schedule.
        timezone: IANA zone the cron expression is read in.
        kwargs: extra keyword arguments for the target.
        catchup: fire every missed interval (True) or only the latest (False).
        max_active_runs: runs of this schedule that may be active at once.
        paused: a paused schedule fires nothing; on resume, catch-up rules apply.
        start, end: bounds of the fire times (inclusive), or None.
        created_at, updated_at: when it was created and last changed by a person.
        last_logical_time: the latest logical time fired (the cursor), or None.
        next_fire_time: the next logical time to fire (after ``last_logical_time``); in
            the past while intervals wait for a free run slot, for the scheduler, or
            for a resume; None when the schedule has no more fire times.
    """

    name: str
    target: str
    cron: str | None
    interval: dt.timedelta | None
    timezone: str
    kwargs: dict[str, Any]
    catchup: bool
    max_active_runs: int
    paused: bool
    start: dt.datetime | None
    end: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    last_logical_time: dt.datetime | None
    next_fire_time: dt.datetime | None

    def spec(self) -> ScheduleSpec:
        """The schedule's timing as a :class:`ScheduleSpec` (validated again)."""
        return ScheduleSpec(
            cron=self.cron,
            interval=self.interval,
            timezone=self.timezone,
            start=self.start,
            end=self.end,
        )

    def to_json(self) -> dict[str, Any]:
        """The schedule as JSON-able values (times as ISO 8601 UTC strings)."""
        return {
            "name": self.name,
            "target": self.target,
            "cron": self.cron,
            "interval_seconds": (
                self.interval.total_seconds() if self.interval is not None else None
            ),
            "timezone": self.timezone,
            "kwargs": self.kwargs,
            "catchup": self.catchup,
            "max_active_runs": self.max_active_runs,
            "paused": self.paused,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_logical_time": _iso(self.last_logical_time),
            "next_fire_time": _iso(self.next_fire_time),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRun:
    """One run a schedule fired (or a person triggered), with its workflow's status.

    Attributes:
        schedule: the schedule's name.
        logical_time: the interval's logical time (a manual run: when it was triggered).
        workflow_id: the run's workflow id (``name@<time>`` / ``name@manual-<time>``).
        kind: ``"scheduled"`` or ``"manual"``.
        fired_at: when it was claimed; for a manual run, when a starter took it (None
            until one does; see "Manual runs" in the module docstring).
        started_at: when the scheduler (or ``trigger``) started it, or tried to (then
            ``error`` says why it failed); None before that, e.g. a manual run recorded
            without a runtime, until a scheduler daemon's next pass starts it.
        error: why building or starting it failed, if it did.
        status: the workflow's status, or None when there is no workflow (not started,
            failed to start, or deleted).
    """

    schedule: str
    logical_time: dt.datetime
    workflow_id: str
    kind: ScheduleRunKind
    fired_at: dt.datetime | None
    started_at: dt.datetime | None
    error: str | None
    status: WorkflowStatus | None

    def to_json(self) -> dict[str, Any]:
        """The run as JSON-able values."""
        return {
            "schedule": self.schedule,
            "logical_time": _iso(self.logical_time),
            "workflow_id": self.workflow_id,
            "kind": str(self.kind),
            "fired_at": _iso(self.fired_at),
            "started_at": _iso(self.started_at),
            "error": self.error,
            "status": str(self.status) if self.status is not None else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FiredRun:
    """A run to start: claimed by the trigger loop, or triggered by hand.

    ``cause_id`` ties the log lines of one claim together.
    """

    schedule: str
    target: str
    kwargs: dict[str, Any]
    logical_time: dt.datetime
    workflow_id: str
    kind: ScheduleRunKind
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StrandedRun:
    """A run that needs the scheduler's help: claimed but never started (``run`` to
    start), or started by a driver that is gone (``resume``: its workflow id)."""

    run: FiredRun
    resume: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """What one :meth:`ScheduleStore.claim_due` batch did.

    Attributes:
        fired: the runs this caller claimed and must start, oldest first per schedule.
        waiting: names of due schedules held back by ``max_active_runs``.
        skipped: missed intervals dropped by schedules that do not catch up, by name.
        last_key: ``(next_fire_at, name)`` of the last schedule examined: where the next
            batch of the same pass starts; None if the batch was empty.
        examined: how many due schedules the batch looked at.
    """

    fired: list[FiredRun]
    waiting: list[str]
    skipped: dict[str, int]
    last_key: tuple[dt.datetime, str] | None
    examined: int


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def info_from_row(m: Any) -> ScheduleInfo:
    """The schedule of a ``schedules`` row (a mapping of its columns)."""
    seconds = m["interval_seconds"]
    return ScheduleInfo(
        name=m["name"],
        target=m["target"],
        cron=m["cron"],
        interval=dt.timedelta(seconds=seconds) if seconds is not None else None,
        timezone=m["timezone"],
        kwargs=dict(m["kwargs"] or {}),
        catchup=bool(m["catchup"]),
        max_active_runs=int(m["max_active_runs"]),
        paused=bool(m["paused"]),
        start=m["start_at"],
        end=m["end_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_logical_time=m["cursor"],
        next_fire_time=m["next_fire_at"],
    )
