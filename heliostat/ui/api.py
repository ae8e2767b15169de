"""The JSON API's reads under ``/api/`` (the actions are in :mod:`heliostat.ui.actions`).

Typed by the models of :mod:`heliostat.ui.models`, so ``/api/openapi.json`` documents
every answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query

from heliostat.ui.cluster import cluster_view
from heliostat.ui.models import LogOut, ScheduleOut, StepDetail, WorkflowDetail, WorkflowPage
from heliostat.ui.state import LOG_PAGE, UiState
from heliostat.ui.views import (
    LimitQuery,
    OrderQuery,
    SearchQuery,
    StatusQuery,
    all_schedules,
    load_run,
    log_out,
    parse_statuses,
    runtimes,
    schedule_out,
    step_detail,
    step_of,
    workflow_detail,
    workflow_page,
)

__all__ = ["register"]


def register(app: FastAPI, state: UiState) -> None:
    """Add the API's read routes (the one-run route last: an id may hold ``/``)."""

    @app.get("/api/workflows", response_model=WorkflowPage, tags=["workflows"])
    def api_workflows(
        status: StatusQuery = None,
        search: SearchQuery = None,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
        limit: LimitQuery = 50,
        order: OrderQuery = "desc",
    ) -> WorkflowPage:
        """Runs by start time (keyset paged), with the counts per status."""
        return workflow_page(state, parse_statuses(status), search, cursor, limit, order)

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
        step_of(load_run(state, workflow_id), task_id)
        found = state.store.log_pages(
            workflow_id, task_id, limit=limit, attempt=attempt, offset=offset
        )
        if not found:
            raise HTTPException(
                404, f"Attempt {attempt} of step {task_id!r} printed nothing (or never ran)."
            )
        return log_out(found[0])

    @app.get(
        "/api/workflows/{workflow_id:path}/steps/{task_id}",
        response_model=StepDetail,
        tags=["workflows"],
    )
    def api_step(workflow_id: str, task_id: str) -> StepDetail:
        """One step: attempts, error, traceback, logs, WAL records, output preview."""
        record = load_run(state, workflow_id)
        return step_detail(state, record, step_of(record, task_id))

    @app.get("/api/schedules", response_model=list[ScheduleOut], tags=["schedules"])
    def api_schedules() -> list[ScheduleOut]:
        """Every schedule with its next fire times and recent runs."""
        return all_schedules(state)

    @app.get("/api/schedules/{name}", response_model=ScheduleOut, tags=["schedules"])
    def api_schedule(name: str) -> ScheduleOut:
        return schedule_out(state, name, runs=20)

    @app.get("/api/runtime", tags=["runtime"])
    def api_runtime() -> list[dict[str, Any]]:
        """The live local runtimes: resources, workers, tasks, actors, object store."""
        return runtimes()

    @app.get("/api/cluster", tags=["runtime"])
    def api_cluster() -> dict[str, Any]:
        """The cluster's nodes (id, address, state, resources, last heartbeat) and jobs,
        from the head that serves this UI; 404 for a UI without one (``heliostat ui``)."""
        if state.cluster is None:
            raise HTTPException(404, "this UI is not served by a cluster head")
        return cluster_view(state.cluster)

    # Last: a workflow id may hold '/', so these match only what nothing above did.
    @app.get("/api/workflows/{workflow_id:path}", response_model=WorkflowDetail, tags=["workflows"])
    def api_workflow(workflow_id: str) -> WorkflowDetail:
        """One run: steps, edges, statuses, timings, attempts."""
        return workflow_detail(state, load_run(state, workflow_id))
