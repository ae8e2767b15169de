"""Daemons of a real cluster for the tests, started through the command line.

:class:`Daemons` runs ``heliostat`` commands, one private ``HELIOSTAT_HOME`` per daemon
(pid, log and token files), each node on its own loopback address (127.0.0.2,
127.0.0.3: all of 127.0.0.0/8 is loopback on Linux). With ``private_shm=True`` a node
daemon is started in a mount namespace of its own with a fresh tmpfs on ``/dev/shm``
(``unshare --mount``), so no node can read another's objects and every object that
crosses nodes really crosses gRPC. The ``daemons`` fixture stops every daemon after
the test with ``heliostat stop`` and then checks that no process of theirs (node
managers, fork servers, workers) is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

import heliostat as hs
from heliostat.cluster import HeadClient
from heliostat.engine.scheduling_strategies import NodeAffinitySchedulingStrategy
from heliostat.storage.cluster_nodes import NodeState

COMMAND_TIMEOUT = 180


# A command run in a mount namespace of its own, with a fresh /dev/shm (needs root, as
# on the CI machines; tests that ask for it check can_isolate_shm()).
PRIVATE_SHM = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount -t tmpfs -o size=2g,mode=1777 tmpfs /dev/shm && exec "$0" "$@"',
]


def can_isolate_shm() -> bool:
    """Whether this machine lets a test give a daemon a private /dev/shm."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        [*PRIVATE_SHM[:-1], "mount -t tmpfs tmpfs /dev/shm"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


class Daemons:
    """Runs ``heliostat`` commands, one private home per daemon."""

    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.root = root
        self.tmpdir = tmpdir
        self.homes: list[Path] = []
        self.sessions: set[int] = set()
        self.drivers: list[subprocess.Popen[str]] = []
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in ("HELIOSTAT_DB_URL", "HELIOSTAT_STORAGE", "HELIOSTAT_ADDRESS", "HELIOSTAT_TOKEN")
        }
        env["TMPDIR"] = str(tmpdir)  # the runtimes' sockets: a short path
        self.env = env
        self.address = ""
        self.token = ""

    def home(self, name: str) -> Path:
        home = self.root / name
        if home not in self.homes:
            self.homes.append(home)
        return home

    def run(
        self,
        name: str,
        *args: str,
        expect: int | None = 0,
        env: dict[str, str] | None = None,
        private_shm: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "heliostat.cli", *args]
        if private_shm:
            command = [*PRIVATE_SHM, *command]  # sh runs "$0" "$@": the command
        result = subprocess.run(
            command,
            env={**self.env, "HELIOSTAT_HOME": str(self.home(name)), **(env or {})},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            cwd=self.root,
        )
        if expect is not None:
            assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
        return result

    def pid(self, name: str, kind: str) -> int:
        pid = int((self.home(name) / "cluster" / f"{kind}.pid").read_text())
        self.sessions.add(pid)  # daemons lead their own session
        return pid

    def start_head(self, *extra: str, db_url: str | None = None, private_shm: bool = False) -> str:
        env = {"HELIOSTAT_DB_URL": db_url} if db_url else None
        out = self.run(
            "head",
            "start",
            "--head",
            "--port",
            "0",
            "--num-cpus",
            "1",
            *extra,
            env=env,
            private_shm=private_shm,
        )
        info = json.loads((self.home("head") / "cluster" / "head.json").read_text())
        self.address = info["address"]
        self.token = (self.home("head") / "cluster" / "token").read_text().strip()
        self.pid("head", "head")
        assert self.token in out.stdout and f"--address {self.address}" in out.stdout
        return self.address

    def start_node(
        self,
        name: str,
        ip: str,
        *,
        num_cpus: int = 1,
        private_shm: bool = False,
        extra: tuple[str, ...] = (),
    ) -> str:
        self.run(
            name,
            "start",
            "--address",
            self.address,
            f"--token={self.token}",
            "--num-cpus",
            str(num_cpus),
            "--node-ip-address",
            ip,
            *extra,
            private_shm=private_shm,
        )
        self.pid(name, "node")
        return json.loads((self.home(name) / "cluster" / "node.json").read_text())["node_id"]

    def driver(
        self, code: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> str:
        """Run ``code`` as a driver joined to the head (``HELIOSTAT_ADDRESS`` and
        ``HELIOSTAT_TOKEN`` set); returns its stdout."""
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            env={
                **self.env,
                "HELIOSTAT_ADDRESS": self.address,
                "HELIOSTAT_TOKEN": self.token,
                "HELIOSTAT_HOME": str(self.root / "driver"),
                **(env or {}),
            },
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            cwd=self.root,
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        return result.stdout

    def driver_env(self, home: str = "driver") -> dict[str, str]:
        """The environment of a driver joined to the head, with a home of its own."""
        return {
            **self.env,
            "HELIOSTAT_ADDRESS": self.address,
            "HELIOSTAT_TOKEN": self.token,
            "HELIOSTAT_HOME": str(self.home(home)),
        }

    def spawn_driver(
        self, code: str, *, home: str, args: tuple[str, ...] = ()
    ) -> subprocess.Popen[str]:
        """Start ``code`` as a driver in a session of its own and return at once (kill it
        with ``os.killpg``); its processes are among those the fixture checks are gone."""
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env=self.driver_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
            start_new_session=True,
        )
        self.sessions.add(proc.pid)
        self.drivers.append(proc)
        return proc

    def head_node_id(self) -> str:
        return str(json.loads((self.home("head") / "cluster" / "head.json").read_text())["node_id"])

    def status(self, name: str = "head") -> dict[str, Any]:
        return json.loads(self.run(name, "status", "--json").stdout)["cluster"]

    def client(self) -> HeadClient:
        return HeadClient(self.address, self.token, timeout=2.0)

    def states(self) -> dict[str, NodeState]:
        with self.client() as client:
            return {n.node_id: n.state for n in client.list_nodes()}

    def leftovers(self) -> list[psutil.Process]:
        """The processes of the daemons' and drivers' sessions still running.

        A zombie is not one: it has exited and only waits to be reaped. A daemon's
        parent (``heliostat start``) is gone, so its zombie waits for PID 1, which
        on some machines reaps only every second or two.
        """
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if (
                    os.getsid(proc.pid) in self.sessions
                    and proc.info["status"] != psutil.STATUS_ZOMBIE
                ):
                    found.append(proc)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def stop_all(self) -> None:
        """``heliostat stop`` in every home, all at once (nodes and head are independent),
        after killing the drivers still running."""
        for proc in self.drivers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=COMMAND_TIMEOUT)
        stops = [
            subprocess.Popen(
                [sys.executable, "-m", "heliostat.cli", "stop", "--timeout", "20"],
                env={**self.env, "HELIOSTAT_HOME": str(home)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for home in self.homes
            if (home / "cluster").exists()
        ]
        for stop in stops:
            stop.wait(timeout=COMMAND_TIMEOUT)


@contextlib.contextmanager
def driving(daemons: Daemons) -> Iterator[None]:
    """This process joined to the daemons' cluster as a driver, for the block."""
    hs.init(address=daemons.address, token=daemons.token)
    try:
        yield
    finally:
        hs.shutdown()


def on(node_id: str) -> NodeAffinitySchedulingStrategy:
    """Run there and nowhere else."""
    return NodeAffinitySchedulingStrategy(node_id, soft=False)
