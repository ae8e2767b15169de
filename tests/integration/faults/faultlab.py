"""The fault lab: driver processes, their side-effect logs, and the lineage they leave.

A :class:`Lab` runs ``fault_driver.py`` (see its docstring) as separate processes in
one test's directory, all sharing one workflow home (``HELIOSTAT_HOME``) and lineage
database (SQLite there, or a PostgreSQL schema of the test). Outcomes are counted from
the files the steps append to (:meth:`Lab.attempts`, :meth:`Lab.ledger`,
:meth:`Lab.hook_calls`), and checked against the lineage read straight from SQL
(:meth:`Lab.rows`), not through heliostat's own API.

Every process a lab starts carries ``HELIOSTAT_FAULT_LAB=<token>`` in its environment,
and so do the fork servers and workers below it: :meth:`Lab.strays` finds whatever is
left of them, however it was orphaned, and :meth:`Lab.close` kills and reaps it.

Step specs (what ``fault_driver.py`` builds a DAG from) are made by :func:`chain` and
:func:`fanout`; :func:`expected_output` computes what the workflow must return.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest
import sqlalchemy as sa

import heliostat
from heliostat.storage.models import Step, StepAttempt, Transition, WalRecord, Workflow

DRIVER = Path(__file__).with_name("fault_driver.py")
DRIVER_TIMEOUT_S = 120.0
LAB_ENV = "HELIOSTAT_FAULT_LAB"
# Where this test process imported heliostat from: drivers and their workers must run
# the same code (a checkout other than the installed one, say).
CODE_ROOT = str(Path(heliostat.__file__).resolve().parent.parent)


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip for a missing facility, except under ``CI=true``: fail there."""
    if under_ci():
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Call ``predicate`` until it is truthy (returned); fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


# --- step specs -------------------------------------------------------------------------


def chain(
    prefix: str,
    length: int,
    *,
    non_idempotent: Callable[[int], bool] = lambda i: False,
    pre: float = 0.0,
    post: float = 0.0,
    **per_step: dict[str, Any],
) -> tuple[list[dict[str, Any]], str]:
    """``prefix0 -> prefix1 -> ...``: step i adds i to its parent's value.

    ``per_step`` maps a task id to extra spec keys (a gate, other sleeps).
    """
    steps = []
    for i in range(length):
        task_id = f"{prefix}{i}"
        idempotent = not non_idempotent(i)
        steps.append(
            {
                "task_id": task_id,
                "k": i,
                "parents": [f"{prefix}{i - 1}"] if i else [],
                "idempotent": idempotent,
                "hook": not idempotent,
                "pre": pre,
                "post": post,
                **per_step.get(task_id, {}),
            }
        )
    return steps, f"{prefix}{length - 1}"


def fanout(
    prefix: str,
    width: int,
    *,
    non_idempotent: Callable[[int], bool] = lambda i: False,
    pre: float = 0.0,
    post: float = 0.0,
) -> tuple[list[dict[str, Any]], str]:
    """``width`` independent branches (branch i returns i*i) joined by ``{prefix}join``."""
    steps = []
    for i in range(width):
        idempotent = not non_idempotent(i)
        steps.append(
            {
                "task_id": f"{prefix}{i}",
                "k": i * i,
                "parents": [],
                "idempotent": idempotent,
                "hook": not idempotent,
                "pre": pre,
                "post": post,
            }
        )
    join = f"{prefix}join"
    steps.append(
        {
            "task_id": join,
            "k": 0,
            "parents": [s["task_id"] for s in steps],
            "idempotent": True,
            "pre": pre,
        }
    )
    return steps, join


def expected_output(steps: list[dict[str, Any]], output: str) -> int:
    values: dict[str, int] = {}
    for s in steps:
        values[s["task_id"]] = s["k"] + sum(values[p] for p in s["parents"])
    return values[output]


def workflow_cfg(
    wid: str, spec: tuple[list[dict[str, Any]], str], action: str = "auto"
) -> dict[str, Any]:
    steps, output = spec
    return {"wid": wid, "steps": steps, "output": output, "action": action}


# --- what the lab reads back ------------------------------------------------------------


class Attempt(NamedTuple):
    """One line of the side-effect log: one attempt of one step."""

    wid: str
    task_id: str
    attempt: int
    key: str
    pid: int


@dataclass
class Driver:
    """One driver process."""

    proc: subprocess.Popen[bytes]
    out: Path
    name: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def descendants(self) -> list[psutil.Process]:
        try:
            return list(psutil.Process(self.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def wait(self, timeout: float = DRIVER_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"driver {self.name} did not exit in {timeout} s:\n{self.text()}")

    def result(self, timeout: float = DRIVER_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the driver to exit; its RESULT line (per workflow id), parsed."""
        rc = self.wait(timeout)
        for line in self.text().splitlines():
            if line.startswith("RESULT "):
                # A log line from another thread of the driver (stderr shares the file)
                # can land between the JSON and its newline: read the one JSON value.
                value, _end = json.JSONDecoder().raw_decode(line.removeprefix("RESULT "))
                return dict(value)
        pytest.fail(f"driver {self.name} exited with {rc} and no result:\n{self.text()}")

    def kill(self, *, gone_within: float = 15.0) -> None:
        """SIGKILL the driver, reap it, and wait for its fork server and workers to die
        with it (fate sharing); fail if any outlives it."""
        below = self.descendants()
        self.proc.send_signal(signal.SIGKILL)
        rc = self.wait()
        assert rc in (-signal.SIGKILL, 0, 1), f"driver exited with {rc}:\n{self.text()}"
        wait_gone(below, gone_within, f"the fork server and workers of driver {self.name}")


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts as ended)."""
    try:
        return _dead(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def _dead(p: psutil.Process) -> bool:
    try:
        return bool(p.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: list[psutil.Process], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if not _dead(p)]
        if not alive:
            return
        if time.monotonic() > deadline:
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            pytest.fail(f"{what} outlived it: pids {[p.pid for p in alive]} (killed now)")
        time.sleep(0.02)


@dataclass
class Lab:
    """Runs drivers for one test and reads what they left."""

    dir: Path
    home: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    env: dict[str, str] = field(default_factory=dict)
    drivers: list[Driver] = field(default_factory=list)
    db_url: str = ""
    strays_killed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELIOSTAT_")}
        env.update(
            HELIOSTAT_HOME=str(self.home),
            HELIOSTAT_LEASE_TIMEOUT="2",
            PYTHONPATH=os.pathsep.join([CODE_ROOT, *[p for p in sys.path if p]]),
            PYTHONUNBUFFERED="1",
            **{LAB_ENV: self.token},
        )
        self.env = env
        self.db_url = f"sqlite:///{self.home / 'heliostat.db'}"

    # --- files ---------------------------------------------------------------------

    @property
    def log(self) -> Path:
        return self.dir / "attempts.log"

    @property
    def ledger_path(self) -> Path:
        return self.dir / "ledger.log"

    @property
    def hooks_path(self) -> Path:
        return self.dir / "hooks.log"

    @property
    def done_path(self) -> Path:
        return self.dir / "done.log"

    def done(self) -> list[tuple[str, str, int]]:
        """(workflow id, task id, attempt) of the attempts that returned."""
        if not self.done_path.exists():
            return []
        lines = self.done_path.read_text().splitlines()
        return [(w, t, int(a)) for w, t, a in (x.split() for x in lines)]

    def path(self, name: str) -> Path:
        return self.dir / name

    def use_database(self, url: str) -> None:
        """Point every driver started from now on at ``url``."""
        self.env["HELIOSTAT_DB_URL"] = url
        self.db_url = url

    # --- drivers -------------------------------------------------------------------

    def start(
        self,
        workflows: list[dict[str, Any]],
        *,
        barrier: tuple[Path, Path] | None = None,
        **env: str | None,
    ) -> Driver:
        """Start a driver of ``workflows``; ``barrier``: (ready file, go file); ``env``:
        variables to set for it (``None``: unset, e.g. to get a default)."""
        cfg: dict[str, Any] = {
            "workflows": workflows,
            "log": str(self.log),
            "ledger": str(self.ledger_path),
            "hooks": str(self.hooks_path),
            "done": str(self.done_path),
        }
        if barrier is not None:
            cfg["ready"], cfg["go"] = str(barrier[0]), str(barrier[1])
        name = f"d{len(self.drivers)}"
        out = self.dir / f"driver-{name}.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(DRIVER), json.dumps(cfg)],
                cwd=self.dir,
                env={k: v for k, v in {**self.env, **env}.items() if v is not None},
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        driver = Driver(proc, out, name)
        self.drivers.append(driver)
        return driver

    def strays(self) -> list[psutil.Process]:
        """Live processes (not zombies) that carry this lab's token: drivers and below."""
        found = []
        for p in psutil.process_iter():
            if p.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                if p.environ().get(LAB_ENV) == self.token and not _dead(p):
                    found.append(p)
        return found

    def close(self) -> list[int]:
        """Kill and reap every driver and whatever runs below it; return the pids of
        processes that had to be killed after their driver was gone (strays), of this
        call and every earlier one."""
        for d in self.drivers:
            if d.alive():
                d.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.proc.wait(timeout=30)
        # Fate sharing takes a moment: the fork server sees its driver's pipe close.
        deadline = time.monotonic() + 10
        strays = self.strays()
        while strays and time.monotonic() < deadline:
            time.sleep(0.05)
            strays = self.strays()
        for p in strays:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.strays_killed.extend(p.pid for p in strays)
        return list(self.strays_killed)

    # --- the side-effect logs ------------------------------------------------------

    def attempts(self, wid: str | None = None) -> list[Attempt]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            w, t, a, k, p = line.split()
            if wid is None or w == wid:
                out.append(Attempt(w, t, int(a), k, int(p)))
        return out

    def runs(self, wid: str | None = None, since: int = 0) -> Counter[str]:
        """How many attempts of each step ran (of the log lines from ``since`` on)."""
        return Counter(a.task_id for a in self.attempts()[since:] if wid is None or a.wid == wid)

    def ledger(self) -> list[tuple[str, Any]]:
        if not self.ledger_path.exists():
            return []
        out = []
        for line in self.ledger_path.read_text().splitlines():
            key, _, value = line.partition(" ")
            out.append((key, json.loads(value)))
        return out

    def hook_calls(self) -> list[tuple[str, str]]:
        if not self.hooks_path.exists():
            return []
        lines = self.hooks_path.read_text().splitlines()
        return [(k, v) for k, _, v in (line.partition(" ") for line in lines)]

    # --- the lineage, read straight from SQL ---------------------------------------

    @contextlib.contextmanager
    def engine(self) -> Iterator[sa.Engine]:
        engine = sa.create_engine(self.db_url, poolclass=sa.pool.NullPool)
        try:
            yield engine
        finally:
            engine.dispose()

    def has_lineage(self) -> bool:
        """Whether the lineage database exists and has its tables (a driver killed
        early may not have made it yet)."""
        url = sa.make_url(self.db_url)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
            return False
        with self.engine() as engine, engine.connect() as conn:
            return sa.inspect(conn).has_table("wal")

    def committed(self, wid: str) -> set[str]:
        """Task ids with a COMMIT record in the WAL."""
        if not self.has_lineage():
            return set()
        with self.engine() as engine, engine.connect() as conn:
            rows = conn.execute(
                sa.select(WalRecord.task_id).where(
                    WalRecord.workflow_id == wid, WalRecord.kind == "COMMIT"
                )
            )
            return {r[0] for r in rows}

    def rows(self, wid: str) -> dict[str, list[tuple[Any, ...]]]:
        """Every lineage row of the workflow: its row, steps, attempts, WAL, transitions."""
        out = {}
        with self.engine() as engine, engine.connect() as conn:
            for name, model in (
                ("workflow", Workflow),
                ("steps", Step),
                ("attempts", StepAttempt),
                ("wal", WalRecord),
                ("transitions", Transition),
            ):
                table: Any = model.__table__
                pk = list(table.primary_key.columns)
                query = sa.select(table).where(table.c.workflow_id == wid).order_by(*pk)
                out[name] = [tuple(r) for r in conn.execute(query)]
        return out

    def lease(self, wid: str) -> dict[str, Any]:
        with self.engine() as engine, engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    Workflow.status,
                    Workflow.lease_owner,
                    Workflow.lease_pid,
                    Workflow.lease_heartbeat_at,
                    Workflow.lease_expires_at,
                    Workflow.lease_generation,
                    Workflow.commit_seq,
                ).where(Workflow.workflow_id == wid)
            ).first()
        return dict(row._mapping) if row is not None else {}

    def workflow_ids(self) -> list[str]:
        if not self.has_lineage():
            return []
        with self.engine() as engine, engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(Workflow.workflow_id))]


class PostgresServer:
    """The local cluster, controlled with ``pg_ctlcluster``."""

    def __init__(self, version: str) -> None:
        self.version = version

    def _ctl(self, action: str) -> None:
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main", action]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")

    @staticmethod
    def ready() -> bool:
        done = subprocess.run(
            ["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True, timeout=30
        )
        return done.returncode == 0

    def wait_ready(self, timeout: float = 60.0) -> None:
        poll(self.ready, timeout, "PostgreSQL to accept connections", interval=0.1)

    def stop(self) -> None:
        self._ctl("stop")

    def start(self) -> None:
        self._ctl("start")
        self.wait_ready()

    def restart(self) -> None:
        self._ctl("restart")
        self.wait_ready()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
