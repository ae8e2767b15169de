"""``heliostat ui``: prints its URL, serves, refuses a public bind without a token, and
exits 0 on SIGTERM and on Ctrl-C (SIGINT)."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Callable
from typing import Any

from cli_harness import Cli


def test_ui_serves_and_stops_cleanly(cli: Cli, wait_for: Callable[..., Any]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with cli.start("ui", "--port", "0") as daemon:
            line = wait_for(
                lambda d=daemon: "http://" in d.stdout() and d.stdout(),
                timeout=60,
                what="the UI's URL",
            )
            url = line.split()[3]
            assert url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(url + "api/workflows", timeout=30) as r:
                assert r.status == 200
            daemon.proc.send_signal(sig)
            assert daemon.proc.wait(timeout=60) == 0, daemon.stderr()


def test_ui_refuses_a_public_bind_without_a_token(cli: Cli) -> None:
    cli.bad_input("ui", "--host", "0.0.0.0", "--port", "0", names=["token", "0.0.0.0"])
    cli.bad_input("ui", "--port", "70000", names=["--port"])
