"""Cancel from another process while a step runs: no new step starts.

One driver runs two workflows, A -> B each:

* ``held``: A is not idempotent and blocks on a gate; it is canceled with the CLI
  (``heliostat workflow cancel``, its own process), then the gate opens: A finishes and
  its result is recorded (a COMMIT), B never starts, the workflow ends CANCELED.
* ``idle``: A is idempotent and would block for a minute; it is canceled with
  ``workflow.cancel`` from the test process: A's attempt is interrupted within
  seconds, B never starts.

Both stay CANCELED: a resume afterwards is refused and changes nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from faultlab import Lab, chain, poll, workflow_cfg

from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import WorkflowCancelledError
from heliostat.storage.models import StepAttempt, WalRecord
from heliostat.workflows import WorkflowStatus

INTERRUPT_WITHIN_S = 5.0


def _attempt_status(lab: Lab, wid: str, task_id: str) -> str | None:
    with lab.engine() as engine, engine.connect() as conn:
        return conn.execute(
            sa.select(StepAttempt.status).where(
                StepAttempt.workflow_id == wid, StepAttempt.task_id == task_id
            )
        ).scalar_one_or_none()


def _wal(lab: Lab, wid: str) -> list[tuple[str, int, str]]:
    with lab.engine() as engine, engine.connect() as conn:
        rows = conn.execute(
            sa.select(WalRecord.task_id, WalRecord.attempt, WalRecord.kind)
            .where(WalRecord.workflow_id == wid)
            .order_by(WalRecord.id)
        )
        return [(t, a, k) for t, a, k in rows]


def test_cancel_from_other_processes_starts_no_new_step_and_stays_canceled(
    lab: Lab, runtime: Runtime, home: Path
) -> None:
    held = chain("h", 2, non_idempotent=lambda i: i == 0, h0={"gate": str(lab.path("h-gate"))})
    idle = chain("i", 2, i0={"gate": str(lab.path("never"))})
    driver = lab.start([workflow_cfg("held", held, "run"), workflow_cfg("idle", idle, "run")])
    poll(
        lambda: {a.task_id for a in lab.attempts()} >= {"h0", "i0"} or not driver.alive(),
        90,
        "both first steps to start",
    )
    assert driver.alive(), driver.text()

    cli = subprocess.run(
        [sys.executable, "-m", "heliostat.cli", "workflow", "cancel", "held"],
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "CANCELED" in cli.stdout, cli.stdout
    canceled_at = time.monotonic()
    workflow.cancel("idle")
    poll(
        lambda: _attempt_status(lab, "idle", "i0") == "INTERRUPTED",
        INTERRUPT_WITHIN_S + 2,
        "the idempotent step to be interrupted",
    )
    interrupted_after = time.monotonic() - canceled_at
    assert interrupted_after < INTERRUPT_WITHIN_S, interrupted_after
    lab.path("h-gate").touch()  # the non-idempotent step may finish now

    got = driver.result()
    assert got["held"]["error"] == "WorkflowCancelledError", got
    assert got["idle"]["error"] == "WorkflowCancelledError", got
    ran = [(a.wid, a.task_id, a.attempt) for a in lab.attempts()]
    assert sorted(ran) == [("held", "h0", 1), ("idle", "i0", 1)], ran
    assert [key for key, _ in lab.ledger()] == ["held:h0"]
    # A's result is recorded; B has no INTENT; nothing of idle's B either.
    assert _wal(lab, "held") == [("h0", 1, "INTENT"), ("h0", 1, "COMMIT")]
    assert [r for r in _wal(lab, "idle") if r[0] == "i1"] == []
    assert workflow.get_metadata("held", "h0")["status"] == "SUCCESSFUL"
    assert workflow.get_output("held", task_id="h0") == 0
    for wid, b in (("held", "h1"), ("idle", "i1")):
        assert workflow.get_metadata(wid, b)["status"] == "SKIPPED"

    # It stays CANCELED: a resume is refused and writes nothing.
    rows = {wid: lab.rows(wid) for wid in ("held", "idle")}
    for wid in ("held", "idle"):
        assert workflow.get_status(wid) is WorkflowStatus.CANCELED
        with pytest.raises(WorkflowCancelledError):
            workflow.resume(wid)
        assert workflow.get_status(wid) is WorkflowStatus.CANCELED
        assert lab.rows(wid) == rows[wid]
    assert len(lab.attempts()) == 2
