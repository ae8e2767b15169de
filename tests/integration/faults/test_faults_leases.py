"""Leases under fire: concurrent resumes, concurrent runs, and a paused driver.

* Several driver processes, released together by a barrier file, resume one RESUMABLE
  workflow: exactly one runs it, every other one gets WorkflowLeaseError naming the
  holder (its host and pid), and each remaining step runs once.
* In one process, two ``run_async`` of one new id, then two more of the running id:
  one run, the others' refs raise WorkflowLeaseError (waited for with a timeout).
* A driver SIGSTOPped past its lease while a step is in flight is taken over by
  another driver, which finishes the workflow; SIGCONTed, the first one must stop with
  a fenced WorkflowLeaseError, start no further step, and write nothing: the lineage
  rows (workflow, steps, attempts, WAL, transitions) and the side-effect log are the
  same before and after it wakes up. And a non-idempotent step it had in flight must
  not do its effect once the workflow is taken over (the new holder's hook re-ran it):
  the effect happens once.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from faultlab import (
    Driver,
    Lab,
    chain,
    expected_output,
    poll,
    process_gone,
    utcnow,
    workflow_cfg,
)

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import WorkflowLeaseError
from heliostat.workflows import WorkflowStatus


def _held_chain(lab: Lab) -> tuple[list[dict[str, Any]], str]:
    """s0 -> s1 -> s2 -> s3: s1's first attempt blocks forever (its driver is killed
    there); s2 waits for the ``hold`` gate, so the winner of a race keeps its lease
    until the test has heard from the losers."""
    return chain(
        "s",
        4,
        s1={"gate": str(lab.path("never")), "gate_attempts": [1]},
        s2={"gate": str(lab.path("hold"))},
    )


def _resumable(lab: Lab, wid: str, spec: tuple[list[dict[str, Any]], str]) -> int:
    """Run ``wid`` in a driver killed while s1 runs; return the log length then."""
    first = lab.start([workflow_cfg(wid, spec, "run")])
    poll(
        lambda: any(a.task_id == "s1" for a in lab.attempts()) or not first.alive(),
        90,
        "s1 to start",
    )
    assert first.alive(), first.text()
    first.kill()
    assert lab.committed(wid) == {"s0"}
    assert workflow.get_status(wid) is WorkflowStatus.RESUMABLE
    return len(lab.attempts())


@pytest.mark.parametrize(
    ("backend", "resumers"),
    [("sqlite", 2), ("postgresql", 3)],
    indirect=["backend"],
)
def test_concurrent_resumes_run_the_workflow_once_and_name_the_holder_to_the_others(
    lab: Lab, backend: str, resumers: int
) -> None:
    wid = f"raced-{resumers}"
    spec = _held_chain(lab)
    since = _resumable(lab, wid, spec)
    ready, go = lab.path("ready"), lab.path("go")
    drivers = [
        lab.start([workflow_cfg(wid, spec, "resume")], barrier=(ready, go)) for _ in range(resumers)
    ]
    poll(
        lambda: ready.exists() and len(ready.read_text().split()) == resumers,
        90,
        f"{resumers} drivers at the barrier",
    )
    go.touch()

    poll(
        lambda: sum(not d.alive() for d in drivers) >= resumers - 1,
        60,
        "all but one resumer to give up",
    )
    losers = [d for d in drivers if not d.alive()]
    (winner,) = [d for d in drivers if d.alive()]
    lab.path("hold").touch()
    assert winner.result() == {wid: {"value": expected_output(*spec)}}
    for loser in losers:
        got = loser.result()[wid]
        assert got["error"] == "WorkflowLeaseError", got
        assert got["holder_pid"] == winner.pid, (got, winner.pid)
        assert got["holder_host"] == socket.gethostname()
        assert f"pid {winner.pid}" in got["message"] and socket.gethostname() in got["message"]
        assert not got["fenced"]
    runs = lab.runs(wid, since=since)
    assert runs == Counter({"s1": 1, "s2": 1, "s3": 1}), lab.attempts()
    assert [a.attempt for a in lab.attempts(wid) if a.task_id == "s1"] == [1, 2]
    assert workflow.get_status(wid) is WorkflowStatus.SUCCESSFUL


# --- two runs in one process -------------------------------------------------------------


@hs.remote
def gated(log: str, gate: str, k: int, *inputs: int) -> int:
    ctx = workflow.get_context()
    with open(log, "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened {gate}")
        time.sleep(0.005)
    return k + sum(inputs)


def test_run_async_of_one_id_runs_it_once_and_refuses_the_others(
    runtime: Runtime, home: Path, tmp_path: Path
) -> None:
    log, gate = tmp_path / "steps.log", tmp_path / "gate"
    a = gated.options(**workflow.options(task_id="a")).bind(str(log), str(gate), 1)
    dag = gated.options(**workflow.options(task_id="b")).bind(str(log), str(gate), 2, a)

    first, second = (workflow.run_async(dag, workflow_id="twice") for _ in range(2))
    ready, _ = hs.wait([first, second], num_returns=1, timeout=30)
    assert len(ready) == 1, "neither run_async of a new id answered within 30 s"
    (loser,) = ready
    (winner,) = [r for r in (first, second) if r is not loser]
    with pytest.raises(WorkflowLeaseError) as refused:
        hs.get(loser, timeout=10)
    assert refused.value.holder_pid == os.getpid()
    assert refused.value.holder_host == socket.gethostname()

    # Two more of the id while it runs: both refused, neither waits for it.
    later = [workflow.run_async(dag, workflow_id="twice") for _ in range(2)]
    for ref in later:
        with pytest.raises(WorkflowLeaseError, match="twice"):
            hs.get(ref, timeout=30)
    gate.touch()

    assert hs.get(winner, timeout=60) == 3
    assert Counter(log.read_text().splitlines()) == Counter({"a 1": 1, "b 1": 1})
    assert workflow.get_status("twice") is WorkflowStatus.SUCCESSFUL


# --- a paused driver ---------------------------------------------------------------------


def _pause_past_its_lease(lab: Lab, driver: Driver, wid: str) -> None:
    """SIGSTOP ``driver`` just after a heartbeat (so not inside a write transaction,
    which would block everyone), and wait until its lease has expired."""
    beat = lab.lease(wid)["lease_heartbeat_at"]
    poll(
        lambda: lab.lease(wid)["lease_heartbeat_at"] != beat,
        10,
        "a heartbeat of the driver",
        interval=0.002,
    )
    os.kill(driver.pid, signal.SIGSTOP)
    poll(lambda: psutil.Process(driver.pid).status() == psutil.STATUS_STOPPED, 10, "SIGSTOP")
    expires = lab.lease(wid)["lease_expires_at"]
    poll(lambda: utcnow() > expires, 10, "the paused driver's lease to expire", interval=0.05)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_driver_paused_past_its_lease_is_fenced_and_writes_nothing_after_takeover(
    lab: Lab, backend: str
) -> None:
    wid = "paused"
    slow_gate = lab.path("slow-gate")
    spec = chain("s", 5, s1={"gate": str(slow_gate), "gate_attempts": [1]})
    first = lab.start([workflow_cfg(wid, spec, "run")])
    poll(
        lambda: any(a.task_id == "s1" for a in lab.attempts()) or not first.alive(),
        90,
        "s1 to start",
    )
    assert first.alive(), first.text()
    ready, go = lab.path("ready"), lab.path("go")
    second = lab.start([workflow_cfg(wid, spec, "resume")], barrier=(ready, go))
    taken = lab.lease(wid)
    try:
        _pause_past_its_lease(lab, first, wid)
        poll(ready.exists, 90, "the second driver at the barrier")
        go.touch()
        assert second.result() == {wid: {"value": expected_output(*spec)}}
        after_takeover = lab.rows(wid)
        lines = lab.attempts()
        lease = lab.lease(wid)
        assert lease["lease_owner"] is None and lease["status"] == "SUCCESSFUL"
        assert lease["lease_generation"] > taken["lease_generation"]
        # The paused driver's attempt of s1 returns now: its driver has a step result
        # to commit, and the next step to start, when it wakes up.
        slow_gate.touch()
        poll(lambda: (wid, "s1", 1) in lab.done(), 30, "the paused driver's s1 to return")
    finally:
        os.kill(first.pid, signal.SIGCONT)

    got = first.result()[wid]
    assert got["error"] == "WorkflowLeaseError" and got["fenced"], got
    assert "lost its lease" in got["message"]
    assert lab.attempts() == lines, "the fenced driver started a step"
    assert lab.rows(wid) == after_takeover, "the fenced driver wrote lineage"
    # The second driver re-ran s1 (attempt 2) and ran the rest; nothing ran twice.
    assert Counter((a.task_id, a.attempt) for a in lab.attempts(wid)) == Counter(
        {("s0", 1): 1, ("s1", 1): 1, ("s1", 2): 1, ("s2", 1): 1, ("s3", 1): 1, ("s4", 1): 1}
    )


def test_paused_drivers_non_idempotent_step_in_flight_does_not_repeat_its_effect(
    lab: Lab,
) -> None:
    wid = "paused-effect"
    gate = lab.path("effect-gate")
    spec = chain(
        "s", 3, non_idempotent=lambda i: i == 1, s1={"gate": str(gate), "gate_attempts": [1]}
    )
    first = lab.start([workflow_cfg(wid, spec, "run")])
    poll(
        lambda: any(a.task_id == "s1" for a in lab.attempts()) or not first.alive(),
        90,
        "s1 to start",
    )
    assert first.alive(), first.text()
    ready, go = lab.path("ready"), lab.path("go")
    second = lab.start([workflow_cfg(wid, spec, "resume")], barrier=(ready, go))
    try:
        _pause_past_its_lease(lab, first, wid)
        poll(ready.exists, 90, "the second driver at the barrier")
        go.touch()
        assert second.result() == {wid: {"value": expected_output(*spec)}}
        # Were the paused driver's attempt of s1 still running in its worker, it would
        # go on now: wait until it returned, or its worker is gone.
        (paused,) = [a for a in lab.attempts(wid) if (a.task_id, a.attempt) == ("s1", 1)]
        gate.touch()
        poll(
            lambda: (wid, "s1", 1) in lab.done() or process_gone(paused.pid),
            30,
            "the paused attempt of s1 to return or end",
        )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.wait()
    if "RESULT " in first.text():
        assert first.result()[wid]["fenced"], first.text()

    # The new holder re-ran s1 (its hook saw no effect): that attempt's effect is the
    # only one.
    assert [key for key, _ in lab.ledger()] == [f"{wid}:s1"], (lab.ledger(), lab.hook_calls())
