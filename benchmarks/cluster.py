"""Cluster control plane: how fast a dead node is found, what a heartbeat costs.

Prints one JSON object. A head (``heliostat start --head``) and nodes (``heliostat
start --address``, each on its own loopback address 127.0.0.N) run as real daemons,
each with its own ``HELIOSTAT_HOME`` in a temporary directory, all stopped at the end.

Figures:

* ``dead_node_detection_s``: from SIGKILL of a node daemon to the head listing it DEAD,
  over ``--kills`` kills (a fresh node each time): ``median``, ``min``, ``max``,
  ``samples``. Polled through the control plane every 10 ms. Target (DESIGN §3): < 5 s.
* ``heartbeat_rpc_us``: one Heartbeat call from a client in this process to the head
  (token check included), over ``--heartbeats`` calls: ``median``, ``p95``, ``p99``.
* ``list_nodes_rpc_us``: one ListNodes call, median.
* ``timing``: the head's heartbeat interval and silence threshold in force.

Sections to come, sharing the same cluster set-up (:class:`Cluster`): tiny-task
throughput on 1, 2 and 3 nodes, cross-node transfer of a 1 GB object, and ``--peer
ray`` for the same figures on a Ray cluster.

Usage: ``python benchmarks/cluster.py [--kills 5] [--heartbeats 2000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from heliostat.cluster import HeadClient, NodeState
from heliostat.cluster.rpc import Registration


class Cluster:
    """Daemons started through the CLI, one private home each; ``close()`` stops all."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hsbench"))
        self.homes: list[Path] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HELIOSTAT_")}
        self.env["TMPDIR"] = str(self.root)
        self.address = ""
        self.token = ""

    def run(self, home: str, *args: str) -> str:
        path = self.root / home
        if path not in self.homes:
            self.homes.append(path)
        out = subprocess.run(
            [sys.executable, "-m", "heliostat.cli", *args],
            env={**self.env, "HELIOSTAT_HOME": str(path)},
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        return out.stdout

    def start_head(self) -> None:
        self.run("head", "start", "--head", "--port", "0", "--num-cpus", "1")
        cdir = self.root / "head" / "cluster"
        self.address = json.loads((cdir / "head.json").read_text())["address"]
        self.token = (cdir / "token").read_text().strip()

    def start_node(self, name: str, ip: str) -> tuple[str, int]:
        self.run(
            name, "start", "--address", self.address, "--token", self.token,
            "--num-cpus", "1", "--node-ip-address", ip,
        )  # fmt: skip
        info = json.loads((self.root / name / "cluster" / "node.json").read_text())
        return info["node_id"], int(info["pid"])

    def client(self) -> HeadClient:
        return HeadClient(self.address, self.token)

    def close(self) -> None:
        for home in reversed(self.homes):
            subprocess.run(
                [sys.executable, "-m", "heliostat.cli", "stop", "--timeout", "20"],
                env={**self.env, "HELIOSTAT_HOME": str(home)},
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_detection(cluster: Cluster, kills: int) -> dict[str, Any]:
    samples = []
    with cluster.client() as client:
        for i in range(kills):
            node_id, pid = cluster.start_node(f"victim{i}", f"127.0.0.{2 + i % 200}")
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + 30
            while time.monotonic() < deadline:
                states = {n.node_id: n.state for n in client.list_nodes()}
                if states.get(node_id) is NodeState.DEAD:
                    break
                time.sleep(0.01)  # polling the head: the figure's resolution
            else:
                raise RuntimeError(f"node {node_id} was not declared dead within 30 s")
            samples.append(time.monotonic() - killed)
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "samples": [round(s, 3) for s in samples],
    }


def measure_rpcs(cluster: Cluster, heartbeats: int) -> dict[str, Any]:
    with cluster.client() as client:
        ack = client.register_node(
            Registration(
                node_id="bench-node", address="127.0.0.250", hostname="bench", pid=os.getpid(),
                total={"CPU": 1.0},
            )
        )  # fmt: skip
        for _ in range(50):  # warm the channel
            client.heartbeat("bench-node", {"CPU": 1.0})
        beats = []
        for _ in range(heartbeats):
            start = time.perf_counter()
            client.heartbeat("bench-node", {"CPU": 1.0})
            beats.append((time.perf_counter() - start) * 1e6)
        lists = []
        for _ in range(200):
            start = time.perf_counter()
            client.list_nodes()
            lists.append((time.perf_counter() - start) * 1e6)
        client.deregister_node("bench-node")
    return {
        "heartbeat_rpc_us": {
            "median": round(statistics.median(beats), 1),
            "p95": round(_percentile(beats, 0.95), 1),
            "p99": round(_percentile(beats, 0.99), 1),
            "calls": heartbeats,
        },
        "list_nodes_rpc_us": {"median": round(statistics.median(lists), 1)},
        "timing": {"heartbeat_interval_s": ack.heartbeat_interval, "dead_after_s": ack.dead_after},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="nodes to kill (default 5)")
    parser.add_argument("--heartbeats", type=int, default=2000, help="heartbeat calls to time")
    args = parser.parse_args(argv)
    cluster = Cluster()
    try:
        cluster.start_head()
        result: dict[str, Any] = {"benchmark": "cluster", "cpus": os.cpu_count()}
        result.update(measure_rpcs(cluster, args.heartbeats))
        result["dead_node_detection_s"] = measure_detection(cluster, args.kills)
    finally:
        cluster.close()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
