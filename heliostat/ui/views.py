"""Records of the lineage shaped into the API's models, and the reads behind them.

Everything is read through the engine's own read code (:class:`LineageReader` for runs,
the ``heliostat.schedules`` API for schedules), so the UI shows exactly what
``heliostat workflow ...`` shows. Both the JSON API and the pages render from these.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
from typing import Annotated, Any

from fastapi import HTTPException, Query

from heliostat.exceptions import (
    HeliostatError,
    ScheduleNotFoundError,
    UnauthenticatedDataError,
    WorkflowNotFoundError,
)
from heliostat.storage.states import StepStatus, WorkflowStatus
from heliostat.ui.models import (
    AttemptOut,
    LogOut,
    ScheduleOut,
    ScheduleRunOut,
    StepDetail,
    StepOut,
    WalOut,
    WorkflowDetail,
    WorkflowPage,
    WorkflowSummary,
)
from heliostat.ui.preview import preview as preview_checkpoint
from heliostat.ui.state import ACTIVE, LOG_PAGE, UiState, as_utc, utc_now
from heliostat.workflows.lineage import AttemptRecord, LogPage, StepRecord, WorkflowRecord
from heliostat.workflows.triggers import POLL_INTERVAL

__all__ = [
    "LimitQuery",
    "OrderQuery",
    "SearchQuery",
    "StatusQuery",
    "all_schedules",
    "load_run",
    "log_out",
    "parse_statuses",
    "runtimes",
    "schedule_out",
    "step_detail",
    "step_of",
    "summary_of",
    "workflow_detail",
    "workflow_page",
]


def _duration(start: dt.datetime | None, finish: dt.datetime | None, active: bool) -> float | None:
    start = as_utc(start)
    if start is None:
        return None
    end = as_utc(finish) or (utc_now() if active else None)
    return None if end is None else max((end - start).total_seconds(), 0.0)


def summary_of(state: UiState, r: WorkflowRecord) -> WorkflowSummary:
    status = state.effective(r)
    return WorkflowSummary(
        workflow_id=r.workflow_id,
        name=r.name,
        status=status,
        created_at=as_utc(r.created_at) or r.created_at,
        started_at=as_utc(r.started_at),
        finished_at=as_utc(r.finished_at),
        duration=_duration(r.started_at, r.finished_at, status in ACTIVE),
        steps_done=r.steps_done,
        steps_total=r.steps_total,
        schedule=r.schedule,
        error=r.error,
    )


def _step_out(s: StepRecord) -> dict[str, Any]:
    return {
        "task_id": s.task_id,
        "name": s.name,
        "status": str(s.status),
        "attempts": s.attempts,
        "idempotent": s.idempotent,
        "queued_at": as_utc(s.queued_at),
        "started_at": as_utc(s.started_at),
        "finished_at": as_utc(s.finished_at),
        "duration": _duration(s.started_at, s.finished_at, s.status is StepStatus.RUNNING),
        "error": s.error,
        "error_type": s.error_type,
        "position": s.position,
    }


def _attempt_out(a: AttemptRecord) -> AttemptOut:
    return AttemptOut.model_construct(
        task_id=a.task_id,
        attempt=a.attempt,
        status=str(a.status),
        queued_at=as_utc(a.queued_at),
        started_at=as_utc(a.started_at),
        finished_at=as_utc(a.finished_at),
        duration=a.duration,
        worker=a.worker,
        error=a.error,
        error_type=a.error_type,
        traceback=a.traceback,
    )


def _encode_cursor(r: WorkflowRecord) -> str:
    text = f"{(as_utc(r.created_at) or r.created_at).isoformat()}|{r.workflow_id}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        at, wid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(at), wid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(422, f"cursor {cursor[:80]!r} is not one this server gave") from None


def load_run(state: UiState, workflow_id: str) -> WorkflowRecord:
    try:
        return state.store.load(workflow_id)
    except WorkflowNotFoundError:
        raise HTTPException(404, f"No workflow with id {workflow_id!r}.") from None
    except UnauthenticatedDataError as exc:
        # A row nobody with this installation's key wrote: shown as refused, not read.
        raise HTTPException(403, str(exc)) from None


def step_of(record: WorkflowRecord, task_id: str) -> StepRecord:
    step = record.steps.get(task_id)
    if step is None:
        raise HTTPException(404, f"Workflow {record.workflow_id!r} has no step {task_id!r}.")
    return step


StatusQuery = Annotated[
    list[str] | None, Query(description="only these statuses (repeatable; empty: any)")
]


def parse_statuses(values: list[str] | None) -> list[WorkflowStatus] | None:
    """The statuses asked for (blank values ignored: a form's "any" choice).

    Raises:
        HTTPException: 422 for a status that does not exist.
    """
    chosen = [v.strip().upper() for v in values or [] if v.strip()]
    known = {str(s) for s in WorkflowStatus}
    bad = [v for v in chosen if v not in known]
    if bad:
        raise HTTPException(422, f"unknown status {bad[0]!r}; one of {', '.join(sorted(known))}")
    return [WorkflowStatus(v) for v in chosen] or None


LimitQuery = Annotated[int, Query(ge=1, le=500, description="page size")]
SearchQuery = Annotated[str | None, Query(max_length=200, description="text in the id")]
OrderQuery = Annotated[str, Query(pattern="^(asc|desc)$", description="by start time")]


def workflow_page(
    state: UiState,
    status: list[WorkflowStatus] | None,
    search: str | None,
    cursor: str | None,
    limit: int,
    order: str,
) -> WorkflowPage:
    after = _decode_cursor(cursor) if cursor else None
    rows = state.store.list_page(
        status, limit=limit + 1, search=search or None, after=after, newest_first=order == "desc"
    )
    more = len(rows) > limit
    rows = rows[:limit]
    counts = {str(s): n for s, n in state.store.status_counts().items()}
    return WorkflowPage(
        items=[summary_of(state, r) for r in rows],
        counts=counts,
        next_cursor=_encode_cursor(rows[-1]) if more and rows else None,
    )


def workflow_detail(state: UiState, record: WorkflowRecord) -> WorkflowDetail:
    steps = sorted(record.steps.values(), key=lambda s: (s.position, s.task_id))
    return WorkflowDetail(
        **summary_of(state, record).model_dump(),
        metadata=record.metadata,
        resume_count=record.resume_count,
        # Built from our own records: constructed without a second validation (2,000
        # steps validated one by one cost a page tens of milliseconds).
        steps=[StepOut.model_construct(**_step_out(s)) for s in steps],
        edges=state.store.edges(record.workflow_id),
        attempts=[_attempt_out(a) for a in state.store.attempts(record.workflow_id)],
    )


def log_out(page: LogPage) -> LogOut:
    return LogOut(
        attempt=page.attempt,
        text=page.text,
        offset=page.offset,
        length=page.length,
        size=page.size,
        truncated=page.truncated,
        more_before=page.more_before,
        more_after=page.more_after,
    )


def step_detail(
    state: UiState,
    record: WorkflowRecord,
    step: StepRecord,
    *,
    log_attempt: int | None = None,
    log_offset: int | None = None,
) -> StepDetail:
    """The step; its logs are each attempt's last page, except attempt ``log_attempt``,
    shown from ``log_offset`` (its tail when None)."""
    wid, tid = record.workflow_id, step.task_id
    pages = {p.attempt: p for p in state.store.log_pages(wid, tid, limit=LOG_PAGE)}
    if log_attempt in pages:
        for p in state.store.log_pages(
            wid, tid, limit=LOG_PAGE, attempt=log_attempt, offset=log_offset
        ):
            pages[p.attempt] = p
    pv = None
    if step.checkpoint is not None and step.status is StepStatus.SUCCESSFUL:
        pv = preview_checkpoint(step.checkpoint, state.storage)
    return StepDetail(
        **_step_out(step),
        workflow_id=wid,
        traceback=step.traceback,
        idempotency_key=step.idempotency_key,
        metadata=step.metadata,
        checkpoint=step.checkpoint.location if step.checkpoint else None,
        checkpoint_size=step.checkpoint.size if step.checkpoint else None,
        attempts_list=[_attempt_out(a) for a in state.store.attempts(wid, tid)],
        logs=[log_out(pages[n]) for n in sorted(pages)],
        wal=[
            WalOut(
                attempt=w.attempt,
                kind=str(w.kind),
                idempotency_key=w.idempotency_key,
                created_at=as_utc(w.created_at) or w.created_at,
                location=w.location,
                checksum=w.checksum,
            )
            for w in state.store.wal(wid, tid)
        ],
        preview=pv,
    )


def schedule_out(state: UiState, name: str, *, runs: int = 10) -> ScheduleOut:
    from heliostat.workflows import schedules

    with state.api_env():
        try:
            info = schedules.get(name)
            fires = schedules.next_fire_times(name, 5) if not info.paused else []
            recent = schedules.runs(name, runs)
        except ScheduleNotFoundError:
            raise HTTPException(404, f"No schedule named {name!r}.") from None
    return ScheduleOut(
        name=info.name,
        target=info.target,
        cron=info.cron,
        interval_seconds=info.interval.total_seconds() if info.interval else None,
        timezone=info.timezone,
        paused=info.paused,
        catchup=info.catchup,
        max_active_runs=info.max_active_runs,
        next_fire_times=[t for t in (as_utc(f) for f in fires) if t is not None],
        runs=[
            ScheduleRunOut(
                logical_time=as_utc(r.logical_time) or r.logical_time,
                workflow_id=r.workflow_id,
                kind=str(r.kind),
                fired_at=as_utc(r.fired_at),
                started_at=as_utc(r.started_at),
                error=r.error,
                status=str(r.status) if r.status is not None else None,
                waiting=_waiting(
                    fired_at=r.fired_at,
                    started_at=r.started_at,
                    since=r.logical_time,
                    now=utc_now(),
                ),
            )
            for r in recent
        ],
    )


def _waiting(
    *,
    fired_at: dt.datetime | None,
    started_at: dt.datetime | None,
    since: dt.datetime,
    now: dt.datetime,
) -> str | None:
    """Why a schedule's run has not started, for the page; ``None`` once it has.

    A manual trigger from the UI (or a shell) is a request that ``heliostat scheduler``
    takes on its next pass, within ``POLL_INTERVAL``. One still untaken after a few
    passes means no scheduler is running against this database.
    """
    if started_at is not None:
        return None
    if fired_at is not None:
        return "starting"
    if (as_utc(now) or now) - (as_utc(since) or since) > 3 * POLL_INTERVAL:
        return "no scheduler has taken it: start one with 'heliostat scheduler'"
    return "waiting for the scheduler"


def all_schedules(state: UiState) -> list[ScheduleOut]:
    from heliostat.workflows import schedules

    with state.api_env():
        names = [i.name for i in schedules.list_all()]
    out = []
    for name in names:
        with contextlib.suppress(HTTPException):  # deleted meanwhile
            out.append(schedule_out(state, name, runs=5))
    return out


def runtimes() -> list[dict[str, Any]]:
    """Every live local runtime's ``status`` snapshot (what ``heliostat status`` shows)."""
    from heliostat.engine.introspect import live_sessions, snapshot

    out = []
    for s in live_sessions():
        entry: dict[str, Any] = {
            "session": s.session,
            "pid": s.pid,
            "started_at": dt.datetime.fromtimestamp(s.started_at, dt.UTC).isoformat(),
            "status": None,
            "error": None,
        }
        try:
            entry["status"] = snapshot(s, "status")
        except HeliostatError as exc:
            entry["error"] = str(exc)
        out.append(entry)
    return out
