"""The web UI's app factory: JSON API under ``/api/`` and server-rendered pages.

``create_app`` builds the app and owns what every route shares: the access rules
(loopback, bearer token, signed session cookie, CSRF), rendering of templates, and the
error pages. The routes live by concern:

* :mod:`heliostat.ui.views`: records of the lineage shaped into the API's models;
* :mod:`heliostat.ui.api`: the JSON reads;
* :mod:`heliostat.ui.pages`: the HTML pages (the DAG's drawing is :mod:`heliostat.ui.dag`);
* :mod:`heliostat.ui.actions`: resume, cancel, resolve, trigger, pause, unpause, by the
  CLI's code paths.

Everything is read through the engine's own read code, so the UI shows exactly what
``heliostat workflow ...`` shows and acts exactly as the CLI acts.
"""

from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from heliostat.storage.checkpoints import default_storage_url
from heliostat.storage.db import default_db_url
from heliostat.storage.states import WorkflowStatus
from heliostat.ui import actions, api, auth, graphics, pages
from heliostat.ui.cluster import ClusterSource
from heliostat.ui.state import TEMPLATES, UiState
from heliostat.workflows.triggers import POLL_INTERVAL

__all__ = ["create_app"]


def create_app(
    *,
    db_url: str | None = None,
    storage: str | None = None,
    token: str | None = None,
    host: str = "127.0.0.1",
    cwd: str | None = None,
    cluster: ClusterSource | None = None,
) -> FastAPI:
    """Build the web UI app.

    Args:
        db_url: the lineage database (default: ``HELIOSTAT_DB_URL`` / the home's SQLite).
        storage: the checkpoint store URL (default: ``HELIOSTAT_STORAGE`` / the home's).
        token: the token actions (and, off loopback, reads) need.
        host: the address it will be served on; off loopback a token is required.
        cwd: where resumed runs start (their functions must import from there).
        cluster: the head's control plane, when a cluster head serves the UI: the
            runtime page and ``/api/cluster`` show its nodes and jobs.

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
        cluster=cluster,
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
        loader=jinja2.FileSystemLoader(TEMPLATES / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["dur"] = lambda s: graphics.fmt_seconds(s) if s is not None else "\u2013"
    env.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S") if t else "\u2013"
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["lower_status"] = lambda s: (s or "none").lower().replace("_", " ")
    env.globals["STATUSES"] = [str(s) for s in WorkflowStatus]
    env.globals["poll_seconds"] = f"{POLL_INTERVAL.total_seconds():g}"
    app.mount("/static", StaticFiles(directory=TEMPLATES / "static"), name="static")

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

    api.register(app, state)
    pages.register(app, state, render)
    actions.register(app, state, check_api_action, check_form)
    return app
