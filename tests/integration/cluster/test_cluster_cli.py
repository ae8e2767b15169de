"""A real cluster through the command line: a head and two nodes as daemons.

Each daemon has its own ``HELIOSTAT_HOME`` (pid, log and token files) and each node its
own loopback address (127.0.0.2, 127.0.0.3). The ``cluster`` fixture stops every
daemon after the test with ``heliostat stop`` and then checks that no process of
theirs (node managers, fork servers, workers) is left. The node table lives in SQLite
or, for the tests parametrized so, in a PostgreSQL schema of the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from heliostat.cluster import HeadClient
from heliostat.cluster.v1 import control_pb2 as pb
from heliostat.cluster.v1 import control_pb2_grpc as pb_grpc
from heliostat.storage.cluster_nodes import NodeState

COMMAND_TIMEOUT = 180


class Daemons:
    """Runs ``heliostat`` commands, one private home per daemon."""

    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.root = root
        self.tmpdir = tmpdir
        self.homes: list[Path] = []
        self.sessions: set[int] = set()
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
        self, name: str, *args: str, expect: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "heliostat.cli", *args],
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

    def start_head(self, *extra: str, db_url: str | None = None) -> str:
        env = {"HELIOSTAT_DB_URL": db_url} if db_url else None
        out = self.run("head", "start", "--head", "--port", "0", "--num-cpus", "1", *extra, env=env)
        info = json.loads((self.home("head") / "cluster" / "head.json").read_text())
        self.address = info["address"]
        self.token = (self.home("head") / "cluster" / "token").read_text().strip()
        self.pid("head", "head")
        assert self.token in out.stdout and f"--address {self.address}" in out.stdout
        return self.address

    def start_node(self, name: str, ip: str) -> str:
        self.run(
            name,
            "start",
            "--address",
            self.address,
            "--token",
            self.token,
            "--num-cpus",
            "1",
            "--node-ip-address",
            ip,
        )
        self.pid(name, "node")
        return json.loads((self.home(name) / "cluster" / "node.json").read_text())["node_id"]

    def status(self, name: str = "head") -> dict[str, Any]:
        return json.loads(self.run(name, "status", "--json").stdout)["cluster"]

    def client(self) -> HeadClient:
        return HeadClient(self.address, self.token, timeout=2.0)

    def states(self) -> dict[str, NodeState]:
        with self.client() as client:
            return {n.node_id: n.state for n in client.list_nodes()}

    def leftovers(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) in self.sessions:
                    found.append(proc)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def stop_all(self) -> None:
        """``heliostat stop`` in every home, all at once (nodes and head are independent)."""
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


@pytest.fixture
def daemons(tmp_path: Path, wait_for: Callable[..., Any]) -> Iterator[Daemons]:
    tmpdir = Path(tempfile.mkdtemp(prefix="hsc"))
    d = Daemons(tmp_path, tmpdir)
    try:
        yield d
    finally:
        d.stop_all()
        try:
            wait_for(lambda: not d.leftovers(), 20, what="every daemon's processes to exit")
        finally:
            for proc in d.leftovers():  # never leave a process behind, even failing
                proc.kill()
            shutil.rmtree(tmpdir, ignore_errors=True)
        for home in d.homes:
            assert not (home / "cluster" / "head.pid").exists()
            assert not (home / "cluster" / "node.pid").exists()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("pg_schema_url")
        return make()
    return None  # the head's home's SQLite file


def test_nodes_join_show_in_status_and_a_killed_node_is_dead_within_5_s(
    daemons: Daemons, db_url: str | None, wait_for: Callable[..., Any]
) -> None:
    daemons.start_head(db_url=db_url)
    n1 = daemons.start_node("n1", "127.0.0.2")
    n2 = daemons.start_node("n2", "127.0.0.3")
    cluster = daemons.status()
    by_id = {n["node_id"]: n for n in cluster["nodes"]}
    assert {n["state"] for n in cluster["nodes"]} == {"ALIVE"} and len(by_id) == 3
    assert by_id[n1]["address"] == "127.0.0.2" and by_id[n2]["address"] == "127.0.0.3"
    # Each node offers its CPUs, and memory and object store memory as Ray's nodes do.
    assert cluster["total"]["CPU"] == 3.0
    assert set(cluster["total"]) == {"CPU", "memory", "object_store_memory"}
    assert "127.0.0.3" in daemons.run("n2", "status").stdout  # from the node's home too

    os.kill(daemons.pid("n1", "node"), signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: daemons.states()[n1] is NodeState.DEAD, 10, what="n1 to be declared dead")
    detected = time.monotonic() - killed
    assert detected < 5.0, f"a killed node took {detected:.2f} s to be declared dead"
    assert daemons.states()[n2] is NodeState.ALIVE
    assert daemons.status()["total"]["CPU"] == 2.0


def test_a_restarted_head_recovers_its_nodes_without_restarting_them(
    daemons: Daemons, db_url: str | None, wait_for: Callable[..., Any]
) -> None:
    address = daemons.start_head(db_url=db_url)
    n1 = daemons.start_node("n1", "127.0.0.2")
    n2 = daemons.start_node("n2", "127.0.0.3")
    node_pids = (daemons.pid("n1", "node"), daemons.pid("n2", "node"))
    os.killpg(daemons.pid("head", "head"), signal.SIGKILL)
    wait_for(
        lambda: (
            not psutil.pid_exists(daemons.pid("head", "head"))
            or psutil.Process(daemons.pid("head", "head")).status() == psutil.STATUS_ZOMBIE
        ),
        10,
        what="the head to die",
    )
    port = address.rsplit(":", 1)[1]
    env = {"HELIOSTAT_DB_URL": db_url} if db_url else None
    daemons.run("head", "start", "--head", "--port", port, "--num-cpus", "1", env=env)
    daemons.pid("head", "head")

    def rejoined() -> bool:
        with daemons.client() as client:
            nodes = {n.node_id: n for n in client.list_nodes()}
        return all(
            nodes[n].state is NodeState.ALIVE and nodes[n].last_heartbeat_at for n in (n1, n2)
        )

    wait_for(rejoined, 20, what="both nodes to heartbeat to the restarted head")
    nodes = {n["node_id"]: n for n in daemons.status()["nodes"]}
    assert (nodes[n1]["pid"], nodes[n2]["pid"]) == node_pids  # the same processes
    assert nodes[n1]["incarnation"] == 1


def test_calls_without_the_token_or_with_a_wrong_one_are_refused(daemons: Daemons) -> None:
    address = daemons.start_head()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneStub(channel)
        for metadata in (None, (("authorization", "bearer not-the-token"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListNodes(pb.ListNodesRequest(), metadata=metadata, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    joined = daemons.run(
        "n1", "start", "--address", address, "--token", "wrong", "--num-cpus", "1", expect=1
    )
    assert "refused the cluster token" in joined.stderr
    assert not (daemons.home("n1") / "cluster" / "node.pid").exists()
    status = daemons.run("n1", "status", "--address", address, "--token", "wrong")
    assert "refused the cluster token" in status.stdout
    log = (daemons.home("head") / "cluster" / "head.log").read_text()
    assert "refused /heliostat.cluster.v1.ControlPlane/" in log
    assert "wrong cluster token" in log and "no cluster token" in log
    token_file = daemons.home("head") / "cluster" / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_an_unreachable_head_is_named(daemons: Daemons) -> None:
    out = daemons.run(
        "n1", "start", "--address", "127.0.0.1:1", "--token", "x", "--num-cpus", "1", expect=1
    )
    assert "unreachable" in out.stderr and "127.0.0.1:1" in out.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--head", "--token", "t"], "--token is for a node"),
        (["--address", "127.0.0.1:9", "--token", "t", "--port", "1"], "--port is for a head"),
        (["--address", "127.0.0.1:9", "--token", "t", "--ui-port", "1"], "--ui-port is for a head"),
        (["--address", "nonsense", "--token", "t"], "HOST:PORT"),
        (["--head", "--resources", "[1]"], "JSON object"),
        (["--head", "--resources", '{"CPU": 2}'], "--num-cpus"),
        (["--head", "--port", "70000"], "0-65535"),
        (["--head", "--tls-cert", "x.pem"], "both --tls-cert and --tls-key"),
        (["--head", "--num-cpus", "-1"], "--num-cpus"),
        (
            ["--address", "127.0.0.1:9", "--token", "t", "--node-ip-address", "10.9.9.9"],
            "not an address of this machine",
        ),
        (["--address", "127.0.0.1:9"], "no cluster token"),
    ],
)
def test_bad_start_options_are_refused_before_anything_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    words: str,
) -> None:
    from heliostat.cli import main

    monkeypatch.setenv("HELIOSTAT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HELIOSTAT_TOKEN", raising=False)
    try:
        code = main(["start", *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.startswith("heliostat: error:")
    assert not (tmp_path / "home" / "cluster").exists()


def test_stop_with_nothing_running_says_so(daemons: Daemons) -> None:
    out = daemons.run("x", "stop")
    assert "no heliostat daemon" in out.stdout
