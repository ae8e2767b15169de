"""The web UI's app factory: JSON API under ``/api/`` and server-rendered pages.

Everything is read through the engine's own read code (:class:`LineageReader` for runs,
the ``heliostat.workflow`` / ``heliostat.schedules`` API for schedules and actions), so
the UI shows exactly what ``heliostat workflow ...`` shows and acts exactly as the CLI
acts. Resume starts ``heliostat workflow resume ID`` in a child process (the same
command a person would type), so a long run never lives in the web server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from heliostat.exceptions import (
    HeliostatError,
    ScheduleNotFoundError,
    UnauthenticatedDataError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
)
from heliostat.storage.checkpoints import CheckpointStore, default_storage_url
from heliostat.storage.db import default_db_url
from heliostat.storage.signing import default_signer
from heliostat.storage.states import StepStatus, WorkflowStatus
from heliostat.ui import auth, dag, graphics
from heliostat.ui.models import (
    ActionResult,
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
from heliostat.workflows.lineage import AttemptRecord, LogPage, StepRecord, WorkflowRecord
from heliostat.workflows.store import WorkflowStore
from heliostat.workflows.triggers import POLL_INTERVAL

__all__ = ["create_app"]

log = logging.getLogger("heliostat.ui")

_HERE = Path(__file__).parent
ACTIVE = frozenset({"PENDING", "RUNNING"})
RESUMABLE_FROM = frozenset({"FAILED", "RESUMABLE", "CANCELED", "NEEDS_ATTENTION"})
_env_lock = threading.Lock()
LOG_PAGE = 16_384
"""Characters of an attempt's log on one page (the step page shows each attempt's last)."""


def _utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UiState:
    """What one app serves from: its lineage store, checkpoint store and token."""

    def __init__(
        self, *, db_url: str, storage: str, token: str | None, host: str, cwd: str
    ) -> None:
        self.db_url = db_url
        self.storage = storage
        self.token = token or None
        self.loopback = auth.is_loopback(host)
        self.cwd = cwd
        self.secret = (
            hashlib.sha256(b"heliostat-ui:" + self.token.encode()).hexdigest()
            if self.token
            else secrets.token_hex(32)
        )
        self.store = WorkflowStore.open(db_url, signer=default_signer())
        self._checkpoints: CheckpointStore | None = None
        self.shapes = dag.ShapeCache()
        self.children: list[subprocess.Popen[bytes]] = []

    def checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            self._checkpoints = CheckpointStore(self.storage, source="heliostat ui --storage")
        return self._checkpoints

    @contextlib.contextmanager
    def api_env(self) -> Iterator[None]:
        """The environment the public API reads its database and storage from, pointed
        at this app's (the CLI reads the same variables)."""
        with _env_lock:
            saved = {k: os.environ.get(k) for k in ("HELIOSTAT_DB_URL", "HELIOSTAT_STORAGE")}
            os.environ["HELIOSTAT_DB_URL"] = self.db_url
            os.environ["HELIOSTAT_STORAGE"] = self.storage
            try:
                yield
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    def effective(self, record: WorkflowRecord) -> str:
        """A RUNNING run whose driver is surely gone shows as RESUMABLE (read only)."""
        if record.status is WorkflowStatus.RUNNING and self.store.holder_is_gone(record.lease):
            return "RESUMABLE"
        return str(record.status)

    def spawn_resume(self, workflow_id: str) -> None:
        """Run ``heliostat workflow resume ID`` in a child process, reaped by a thread."""
        env = {**os.environ, "HELIOSTAT_DB_URL": self.db_url, "HELIOSTAT_STORAGE": self.storage}
        child = subprocess.Popen(
            [sys.executable, "-m", "heliostat.cli", "workflow", "resume", workflow_id],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.children.append(child)

        def reap() -> None:
            _, err = child.communicate()
            if child.returncode:
                log.warning(
                    "resume of %r exited %s: %s",
                    workflow_id,
                    child.returncode,
                    err.decode(errors="replace").strip()[-2000:],
                )
            self.children.remove(child)

        threading.Thread(
            target=reap, name=f"heliostat-ui-resume-{workflow_id}", daemon=True
        ).start()

    def close(self) -> None:
        for child in list(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=30)
        self.store.close()


# --- shaping records --------------------------------------------------------------------


def _duration(start: dt.datetime | None, finish: dt.datetime | None, active: bool) -> float | None:
    start = _utc(start)
    if start is None:
        return None
    end = _utc(finish) or (_now() if active else None)
    return None if end is None else max((end - start).total_seconds(), 0.0)


def _summary(state: UiState, r: WorkflowRecord) -> WorkflowSummary:
    status = state.effective(r)
    return WorkflowSummary(
        workflow_id=r.workflow_id,
        name=r.name,
        status=status,
        created_at=_utc(r.created_at) or r.created_at,
        started_at=_utc(r.started_at),
        finished_at=_utc(r.finished_at),
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
        "queued_at": _utc(s.queued_at),
        "started_at": _utc(s.started_at),
        "finished_at": _utc(s.finished_at),
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
        queued_at=_utc(a.queued_at),
        started_at=_utc(a.started_at),
        finished_at=_utc(a.finished_at),
        duration=a.duration,
        worker=a.worker,
        error=a.error,
        error_type=a.error_type,
        traceback=a.traceback,
    )


def _encode_cursor(r: WorkflowRecord) -> str:
    text = f"{(_utc(r.created_at) or r.created_at).isoformat()}|{r.workflow_id}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        at, wid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(at), wid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(422, f"cursor {cursor[:80]!r} is not one this server gave") from None


def _load(state: UiState, workflow_id: str) -> WorkflowRecord:
    try:
        return state.store.load(workflow_id)
    except WorkflowNotFoundError:
        raise HTTPException(404, f"No workflow with id {workflow_id!r}.") from None
    except UnauthenticatedDataError as exc:
        # A row nobody with this installation's key wrote: shown as refused, not read.
        raise HTTPException(403, str(exc)) from None


def _step(record: WorkflowRecord, task_id: str) -> StepRecord:
    step = record.steps.get(task_id)
    if step is None:
        raise HTTPException(404, f"Workflow {record.workflow_id!r} has no step {task_id!r}.")
    return step


StatusQuery = Annotated[
    list[str] | None, Query(description="only these statuses (repeatable; empty: any)")
]


def _statuses(values: list[str] | None) -> list[WorkflowStatus] | None:
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
ExpandQuery = Annotated[
    list[str] | None, Query(description="folded DAG groups to draw unfolded (repeatable)")
]
FullQuery = Annotated[bool, Query(description="draw every step of the DAG, folding none")]
AllStepsQuery = Annotated[bool, Query(description="list every step, not the first 100")]
STEP_ROWS = 100
"""Rows of a workflow page's step table unless every step is asked for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DagView:
    """How a workflow page draws its DAG and step table (from its query string)."""

    expand: frozenset[str] = frozenset()
    full: bool = False
    all_steps: bool = False

    def url(
        self,
        quoted_id: str,
        *,
        live: bool = False,
        expand: str | None = None,
        full: bool | None = None,
        fold: bool = False,
        all_steps: bool | None = None,
    ) -> str:
        """The page's URL (or its live part's) with this view, changed as asked:
        ``expand`` one more group, ``full`` on or off, ``fold`` every group again."""
        groups = set() if fold else set(self.expand)
        if expand is not None:
            groups.add(expand)
        params: list[tuple[str, str]] = [("expand", g) for g in sorted(groups)]
        if self.full if full is None else full:
            params.append(("full", "1"))
        if self.all_steps if all_steps is None else all_steps:
            params.append(("all_steps", "1"))
        path = f"/workflows/{quoted_id}" + ("/live" if live else "")
        return path + ("?" + urlencode(params) if params else "")


SearchQuery = Annotated[str | None, Query(max_length=200, description="text in the id")]
OrderQuery = Annotated[str, Query(pattern="^(asc|desc)$", description="by start time")]


def _page(
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
        items=[_summary(state, r) for r in rows],
        counts=counts,
        next_cursor=_encode_cursor(rows[-1]) if more and rows else None,
    )


def _detail(state: UiState, record: WorkflowRecord) -> WorkflowDetail:
    steps = sorted(record.steps.values(), key=lambda s: (s.position, s.task_id))
    return WorkflowDetail(
        **_summary(state, record).model_dump(),
        metadata=record.metadata,
        resume_count=record.resume_count,
        # Built from our own records: constructed without a second validation (2,000
        # steps validated one by one cost a page tens of milliseconds).
        steps=[StepOut.model_construct(**_step_out(s)) for s in steps],
        edges=state.store.edges(record.workflow_id),
        attempts=[_attempt_out(a) for a in state.store.attempts(record.workflow_id)],
    )


def _log_out(page: LogPage) -> LogOut:
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


def _step_detail(
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
        logs=[_log_out(pages[n]) for n in sorted(pages)],
        wal=[
            WalOut(
                attempt=w.attempt,
                kind=str(w.kind),
                idempotency_key=w.idempotency_key,
                created_at=_utc(w.created_at) or w.created_at,
                location=w.location,
                checksum=w.checksum,
            )
            for w in state.store.wal(wid, tid)
        ],
        preview=pv,
    )


def _schedule(state: UiState, name: str, *, runs: int = 10) -> ScheduleOut:
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
        next_fire_times=[t for t in (_utc(f) for f in fires) if t is not None],
        runs=[
            ScheduleRunOut(
                logical_time=_utc(r.logical_time) or r.logical_time,
                workflow_id=r.workflow_id,
                kind=str(r.kind),
                fired_at=_utc(r.fired_at),
                started_at=_utc(r.started_at),
                error=r.error,
                status=str(r.status) if r.status is not None else None,
                waiting=_waiting(
                    fired_at=r.fired_at, started_at=r.started_at, since=r.logical_time, now=_now()
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
    if (_utc(now) or now) - (_utc(since) or since) > 3 * POLL_INTERVAL:
        return "no scheduler has taken it: start one with 'heliostat scheduler'"
    return "waiting for the scheduler"


def _schedules(state: UiState) -> list[ScheduleOut]:
    from heliostat.workflows import schedules

    with state.api_env():
        names = [i.name for i in schedules.list_all()]
    out = []
    for name in names:
        with contextlib.suppress(HTTPException):  # deleted meanwhile
            out.append(_schedule(state, name, runs=5))
    return out


def _runtime() -> list[dict[str, Any]]:
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


# --- actions (the CLI's code paths) ---------------------------------------------------


def _act(
    state: UiState,
    action: str,
    target: str,
    task_id: str | None = None,
    body: dict[str, Any] | None = None,
) -> ActionResult:
    from heliostat import workflow
    from heliostat.workflows import schedules

    try:
        if action == "resume":
            record = _load(state, target)
            status = state.effective(record)
            if status not in RESUMABLE_FROM:
                raise HTTPException(409, f"Workflow {target!r} is {status}; nothing to resume.")
            state.spawn_resume(target)
            return ActionResult(
                ok=True, message=f"Resuming {target}.", status=status, workflow_id=target
            )
        if action == "cancel":
            _load(state, target)
            with state.api_env():
                workflow.cancel(target)
            status = state.effective(_load(state, target))
            return ActionResult(
                ok=True, message=f"Canceled {target}.", status=status, workflow_id=target
            )
        if action == "resolve":
            assert task_id is not None
            _step(_load(state, target), task_id)
            body = body or {}
            rerun = body.get("rerun", False)
            if not isinstance(rerun, bool):
                raise HTTPException(422, "rerun must be true or false")
            with state.api_env():
                if rerun:
                    workflow.resolve(target, task_id, rerun=True)
                elif "result" in body:
                    workflow.resolve(target, task_id, result=body["result"])
                else:
                    raise HTTPException(422, "give either rerun=true or a result")
            return ActionResult(
                ok=True,
                message=f"Step {task_id} resolved; resume the workflow to go on.",
                status=state.effective(_load(state, target)),
                workflow_id=target,
            )
        with state.api_env():
            if action == "trigger":
                wid = schedules.trigger(target)
                return ActionResult(
                    ok=True,
                    message=(
                        f"Triggered {target}: run {wid} is recorded. It starts when a "
                        "scheduler ('heliostat scheduler') takes it: within "
                        f"{POLL_INTERVAL.total_seconds():g} s if one is running, else once "
                        "one is started."
                    ),
                    workflow_id=wid,
                )
            if action == "pause":
                schedules.pause(target)
                return ActionResult(ok=True, message=f"Paused {target}.", status="paused")
            if action == "unpause":
                schedules.resume(target)
                return ActionResult(ok=True, message=f"Resumed {target}.", status="active")
    except ScheduleNotFoundError:
        raise HTTPException(404, f"No schedule named {target!r}.") from None
    except WorkflowNotFoundError as exc:
        raise HTTPException(404, str(exc.args[0] if exc.args else exc)) from None
    except WorkflowLeaseError as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    raise HTTPException(404, f"unknown action {action!r}")


# --- the app ----------------------------------------------------------------------------


def create_app(
    *,
    db_url: str | None = None,
    storage: str | None = None,
    token: str | None = None,
    host: str = "127.0.0.1",
    cwd: str | None = None,
) -> FastAPI:
    """Build the web UI app.

    Args:
        db_url: the lineage database (default: ``HELIOSTAT_DB_URL`` / the home's SQLite).
        storage: the checkpoint store URL (default: ``HELIOSTAT_STORAGE`` / the home's).
        token: the token actions (and, off loopback, reads) need.
        host: the address it will be served on; off loopback a token is required.
        cwd: where resumed runs start (their functions must import from there).

    Raises:
        TokenRequiredError: ``host`` is not loopback and there is no token.
    """
    auth.check_bind(host, token)
    state = UiState(
        db_url=db_url or default_db_url(),
        storage=storage or default_storage_url(),
        token=token,
        host=host,
        cwd=cwd or os.getcwd(),
    )
    app = FastAPI(
        title="heliostat",
        description="Workflow runs, schedules and the runtime, read from the lineage database.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.ui = state
    app.router.add_event_handler("shutdown", state.close)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["dur"] = lambda s: graphics.fmt_seconds(s) if s is not None else "\u2013"
    env.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S") if t else "\u2013"
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["lower_status"] = lambda s: (s or "none").lower().replace("_", " ")
    env.globals["STATUSES"] = [str(s) for s in WorkflowStatus]
    env.globals["poll_seconds"] = f"{POLL_INTERVAL.total_seconds():g}"
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")

    # --- access ---

    def read_allowed(request: Request) -> bool:
        if state.loopback:
            return True
        return auth.bearer_ok(state.token, request.headers.get("authorization")) or (
            auth.session_ok(state.secret, request.cookies.get(auth.SESSION_COOKIE))
        )

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if not path.startswith(("/static/", "/login")) and not read_allowed(request):
            if path.startswith("/api/"):
                return JSONResponse({"detail": "a token is required"}, status_code=401)
            return RedirectResponse("/login?" + urlencode({"next": path}), status_code=303)
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def session_of(request: Request) -> str | None:
        cookie = request.cookies.get(auth.SESSION_COOKIE)
        if auth.session_ok(state.secret, cookie):
            return cookie
        if not state.token:  # loopback without a token: a session is handed out
            fresh = auth.new_session(state.secret)
            request.state.session = fresh
            return fresh
        return None

    def render(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        session = session_of(request)
        ctx.setdefault("message", request.query_params.get("msg"))
        html = env.get_template(name).render(
            csrf=auth.csrf_for(state.secret, session) if session else None,
            can_act=session is not None,
            path=request.url.path,
            **ctx,
        )
        response = HTMLResponse(html, status_code=status_code)
        fresh = getattr(request.state, "session", None)
        if fresh is not None:
            response.set_cookie(auth.SESSION_COOKIE, fresh, httponly=True, samesite="strict")
        return response

    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith("/api/")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if wants_html(request):
            return render(
                request,
                "error.html",
                exc.status_code,
                code=exc.status_code,
                detail=str(exc.detail),
                title="Error",
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_params(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
            for e in exc.errors()
        ]
        if wants_html(request):
            return render(
                request,
                "error.html",
                422,
                code=422,
                detail="; ".join(errors),
                title="Bad parameters",
            )
        return JSONResponse({"detail": exc.errors()}, status_code=422)

    def check_api_action(request: Request) -> None:
        if state.token:
            if not auth.bearer_ok(state.token, request.headers.get("authorization")):
                raise HTTPException(401, "this action needs the token (Authorization: Bearer T)")
            return
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            raise HTTPException(403, "cross-site request refused")

    async def check_form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode(errors="replace")
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        cookie = request.cookies.get(auth.SESSION_COOKIE)
        if not auth.session_ok(state.secret, cookie):
            raise HTTPException(401, "sign in with the token first (/login)")
        assert cookie is not None
        if not secrets.compare_digest(form.get("csrf", ""), auth.csrf_for(state.secret, cookie)):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        return form

    # --- JSON API ---

    @app.get("/api/workflows", response_model=WorkflowPage, tags=["workflows"])
    def api_workflows(
        status: StatusQuery = None,
        search: SearchQuery = None,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
        limit: LimitQuery = 50,
        order: OrderQuery = "desc",
    ) -> WorkflowPage:
        """Runs by start time (keyset paged), with the counts per status."""
        return _page(state, _statuses(status), search, cursor, limit, order)

    @app.get(
        "/api/workflows/{workflow_id:path}/steps/{task_id}/logs",
        response_model=LogOut,
        tags=["workflows"],
    )
    def api_step_logs(
        workflow_id: str,
        task_id: str,
        attempt: Annotated[int, Query(ge=1, description="the attempt (from 1)")],
        offset: Annotated[
            int | None,
            Query(ge=0, description="first character (code points, not bytes); none: the tail"),
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=1 << 20, description="characters (code points, not bytes)")
        ] = LOG_PAGE,
    ) -> LogOut:
        """A page of one attempt's captured output: ``limit`` characters from
        ``offset``, or the last ``limit`` (the tail) without ``offset``."""
        _step(_load(state, workflow_id), task_id)
        found = state.store.log_pages(
            workflow_id, task_id, limit=limit, attempt=attempt, offset=offset
        )
        if not found:
            raise HTTPException(
                404, f"Attempt {attempt} of step {task_id!r} printed nothing (or never ran)."
            )
        return _log_out(found[0])

    @app.get(
        "/api/workflows/{workflow_id:path}/steps/{task_id}",
        response_model=StepDetail,
        tags=["workflows"],
    )
    def api_step(workflow_id: str, task_id: str) -> StepDetail:
        """One step: attempts, error, traceback, logs, WAL records, output preview."""
        record = _load(state, workflow_id)
        return _step_detail(state, record, _step(record, task_id))

    @app.get("/api/schedules", response_model=list[ScheduleOut], tags=["schedules"])
    def api_schedules() -> list[ScheduleOut]:
        """Every schedule with its next fire times and recent runs."""
        return _schedules(state)

    @app.get("/api/schedules/{name}", response_model=ScheduleOut, tags=["schedules"])
    def api_schedule(name: str) -> ScheduleOut:
        return _schedule(state, name, runs=20)

    @app.get("/api/runtime", tags=["runtime"])
    def api_runtime() -> list[dict[str, Any]]:
        """The live local runtimes: resources, workers, tasks, actors, object store."""
        return _runtime()

    for verb, kind in (
        ("resume", "wf"),
        ("cancel", "wf"),
        ("trigger", "sch"),
        ("pause", "sch"),
        ("unpause", "sch"),
    ):
        _add_api_action(app, verb, kind, state, check_api_action)

    @app.post(
        "/api/workflows/{workflow_id:path}/steps/{task_id}/resolve",
        response_model=ActionResult,
        tags=["actions"],
    )
    async def api_resolve(workflow_id: str, task_id: str, request: Request) -> ActionResult:
        """Settle an in-doubt step: JSON ``{"rerun": true}`` or ``{"result": value}``."""
        check_api_action(request)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise HTTPException(422, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a JSON object")
        return _act(state, "resolve", workflow_id, task_id, body)

    # --- pages ---

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/workflows", status_code=303)

    @app.get("/workflows", response_class=HTMLResponse, include_in_schema=False)
    def page_workflows(
        request: Request,
        status: StatusQuery = None,
        search: SearchQuery = None,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
        limit: LimitQuery = 50,
        order: OrderQuery = "desc",
    ) -> HTMLResponse:
        statuses = _statuses(status)
        page = _page(state, statuses, search, cursor, limit, order)
        chart = graphics.runs_chart_svg(
            [(_utc(t) or t, str(s)) for t, s in state.store.recent_runs(500)]
        )
        base = {k: v for k, v in (("search", search), ("order", order)) if v}
        chosen = [str(s) for s in statuses or []]
        next_url = None
        if page.next_cursor:
            next_url = "/workflows?" + urlencode(
                [
                    *base.items(),
                    *(("status", s) for s in chosen),
                    ("limit", limit),
                    ("cursor", page.next_cursor),
                ]
            )
        return render(
            request,
            "workflows.html",
            title="Workflows",
            page=page,
            chart=chart,
            search=search or "",
            chosen=chosen,
            order=order,
            next_url=next_url,
            total=sum(page.counts.values()),
            paged=cursor is not None,
        )

    def workflow_parts(record: WorkflowRecord, view: DagView) -> dict[str, Any]:
        detail = _detail(state, record)
        layout = dag.layout_dag(
            {s.task_id: (s.name, s.status, s.duration) for s in detail.steps},
            detail.edges,
            kinds={t: s.code_hash or s.name for t, s in record.steps.items()},
            collapse_at=0 if view.full else dag.COLLAPSE_AT,
            expand=view.expand,
            cache=state.shapes,
        )
        wid = quote(record.workflow_id, safe="")
        step_url = f"/workflows/{wid}/steps/"
        gantt = graphics.gantt_svg(
            [
                (a.task_id, a.attempt, a.status, a.started_at, a.finished_at)
                for a in detail.attempts
            ],
            now=_now(),
        )
        attention = [s for s in detail.steps if s.status == "IN_DOUBT"]
        return {
            "wf": detail,
            "dag": dag.dag_svg(layout, step_url, lambda key: view.url(wid, expand=key)),
            "dag_height": int(min(560, max(170, layout.height + 24))),
            "layout": layout,
            "view": view,
            "view_url": lambda **kw: view.url(wid, **kw),
            "live_url": view.url(wid, live=True),
            "steps_shown": detail.steps if view.all_steps else detail.steps[:STEP_ROWS],
            "gantt": gantt,
            "attention": attention,
            "active": detail.status in ACTIVE,
            "resumable": detail.status in RESUMABLE_FROM,
            "title": record.workflow_id,
        }

    @app.get(
        "/workflows/{workflow_id:path}/live", response_class=HTMLResponse, include_in_schema=False
    )
    def page_workflow_live(
        request: Request,
        workflow_id: str,
        expand: ExpandQuery = None,
        full: FullQuery = False,
        all_steps: AllStepsQuery = False,
    ) -> HTMLResponse:
        """The part of the workflow page that changes while it runs (polled)."""
        view = DagView(expand=frozenset(expand or ()), full=full, all_steps=all_steps)
        return render(
            request, "workflow_live.html", **workflow_parts(_load(state, workflow_id), view)
        )

    @app.get(
        "/workflows/{workflow_id:path}/steps/{task_id}",
        response_class=HTMLResponse,
        include_in_schema=False,
    )
    def page_step(
        request: Request,
        workflow_id: str,
        task_id: str,
        log_attempt: Annotated[int | None, Query(ge=1)] = None,
        log_offset: Annotated[int | None, Query(ge=0)] = None,
    ) -> HTMLResponse:
        record = _load(state, workflow_id)
        detail = _step_detail(
            state,
            record,
            _step(record, task_id),
            log_attempt=log_attempt,
            log_offset=log_offset,
        )
        return render(
            request,
            "step.html",
            title=f"{task_id} · {workflow_id}",
            step=detail,
            wf_status=state.effective(record),
            log_page=LOG_PAGE,
            step_url=f"/workflows/{quote(workflow_id, safe='')}/steps/{quote(task_id, safe='')}",
        )

    @app.get("/workflows/{workflow_id:path}/steps/{task_id}/checkpoint", include_in_schema=False)
    def download(workflow_id: str, task_id: str) -> Response:
        """The step's checkpoint bytes, only from this app's checkpoint store."""
        step = _step(_load(state, workflow_id), task_id)
        ref = step.checkpoint
        if ref is None:
            raise HTTPException(404, f"Step {task_id!r} has no checkpoint.")
        name = f"{task_id}.{ref.format}".replace('"', "")
        headers = {"Content-Disposition": f'attachment; filename="{quote(name)}"'}
        if ref.data is not None:
            return Response(ref.data, media_type="application/octet-stream", headers=headers)
        store = state.checkpoints()
        path = store.path_within(ref.location)
        if path is None:
            raise HTTPException(403, "that checkpoint is outside this UI's checkpoint store")
        try:
            with store.fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise HTTPException(404, f"Checkpoint {ref.location} is missing.") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != ref.checksum:
            raise HTTPException(409, f"Checkpoint {ref.location} does not match its checksum.")
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.get("/schedules", response_class=HTMLResponse, include_in_schema=False)
    def page_schedules(request: Request) -> HTMLResponse:
        return render(
            request,
            "schedules.html",
            title="Schedules",
            schedules=_schedules(state),
            zone_times=_zone_times,
        )

    @app.get("/schedules/{name}", response_class=HTMLResponse, include_in_schema=False)
    def page_schedule(request: Request, name: str) -> HTMLResponse:
        return render(
            request,
            "schedule.html",
            title=name,
            s=_schedule(state, name, runs=20),
            zone_times=_zone_times,
        )

    @app.get("/runtime", response_class=HTMLResponse, include_in_schema=False)
    def page_runtime(request: Request) -> HTMLResponse:
        return render(request, "runtime.html", title="Runtime", runtimes=_runtime())

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def page_login(request: Request, next: str = "/workflows") -> HTMLResponse:
        return render(request, "login.html", title="Sign in", next=next, error=None)

    @app.post("/login", include_in_schema=False)
    async def do_login(request: Request) -> Response:
        body = (await request.body()).decode(errors="replace")
        form = {k: v[0] for k, v in parse_qs(body).items()}
        target = form.get("next", "/workflows")
        if not target.startswith("/") or target.startswith("//"):
            target = "/workflows"
        if not state.token or not secrets.compare_digest(form.get("token", ""), state.token):
            return render(
                request,
                "login.html",
                401,
                title="Sign in",
                next=target,
                error="That is not the token this server was started with.",
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE, auth.new_session(state.secret), httponly=True, samesite="strict"
        )
        return response

    def add_form(verb: str, kind: str) -> None:
        if kind == "wf":
            route = f"/workflows/{{target:path}}/{verb}"
        else:
            route = f"/schedules/{{target}}/{verb}"

        async def form_action(request: Request, target: str) -> Response:
            await check_form(request)
            result = _act(state, verb, target)
            back = (
                f"/workflows/{quote(target, safe='')}" + "?watch=1&"
                if kind == "wf"
                else f"/schedules/{quote(target, safe='')}?"
            )
            return RedirectResponse(back + urlencode({"msg": result.message}), status_code=303)

        app.add_api_route(
            route, form_action, methods=["POST"], include_in_schema=False, name=f"form_{verb}"
        )

    for verb, kind in (
        ("resume", "wf"),
        ("cancel", "wf"),
        ("trigger", "sch"),
        ("pause", "sch"),
        ("unpause", "sch"),
    ):
        add_form(verb, kind)

    @app.post("/workflows/{workflow_id:path}/steps/{task_id}/resolve", include_in_schema=False)
    async def form_resolve(request: Request, workflow_id: str, task_id: str) -> Response:
        form = await check_form(request)
        if form.get("choice") == "rerun":
            body: dict[str, Any] = {"rerun": True}
        else:
            raw = form.get("result", "")
            try:
                body = {"result": json.loads(raw)}
            except ValueError:
                body = {"result": raw}  # a plain string, as the CLI takes it
        result = _act(state, "resolve", workflow_id, task_id, body)
        return RedirectResponse(
            f"/workflows/{quote(workflow_id, safe='')}?" + urlencode({"msg": result.message}),
            status_code=303,
        )

    # Last: a workflow id may hold '/', so these match only what nothing above did.
    @app.get("/api/workflows/{workflow_id:path}", response_model=WorkflowDetail, tags=["workflows"])
    def api_workflow(workflow_id: str) -> WorkflowDetail:
        """One run: steps, edges, statuses, timings, attempts."""
        return _detail(state, _load(state, workflow_id))

    @app.get("/workflows/{workflow_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def page_workflow(
        request: Request,
        workflow_id: str,
        expand: ExpandQuery = None,
        full: FullQuery = False,
        all_steps: AllStepsQuery = False,
    ) -> HTMLResponse:
        view = DagView(expand=frozenset(expand or ()), full=full, all_steps=all_steps)
        return render(request, "workflow.html", **workflow_parts(_load(state, workflow_id), view))

    return app


def _add_api_action(app: FastAPI, verb: str, kind: str, state: UiState, check: Any) -> None:
    prefix = "/api/workflows/{target:path}" if kind == "wf" else "/api/schedules/{target}"

    def action(target: str, request: Request) -> ActionResult:
        check(request)
        return _act(state, verb, target)

    action.__doc__ = {
        "resume": "Resume a failed or interrupted run (`heliostat workflow resume`).",
        "cancel": "Cancel a run (`heliostat workflow cancel`).",
        "trigger": "Fire a manual run of the schedule (`heliostat schedule trigger`).",
        "pause": "Pause the schedule.",
        "unpause": "Resume the paused schedule.",
    }[verb]
    app.add_api_route(
        f"{prefix}/{verb}",
        action,
        methods=["POST"],
        response_model=ActionResult,
        tags=["actions"],
        name=f"api_{verb}",
    )


def _zone_times(when: dt.datetime, zone: str) -> tuple[str, str]:
    """``when`` in the schedule's zone and in UTC, as text."""
    from zoneinfo import ZoneInfo

    local = when.astimezone(ZoneInfo(zone))
    return local.strftime("%Y-%m-%d %H:%M %Z"), when.astimezone(dt.UTC).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
