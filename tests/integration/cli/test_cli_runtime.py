"""``heliostat status`` and ``heliostat list``, with and without a live runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from cli_harness import Cli

DRIVER = """
    import pathlib
    import sys

    import heliostat as hs

    hs.init(num_cpus=1)


    @hs.remote
    class Keeper:
        def ping(self):
            return "pong"


    @hs.remote
    def square(x):
        return x * x


    keeper = Keeper.options(name="keeper").remote()
    assert hs.get(keeper.ping.remote()) == "pong"
    assert hs.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
    blob = hs.put(b"x" * 300_000)
    pathlib.Path(sys.argv[1]).touch()
    sys.stdin.read()  # until the test closes stdin
    hs.shutdown()
"""


def _json(result: Any) -> Any:
    return json.loads(result.stdout)


def test_status_without_a_runtime_summarizes_the_database(cli: Cli) -> None:
    empty = _json(cli.run("status", "--json"))
    assert empty["runtimes"] == []
    assert empty["database"]["exists"] is False  # status creates no database
    assert not (cli.home / "heliostat.db").exists()

    cli.run("db", "upgrade")
    revision = cli.run("db", "current").stdout.strip()
    human = cli.run("status").stdout
    assert "No local heliostat runtime is running" in human
    assert f"revision {revision}" in human
    assert "workflows:    0" in human and "schedules:    0" in human
    result = cli.run("list", "actors", "--json")
    assert json.loads(result.stdout) == []
    assert "no local heliostat runtime is running" in result.stderr


def test_status_and_list_show_a_live_runtime(cli: Cli, wait_for: Callable[..., Any]) -> None:
    cli.write_module("driver", DRIVER)
    ready = cli.mods / "ready"
    driver = subprocess.Popen(
        [sys.executable, "driver.py", str(ready)],
        cwd=cli.mods,
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: ready.exists() or driver.poll() is not None,
            timeout=60,
            what="the driver to start its runtime",
        )
        assert driver.poll() is None, driver.communicate()[1]
        status = _json(cli.run("status", "--json"))
        [runtime] = status["runtimes"]
        assert runtime["pid"] == driver.pid and runtime["error"] is None
        assert runtime["status"]["total"]["CPU"] == 1
        assert any("Keeper" in (w["actor"] or "") for w in runtime["status"]["workers"])
        assert status["database"]["exists"] is False

        human = cli.run("status").stdout
        assert f"Runtime {runtime['session']} (driver pid {driver.pid}" in human
        assert "object store:" in human and "workers:" in human

        tasks, actors, objects = (
            json.loads(r.stdout)
            for r in cli.run_many([("list", k, "--json") for k in ("tasks", "actors", "objects")])
        )
        assert sum(1 for t in tasks if t["name"].endswith("square")) == 3
        assert [(a["class_name"], a["name"], a["state"]) for a in actors] == [
            ("Keeper", "keeper", "ALIVE")
        ]
        assert any(o["size"] >= 300_000 for o in objects)
        table = cli.run("list", "actors").stdout
        assert table.split()[:2] == ["ACTOR", "ID"] and "keeper" in table
        cli.bad_input("list", "tasks", "--session", "nope", names=["'nope'"])
    finally:
        _out, err = driver.communicate(input="", timeout=60)
    assert driver.returncode == 0, err
