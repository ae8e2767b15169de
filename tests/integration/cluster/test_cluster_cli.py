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
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from cluster_daemons import Daemons

from heliostat.cluster import HeadClient
from heliostat.cluster.v1 import control_pb2 as pb
from heliostat.cluster.v1 import control_pb2_grpc as pb_grpc
from heliostat.storage.cluster_nodes import NodeState


def test_nodes_join_show_in_status_and_a_killed_node_is_dead_within_5_s(
    db_url: str | None, daemons: Daemons, wait_for: Callable[..., Any]
) -> None:
    daemons.start_head(db_url=db_url)
    n1 = daemons.start_node("n1", "127.0.0.2")
    n2 = daemons.start_node("n2", "127.0.0.3")
    cluster = daemons.status()
    by_id = {n["node_id"]: n for n in cluster["nodes"]}
    assert {n["state"] for n in cluster["nodes"]} == {"ALIVE"} and len(by_id) == 3
    # A node's address is where its node service listens, on the IP it was given.
    assert by_id[n1]["address"].startswith("127.0.0.2:")
    assert by_id[n2]["address"].startswith("127.0.0.3:")
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
    db_url: str | None, daemons: Daemons, wait_for: Callable[..., Any]
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
    # New work runs on the nodes that rejoined.
    ran = daemons.driver(
        "import heliostat as hs\n"
        "@hs.remote\n"
        "def where(i):\n"
        "    return hs.get_runtime_context().get_node_id()\n"
        "print(sorted(set(hs.get([where.options(scheduling_strategy='SPREAD').remote(i)"
        " for i in range(12)], timeout=60))))\n"
    )
    assert {n1, n2} <= set(eval(ran))


def test_tls_head_nodes_and_drivers(daemons: Daemons, tmp_path: Path) -> None:
    """One cluster certificate (naming every node's address) and its key: the head's
    control plane and every node's peer services are TLS; tasks, their arguments and
    their results cross nodes over it; plain TCP gets nowhere, at the head or a node."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=heliostat-cluster",
         "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    address = daemons.start_head(*tls)
    n1 = daemons.start_node("n1", "127.0.0.2", extra=tls)
    n2 = daemons.start_node("n2", "127.0.0.3", extra=tls)
    with HeadClient(address, daemons.token, tls_cert=str(cert), timeout=5) as client:
        nodes = {n.node_id: n for n in client.list_nodes()}
    assert {n1, n2} <= set(nodes)
    plain = {"authorization": f"bearer {daemons.token}"}
    for target in (address, nodes[n1].address):  # plain TCP to a TLS port
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary("/heliostat.cluster.v1.ControlPlane/ListNodes")
            with pytest.raises(grpc.RpcError) as info:
                call(pb.ListNodesRequest().SerializeToString(), metadata=tuple(plain.items()),
                     timeout=5)  # fmt: skip
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    ran = daemons.driver(
        "import numpy as np\n"
        "import heliostat as hs\n"
        "from heliostat.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "@hs.remote\n"
        "def make(n):\n"
        "    return np.arange(n, dtype=np.int64)\n"
        "@hs.remote\n"
        "def total(a):\n"
        "    return int(a.sum()), hs.get_runtime_context().get_node_id()\n"
        "import sys\n"
        "a, b = sys.argv[1], sys.argv[2]\n"
        "big = make.options(scheduling_strategy=On(a, soft=False)).remote(2_000_000)\n"
        "out = hs.get(total.options(scheduling_strategy=On(b, soft=False)).remote(big),"
        " timeout=120)\n"
        "print(out[0], out[1], hs.get(hs.remote(lambda: 6 * 7).remote(), timeout=60))\n",
        env={"HELIOSTAT_TLS_CERT": str(cert), "HELIOSTAT_TLS_KEY": str(key)},
        args=(n1, n2),
    )
    assert ran.split() == [str(sum(range(2_000_000))), n2, "42"]
    # A driver without the key cannot serve its peers: refused at once, saying why.
    refused = subprocess.run(
        [sys.executable, "-c", "import heliostat as hs; hs.init()"],
        env={**daemons.driver_env("driver-nokey"), "HELIOSTAT_TLS_CERT": str(cert)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0 and "HELIOSTAT_TLS_KEY is not set" in refused.stderr


def test_the_heads_web_ui_shows_the_clusters_nodes(daemons: Daemons) -> None:
    """--ui-port: the UI in the head's process reads its control plane (no browser here:
    the JSON and the HTML over HTTP)."""
    daemons.start_head("--ui-port", "0")
    node = daemons.start_node("n1", "127.0.0.2")
    info = json.loads((daemons.home("head") / "cluster" / "head.json").read_text())
    url = info["ui_url"]
    with urllib.request.urlopen(url + "api/cluster", timeout=30) as answer:
        cluster = json.loads(answer.read())
    nodes = {n["node_id"]: n for n in cluster["nodes"]}
    assert set(nodes) == {daemons.head_node_id(), node}
    assert nodes[node]["address"].startswith("127.0.0.2:") and nodes[node]["state"] == "ALIVE"
    assert nodes[node]["resources"]["CPU"]["total"] == 1.0
    assert nodes[daemons.head_node_id()]["is_head"]
    with urllib.request.urlopen(url + "runtime", timeout=30) as answer:
        html = answer.read().decode()
    assert f'data-node="{node}"' in html and nodes[node]["address"] in html


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
        (["--address", "127.0.0.1:9", "--token", "t", "--tls-key", "k.pem"], "--tls-key needs"),
        (["--address", "127.0.0.1:9", "--token", "t", "--tls-cert", "c.pem"], "needs --tls-key"),
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
