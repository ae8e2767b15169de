"""Durable timers and events (``workflow.sleep``, ``workflow.wait_for_event``), with real
workers and, for the crash, a real driver process killed with SIGKILL.

Ray's semantics: ``sleep`` is a step that completes after its duration; a listener's
event is checkpointed before ``event_checkpointed`` is called, and a resumed workflow
does not wait again for an event it received. heliostat keeps a timer's wake-up time
in the lineage database, so a resumed workflow waits only for what is left.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import WorkflowCancelledError, WorkflowExecutionError
from heliostat.storage.models import Step, WorkflowTimer
from heliostat.workflows import WorkflowStatus
from heliostat.workflows.clock import FakeClock
from heliostat.workflows.services import install, runtime_services

pytestmark = pytest.mark.usefixtures("wf_home")


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class FileListener(workflow.EventListener):
    """An event is a file appearing; acknowledging it appends to a log."""

    async def poll_for_event(self, path: str, log: str) -> tuple[str, str]:
        _append(log, "poll")
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        with open(path) as f:
            return f.read(), log  # the log travels with the event, for the ack

    async def event_checkpointed(self, event: tuple[str, str]) -> None:
        text, log = event
        _append(log, f"ack {text}")


@hs.remote
def after(log: str, x: Any) -> Any:
    _append(log, "after")
    return x


@hs.remote
def needs_flag(flag: str, x: Any) -> Any:
    if not os.path.exists(flag):
        raise ValueError("no flag")
    return f"got {x[0]}"


def _engine(home: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{home / 'heliostat.db'}")


def _timer_rows(home: Path, wid: str) -> list[tuple[str, Any, Any]]:
    """The timers of ``wid`` (none while the driver has not created its database yet)."""
    if not (home / "heliostat.db").exists():
        return []
    engine = _engine(home)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(WorkflowTimer.task_id, WorkflowTimer.set_at, WorkflowTimer.wake_at).where(
                    WorkflowTimer.workflow_id == wid
                )
            ).all()
            return [tuple(r) for r in rows]
    except sa.exc.OperationalError:  # its schema is being created
        return []
    finally:
        engine.dispose()


# --- sleep ------------------------------------------------------------------------------------


def test_sleep_completes_after_its_duration_and_stores_its_wake_up_time(
    runtime: Runtime, wf_home: Path, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    started = time.monotonic()
    assert workflow.run(after.bind(log, workflow.sleep(0.5)), workflow_id="nap") is None
    assert time.monotonic() - started >= 0.5
    [(task_id, set_at, wake_at)] = _timer_rows(wf_home, "nap")
    assert task_id == "sleep" and wake_at - set_at == dt.timedelta(seconds=0.5)
    assert workflow.get_metadata("nap", "sleep")["status"] == "SUCCESSFUL"
    assert _lines(Path(log)) == ["after"]
    # The sleep held no worker: its only attempt never reached one.
    assert [a.worker for a in workflow.attempts("nap", "sleep")] == [None]


def test_sleeping_workflow_can_be_cancelled(runtime: Runtime, wf_home: Path) -> None:
    ref = workflow.run_async(workflow.sleep(3600), workflow_id="long-nap")
    deadline = time.monotonic() + 30
    while not _timer_rows(wf_home, "long-nap"):
        assert time.monotonic() < deadline, "the timer was never set"
        time.sleep(0.02)
    workflow.cancel("long-nap")
    with pytest.raises(WorkflowCancelledError):
        hs.get(ref, timeout=30)
    assert workflow.get_status("long-nap") is WorkflowStatus.CANCELED


DRIVER = textwrap.dedent(
    """
    import sys
    import heliostat as hs
    from heliostat import workflow

    hs.init(num_cpus=1)
    workflow.run(workflow.sleep(3600), workflow_id=sys.argv[1])
    """
)


def test_resumed_sleep_waits_only_for_the_rest(
    fresh_runtime: Any, wf_home: Path, tmp_path: Path
) -> None:
    """A driver dies an hour before its sleep ends; the resume keeps the stored wake-up
    time (it fires once the clock passes it, not an hour after the resume)."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIOSTAT_")}
    env.update(HELIOSTAT_HOME=str(wf_home), HELIOSTAT_LEASE_TIMEOUT="2")
    proc = subprocess.Popen([sys.executable, str(script), "crashed-nap"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not _timer_rows(wf_home, "crashed-nap"):
            assert proc.poll() is None, "the driver exited early"
            assert time.monotonic() < deadline, "the timer was never set"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    [(_, set_at, wake_at)] = _timer_rows(wf_home, "crashed-nap")
    assert wake_at - set_at == dt.timedelta(hours=1)

    rt = fresh_runtime()
    clock = FakeClock(wake_at - dt.timedelta(seconds=5))  # 5 s of the hour are left
    install(rt, clock=clock)
    ref = workflow.resume_async("crashed-nap")
    ready, _ = hs.wait([ref], timeout=0.5)
    assert ready == []  # still sleeping: the stored time has not come
    stop = threading.Event()

    def tick() -> None:  # the fake clock moves 1 s per 20 ms of real time
        while not stop.wait(0.02):
            clock.advance(1.0)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        assert hs.get(ref, timeout=60) is None
    finally:
        stop.set()
        ticker.join()
    assert clock.now() < wake_at + dt.timedelta(minutes=1)  # not a new hour
    assert _timer_rows(wf_home, "crashed-nap") == [("sleep", set_at, wake_at)]
    attempts = workflow.attempts("crashed-nap", "sleep")
    assert [a.attempt for a in attempts] == [1, 2]
    services = runtime_services(rt)
    assert services is not None
    services.close_stores()


# --- events -----------------------------------------------------------------------------------


def test_event_is_checkpointed_before_it_is_acknowledged(
    runtime: Runtime, wf_home: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    event_file = tmp_path / "event"
    event_file.write_text("order-7")
    dag = after.bind(str(log), workflow.wait_for_event(FileListener, str(event_file), str(log)))
    assert workflow.run(dag, workflow_id="evt") == ("order-7", str(log))
    assert _lines(log) == ["poll", "ack order-7", "after"]
    poll = workflow.get_metadata("evt", "wait_for_event")
    ack = workflow.get_metadata("evt", "event_checkpointed")
    assert poll["status"] == ack["status"] == "SUCCESSFUL"
    assert poll["finished_at"] <= ack["started_at"]
    # The event is in the lineage database, in the poll step's row.
    engine = _engine(wf_home)
    try:
        with engine.connect() as conn:
            inline = conn.execute(
                sa.select(Step.output_inline).where(
                    Step.workflow_id == "evt", Step.task_id == "wait_for_event"
                )
            ).scalar_one()
        assert inline is not None and b"order-7" in bytes(inline)
    finally:
        engine.dispose()


def test_resume_does_not_wait_again_for_a_received_event(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    event_file = tmp_path / "event"
    event_file.write_text("order-8")
    flag = tmp_path / "flag"
    dag = needs_flag.bind(
        str(flag), workflow.wait_for_event(FileListener, str(event_file), str(log))
    )
    with pytest.raises(WorkflowExecutionError):
        workflow.run(dag, workflow_id="evt-resume")
    event_file.unlink()  # a second poll would now wait forever
    flag.touch()
    assert workflow.resume("evt-resume") == "got order-8"
    assert _lines(log) == ["poll", "ack order-8"]
    assert workflow.get_metadata("evt-resume", "wait_for_event")["attempts"] == 1


def test_wait_for_event_takes_an_event_listener_class() -> None:
    with pytest.raises(TypeError, match="EventListener"):
        workflow.wait_for_event(object)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="EventListener"):
        workflow.wait_for_event(FileListener())  # type: ignore[arg-type]
