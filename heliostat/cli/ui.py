"""``heliostat ui``: serve the web UI (workflows, schedules, runtime) on this machine.

It binds to 127.0.0.1 unless told otherwise, and refuses any other address without a
token (``--token`` or ``HELIOSTAT_TOKEN``). Ctrl-C or SIGTERM stop it and it exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from heliostat.cli._util import EXIT_OK, CliError

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="serve the web UI: workflow runs, their DAGs and steps, schedules, runtime",
        description="Serve the web UI and its JSON API (/api/, OpenAPI at "
        "/api/openapi.json) from the lineage database and checkpoint store.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8265, help="port (default 8265; 0: any free)")
    p.add_argument(
        "--db-url",
        default=None,
        metavar="URL",
        help="lineage database (default HELIOSTAT_DB_URL, else the home's SQLite)",
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="checkpoint store (default HELIOSTAT_STORAGE, else the home's)",
    )
    p.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="token actions need (default HELIOSTAT_TOKEN); required off loopback",
    )
    p.set_defaults(func=_cmd_ui)


def _cmd_ui(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from heliostat.ui import auth, create_app

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0-65535, not {args.port}")
    token = args.token or os.environ.get("HELIOSTAT_TOKEN") or None
    try:
        auth.check_bind(args.host, token)
    except auth.TokenRequiredError as exc:
        raise CliError(str(exc)) from None
    app = create_app(db_url=args.db_url, storage=args.storage, token=token, host=args.host)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"heliostat UI on http://{shown}:{port}/  (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = _server_class()(config)
    server.run(sockets=[sock])
    return EXIT_OK


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping cleanly on SIGINT / SIGTERM without re-raising
        the signal afterwards (uvicorn does, which would make Ctrl-C exit 130)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

    return Server
