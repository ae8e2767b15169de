"""What a driver sees of its tasks: forwarded output and the timeline."""

from __future__ import annotations

import json
import os
import re

import pytest

import heliostat as hs


@hs.remote
def say_hello(word):
    print(f"hello {word}")
    return os.getpid()


@hs.remote
def complain():
    import sys

    print("something odd", file=sys.stderr)
    return os.getpid()


@hs.remote
def print_lines(n):
    for i in range(n):
        print(f"line {i}")
    return os.getpid()


@hs.remote
class Talker:
    def say(self, text):
        print(text)
        return os.getpid()


@hs.remote
def timeline_failure():
    raise ValueError("boom")


@hs.remote
def step(x):
    return x * 2


def _collect(capsys, seen: dict[str, str]) -> dict[str, str]:
    captured = capsys.readouterr()
    seen["out"] += captured.out
    seen["err"] += captured.err
    return seen


# --- output forwarding -----------------------------------------------------------------------


def test_task_print_reaches_driver_stdout_with_prefix(runtime, capsys, wait_for) -> None:
    pid = hs.get(say_hello.remote("world"))
    seen = {"out": "", "err": ""}
    expected = f"(say_hello pid={pid}) hello world"
    wait_for(
        lambda: expected in _collect(capsys, seen)["out"],
        what=f"{expected!r} on the driver's stdout",
    )
    assert expected not in seen["err"]


def test_task_stderr_reaches_driver_stderr(runtime, capsys, wait_for) -> None:
    pid = hs.get(complain.remote())
    seen = {"out": "", "err": ""}
    expected = f"(complain pid={pid}) something odd"
    wait_for(
        lambda: expected in _collect(capsys, seen)["err"],
        what=f"{expected!r} on the driver's stderr",
    )


def test_task_output_lines_keep_their_order(runtime, capsys, wait_for) -> None:
    pid = hs.get(print_lines.remote(20))
    seen = {"out": "", "err": ""}
    last = f"(print_lines pid={pid}) line 19"
    wait_for(lambda: last in _collect(capsys, seen)["out"], what=f"{last!r} on stdout")
    lines = [m.group(1) for m in re.finditer(rf"\(print_lines pid={pid}\) line (\d+)", seen["out"])]
    assert lines == [str(i) for i in range(20)]


def test_actor_print_is_prefixed_with_the_method(runtime, capsys, wait_for) -> None:
    talker = Talker.remote()
    pid = hs.get(talker.say.remote("from the actor"))
    seen = {"out": "", "err": ""}
    pattern = re.compile(rf"\(Talker[^ ]*say pid={pid}\) from the actor")
    wait_for(
        lambda: pattern.search(_collect(capsys, seen)["out"]),
        what=f"{pattern.pattern!r} on the driver's stdout",
    )


# --- timeline ----------------------------------------------------------------------------------


def test_timeline_has_complete_events_for_finished_tasks(runtime, tmp_path) -> None:
    named = step.options(name="timeline-step")
    assert hs.get([named.remote(i) for i in range(3)]) == [0, 2, 4]
    trace = hs.timeline()
    ours = [ev for ev in trace if ev.get("name") == "timeline-step"]
    assert len(ours) == 3
    for ev in ours:
        assert ev["ph"] == "X"
        assert ev["dur"] >= 0
        assert ev["ts"] > 0
        assert ev["args"]["outcome"] == "ok"
    # Every worker row the events use is named by a metadata event.
    named_rows = {ev["tid"] for ev in trace if ev["ph"] == "M"}
    assert {ev["tid"] for ev in ours} <= named_rows


def test_timeline_names_failed_tasks_with_their_outcome(runtime) -> None:
    ref = timeline_failure.options(max_retries=0).remote()
    with pytest.raises(ValueError, match="boom"):
        hs.get(ref)
    events = [ev for ev in hs.timeline() if ev.get("name") == "timeline_failure"]
    assert [ev["args"]["outcome"] for ev in events] == ["error"]
    assert events[0]["ph"] == "X"


def test_timeline_to_file_writes_the_same_json(runtime, tmp_path) -> None:
    hs.get(step.options(name="timeline-file-step").remote(1))
    path = tmp_path / "trace.json"
    trace = hs.timeline(str(path))
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(trace))
    assert any(ev.get("name") == "timeline-file-step" and ev["ph"] == "X" for ev in on_disk)
