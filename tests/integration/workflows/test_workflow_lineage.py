"""Lineage a person can read, definitions that must match, leases on a real store.

Runs on SQLite with real local workers, except the lease tests, which drive the
store with a fake clock and need no runtime.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import (
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowLeaseError,
)
from heliostat.storage.models import StepAttempt, Transition, WalRecord
from heliostat.storage.signing import default_signer
from heliostat.storage.states import AttemptStatus, StepStatus, WorkflowStatus
from heliostat.workflows.clock import FakeClock
from heliostat.workflows.compile import compile_dag
from heliostat.workflows.events import Intent
from heliostat.workflows.lease import LeaseOwner
from heliostat.workflows.services import runtime_services
from heliostat.workflows.store import CommitResult, WorkflowStore
from heliostat.workflows.transitions import cancel_moves, resume_moves

pytestmark = pytest.mark.usefixtures("wf_home")

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


@hs.remote
def shout(x: int) -> int:
    print(f"processing {x}")
    return x * 2


@hs.remote
def fails_on_purpose(x: int) -> int:
    rows: dict[str, int] = {}
    return rows["amount_usd"] + x  # the line the traceback must point at


@hs.remote
def plus(x: int, y: int) -> int:
    return x + y


@hs.remote
def run_a_workflow_inside() -> Any:
    return workflow.run(shout.bind(1), workflow_id="nested")


# --- what a person reads ------------------------------------------------------------


def test_a_failed_attempt_keeps_type_message_traceback_with_real_files_and_output(
    runtime: Runtime,
) -> None:
    with pytest.raises(WorkflowExecutionError) as info:
        workflow.run(fails_on_purpose.bind(shout.bind(3)), workflow_id="tb")
    assert isinstance(info.value.cause, KeyError)
    assert "fails_on_purpose" in str(info.value) and "KeyError: 'amount_usd'" in str(info.value)

    [attempt] = workflow.attempts("tb", "fails_on_purpose")
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error_type == "KeyError" and attempt.error == "KeyError: 'amount_usd'"
    assert attempt.traceback is not None
    assert f'File "{__file__}"' in attempt.traceback
    assert "<dynamic-code>" not in attempt.traceback
    assert 'rows["amount_usd"]' in attempt.traceback  # the source line is there
    assert "heliostat/workflows/step.py" not in attempt.traceback  # starts at user code
    step = workflow.describe("tb").steps["fails_on_purpose"]
    assert step.status is StepStatus.FAILED and step.error_type == "KeyError"

    [(task, n, logs)] = workflow.logs("tb", "shout")
    assert (task, n, logs.text, logs.truncated) == ("shout", 1, "processing 3\n", False)


def test_durations_are_execution_time_and_queue_time_is_kept_apart(runtime: Runtime) -> None:
    workflow.run(plus.bind(shout.bind(1), 2), workflow_id="times")
    for attempt in workflow.attempts("times"):
        assert attempt.queued_at is not None and attempt.started_at is not None
        assert attempt.queued_at <= attempt.started_at <= attempt.finished_at  # type: ignore[operator]
        assert attempt.duration is not None and attempt.duration >= 0
        assert attempt.queue_seconds is not None and attempt.queue_seconds >= 0
        assert attempt.worker and attempt.worker.rsplit(":", 1)[-1].isdigit()
    step = workflow.describe("times").steps["plus"]
    assert step.queued_at is not None and step.started_at >= step.queued_at  # type: ignore[operator]


def test_printed_output_is_bounded_to_the_last_megabyte(runtime: Runtime) -> None:
    @hs.remote
    def chatty() -> int:
        for i in range(1_200):
            print(f"{i:05d}" + "x" * 1_000)
        return 1

    workflow.run(chatty.bind(), workflow_id="chatty")
    [(_, _, logs)] = workflow.logs("chatty")
    assert logs.truncated and logs.size > 1_200_000
    assert len(logs.text) <= 1 << 20
    assert logs.text.rstrip().endswith("01199" + "x" * 1_000)


def test_a_resolved_step_and_its_lineage_are_real_edges(runtime: Runtime) -> None:
    @hs.remote
    def charge() -> str:
        raise SystemExit("never reached")

    services = runtime_services()
    assert services is not None
    store = services.store()
    wid = "settle"
    compiled = compile_dag(
        charge.options(**workflow.options(task_id="charge", idempotent=False)).bind()
    )
    lease = store.create(
        workflow_id=wid,
        compiled=compiled,
        metadata={},
        name="charge",
        schedule=None,
        owner=LeaseOwner.new(),
        timeout=6,
        now=dt.datetime.now(dt.UTC),
    )
    assert lease is not None
    at = dt.datetime.now(dt.UTC)
    store.commit(
        lease, 1, [Intent(task_id="charge", attempt=1, key=f"{wid}:charge", at=at)], now=at
    )
    store.commit(lease, 2, [], now=at, release=True)  # the driver "died"

    assert workflow.get_status(wid) is WorkflowStatus.RESUMABLE
    assert workflow.describe(wid).steps["charge"].status is StepStatus.IN_DOUBT
    workflow.resolve(wid, "charge", result="charged once")
    assert workflow.resume(wid) == "charged once"
    edges = [(start, finish) for task, start, finish, _c, _a in store.transitions(wid) if task]
    assert edges == [
        ("RUNNING", "IN_DOUBT"),
        ("IN_DOUBT", "SUCCESSFUL"),
    ]
    [attempt] = workflow.attempts(wid)
    assert attempt.status is AttemptStatus.INTERRUPTED


# --- definitions --------------------------------------------------------------------


def test_an_existing_id_with_other_inputs_or_code_is_refused(runtime: Runtime) -> None:
    assert workflow.run(plus.bind(1, 2), workflow_id="defs") == 3
    assert workflow.run(plus.bind(1, 2), workflow_id="defs") == 3  # the same: stored output

    with pytest.raises(WorkflowDefinitionError, match="step 'plus': its arguments changed"):
        workflow.run(plus.bind(1, 5), workflow_id="defs")

    def changed(x: int, y: int) -> int:
        return x + y + 1

    changed.__name__ = changed.__qualname__ = "plus"  # the same step, other code
    with pytest.raises(WorkflowDefinitionError, match="the code of plus changed"):
        workflow.run(hs.remote(changed).bind(1, 2), workflow_id="defs")
    with pytest.raises(WorkflowDefinitionError, match="steps added: shout"):
        workflow.run(plus.bind(shout.bind(1), 2), workflow_id="defs")
    assert workflow.get_output("defs") == 3


def test_resume_with_fixed_code_continues_the_run(runtime: Runtime, tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    flag.touch()

    @hs.remote
    def check(x: int, flag: str) -> int:
        import os

        if os.path.exists(flag):
            raise ValueError("broken")
        return x

    dag = check.bind(shout.bind(4), str(flag))
    with pytest.raises(WorkflowExecutionError):
        workflow.run(dag, workflow_id="fixme")

    @hs.remote
    def check(x: int, flag: str) -> int:
        return x + 1

    with pytest.raises(WorkflowDefinitionError, match=r"the code of \S*check changed"):
        workflow.run(check.bind(shout.bind(4), str(flag)), workflow_id="fixme")
    assert workflow.resume("fixme", dag=check.bind(shout.bind(4), str(flag))) == 9
    assert [a.attempt for a in workflow.attempts("fixme", "shout")] == [1]  # not re-run


def test_a_huge_argument_is_refused_before_anything_is_written(runtime: Runtime) -> None:
    blob = b"x" * (65 << 20)
    with pytest.raises(WorkflowDefinitionError, match=r"MiB.*produce it in an upstream step"):
        workflow.run(plus.bind(blob, b""), workflow_id="huge")
    assert workflow.list_all() == []


def test_workflow_run_inside_a_task_is_refused_and_writes_nothing(runtime: Runtime) -> None:
    with pytest.raises(WorkflowError, match="cannot be called inside a task"):
        hs.get(run_a_workflow_inside.remote(), timeout=60)
    assert workflow.list_all() == []


# --- the runtime owns the services --------------------------------------------------


def test_shutdown_closes_the_stores_and_stops_the_lease_keeper(fresh_runtime: Any) -> None:
    runtime = fresh_runtime()
    workflow.run(shout.bind(2), workflow_id="owned")
    services = runtime_services()
    assert services is not None and services.keeper._thread is not None
    keeper_thread = services.keeper._thread
    store = services.store()
    hs.shutdown()
    assert runtime_services(runtime) is None and not runtime.extensions
    keeper_thread.join(timeout=10)
    assert not keeper_thread.is_alive()
    assert store.engine.pool.checkedout() == 0
    assert "heliostat-lease-keeper" not in {t.name for t in threading.enumerate()}


# --- leases on a real store, time from a fake clock ---------------------------------


@pytest.fixture
def store(wf_home: Path) -> Iterator[WorkflowStore]:
    s = WorkflowStore.open(f"sqlite:///{wf_home / 'leases.db'}", signer=default_signer())
    yield s
    s.close()


def _create(store: WorkflowStore, wid: str, owner: LeaseOwner, now: dt.datetime) -> Any:
    lease = store.create(
        workflow_id=wid,
        compiled=compile_dag(plus.bind(1, 2)),
        metadata={},
        name="plus",
        schedule=None,
        owner=owner,
        timeout=6,
        now=now,
    )
    assert lease is not None
    return lease


def _rows(store: WorkflowStore, wid: str) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.select(sa.func.count()).select_from(m).where(m.workflow_id == wid)
            ).scalar_one()
            for m in (WalRecord, StepAttempt, Transition)
        )  # type: ignore[return-value]


def test_a_stale_driver_is_fenced_out_and_writes_nothing(store: WorkflowStore) -> None:
    clock = FakeClock(T0)
    first = _create(store, "fenced", LeaseOwner(owner="h:1:a", host="elsewhere", pid=1), T0)
    intent = Intent(task_id="plus", attempt=1, key="fenced:plus", at=T0)
    assert store.commit(first, 1, [intent], now=T0) == CommitResult.COMMITTED

    second_owner = LeaseOwner(owner="h:2:b", host="elsewhere", pid=2)
    with pytest.raises(WorkflowLeaseError, match="elsewhere, pid 1") as held:
        store.take_over(
            "fenced", second_owner, timeout=6, now=clock.now(), moves=resume_moves("fenced", "x")
        )
    assert held.value.holder_pid == 1 and held.value.holder_host == "elsewhere"

    clock.advance(7)  # the first driver was paused past its lease
    second, seq = store.take_over(
        "fenced", second_owner, timeout=6, now=clock.now(), moves=resume_moves("fenced", "x")
    )
    assert second.generation == first.generation + 1 and seq == 1
    before = _rows(store, "fenced")
    late = Intent(task_id="plus", attempt=2, key="fenced:plus", at=clock.now())
    with pytest.raises(WorkflowLeaseError) as fenced:
        store.commit(first, 2, [late], now=clock.now())
    assert fenced.value.fenced
    assert store.renew_leases([first], clock.now()) == ["fenced"]
    assert _rows(store, "fenced") == before  # nothing written by the stale driver
    assert store.load("fenced").lease.owner == "h:2:b"


def test_a_lease_whose_driver_on_this_host_is_a_zombie_is_taken_at_once(
    store: WorkflowStore,
) -> None:
    """A driver killed under a parent that has not reaped it yet is a zombie: its
    lease protects nothing, and a resume on the same host need not wait it out."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        here = socket.gethostname()
        dead = LeaseOwner(owner=f"{here}:{proc.pid}:a", host=here, pid=proc.pid)
        first = _create(store, "zombie", dead, T0)
        second, _ = store.take_over(
            "zombie",
            LeaseOwner(owner=f"{here}:{os.getpid()}:b", host=here, pid=os.getpid()),
            timeout=6,
            now=T0 + dt.timedelta(seconds=1),  # long before the lease expires
            moves=resume_moves("zombie", "x"),
        )
        assert second.generation == first.generation + 1
    finally:
        proc.wait()


def test_a_retried_commit_that_had_committed_is_not_written_twice(store: WorkflowStore) -> None:
    lease = _create(store, "retry", LeaseOwner.new(), T0)
    records = [Intent(task_id="plus", attempt=1, key="retry:plus", at=T0)]
    store.commit(lease, 1, records, now=T0)
    before = _rows(store, "retry")
    # The same group commit again, as after a connection lost before the reply.
    assert store.commit(lease, 1, records, now=T0) == CommitResult.COMMITTED
    assert _rows(store, "retry") == before


def test_intents_are_refused_once_the_workflow_is_canceled(store: WorkflowStore) -> None:
    lease = _create(store, "stop", LeaseOwner.new(), T0)
    assert store.move("stop", cancel_moves("stop"), now=T0) is WorkflowStatus.CANCELED
    intent = Intent(task_id="plus", attempt=1, key="stop:plus", at=T0)
    assert store.commit(lease, 1, [intent], now=T0) == CommitResult.INTENTS_REFUSED
    assert _rows(store, "stop")[0] == 0
    assert store.commit(lease, 1, [], now=T0, release=True) == CommitResult.COMMITTED
    assert store.load("stop").status is WorkflowStatus.CANCELED


# --- cancel from elsewhere, seen only at the next INTENT ----------------------------


@hs.remote
def gated(log: str, gate: str) -> str:
    import os
    import time

    with open(log, "a") as f:
        f.write("gated started\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)  # the step's work: waiting for the test to open the gate
    return "through"


@hs.remote
def downstream(log: str, value: str) -> str:
    with open(log, "a") as f:
        f.write("downstream ran\n")
    return value


def test_a_cancel_from_elsewhere_refuses_the_next_intent_and_keeps_the_finished_result(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait_for: Any
) -> None:
    from heliostat.exceptions import WorkflowCancelledError
    from heliostat.workflows import executor as executor_module

    # The run learns of the cancel only when the database refuses its next INTENT.
    monkeypatch.setattr(executor_module, "_CANCEL_POLL_S", 3600.0)
    log, gate = tmp_path / "log", tmp_path / "gate"
    first = gated.options(**workflow.options(task_id="a", idempotent=False))
    dag = downstream.options(**workflow.options(task_id="b")).bind(
        str(log), first.bind(str(log), str(gate))
    )
    ref = workflow.run_async(dag, workflow_id="elsewhere")
    wait_for(lambda: log.exists() and "gated started" in log.read_text(), what="a to start")

    services = runtime_services()
    assert services is not None
    now = dt.datetime.now(dt.UTC)
    assert services.store().move("elsewhere", cancel_moves("elsewhere"), now=now) is (
        WorkflowStatus.CANCELED
    )
    gate.touch()
    with pytest.raises(WorkflowCancelledError):
        hs.get(ref, timeout=60)

    assert "downstream ran" not in log.read_text()
    record = workflow.describe("elsewhere")
    assert record.status is WorkflowStatus.CANCELED
    assert record.steps["a"].status is StepStatus.SUCCESSFUL  # its result is recorded
    assert workflow.get_output("elsewhere", task_id="a") == "through"
    assert record.steps["b"].status is StepStatus.SKIPPED
    assert [a.attempt for a in workflow.attempts("elsewhere")] == [1]  # b never had one
