"""Crash safety: drivers killed with SIGKILL, then resumed by a new driver process.

Each test writes ``driver.py`` (below) into ``tmp_path`` and runs it with
``sys.executable``; every driver shares the test's ``HELIOSTAT_HOME`` (SQLite lineage
and checkpoints) and a 2 s lease timeout. Steps append ``"<task_id> <attempt>"`` to a
side-effect log before doing anything else, so the log tells exactly which attempts
ran. A step that kills its driver first creates a marker file, so only the first run
kills; then it waits to be reaped with its node (fate sharing), and exits if it is not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from heliostat import workflow
from heliostat.exceptions import WorkflowLeaseError
from heliostat.storage.models import Step, Workflow
from heliostat.workflows import StepStatus, WorkflowStatus

DRIVER_TIMEOUT_S = 90

DRIVER = textwrap.dedent(
    '''
    """A workflow driver: python driver.py CONFIG_JSON (run | resume)."""
    import json
    import os
    import signal
    import sys
    import time

    import heliostat as hs
    from heliostat import workflow
    from heliostat.exceptions import WorkflowError


    def append(path, line):
        with open(path, "a") as f:
            f.write(line + "\\n")


    def mark(log):
        ctx = workflow.get_context()
        append(log, f"{ctx.task_id} {ctx.attempt}")
        return ctx


    def wait_gate(gate, timeout):
        deadline = time.monotonic() + timeout
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


    def first_time(marker):
        """True once per marker file: only the first run of a step acts."""
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True


    def block_until_reaped(gate):
        # The node kills this worker with its dead driver; should it not, never return.
        wait_gate(gate, 60)
        os._exit(3)


    @hs.remote
    def link(cfg, i, prev):
        mark(cfg["log"])
        if i == cfg.get("kill_at") and first_time(cfg["marker"]):
            os.kill(cfg["driver_pid"], signal.SIGKILL)
            block_until_reaped(cfg["never"])
        if i == cfg.get("block_at") and first_time(cfg["marker"]):
            append(cfg["log"], f"started {i}")
            block_until_reaped(cfg["never"])
        return prev + i


    @hs.remote
    def charge(cfg, amount):
        ctx = mark(cfg["log"])
        append(cfg["keys"], f"step {ctx.idempotency_key}")
        if first_time(cfg["marker"]):
            append(cfg["log"], "started charge")
            block_until_reaped(cfg["never"])
        return f"charged {amount}"


    @hs.remote
    def charge_then_freeze(cfg, amount):
        ctx = mark(cfg["log"])
        if first_time(cfg["marker"]):
            # Stop the driver, then finish: the worker writes the output file, and the
            # driver is killed (by the test) before it can COMMIT it.
            os.kill(cfg["driver_pid"], signal.SIGSTOP)
        return f"charged {amount}"


    def charged_already(key):
        append(CFG["keys"], f"hook {key}")
        return "resolved by hook"


    @hs.remote
    def after(cfg, value):
        mark(cfg["log"])
        return f"after: {value}"


    @hs.remote
    def square(cfg, i):
        mark(cfg["log"])
        time.sleep(cfg["square_s"])
        return i * i


    @hs.remote
    def total(cfg, *parts):
        mark(cfg["log"])
        return sum(parts)


    @hs.remote
    def wait_for_gate(cfg):
        mark(cfg["log"])
        append(cfg["log"], "started gate")
        if not wait_gate(cfg["gate"], 60):
            raise TimeoutError("the test never opened the gate")
        return "through the gate"


    def build(cfg):
        kind = cfg["dag"]
        if kind == "chain":
            node = 0
            for i in range(cfg["length"]):
                opts = workflow.options(task_id=f"s{i}")
                node = link.options(**opts).bind(cfg, i, node)
            return node
        if kind == "charge":
            opts = {"task_id": "charge", "idempotent": False}
            if cfg.get("hook"):
                opts["on_in_doubt"] = charged_already
            paid = charge.options(**workflow.options(**opts)).bind(cfg, 5)
            return after.options(**workflow.options(task_id="after")).bind(cfg, paid)
        if kind == "frozen":
            opts = workflow.options(task_id="charge", idempotent=False)
            paid = charge_then_freeze.options(**opts).bind(cfg, 5)
            return after.options(**workflow.options(task_id="after")).bind(cfg, paid)
        if kind == "fanout":
            parts = [square.bind(cfg, i) for i in range(cfg["width"])]
            return total.options(**workflow.options(task_id="total")).bind(cfg, *parts)
        if kind == "gate":
            return wait_for_gate.options(**workflow.options(task_id="gate")).bind(cfg)
        raise ValueError(kind)


    CFG = json.loads(sys.argv[1])

    if __name__ == "__main__":
        CFG["driver_pid"] = os.getpid()
        hs.init(num_cpus=2)
        try:
            if sys.argv[2] == "run":
                value = workflow.run(build(CFG), workflow_id=CFG["wid"])
            else:
                value = workflow.resume(CFG["wid"])
            out = {"value": value}
        except WorkflowError as exc:
            out = {"error": type(exc).__name__, "message": str(exc), "task_id": exc.task_id}
        print("RESULT " + json.dumps(out), flush=True)
        hs.shutdown()
    '''
)


@dataclass
class Driver:
    """One driver process and where its output goes."""

    proc: subprocess.Popen[bytes]
    out: Path

    def result(self) -> dict[str, Any]:
        """Wait for the driver to exit; its RESULT line, parsed."""
        try:
            rc = self.proc.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"driver did not finish in {DRIVER_TIMEOUT_S} s:\n{self.text()}")
        for line in self.text().splitlines():
            if line.startswith("RESULT "):
                # another thread's log line can land between the JSON and its newline
                value, _end = json.JSONDecoder().raw_decode(line.removeprefix("RESULT "))
                return dict(value)
        pytest.fail(f"driver exited with {rc} and no result:\n{self.text()}")

    def killed(self) -> None:
        """Wait for the driver to die of SIGKILL (its own step's, or the test's)."""
        try:
            rc = self.proc.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"driver was not killed in {DRIVER_TIMEOUT_S} s:\n{self.text()}")
        assert rc == -signal.SIGKILL, f"driver exited with {rc}, not SIGKILL:\n{self.text()}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.killed()

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""


@dataclass
class Crashlab:
    """Runs drivers for one test; knows its files."""

    dir: Path
    home: Path
    env: dict[str, str]
    started: list[Driver]

    @property
    def log(self) -> Path:
        return self.dir / "effects.log"

    def config(self, wid: str, dag: str, **extra: Any) -> dict[str, Any]:
        return {
            "wid": wid,
            "dag": dag,
            "log": str(self.log),
            "keys": str(self.dir / "keys.log"),
            "marker": str(self.dir / f"{wid}.marker"),
            "never": str(self.dir / "never-opened"),
            "gate": str(self.dir / f"{wid}.gate"),
            **extra,
        }

    def start(self, cfg: dict[str, Any], mode: str, **env: str) -> Driver:
        out = self.dir / f"driver-{len(self.started)}.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(self.dir / "driver.py"), json.dumps(cfg), mode],
                cwd=self.dir,
                env={**self.env, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        driver = Driver(proc, out)
        self.started.append(driver)
        return driver

    def wait_line(self, driver: Driver, line: str, wait_for: Any) -> None:
        """Wait until a step logs ``line``; fail at once, with its output, if the driver exits."""
        wait_for(
            lambda: line in self.lines() or driver.proc.poll() is not None,
            timeout=60,
            what=f"the line {line!r} in the side-effect log",
        )
        assert driver.proc.poll() is None, f"driver exited early:\n{driver.text()}"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def runs(self) -> Counter[str]:
        """How many attempts of each step ran ("started" lines excluded)."""
        return Counter(line.split()[0] for line in self.lines() if not line.startswith("started "))

    def attempts(self, task_id: str) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.split()[0] == task_id]

    def keys(self) -> list[str]:
        path = self.dir / "keys.log"
        return path.read_text().splitlines() if path.exists() else []

    def db(self) -> sa.Engine:
        return sa.create_engine(f"sqlite:///{self.home / 'heliostat.db'}")


@pytest.fixture
def lab(tmp_path: Path, wf_home: Path) -> Iterator[Crashlab]:
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIOSTAT_")}
    env.update(
        HELIOSTAT_HOME=str(wf_home),
        HELIOSTAT_LEASE_TIMEOUT="2",
        PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]),
    )
    lab = Crashlab(dir=tmp_path, home=wf_home, env=env, started=[])
    yield lab
    (tmp_path / "never-opened").touch()  # any worker still blocked returns and exits
    for driver in lab.started:
        if driver.proc.poll() is None:
            driver.proc.kill()
            driver.proc.wait()


def _committed(lab: Crashlab, wid: str) -> set[str]:
    engine = lab.db()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(Step.task_id).where(
                    Step.workflow_id == wid, Step.status == StepStatus.SUCCESSFUL
                )
            )
            return {r[0] for r in rows}
    finally:
        engine.dispose()


# --- a chain killed at step boundaries and in the middle of a step ------------------------


CHAIN = 10
CHAIN_OUTPUT = sum(range(CHAIN))


@pytest.mark.parametrize("kill_at", [0, 3, 6, 9])
def test_chain_killed_at_a_step_boundary_resumes_without_rerunning_committed_steps(
    lab: Crashlab, kill_at: int
) -> None:
    cfg = lab.config(f"chain-{kill_at}", "chain", length=CHAIN, kill_at=kill_at)

    lab.start(cfg, "run").killed()

    # Everything before the killer committed; the killer has an INTENT and no COMMIT.
    assert _committed(lab, cfg["wid"]) == {f"s{i}" for i in range(kill_at)}
    assert workflow.get_status(cfg["wid"]) is WorkflowStatus.RESUMABLE

    assert lab.start(cfg, "resume").result() == {"value": CHAIN_OUTPUT}

    assert workflow.get_status(cfg["wid"]) is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output(cfg["wid"]) == CHAIN_OUTPUT
    for i in range(CHAIN):
        # The interrupted (idempotent) step ran again as attempt 2; all others once.
        assert lab.attempts(f"s{i}") == ([1, 2] if i == kill_at else [1]), lab.lines()


def test_chain_killed_in_the_middle_of_a_step_resumes(lab: Crashlab, wait_for: Any) -> None:
    cfg = lab.config("chain-mid", "chain", length=CHAIN, block_at=5)
    driver = lab.start(cfg, "run")
    lab.wait_line(driver, "started 5", wait_for)

    driver.kill()

    assert workflow.get_status(cfg["wid"]) is WorkflowStatus.RESUMABLE
    # Reading the status reconciled the dead run: the step caught mid-attempt is no
    # longer RUNNING; its attempt is recorded as interrupted, and it waits to re-run.
    assert workflow.get_metadata(cfg["wid"], "s5")["status"] == str(StepStatus.PENDING)
    assert [a.status for a in workflow.attempts(cfg["wid"], "s5")] == ["INTERRUPTED"]
    assert lab.start(cfg, "resume").result() == {"value": CHAIN_OUTPUT}
    for i in range(CHAIN):
        assert lab.attempts(f"s{i}") == ([1, 2] if i == 5 else [1]), lab.lines()
    assert workflow.get_metadata(cfg["wid"])["resume_count"] == 1


def test_lease_of_a_driver_elsewhere_protects_until_it_expires(
    lab: Crashlab, wait_for: Any
) -> None:
    """A lease from another host cannot be checked by pid: only its expiry frees it."""
    cfg = lab.config("remote-lease", "chain", length=3, block_at=1)
    driver = lab.start(cfg, "run")
    lab.wait_line(driver, "started 1", wait_for)
    driver.kill()
    engine = lab.db()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    try:
        with engine.begin() as conn:
            moved = conn.execute(
                sa.update(Workflow)
                .where(Workflow.workflow_id == cfg["wid"])
                .values(lease_host="a-host-elsewhere", lease_expires_at=later)
            )
            assert moved.rowcount == 1

        assert workflow.get_status(cfg["wid"]) is WorkflowStatus.RUNNING
        with pytest.raises(WorkflowLeaseError, match="remote-lease"):
            workflow.resume(cfg["wid"])

        def expire(ago: dt.timedelta) -> None:
            with engine.begin() as conn:
                conn.execute(
                    sa.update(Workflow)
                    .where(Workflow.workflow_id == cfg["wid"])
                    .values(lease_expires_at=dt.datetime.now(dt.UTC) - ago)
                )

        # Just lapsed: its driver may be riding out a database outage and renew it, so
        # a reader does not declare it gone (nor fence it by reconciling).
        expire(dt.timedelta(seconds=1))
        assert workflow.get_status(cfg["wid"]) is WorkflowStatus.RUNNING
        # Lapsed longer ago than any driver keeps retrying: gone.
        expire(dt.timedelta(hours=1))
    finally:
        engine.dispose()

    assert workflow.get_status(cfg["wid"]) is WorkflowStatus.RESUMABLE
    assert lab.start(cfg, "resume").result() == {"value": 0 + 1 + 2}
    assert lab.attempts("s0") == [1]
    assert lab.attempts("s1") == [1, 2]


def test_resume_while_the_driver_is_alive_raises_lease_error(lab: Crashlab, wait_for: Any) -> None:
    cfg = lab.config("alive", "gate")
    # A long lease: this test is about a live driver, not about heartbeat timing.
    driver = lab.start(cfg, "run", HELIOSTAT_LEASE_TIMEOUT="60")
    lab.wait_line(driver, "started gate", wait_for)

    with pytest.raises(WorkflowLeaseError, match=rf"'alive'.*pid {driver.proc.pid}"):
        workflow.resume("alive")
    assert workflow.get_status("alive") is WorkflowStatus.RUNNING
    with pytest.raises(WorkflowLeaseError, match="cancel it"):
        workflow.delete("alive")

    Path(cfg["gate"]).touch()
    assert driver.result() == {"value": "through the gate"}
    assert lab.attempts("gate") == [1]


# --- a non-idempotent step killed mid-run ------------------------------------------------


def test_in_doubt_step_is_not_rerun_without_hook(lab: Crashlab, wait_for: Any) -> None:
    cfg = lab.config("doubt", "charge")
    driver = lab.start(cfg, "run")
    lab.wait_line(driver, "started charge", wait_for)
    driver.kill()

    result = lab.start(cfg, "resume").result()

    assert result["error"] == "WorkflowNeedsAttentionError", result
    assert result["task_id"] == "charge"
    assert "'charge'" in result["message"]
    assert workflow.get_status("doubt") is WorkflowStatus.NEEDS_ATTENTION
    assert workflow.get_metadata("doubt", "charge")["status"] == str(StepStatus.IN_DOUBT)
    assert "charge" in workflow.get_metadata("doubt")["error"]
    assert lab.attempts("charge") == [1]
    assert "after" not in lab.runs()


def test_in_doubt_step_is_resolved_by_its_hook_with_the_same_key(
    lab: Crashlab, wait_for: Any
) -> None:
    # resume() runs the *stored* DAG, so the hook is part of the original DAG.
    cfg = lab.config("hooked", "charge", hook=True)
    driver = lab.start(cfg, "run")
    lab.wait_line(driver, "started charge", wait_for)
    driver.kill()

    assert lab.start(cfg, "resume").result() == {"value": "after: resolved by hook"}
    keys = lab.keys()
    assert len(keys) == 2, keys
    (step_key,) = [k.removeprefix("step ") for k in keys if k.startswith("step ")]
    (hook_key,) = [k.removeprefix("hook ") for k in keys if k.startswith("hook ")]
    assert hook_key == step_key
    assert workflow.get_status("hooked") is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("hooked", task_id="charge") == "resolved by hook"
    assert lab.attempts("charge") == [1]
    assert lab.attempts("after") == [1]


# --- an output file left without its COMMIT ---------------------------------------------


class _OpensForWriting:
    """Unpickling this calls ``open(path, "w")``: the file's existence proves it ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _frozen_with_its_output_written(lab: Crashlab, wid: str, wait_for: Any) -> Path:
    """Run the "frozen" DAG until its non-idempotent step has written its output file
    and the driver is stopped before the COMMIT; kill the driver; return the file."""
    cfg = lab.config(wid, "frozen")
    driver = lab.start(cfg, "run")
    directory = lab.home / "checkpoints" / wid

    def written() -> list[Path]:
        return sorted(directory.glob("charge@1.*.pkl")) if directory.exists() else []

    wait_for(
        lambda: written() or driver.proc.poll() is not None,
        timeout=60,
        what="the output file of the step that stopped its driver",
    )
    assert driver.proc.poll() is None, driver.text()
    driver.kill()
    (found,) = written()
    return found


def test_an_output_written_before_the_crash_is_committed_not_rerun(
    lab: Crashlab, wait_for: Any
) -> None:
    # The worker tagged the file with the installation's key; the next driver checks the
    # tag, adopts the file and commits it: the non-idempotent step is neither re-run nor
    # left in doubt.
    _frozen_with_its_output_written(lab, "frozen", wait_for)
    result = lab.start(lab.config("frozen", "frozen"), "resume").result()
    assert result == {"value": "after: charged 5"}, result
    assert lab.attempts("charge") == [1]
    assert workflow.get_metadata("frozen", "charge")["status"] == str(StepStatus.SUCCESSFUL)


def test_a_pickle_planted_as_an_interrupted_steps_output_is_never_loaded(
    lab: Crashlab, wait_for: Any
) -> None:
    # Someone who can write the checkpoint store (not the key) swaps the file for a
    # pickle that would create a marker when loaded, under the real name and under the
    # untagged one. The resume must not adopt either: the step is in doubt, the pickle
    # is never unpickled.
    genuine = _frozen_with_its_output_written(lab, "planted", wait_for)
    marker, control = lab.dir / "unpickled.marker", lab.dir / "control.marker"
    pickle.loads(pickle.dumps(_OpensForWriting(control))).close()
    assert control.exists()  # the payload does act when it is unpickled
    payload = pickle.dumps(_OpensForWriting(marker))
    genuine.write_bytes(payload)
    genuine.with_name("charge@1.pkl").write_bytes(payload)
    assert not marker.exists()

    result = lab.start(lab.config("planted", "frozen"), "resume").result()

    assert result["error"] == "WorkflowNeedsAttentionError", result
    assert workflow.get_metadata("planted", "charge")["status"] == str(StepStatus.IN_DOUBT)
    assert not marker.exists()
    assert lab.attempts("charge") == [1]


# --- a wide fan-out killed half-way ------------------------------------------------------


def test_fanout_killed_half_way_resumes_to_the_right_sum(lab: Crashlab, wait_for: Any) -> None:
    width = 200
    cfg = lab.config("fanout", "fanout", width=width, square_s=0.02)
    driver = lab.start(cfg, "run")
    wait_for(
        lambda: len(lab.lines()) >= width // 2 or driver.proc.poll() is not None,
        timeout=90,
        what="half the fan-out to run",
    )
    assert driver.proc.poll() is None, f"driver exited early:\n{driver.text()}"
    driver.kill()
    committed = _committed(lab, "fanout")
    assert 0 < len(committed) < width and "total" not in committed

    assert lab.start(cfg, "resume").result() == {"value": sum(i * i for i in range(width))}

    runs = lab.runs()
    squares = {t: n for t, n in runs.items() if t != "total"}
    assert len(squares) == width
    assert all(runs[t] == 1 for t in committed), {t: runs[t] for t in committed if runs[t] != 1}
    assert max(squares.values()) <= 2
    assert runs["total"] == 1
