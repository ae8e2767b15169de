"""The server-rendered pages: workflows, a workflow (its DAG, Gantt and steps), a step,
schedules, the runtime, and the sign-in form.

Each page is linkable and works without JavaScript; ``static/ui.js`` adds pan and zoom
of the DAG and the live refresh of a running workflow (its ``/live`` part, polled).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from heliostat.ui import auth, dag, graphics
from heliostat.ui.cluster import cluster_view
from heliostat.ui.state import ACTIVE, LOG_PAGE, RESUMABLE_FROM, UiState, as_utc, utc_now
from heliostat.ui.views import (
    LimitQuery,
    OrderQuery,
    SearchQuery,
    StatusQuery,
    all_schedules,
    load_run,
    parse_statuses,
    runtimes,
    schedule_out,
    step_detail,
    step_of,
    workflow_detail,
    workflow_page,
)
from heliostat.workflows.lineage import WorkflowRecord

__all__ = ["STEP_ROWS", "DagView", "register"]

Render = Callable[..., HTMLResponse]
"""``render(request, template, status_code=200, **context)`` from ``create_app``."""

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


def register(app: FastAPI, state: UiState, render: Render) -> None:
    """Add the pages' routes (a workflow's page last: an id may hold ``/``)."""

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
        statuses = parse_statuses(status)
        page = workflow_page(state, statuses, search, cursor, limit, order)
        chart = graphics.runs_chart_svg(
            [(as_utc(t) or t, str(s)) for t, s in state.store.recent_runs(500)]
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
        detail = workflow_detail(state, record)
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
            now=utc_now(),
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
            request, "workflow_live.html", **workflow_parts(load_run(state, workflow_id), view)
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
        record = load_run(state, workflow_id)
        detail = step_detail(
            state,
            record,
            step_of(record, task_id),
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
        step = step_of(load_run(state, workflow_id), task_id)
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
            schedules=all_schedules(state),
            zone_times=zone_times,
        )

    @app.get("/schedules/{name}", response_class=HTMLResponse, include_in_schema=False)
    def page_schedule(request: Request, name: str) -> HTMLResponse:
        return render(
            request,
            "schedule.html",
            title=name,
            s=schedule_out(state, name, runs=20),
            zone_times=zone_times,
        )

    @app.get("/runtime", response_class=HTMLResponse, include_in_schema=False)
    def page_runtime(request: Request) -> HTMLResponse:
        cluster = cluster_view(state.cluster) if state.cluster is not None else None
        return render(
            request, "runtime.html", title="Runtime", runtimes=runtimes(), cluster=cluster
        )

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

    @app.get("/workflows/{workflow_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def page_workflow(
        request: Request,
        workflow_id: str,
        expand: ExpandQuery = None,
        full: FullQuery = False,
        all_steps: AllStepsQuery = False,
    ) -> HTMLResponse:
        view = DagView(expand=frozenset(expand or ()), full=full, all_steps=all_steps)
        parts = workflow_parts(load_run(state, workflow_id), view)
        return render(request, "workflow.html", **parts)


def zone_times(when: dt.datetime, zone: str) -> tuple[str, str]:
    """``when`` in the schedule's zone and in UTC, as text."""
    from zoneinfo import ZoneInfo

    local = when.astimezone(ZoneInfo(zone))
    return local.strftime("%Y-%m-%d %H:%M %Z"), when.astimezone(dt.UTC).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
