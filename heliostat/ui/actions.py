"""Actions (resume, cancel, resolve, trigger, pause, unpause): the CLI's code paths.

Each runs the code ``heliostat workflow ...`` / ``heliostat schedule ...`` runs (the
public ``heliostat.workflow`` and ``heliostat.schedules`` API, pointed at this app's
database). Resume starts ``heliostat workflow resume ID`` in a child process (the same
command a person would type), so a long run never lives in the web server. Every
action is a POST, answered with the new state: as JSON under ``/api/`` (bearer token
when one is set) and as a redirect for the pages' forms (signed session and CSRF).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from heliostat.exceptions import (
    ScheduleNotFoundError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
)
from heliostat.ui.models import ActionResult
from heliostat.ui.state import RESUMABLE_FROM, UiState
from heliostat.ui.views import load_run, step_of
from heliostat.workflows.triggers import POLL_INTERVAL

__all__ = ["act", "register"]

VERBS = (
    ("resume", "wf"),
    ("cancel", "wf"),
    ("trigger", "sch"),
    ("pause", "sch"),
    ("unpause", "sch"),
)
"""Each action and what it acts on: a workflow run or a schedule."""


def act(
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
            record = load_run(state, target)
            status = state.effective(record)
            if status not in RESUMABLE_FROM:
                raise HTTPException(409, f"Workflow {target!r} is {status}; nothing to resume.")
            state.spawn_resume(target)
            return ActionResult(
                ok=True, message=f"Resuming {target}.", status=status, workflow_id=target
            )
        if action == "cancel":
            load_run(state, target)
            with state.api_env():
                workflow.cancel(target)
            status = state.effective(load_run(state, target))
            return ActionResult(
                ok=True, message=f"Canceled {target}.", status=status, workflow_id=target
            )
        if action == "resolve":
            assert task_id is not None
            step_of(load_run(state, target), task_id)
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
                status=state.effective(load_run(state, target)),
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


def register(
    app: FastAPI,
    state: UiState,
    check_api_action: Callable[[Request], None],
    check_form: Callable[[Request], Awaitable[dict[str, str]]],
) -> None:
    """Add the actions' routes: ``POST /api/...`` and the pages' form posts."""
    for verb, kind in VERBS:
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
        return act(state, "resolve", workflow_id, task_id, body)

    def add_form(verb: str, kind: str) -> None:
        if kind == "wf":
            route = f"/workflows/{{target:path}}/{verb}"
        else:
            route = f"/schedules/{{target}}/{verb}"

        async def form_action(request: Request, target: str) -> Response:
            await check_form(request)
            result = act(state, verb, target)
            back = (
                f"/workflows/{quote(target, safe='')}" + "?watch=1&"
                if kind == "wf"
                else f"/schedules/{quote(target, safe='')}?"
            )
            return RedirectResponse(back + urlencode({"msg": result.message}), status_code=303)

        app.add_api_route(
            route, form_action, methods=["POST"], include_in_schema=False, name=f"form_{verb}"
        )

    for verb, kind in VERBS:
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
        result = act(state, "resolve", workflow_id, task_id, body)
        return RedirectResponse(
            f"/workflows/{quote(workflow_id, safe='')}?" + urlencode({"msg": result.message}),
            status_code=303,
        )


def _add_api_action(app: FastAPI, verb: str, kind: str, state: UiState, check: Any) -> None:
    prefix = "/api/workflows/{target:path}" if kind == "wf" else "/api/schedules/{target}"

    def action(target: str, request: Request) -> ActionResult:
        check(request)
        return act(state, verb, target)

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
