"""``heliostat run`` and ``heliostat workflow ...`` as subprocesses, on a private home."""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Cli, assert_one_line_error

FLOWS = '''
    import os
    import time

    import heliostat as hs
    from heliostat import workflow


    @hs.remote
    def add(a, b):
        return a + b


    @hs.remote
    def total(*values):
        return sum(values)


    @hs.remote
    def check(x, flag):
        if os.path.exists(flag):
            raise ValueError(f"flag file {os.path.basename(flag)} is present")
        return x * 10


    @hs.remote
    def wait_for_gate(x, started, gate):
        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(gate):  # the test opens the gate after Ctrl-C
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(0.02)
        return x + 1


    def chain(n=1, m=2):
        """Three steps: total(add(n, m), add(n, 1))."""
        return total.options(**workflow.options(task_id="total")).bind(
            add.options(**workflow.options(task_id="left")).bind(n, m),
            add.options(**workflow.options(task_id="right")).bind(n, 1),
        )


    def fragile(flag):
        return check.options(**workflow.options(task_id="check")).bind(add.bind(1, 1), flag)


    def gated(started, gate):
        return wait_for_gate.bind(add.bind(1, 1), started, gate)


    @hs.remote
    def charge(x, flag):
        # A side effect that is not idempotent; its worker dies before it can report.
        with open(flag + ".log", "a") as log:
            print("charged", file=log)
        if not os.path.exists(flag):
            os._exit(1)
        return x * 100


    def billing(flag):
        step = workflow.options(task_id="charge", idempotent=False)
        return charge.options(**step).bind(add.bind(1, 1), flag)


    @hs.remote
    def charge_both(x, flag, me, other):
        # Like charge, once the other charge has started too: both are in doubt.
        with open(flag + ".log", "a") as log:
            print(me, file=log)
        open(flag + "." + me, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(flag + "." + other):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{other} never started")
            time.sleep(0.02)
        if not os.path.exists(flag):
            os._exit(1)
        return x * 100


    def double_billing(flag):
        def charge_step(me, other):
            step = workflow.options(task_id=me, idempotent=False)
            return charge_both.options(**step).bind(1, flag, me, other)

        return total.bind(charge_step("card", "bank"), charge_step("bank", "card"))


    def not_a_dag():
        return {"steps": 3}


    def explodes():
        raise RuntimeError("no DAG today")


    def duplicate_ids():
        same = workflow.options(task_id="same")
        return total.bind(add.options(**same).bind(1, 2), add.options(**same).bind(3, 4))


    NOT_CALLABLE = 42
'''


@pytest.fixture
def flows(cli: Cli) -> Cli:
    cli.write_module("flows", FLOWS)
    cli.write_module("broken", "1 / 0\n")
    return cli


def _json(result: Any) -> Any:
    return json.loads(result.stdout)


PROGRESS = re.compile(r"\[(?P<id>[^\]]+)\] (?P<done>\d+)/(?P<total>\d+) steps done, \d+ failed, .+")


@pytest.mark.parametrize("where", ["a log file", "a CI terminal"])
def test_run_progress_is_plain_separate_lines_off_an_interactive_terminal(
    flows: Cli, tmp_path: Path, where: str
) -> None:
    args = ("run", "flows:chain", "n=2", "--id", "wf-log", "--num-cpus", "1")
    if where == "a log file":
        code, text = flows.run_into_file(tmp_path / "run.log", *args)
    else:  # a CI job's pseudo-terminal is captured into a log too
        code, text = flows.run_on_terminal(*args, env={"CI": "true"})
    assert code == 0, text
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    progress = [m for m in map(PROGRESS.fullmatch, lines) if m]
    # Each update a line of its own: the first one (the run has started), then the
    # final one (3 steps end well within the throttle's interval).
    assert [(m["id"], m["done"], m["total"]) for m in progress] == [
        ("wf-log", "0", "3"),
        ("wf-log", "3", "3"),
    ], text
    assert [line for line in lines if "steps done" in line and not line.startswith("workflow")] == [
        m.string for m in progress
    ]
    assert "heliostat: running workflow 'wf-log' (3 steps)" in lines
    assert "workflow wf-log: SUCCESSFUL" in text and "output: 7" in text


def test_run_shows_progress_and_result_and_workflow_commands_read_it(flows: Cli) -> None:
    cli = flows
    script = Path(sys.executable).with_name("heliostat")
    # The installed script too imports targets from the current directory.
    if script.exists():
        result = cli.run(
            "run", "flows:chain", "n=5", "--id", "wf-ok", "--num-cpus", "1", argv0=[str(script)]
        )
    else:  # pragma: no cover - an environment without the console script
        result = cli.run("run", "flows:chain", "n=5", "--id", "wf-ok", "--num-cpus", "1")
    assert "workflow wf-ok: SUCCESSFUL" in result.stdout
    assert "3/3 steps done, 0 failed" in result.stdout
    assert "output: 13" in result.stdout
    assert "[wf-ok] 3/3 steps done, 0 failed" in result.stderr  # the progress line

    # Options after the target, a positional argument read as JSON, a generated id.
    doc = _json(cli.run("run", "flows:chain", "10", "m=3", "--json", "--num-cpus=1"))
    assert doc["status"] == "SUCCESSFUL"
    assert doc["output"] == 24
    assert doc["steps"] == {"total": 3, "done": 3, "failed": 0}
    generated = doc["workflow_id"]

    # Reads of one state: run at once.
    listed, status, show, table, output, left, limited = cli.run_many(
        [
            ("workflow", "list", "--json"),
            ("workflow", "status", "wf-ok", "--json"),
            ("workflow", "show", "wf-ok", "--json"),
            ("workflow", "show", "wf-ok"),
            ("workflow", "output", "wf-ok", "--json"),
            ("workflow", "output", "wf-ok", "--task", "left"),
            ("workflow", "list", "--status", "successful", "--limit", "1"),
        ]
    )
    assert {(r["workflow_id"], r["status"]) for r in _json(listed)} == {
        ("wf-ok", "SUCCESSFUL"),
        (generated, "SUCCESSFUL"),
    }
    assert _json(status)["status"] == "SUCCESSFUL"
    assert _json(status)["steps"] == 3
    assert _json(status)["output_task_id"] == "total"

    steps = {s["task_id"]: s for s in _json(show)["steps"]}
    assert set(steps) == {"left", "right", "total"}
    assert all(s["status"] == "SUCCESSFUL" and s["attempts"] == 1 for s in steps.values())
    assert all(s["duration_s"] is not None and s["error"] is None for s in steps.values())

    lines = table.stdout.splitlines()
    assert "STEP" in table.stdout and "STATE" in table.stdout and "ATTEMPTS" in table.stdout
    assert any(line.split()[:2] == ["total", "SUCCESSFUL"] for line in lines)

    assert _json(output) == 13
    assert left.stdout.strip() == "7"
    assert len(limited.stdout.splitlines()) == 2  # header and one run
    assert "more runs exist" in limited.stderr


def test_bad_targets_exit_2_with_one_line_and_record_nothing(flows: Cli) -> None:
    flows.bad_inputs(
        {
            ("run", "nosuchmodule:build"): ["cannot import 'nosuchmodule'"],
            ("run", "flows:missing"): ["has no attribute 'missing'"],
            ("run", "flows:NOT_CALLABLE"): ["flows:NOT_CALLABLE is not callable (an int)"],
            ("run", "flows:not_a_dag"): [
                "flows:not_a_dag returned dict, not a DAG built with .bind()"
            ],
            ("run", "flows:chain", "x=1"): ["cannot call flows:chain", "'x'"],
            ("run", "flows:explodes"): ["RuntimeError", "no DAG today"],
            ("run", "broken:build"): ["importing 'broken'", "ZeroDivisionError"],
            ("run", "flows"): ["MODULE:FUNCTION"],
            ("run", "flows:chain", "--id"): ["--id", "expected one argument"],
            ("run", "flows:chain", "--bogus"): ["unrecognized option '--bogus'"],
        }
    )
    assert flows.rows("SELECT count(*) FROM workflows") in ([], [(0,)])


def test_a_repeated_task_id_is_suffixed_as_in_ray(flows: Cli) -> None:
    done = _json(flows.run("run", "flows:duplicate_ids", "--id", "wf-dup", "--json"))
    assert done["status"] == "SUCCESSFUL" and done["output"] == 10
    show = _json(flows.run("workflow", "show", "wf-dup", "--json"))
    assert {"same", "same_1"} <= {s["task_id"] for s in show["steps"]}


def test_failed_run_exits_1_and_resumes_after_the_fix(flows: Cli) -> None:
    cli = flows
    flag = cli.mods / "flag"
    flag.touch()
    failed = cli.run(
        "run", "flows:fragile", f"flag={flag}", "--id", "wf-fix", "--num-cpus", "1", expect=1
    )
    assert "workflow wf-fix: FAILED" in failed.stdout
    assert "step 'check' raised ValueError: flag file flag is present" in failed.stdout
    assert "heliostat workflow resume wf-fix" in failed.stdout

    table = cli.run("workflow", "show", "wf-fix").stdout
    check_row = next(line for line in table.splitlines() if line.startswith("check "))
    assert "FAILED" in check_row and "ValueError: flag file flag is present" in check_row

    no_output = cli.run("workflow", "output", "wf-fix", expect=1)
    assert_one_line_error(no_output, ["wf-fix", "FAILED", "no stored output"])

    flag.unlink()  # the fix
    resumed = _json(cli.run("workflow", "resume", "wf-fix", "--json", "--num-cpus", "1"))
    assert resumed["status"] == "SUCCESSFUL"
    assert resumed["output"] == 20

    show = _json(cli.run("workflow", "show", "wf-fix", "--json"))
    attempts = {s["task_id"]: s["attempts"] for s in show["steps"]}
    assert attempts["check"] == 2
    assert [n for t, n in attempts.items() if t != "check"] == [1]  # not re-run
    assert show["resume_count"] == 1


def test_in_doubt_step_is_settled_by_resolve_then_resume(flows: Cli) -> None:
    cli = flows
    flag = cli.mods / "charged"
    stuck = cli.run("run", "flows:billing", f"flag={flag}", "--id", "wf-bill", expect=1)
    assert "NEEDS_ATTENTION" in stuck.stdout and "charge" in stuck.stdout
    # The error is given whole: the commands that settle the step follow its first line.
    assert "heliostat workflow resolve wf-bill charge --rerun" in stuck.stdout
    show, status = cli.run_many(
        [("workflow", "show", "wf-bill", "--json"), ("workflow", "status", "wf-bill")]
    )
    steps = {s["task_id"]: s["status"] for s in _json(show)["steps"]}
    assert steps["charge"] == "IN_DOUBT"
    assert _json(show)["in_doubt"] == ["charge"]
    # status names the in-doubt step and both ways to settle it.
    text = cli.ok(status)
    assert "in doubt:  charge" in text and "wf-bill:charge" in text  # its idempotency key
    assert "heliostat workflow resolve wf-bill charge --result VALUE" in text
    assert "heliostat workflow resolve wf-bill charge --rerun" in text
    assert "then resume it: heliostat workflow resume wf-bill" in text

    not_in_doubt = cli.run("workflow", "resolve", "wf-bill", "add", "--rerun", expect=2)
    assert_one_line_error(not_in_doubt, ["'add'", "not IN_DOUBT"])
    neither = cli.run("workflow", "resolve", "wf-bill", "charge", expect=2)
    assert "--result" in neither.stderr and "--rerun" in neither.stderr

    # The operator checked: the charge went through, for 200.
    settled = cli.run("workflow", "resolve", "wf-bill", "charge", "--result", "200")
    assert settled.stdout.splitlines() == [
        "step charge of workflow wf-bill: resolved; its output is 200",
        "resume it: heliostat workflow resume wf-bill",
    ]
    resumed = _json(cli.run("workflow", "resume", "wf-bill", "--json", "--num-cpus", "1"))
    assert resumed["status"] == "SUCCESSFUL" and resumed["output"] == 200
    assert (cli.mods / "charged.log").read_text() == "charged\n"  # not run again


def test_resolve_names_the_steps_still_in_doubt(flows: Cli) -> None:
    cli = flows
    flag = cli.mods / "paid"
    args = ("run", "flows:double_billing", f"flag={flag}", "--id", "wf-two", "--num-cpus", "2")
    cli.run(*args, expect=1)
    status = cli.run("workflow", "status", "wf-two")
    for step in ("bank", "card"):
        assert f"heliostat workflow resolve wf-two {step} --rerun" in status.stdout
    assert sorted(_json(cli.run("workflow", "status", "wf-two", "--json"))["in_doubt"]) == [
        "bank",
        "card",
    ]

    first = cli.run("workflow", "resolve", "wf-two", "card", "--result", "100").stdout
    assert first.splitlines() == [
        "step card of workflow wf-two: resolved; its output is 100",
        "still in doubt: bank; settle each first:",
        "  heliostat workflow resolve wf-two bank --result VALUE   (it did its work: VALUE is "
        "its output)",
        "  heliostat workflow resolve wf-two bank --rerun          (it did not: run it again)",
        "then resume it: heliostat workflow resume wf-two",
    ]
    flag.touch()  # the bank charge did not go through: it runs again, and now succeeds
    second = cli.run("workflow", "resolve", "wf-two", "bank", "--rerun").stdout
    assert second.splitlines() == [
        "step bank of workflow wf-two: resolved; it runs again when the run resumes",
        "resume it: heliostat workflow resume wf-two",
    ]
    settled = cli.run("workflow", "status", "wf-two").stdout
    assert "next:      resume it: heliostat workflow resume wf-two" in settled
    assert "in doubt" not in settled
    resumed = _json(cli.run("workflow", "resume", "wf-two", "--json", "--num-cpus", "2"))
    assert (resumed["status"], resumed["output"]) == ("SUCCESSFUL", 200)
    assert sorted((cli.mods / "paid.log").read_text().split()) == ["bank", "bank", "card"]


def test_ctrl_c_stops_the_run_and_leaves_it_resumable(
    flows: Cli, wait_for: Callable[..., Any]
) -> None:
    cli = flows
    started, gate = cli.mods / "started", cli.mods / "gate"
    proc = cli.popen(
        *("run", "flows:gated", f"started={started}", f"gate={gate}"),
        *("--id", "wf-int", "--num-cpus", "1"),
    )
    try:
        wait_for(started.exists, timeout=60, what="the gated step to start")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted; workflow 'wf-int' is RESUMABLE" in err
    assert "heliostat workflow resume wf-int" in err
    assert "Traceback" not in err

    assert _json(cli.run("workflow", "status", "wf-int", "--json"))["status"] == "RESUMABLE"
    gate.touch()
    resumed = cli.run("workflow", "resume-all", "--num-cpus", "1")
    assert resumed.stdout == "workflow wf-int: SUCCESSFUL\n"  # the result; the rest on stderr
    assert "heliostat: resuming workflow 'wf-int'\n" in resumed.stderr
    nothing = cli.run("workflow", "resume-all", "--json", "--num-cpus", "1")
    assert _json(nothing) == [] and "heliostat: no workflow to resume\n" in nothing.stderr
    assert _json(cli.run("workflow", "status", "wf-int", "--json"))["status"] == "SUCCESSFUL"


def test_unknown_ids_and_refused_actions_exit_2(flows: Cli) -> None:
    cli = flows
    flag = cli.mods / "flag"
    flag.touch()
    unknown = {
        ("workflow", "status", "nope"): ["No workflow with id 'nope'"],
        ("workflow", "show", "nope"): ["No workflow with id 'nope'"],
        ("workflow", "output", "nope"): ["No workflow with id 'nope'"],
        ("workflow", "resume", "nope"): ["No workflow with id 'nope'"],
        ("workflow", "cancel", "nope"): ["No workflow with id 'nope'"],
        ("workflow", "delete", "nope", "--yes"): ["No workflow with id 'nope'"],
        ("workflow", "list", "--status", "bogus"): ["unknown status 'bogus'"],
        ("workflow", "list", "--limit", "-1"): ["--limit"],
        ("workflow", "status"): ["required: ID"],
        ("workflow", "frobnicate", "x"): ["invalid choice: 'frobnicate'"],
    }
    # The refusals and a failing run, at once: they do not touch one another.
    failing = ("run", "flows:fragile", f"flag={flag}", "--id", "wf-x", "--num-cpus", "1")
    run, *refused = cli.run_many([failing, *unknown])
    cli.ok(run, 1)
    for names, result in zip(unknown.values(), refused, strict=True):
        cli.ok(result, 2)
        assert_one_line_error(result, names)

    no_step, cancel = cli.run_many(
        [("workflow", "output", "wf-x", "--task", "nosuch"), ("workflow", "cancel", "wf-x")]
    )
    assert_one_line_error(no_step, ["'nosuch'"])
    assert "CANCELED" in cli.ok(cancel)
    resume, delete = cli.run_many([("workflow", "resume", "wf-x"), ("workflow", "delete", "wf-x")])
    cli.ok(resume, 2)
    assert_one_line_error(resume, ["'wf-x' was cancelled"])
    cli.ok(delete, 2)
    assert_one_line_error(delete, ["--yes"])  # stdin is no terminal
    assert cli.rows("SELECT status FROM workflows WHERE workflow_id = 'wf-x'") == [("CANCELED",)]
    assert "deleted" in cli.run("workflow", "delete", "wf-x", "--yes").stdout
    assert cli.rows("SELECT count(*) FROM workflows WHERE workflow_id = 'wf-x'") == [(0,)]
