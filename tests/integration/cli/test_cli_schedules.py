"""``heliostat schedule ...`` and the ``heliostat scheduler`` daemon, as subprocesses."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import signal
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cli_harness import Cli, assert_one_line_error

JOBS = """
    import heliostat as hs


    @hs.remote
    def stamp(when, label):
        return f"{label}@{when}"


    @hs.remote
    def chatty(when):
        print("a line the step prints")
        return when


    def nightly(logical_time, label="x"):
        return stamp.bind(logical_time.isoformat(), label)


    def no_time():
        return stamp.bind("never", "x")


    def talks(logical_time):
        return chatty.bind(logical_time.isoformat())
"""


@pytest.fixture
def jobs(cli: Cli) -> Cli:
    cli.write_module("jobs", JOBS)
    return cli


def _json(result: Any) -> Any:
    return json.loads(result.stdout)


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_schedule_commands_define_inspect_and_trigger(jobs: Cli) -> None:
    cli = jobs
    created = _json(
        cli.run(
            *("schedule", "add", "nightly", "--cron", "0 3 * * *", "--tz", "Europe/Berlin"),
            *("--target", "jobs:nightly", "--kwarg", "label=eu", "--json"),
        )
    )
    assert (created["name"], created["cron"], created["timezone"]) == (
        "nightly",
        "0 3 * * *",
        "Europe/Berlin",
    )
    assert created["kwargs"] == {"label": "eu"}
    duplicate, paused = cli.run_many(
        [
            ("schedule", "add", "nightly", "--cron", "0 4 * * *", "--target", "jobs:nightly"),
            (
                "schedule",
                "add",
                "quarter",
                "--every",
                "15m",
                "--target",
                "jobs:nightly",
                "--paused",
            ),
        ]
    )
    cli.ok(duplicate, 2)
    assert_one_line_error(duplicate, ["'nightly'", "--replace"])
    assert "every 15m" in cli.ok(paused) and "paused" in paused.stdout
    replaced = cli.run(
        *("schedule", "add", "nightly", "--cron", "30 2 * * *", "--tz", "Europe/Berlin"),
        *("--target", "jobs:nightly", "--replace", "--max-active-runs", "2"),
    )
    assert "schedule nightly: cron 30 2 * * * (Europe/Berlin) -> jobs:nightly" in replaced.stdout

    # Reads of one state: run at once.
    listed_json, table, show_json, human, upcoming_json = cli.run_many(
        [
            ("schedule", "list", "--json"),
            ("schedule", "list"),
            ("schedule", "show", "nightly", "--json"),
            ("schedule", "show", "nightly"),
            ("schedule", "next", "quarter", "-n", "3", "--json"),
        ]
    )
    listed = {s["name"]: s for s in _json(listed_json)}
    assert listed["nightly"]["max_active_runs"] == 2 and not listed["nightly"]["paused"]
    assert listed["quarter"]["paused"] and listed["quarter"]["interval_seconds"] == 900
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "SCHEDULE", "TZ"]

    show = _json(show_json)
    berlin = ZoneInfo("Europe/Berlin")
    fires = [_utc(t) for t in show["next_fire_times"]]
    assert len(fires) == 5 and fires == sorted(fires)
    assert {(t.astimezone(berlin).hour, t.astimezone(berlin).minute) for t in fires} == {(2, 30)}
    assert show["runs"] == []
    assert "next fire times:" in human.stdout
    assert "CET" in human.stdout or "CEST" in human.stdout

    upcoming = _json(upcoming_json)
    gaps = {_utc(b) - _utc(a) for a, b in itertools.pairwise(upcoming)}
    assert len(upcoming) == 3 and gaps == {dt.timedelta(minutes=15)}

    pause, resume = cli.run_many(
        [("schedule", "pause", "nightly"), ("schedule", "resume", "quarter")]
    )
    assert "paused" in cli.ok(pause) and "active" in cli.ok(resume)
    assert cli.rows("SELECT name, paused FROM schedules ORDER BY name") == [
        ("nightly", 1),
        ("quarter", 0),
    ]
    # Without a scheduler the manual run is only recorded, for the daemon to start.
    triggered_json, remove = cli.run_many(
        [("schedule", "trigger", "nightly", "--json"), ("schedule", "remove", "quarter")]
    )
    triggered = _json(triggered_json)
    assert triggered["workflow_id"].startswith("nightly@manual-")
    assert "removed" in cli.ok(remove)
    assert cli.rows("SELECT schedule_name, workflow_id, kind FROM schedule_runs") == [
        ("nightly", triggered["workflow_id"], "manual")
    ]
    assert cli.rows("SELECT name FROM schedules") == [("nightly",)]


def test_schedule_bad_input_exits_2_and_writes_nothing(jobs: Cli) -> None:
    add = ("schedule", "add", "x")
    cron = ("--cron", "0 3 * * *")
    target = ("--target", "jobs:nightly")
    jobs.bad_inputs(
        {
            (*add, "--cron", "0 3 * *", *target): ["'0 3 * *'", "4 fields"],
            (*add, *cron, "--tz", "Mars/Olympus", *target): ["Unknown time zone 'Mars/Olympus'"],
            (*add, *cron, "--target", "nosuch:fn"): ["nosuch"],
            (*add, *cron, "--target", "jobs:no_time"): ["logical_time"],
            (*add, "--every", "soon", *target): ["soon"],
            (*add, *cron, "--every", "1h", *target): ["not allowed with argument"],
            (*add, *target): ["one of the arguments --cron --every is required"],
            (*add, *cron, *target, "--kwarg", "noequals"): ["KEY=VALUE", "'noequals'"],
            (*add, *cron, *target, "--max-active-runs", "0"): ["--max-active-runs"],
            (*add, *cron, *target, "--start", "yesterday"): ["--start", "'yesterday'"],
            ("schedule", "add", "bad name!", *cron, *target): ["bad name!"],
            ("schedule", "show", "nope"): ["No schedule named 'nope'"],
            ("schedule", "pause", "nope"): ["No schedule named 'nope'"],
            ("schedule", "remove", "nope"): ["No schedule named 'nope'"],
            ("schedule", "trigger", "nope"): ["No schedule named 'nope'"],
            ("schedule", "next", "nope"): ["No schedule named 'nope'"],
        }
    )
    assert _json(jobs.run("schedule", "list", "--json")) == []
    assert jobs.rows("SELECT count(*) FROM schedule_runs") in ([], [(0,)])


def test_scheduler_daemon_fires_runs_and_stops_on_sigterm(
    jobs: Cli, wait_for: Callable[..., Any]
) -> None:
    cli = jobs
    cli.run("schedule", "add", "tick", "--every", "2s", "--target", "jobs:nightly")
    daemon = cli.popen("scheduler", "--num-cpus", "1")
    try:

        def fired() -> list[tuple[Any, ...]]:
            return cli.rows(
                "SELECT workflow_id FROM workflows "
                "WHERE workflow_id LIKE 'tick@%' AND status = 'SUCCESSFUL'"
            )

        done = wait_for(fired, timeout=60, what="the daemon to run a tick to success")
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0, err
    assert "heliostat scheduler: stopped" in err
    assert "Traceback" not in err
    runs = _json(cli.run("schedule", "show", "tick", "--json"))["runs"]
    assert done[0][0] in {r["workflow_id"] for r in runs if r["kind"] == "scheduled"}


PROGRESS = re.compile(r"\[(?P<id>[^\]]+)\] (?P<done>\d+)/(?P<total>\d+) steps done, \d+ failed, .+")


def test_trigger_wait_json_keeps_stdout_for_the_document(jobs: Cli) -> None:
    cli = jobs
    cli.run("schedule", "add", "talk", "--cron", "0 0 1 1 *", "--target", "jobs:talks")
    result = cli.run("schedule", "trigger", "talk", "--wait", "--num-cpus", "1", "--json")
    assert _json(result)["status"] == "SUCCESSFUL"  # stdout parses: the document only
    assert "a line the step prints" in result.stderr


def test_trigger_wait_shows_progress_as_plain_lines_in_a_pipe(jobs: Cli) -> None:
    cli = jobs
    cli.run("schedule", "add", "adhoc", "--cron", "0 0 1 1 *", "--target", "jobs:nightly")
    result = cli.run("schedule", "trigger", "adhoc", "--wait", "--num-cpus", "1")
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    progress = [m for m in map(PROGRESS.fullmatch, result.stderr.splitlines()) if m]
    assert progress, result.stderr
    assert {m["id"] for m in progress} == {result.stdout.split()[3]}
    assert [(m["done"], m["total"]) for m in progress if m["done"] == m["total"]] == [("1", "1")]
    assert " SUCCESSFUL" in result.stdout


def test_scheduler_starts_a_manual_trigger_from_another_process_within_a_poll(
    jobs: Cli, wait_for: Callable[..., Any]
) -> None:
    cli = jobs
    cli.run("schedule", "add", "adhoc", "--cron", "0 0 1 1 *", "--target", "jobs:nightly")
    with cli.start("scheduler", "--num-cpus", "1") as daemon:
        wait_for(
            lambda: "heliostat scheduler: running" in daemon.stderr(),
            timeout=60,
            what="the scheduler to start",
        )
        # The trigger records the run and exits at once; nothing else is needed.
        workflow_id = _json(cli.run("schedule", "trigger", "adhoc", "--json"))["workflow_id"]
        wait_for(
            lambda: (
                cli.rows(f"SELECT status FROM workflows WHERE workflow_id = '{workflow_id}'")
                == [("SUCCESSFUL",)]
            ),
            timeout=15,  # one poll (5 s) and a one-step run, with room to spare
            interval=0.1,
            what=f"the scheduler to run {workflow_id} to success",
        )
        code, _out, err = daemon.stop()
    assert code == 0, err
    assert f"started manual run {workflow_id}" in err
    assert "never started" not in err and "Traceback" not in err
    assert "\r" not in err and "\x1b" not in err
    assert "heliostat scheduler: stopped" in err
    (run,) = _json(cli.run("schedule", "show", "adhoc", "--json"))["runs"]
    assert (run["workflow_id"], run["kind"], run["status"]) == (workflow_id, "manual", "SUCCESSFUL")
