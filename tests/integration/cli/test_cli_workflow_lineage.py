"""What a run left in the lineage, read from the shell: ``workflow logs``, ``workflow
show ID STEP`` (attempts and tracebacks) and the columns of ``workflow list``."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from cli_harness import Cli, assert_one_line_error

STEPS = """
    import os
    import sys
    import time

    import heliostat as hs
    from heliostat import workflow


    @hs.remote
    def load(n):
        print(f"loading {n} rows")
        return list(range(n))


    @hs.remote
    def check(rows, flag):
        print(f"checking {len(rows)} rows")
        print("a warning on stderr", file=sys.stderr)
        if os.path.exists(flag):
            raise ValueError(f"row {len(rows)} is bad")
        return len(rows)


    @hs.remote
    def noisy(count):
        print("the first line")
        print("x" * 1_100_000)  # past the 1 MB an attempt keeps
        print("the last line")
        return count


    def audit(flag):
        rows = load.options(**workflow.options(task_id="load")).bind(3)
        count = check.options(**workflow.options(task_id="check")).bind(rows, flag)
        return noisy.options(**workflow.options(task_id="noisy")).bind(count)


    @hs.remote
    def wait_for_gate(started, gate):
        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(gate):  # the test opens the gate once it has looked
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(0.02)
        return 1


    def gated(started, gate):
        return wait_for_gate.bind(started, gate)


    @hs.remote
    def quiet(n):
        return n


    def scheduled(logical_time):
        return quiet.options(**workflow.options(task_id="quiet")).bind(2)
"""


@pytest.fixture
def steps(cli: Cli) -> Cli:
    cli.write_module("steps", STEPS)
    return cli


def _json(result: Any) -> Any:
    return json.loads(result.stdout)


HEADER = re.compile(r"--- (?P<step>\w+), attempt (?P<n>\d+): (?P<status>[A-Z_]+), .*---")


def _headers(text: str) -> list[tuple[str, int, str]]:
    return [
        (m["step"], int(m["n"]), m["status"]) for m in map(HEADER.fullmatch, text.splitlines()) if m
    ]


def test_logs_and_show_step_give_each_attempt_its_output_times_and_traceback(steps: Cli) -> None:
    cli = steps
    flag = cli.mods / "flag"
    flag.touch()
    cli.run("run", "steps:audit", f"flag={flag}", "--id", "wf-audit", "--num-cpus", "1", expect=1)
    flag.unlink()  # the fix
    cli.run("workflow", "resume", "wf-audit", "--num-cpus", "1")

    logs, one_step, first_try, as_json, show, show_json, table = cli.run_many(
        [
            ("workflow", "logs", "wf-audit"),
            ("workflow", "logs", "wf-audit", "check"),
            ("workflow", "logs", "wf-audit", "check", "--attempt", "1"),
            ("workflow", "logs", "wf-audit", "check", "--json"),
            ("workflow", "show", "wf-audit", "check"),
            ("workflow", "show", "wf-audit", "check", "--json"),
            ("workflow", "show", "wf-audit"),
        ]
    )
    # Grouped by step (in the order they first ran), attempts in order, one header each.
    text = cli.ok(logs)
    assert _headers(text) == [
        ("load", 1, "SUCCESSFUL"),
        ("check", 1, "FAILED"),
        ("check", 2, "SUCCESSFUL"),
        ("noisy", 1, "SUCCESSFUL"),
    ], text
    load_part, check_part = text.split("--- check, attempt 1")[0], text.split("--- noisy")[0]
    assert "loading 3 rows" in load_part
    assert check_part.count("checking 3 rows") == 2 and "a warning on stderr" in check_part
    # The noisy step printed more than an attempt keeps: the start is cut, and said so.
    noisy = text.split("--- noisy, attempt 1")[1]
    assert re.search(r"\[the start is cut: it printed 1,100,\d{3} characters", noisy), noisy[:300]
    assert "the last line" in noisy and "the first line" not in noisy

    assert _headers(cli.ok(one_step)) == [("check", 1, "FAILED"), ("check", 2, "SUCCESSFUL")]
    assert "started " in one_step.stdout and " UTC" in one_step.stdout
    only_first = cli.ok(first_try)
    assert _headers(only_first) == [("check", 1, "FAILED")]
    assert only_first.count("checking 3 rows") == 1
    assert [(e["attempt"], e["status"], e["truncated"]) for e in _json(as_json)] == [
        (1, "FAILED", False),
        (2, "SUCCESSFUL", False),
    ]
    assert _json(as_json)[0]["text"] == "checking 3 rows\na warning on stderr\n"

    # show ID STEP: every attempt, its times, worker and outcome; the traceback names
    # the user's own file and line.
    detail = cli.ok(show)
    assert "attempt 1: FAILED" in detail and "attempt 2: SUCCESSFUL" in detail
    for field in ("worker:", "queued:", "started:", "finished:", "ran:", "in the queue"):
        assert field in detail, field
    assert "error:     ValueError: row 3 is bad" in detail
    steps_file = str(cli.mods / "steps.py")
    assert f'File "{steps_file}", line' in detail, detail
    assert 'raise ValueError(f"row {len(rows)} is bad")' in detail
    assert "heliostat workflow logs wf-audit check" in detail

    doc = _json(show_json)
    assert (doc["task_id"], doc["status"], doc["attempts"]) == ("check", "SUCCESSFUL", 2)
    failed, succeeded = doc["attempt_history"]
    assert (failed["status"], failed["error_type"]) == ("FAILED", "ValueError")
    assert failed["error"] == "ValueError: row 3 is bad"
    assert steps_file in failed["traceback"] and failed["traceback"].endswith("row 3 is bad\n")
    assert succeeded["traceback"] is None and succeeded["error"] is None
    for attempt in (failed, succeeded):
        assert attempt["worker"] and attempt["duration_s"] >= 0 and attempt["queue_s"] >= 0
        queued, started = (
            dt.datetime.fromisoformat(attempt[k]) for k in ("queued_at", "started_at")
        )
        assert queued <= started

    # The step table gives each step's execution time.
    lines = cli.ok(table).splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("STEP "))
    rows = {line.split()[0]: line.split() for line in lines[start + 1 :] if line.strip()}
    assert set(rows) == {"load", "check", "noisy"}
    assert rows["check"][1:3] == ["SUCCESSFUL", "2"]


def test_unknown_ids_steps_and_attempts_are_one_line_errors_and_silence_is_said(steps: Cli) -> None:
    cli = steps
    cli.run(
        "run", "steps:scheduled", "logical_time=2026-11-21", "--id", "wf-one", "--num-cpus", "1"
    )
    cli.bad_inputs(
        {
            ("workflow", "logs", "nope"): ["No workflow with id 'nope'"],
            ("workflow", "logs", "wf-one", "nosuch"): [
                "no step 'nosuch'",
                "known steps: quiet",
            ],
            ("workflow", "logs", "wf-one", "quiet", "--attempt", "2"): [
                "step 'quiet' has no attempt 2",
                "attempts made: 1",
            ],
            ("workflow", "logs", "wf-one", "--attempt", "0"): ["--attempt must be 1 or more"],
            ("workflow", "show", "wf-one", "nosuch"): ["no step 'nosuch'"],
            ("workflow", "show", "nope", "quiet"): ["No workflow with id 'nope'"],
        }
    )
    # A step that printed nothing: its header and a note; in the whole run's logs, a
    # line naming the silent attempts.
    step, whole = cli.run_many(
        [("workflow", "logs", "wf-one", "quiet"), ("workflow", "logs", "wf-one")]
    )
    assert _headers(cli.ok(step)) == [("quiet", 1, "SUCCESSFUL")]
    assert step.stdout.splitlines()[1] == "(it printed nothing)"
    assert cli.ok(whole) == "printed nothing: quiet\n"


def test_list_shows_start_duration_steps_and_schedule_newest_first(
    steps: Cli, wait_for: Callable[..., Any]
) -> None:
    cli = steps
    cli.run("schedule", "add", "nightly", "--cron", "0 0 1 1 *", "--target", "steps:scheduled")
    scheduled = cli.run("schedule", "trigger", "nightly", "--wait", "--json", "--num-cpus", "1")
    scheduled_id = _json(scheduled)["workflow_id"]

    started, gate = cli.mods / "started", cli.mods / "gate"
    proc = cli.popen(
        "run",
        "steps:gated",
        f"started={started}",
        f"gate={gate}",
        "--id",
        "wf-live",
        "--num-cpus",
        "1",
    )
    try:
        wait_for(started.exists, timeout=60, what="the gated step to start")
        table, listed, searched, running = cli.run_many(
            [
                ("workflow", "list"),
                ("workflow", "list", "--json"),
                ("workflow", "list", "--search", "live"),
                ("workflow", "list", "--status", "running", "--json"),
            ]
        )
        gate.touch()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err

    header, *lines = cli.ok(table).splitlines()
    assert header.split() == ["ID", "STATUS", "STARTED", "(UTC)", "DURATION", "STEPS", "SCHEDULE"]
    assert [line.split()[0] for line in lines] == ["wf-live", scheduled_id]  # newest first
    live, from_schedule = (line.split() for line in lines)
    assert live[1] == "RUNNING" and live[-1] == "0/1"  # no schedule: the column is blank
    assert from_schedule[1] == "SUCCESSFUL" and from_schedule[-2:] == ["1/1", "nightly"]

    docs = {d["workflow_id"]: d for d in _json(listed)}
    assert docs["wf-live"]["schedule"] is None and docs[scheduled_id]["schedule"] == "nightly"
    assert docs["wf-live"]["finished_at"] is None
    assert docs["wf-live"]["duration_s"] > 0  # running: the time so far
    assert (docs["wf-live"]["steps_done"], docs["wf-live"]["steps_total"]) == (0, 1)
    assert docs[scheduled_id]["duration_s"] > 0 and docs[scheduled_id]["steps_done"] == 1

    assert [line.split()[0] for line in cli.ok(searched).splitlines()[1:]] == ["wf-live"]
    assert [d["workflow_id"] for d in _json(running)] == ["wf-live"]

    after = {d["workflow_id"]: d for d in _json(cli.run("workflow", "list", "--json"))}
    assert after["wf-live"]["status"] == "SUCCESSFUL" and after["wf-live"]["finished_at"]
    nothing = cli.run("workflow", "list", "--search", "zzz")
    assert nothing.stdout == "" and "no workflow runs with 'zzz' in the id" in nothing.stderr
    assert_one_line_error(cli.run("workflow", "list", "--status", "bogus", expect=2), ["bogus"])
