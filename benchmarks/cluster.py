"""Cluster benchmarks: the control plane, tiny-task throughput, moving objects.

Prints one JSON object. A head (``heliostat start --head``) and nodes (``heliostat
start --address``, each on its own loopback address 127.0.0.N) run as real daemons,
each with its own ``HELIOSTAT_HOME`` in a temporary directory, all stopped at the end.
``--only`` runs one section: ``control``, ``throughput`` or ``transfer``.

Control plane:

* ``dead_node_detection_s``: from SIGKILL of a node daemon to the head listing it DEAD,
  over ``--kills`` kills (a fresh node each time): ``median``, ``min``, ``max``,
  ``samples``. Polled through the control plane every 10 ms. Target (DESIGN §3): < 5 s.
* ``heartbeat_rpc_us``: one Heartbeat call from a client in this process to the head
  (token check included), over ``--heartbeats`` calls: ``median``, ``p95``, ``p99``.
* ``list_nodes_rpc_us``: one ListNodes call, median.
* ``timing``: the head's heartbeat interval and silence threshold in force.

Throughput:

* ``tiny_tasks_per_s``: ``--tasks`` tasks that return their argument, ``--rounds``
  rounds, on one local node and on clusters of 1, 2 and 3 one-CPU nodes. The driver
  runs on the head's machine and attaches to the head's node over its Unix socket
  (``driver_attached``); that node's scheduler keeps what its CPU can take and
  forwards the rest to the other nodes. ``tasks_per_node``: how many tasks of one
  more (untimed) round each node ran, most first. ``three_nodes_vs_local`` is the
  ratio of the 3-node and local medians.
* ``spinning_tasks_per_s``: the same with tasks that spin ``--work-us`` microseconds (default 200,
  0 skips them), ``--work-tasks`` a round, on one local node and on 3 nodes
  (``three_nodes_vs_local``, ``tasks_per_node``): calls long enough to be spread
  (tiny ones stay on the owner's node, ``engine/spill_depth.SHORT_CALL_S``).
* ``remote_call_ms``: on the 2-node cluster, one tiny task at a time sent to the other
  node (``NodeAffinitySchedulingStrategy``) and its result fetched: ``median`` and
  ``p90`` of 300 round trips (in ``tiny_tasks_per_s``; Ray's in
  ``ray_tiny_tasks_per_s``).

Moving objects (GB/s, ``median``, ``best`` and ``samples`` of ``--transfers`` pulls of
one ``--transfer-mib`` object, default 1024 MiB):

* ``transfer_gbps``: the object transfer service alone (:mod:`heliostat.cluster.transfer`):
  a server process maps the object from its own ``/dev/shm`` directory and this process
  pulls it into a new segment, over the direct data port (``Open`` and plain TCP, the
  default); ``transfer_grpc_gbps``: the same over the gRPC ``Pull`` stream.
* ``engine_transfer_gbps``: through the engine: a task on one node makes a numpy array
  of that size, the driver waits for it (``wait(fetch_local=False)``), and the time is
  that of a task on another node reading its last byte (the pull between the two
  nodes' stores dominates). ``engine_chain_s``: seconds of the whole chain, from
  submitting the maker to the reader's answer (the making included): what the
  driver's wait costs shows here (it pulls nothing since values stay where they are
  made; it used to wait for a copy to reach the driver).

With ``--peer ray``, the same on Ray 2.60 (``--ray-python`` names its interpreter,
default ``.venv-ray/bin/python``), formed the same way (``ray start --head`` and
``ray start --address``, one CPU each): ``ray_tiny_tasks_per_s`` and
``throughput_ratio_3_nodes``; ``ray_transfer_gbps`` (a task on the second raylet makes
the array, one on the head raylet reads its last byte) and ``transfer_ratio``
(heliostat's engine path / Ray's, medians).

Usage: ``python benchmarks/cluster.py [--only transfer] [--kills 5] [--heartbeats 2000]
[--tasks 5000] [--rounds 5] [--work-us 200] [--transfers 3] [--transfer-mib 1024] [--peer ray]``.
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


_TRANSFER_SERVER = """
import os, signal, sys
from concurrent import futures
import grpc
from heliostat.cluster.transfer import (
    DirectServer, ObjectTransferServicer, add_transfer_service, channel_options,
    segment_object,
)

root = sys.argv[1]

class Files:
    def open_object(self, object_id):
        path = os.path.join(root, format(object_id, "x"))
        return segment_object(path) if os.path.exists(path) else None

direct = DirectServer("127.0.0.1")
direct.start()
server = grpc.server(futures.ThreadPoolExecutor(8), options=channel_options())
add_transfer_service(server, ObjectTransferServicer(Files(), direct=direct))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
signal.sigwait({signal.SIGTERM})
server.stop(0)
direct.close()
"""


def measure_transfer(mib: int, repeats: int, *, direct: bool) -> dict[str, Any]:
    """Pull one object of ``mib`` MiB from a server process, ``repeats`` times, over
    the data port (``direct``) or the gRPC stream."""
    import grpc

    from heliostat.cluster.transfer import SegmentSink, channel_options, pull_object

    served = Path(tempfile.mkdtemp(prefix="hsbench-served-", dir="/dev/shm"))
    local = Path(tempfile.mkdtemp(prefix="hsbench-local-", dir="/dev/shm"))
    size = mib << 20
    block = os.urandom(1 << 20)
    with open(served / "1", "wb") as file:
        for _ in range(mib):
            file.write(block)
    server = subprocess.Popen(
        [sys.executable, "-c", _TRANSFER_SERVER, str(served)], stdout=subprocess.PIPE, text=True
    )
    rates: list[float] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
        sink = SegmentSink(lambda oid: str(local / format(oid, "x")))
        for _ in range(repeats):
            t0 = time.perf_counter()
            pulled = pull_object(channel, 1, sink, direct=direct)
            rates.append(size / (time.perf_counter() - t0) / 1e9)
            assert pulled.size == size
            os.unlink(local / "1")
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(served, ignore_errors=True)
        shutil.rmtree(local, ignore_errors=True)
    return _rates(mib, rates)


_RAY_TRANSFER = """
import json, sys, time
import numpy as np
import ray

ray.init(address=sys.argv[1], logging_level="ERROR")
size, repeats = int(sys.argv[2]), int(sys.argv[3])

@ray.remote(resources={"far": 1}, num_cpus=0)
def make(n):
    return np.ones(n, dtype=np.uint8)

@ray.remote(resources={"near": 1}, num_cpus=0)
def last_byte(x):
    return int(x[-1])

rates = []
for _ in range(repeats):
    ref = make.remote(size)
    ray.wait([ref], fetch_local=False)
    t0 = time.perf_counter()
    assert ray.get(last_byte.remote(ref)) == 1
    rates.append(size / (time.perf_counter() - t0) / 1e9)
    del ref
print(json.dumps(rates))
"""


def measure_ray_transfer(ray_python: str, mib: int, repeats: int) -> dict[str, Any]:
    """The same object size between two raylets of a local Ray cluster."""
    ray_bin = str(Path(ray_python).parent / "ray")
    port = _free_port()
    # A home of its own: a token file another Ray run left in ~/.ray makes a joining
    # node send a token the head (started without auth) refuses.
    ray_home = tempfile.mkdtemp(prefix="hsbench-rayhome-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = ray_home
    store = str(max(3 * (mib << 20), 1 << 30))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--object-store-memory={store}"]
    try:
        subprocess.run(
            [
                ray_bin,
                "start",
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                '--resources={"near": 1}',
                *common,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [ray_bin, "start", f"--address=127.0.0.1:{port}", '--resources={"far": 1}', *common],
            env=env,
            check=True,
            capture_output=True,
        )
        out = subprocess.run(
            [ray_python, "-c", _RAY_TRANSFER, f"127.0.0.1:{port}", str(mib << 20), str(repeats)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        rates = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(ray_home, ignore_errors=True)
    return _rates(mib, rates)


_HS_TINY = """
import collections, json, sys, time
import heliostat as hs

target, tasks, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
work_s = float(sys.argv[4]) * 1e-6  # 0: tiny tasks, else each spins this long
if target.startswith("local:"):
    hs.init(num_cpus=int(target.split(":")[1]))
else:
    hs.init(address=target, token=sys.argv[5])

def spin():
    end = time.perf_counter() + work_s
    while time.perf_counter() < end:
        pass

@hs.remote
def tiny(i):
    if work_s:
        spin()
    return i

hs.get([tiny.remote(i) for i in range(min(tasks, 2000))], timeout=600)  # warm the workers
rates = []
for _ in range(rounds):
    t0 = time.perf_counter()
    hs.get([tiny.remote(i) for i in range(tasks)], timeout=600)
    rates.append(tasks / (time.perf_counter() - t0))
@hs.remote
def where(i):
    if work_s:
        spin()  # as long as a timed task
    return hs.get_runtime_context().get_node_id()

# One more round, untimed: which node ran how many of the tasks.
ran_on = collections.Counter(hs.get([where.remote(i) for i in range(tasks)], timeout=600))
attached = type(hs.init(ignore_reinit_error=True)).__name__ == "AttachedRuntime"
hs.shutdown()
print(json.dumps({"rates": rates, "ran_on": sorted(ran_on.values(), reverse=True),
                  "attached": attached}))
"""

# One tiny task at a time, sent to the node at 127.0.0.2: a cross-node round trip.
_HS_REMOTE_CALL = """
import json, statistics, sys, time
import heliostat as hs
from heliostat.util.scheduling_strategies import NodeAffinitySchedulingStrategy

hs.init(address=sys.argv[1], token=sys.argv[2])
there = NodeAffinitySchedulingStrategy(sys.argv[3], soft=False)
calls = int(sys.argv[4])

@hs.remote
def tiny(i):
    return i

hs.get([tiny.options(scheduling_strategy=there).remote(i) for i in range(50)])  # warm
times = []
for i in range(calls):
    t0 = time.perf_counter()
    assert hs.get(tiny.options(scheduling_strategy=there).remote(i)) == i
    times.append(time.perf_counter() - t0)
hs.shutdown()
print(json.dumps(times))
"""

_RAY_REMOTE_CALL = """
import json, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], logging_level="ERROR")
calls = int(sys.argv[2])
second = [n for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == "127.0.0.2"]
node = second[0]["NodeID"]
there = NodeAffinitySchedulingStrategy(node, soft=False)

@ray.remote
def tiny(i):
    return i

ray.get([tiny.options(scheduling_strategy=there).remote(i) for i in range(50)])
times = []
for i in range(calls):
    t0 = time.perf_counter()
    assert ray.get(tiny.options(scheduling_strategy=there).remote(i)) == i
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""

_RAY_TINY = """
import json, sys, time
import ray

ray.init(address=sys.argv[1], logging_level="ERROR")
tasks, rounds = int(sys.argv[2]), int(sys.argv[3])

@ray.remote
def tiny(i):
    return i

ray.get([tiny.remote(i) for i in range(min(tasks, 2000))])
rates = []
for _ in range(rounds):
    t0 = time.perf_counter()
    ray.get([tiny.remote(i) for i in range(tasks)])
    rates.append(tasks / (time.perf_counter() - t0))
print(json.dumps(rates))
"""

_HS_TRANSFER = """
import json, sys, time
import numpy as np
import heliostat as hs
from heliostat.util.scheduling_strategies import NodeAffinitySchedulingStrategy

address, token, far, near, size, repeats = sys.argv[1:7]
hs.init(address=address, token=token)

@hs.remote
def make(n):
    return np.ones(n, dtype=np.uint8)

@hs.remote
def last_byte(x):
    return int(x[-1])

on_far = NodeAffinitySchedulingStrategy(far, soft=False)
on_near = NodeAffinitySchedulingStrategy(near, soft=False)
rates = []
for _ in range(int(repeats)):
    start = time.perf_counter()
    ref = make.options(scheduling_strategy=on_far).remote(int(size))
    hs.wait([ref], fetch_local=False)
    t0 = time.perf_counter()
    assert hs.get(last_byte.options(scheduling_strategy=on_near).remote(ref)) == 1
    end = time.perf_counter()
    rates.append((int(size) / (end - t0) / 1e9, end - start))
    del ref
hs.shutdown()
print(json.dumps(rates))
"""


def _driver(script: str, *args: str, python: str = sys.executable, env: Any = None) -> Any:
    out = subprocess.run(
        [python, "-c", script, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_throughput(
    nodes: list[int], tasks: int, rounds: int, work_us: int = 0, work_tasks: int = 0
) -> dict[str, Any]:
    """Tiny tasks per second: one local node, then clusters of 1, 2 and 3 nodes.

    Every node has one CPU. A cluster's driver joins with ``init(address=...)`` and
    attaches to the head's node; ``nodes_3_driver_node`` is the 3-node cluster again
    with ``HELIOSTAT_ATTACH=0``: the driver joins as a node without CPUs, so every
    task is forwarded to another node and reported back.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIOSTAT_")}
    local = _driver(_HS_TINY, "local:1", str(tasks), str(rounds), "0", env=env)
    result: dict[str, Any] = {"tasks": tasks, "local": _summary(local["rates"])}
    spread: dict[str, Any] = {"work_us": work_us, "tasks": work_tasks}
    if work_us:
        found = _driver(_HS_TINY, "local:1", str(work_tasks), str(rounds), str(work_us), env=env)
        spread["local"] = _summary(found["rates"])
    runs = [(count, f"nodes_{count}", "1") for count in nodes]
    runs.append((max(nodes), f"nodes_{max(nodes)}_driver_node", "0"))
    for count, key, attach in runs:
        cluster = Cluster()
        try:
            cluster.start_head()
            second = ""
            for i in range(count - 1):
                node_id, _pid = cluster.start_node(f"n{i}", f"127.0.0.{2 + i}")
                second = second or node_id
            found = _driver(
                _HS_TINY,
                cluster.address,
                str(tasks),
                str(rounds),
                "0",
                cluster.token,
                env={**cluster.env, "HELIOSTAT_ATTACH": attach},
            )
            if work_us and count == max(nodes) and attach == "1":
                spun = _driver(
                    _HS_TINY, cluster.address, str(work_tasks), str(rounds), str(work_us),
                    cluster.token, env={**cluster.env, "HELIOSTAT_ATTACH": attach},
                )  # fmt: skip
                spread[key] = {**_summary(spun["rates"]), "tasks_per_node": spun["ran_on"]}
            if count == 2 and attach == "1":
                times = _driver(
                    _HS_REMOTE_CALL, cluster.address, cluster.token, second, str(REMOTE_CALLS),
                    env={**cluster.env, "HELIOSTAT_ATTACH": "1"},
                )  # fmt: skip
                result["remote_call_ms"] = _latency(times)
        finally:
            cluster.close()
        result[key] = {
            **_summary(found["rates"]),
            "tasks_per_node": found["ran_on"],
            "driver_attached": found["attached"],
        }
    if work_us:
        three = spread[f"nodes_{max(nodes)}"]["median"]
        spread["three_nodes_vs_local"] = round(three / spread["local"]["median"], 2)
        result["spinning"] = spread
    return result


REMOTE_CALLS = 300


def _latency(seconds: list[float]) -> dict[str, float]:
    """Round trips (seconds) as milliseconds: median and p90."""
    return {
        "median": round(statistics.median(seconds) * 1e3, 3),
        "p90": round(_percentile(seconds, 0.9) * 1e3, 3),
        "calls": len(seconds),
    }


def measure_engine_transfer(mib: int, repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task on one node reads an object another node made, through the engine: the
    read's rate, and the seconds of the whole chain (make, wait, read)."""
    cluster = Cluster()
    try:
        cluster.start_head()
        far, _ = cluster.start_node("far", "127.0.0.2")
        near, _ = cluster.start_node("near", "127.0.0.3")
        rates = _driver(
            _HS_TRANSFER,
            cluster.address,
            cluster.token,
            far,
            near,
            str(mib << 20),
            str(repeats),
            env=cluster.env,
        )
    finally:
        cluster.close()
    chains = [chain for _rate, chain in rates]
    chain = {
        "mib": mib,
        "median": round(statistics.median(chains), 3),
        "best": round(min(chains), 3),
        "samples": [round(c, 3) for c in chains],
    }
    return _rates(mib, [rate for rate, _chain in rates]), chain


def measure_ray_throughput(
    ray_python: str, nodes: list[int], tasks: int, rounds: int
) -> dict[str, Any]:
    """The same tiny tasks on Ray clusters of 1, 2 and 3 raylets (one CPU each)."""
    ray_bin = str(Path(ray_python).parent / "ray")
    result: dict[str, Any] = {"tasks": tasks}
    for count in nodes:
        port = _free_port()
        ray_home = tempfile.mkdtemp(prefix="hsbench-rayhome-")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["HOME"] = ray_home
        common = ["--num-cpus=1", "--object-store-memory=500000000"]
        try:
            subprocess.run(
                [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
                 "--node-ip-address=127.0.0.1", *common],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            for i in range(count - 1):
                subprocess.run(
                    [ray_bin, "start", f"--address=127.0.0.1:{port}",
                     f"--node-ip-address=127.0.0.{2 + i}", *common],
                    env=env, check=True, capture_output=True,
                )  # fmt: skip
            rates = _driver(
                _RAY_TINY, f"127.0.0.1:{port}", str(tasks), str(rounds), python=ray_python, env=env
            )
            if count == 2:
                times = _driver(
                    _RAY_REMOTE_CALL, f"127.0.0.1:{port}", str(REMOTE_CALLS),
                    python=ray_python, env=env,
                )  # fmt: skip
                result["remote_call_ms"] = _latency(times)
        finally:
            subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)
            shutil.rmtree(ray_home, ignore_errors=True)
        result[f"nodes_{count}"] = _summary(rates)
    return result


def _summary(rates: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(rates)), "samples": [round(r) for r in rates]}


def _rates(mib: int, rates: list[float]) -> dict[str, Any]:
    """Transfer rates (GB/s) summarised."""
    return {
        "mib": mib,
        "median": round(statistics.median(rates), 3),
        "best": round(max(rates), 3),
        "samples": [round(r, 3) for r in rates],
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="nodes to kill (default 5)")
    parser.add_argument("--heartbeats", type=int, default=2000, help="heartbeat calls to time")
    parser.add_argument("--transfers", type=int, default=3, help="pulls to time (default 3)")
    parser.add_argument("--transfer-mib", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--tasks", type=int, default=5000, help="tiny tasks per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--work-us", type=int, default=200, help="run time of a spinning task (0: skip them)"
    )
    parser.add_argument("--work-tasks", type=int, default=2000, help="spinning tasks per round")
    parser.add_argument(
        "--only",
        choices=["control", "throughput", "transfer"],
        help="run one section (default: all)",
    )
    parser.add_argument("--peer", choices=["ray"], help="also measure a Ray cluster")
    parser.add_argument("--ray-python", default=".venv-ray/bin/python")
    args = parser.parse_args(argv)
    if args.work_us < 0:
        parser.error(f"--work-us must be 0 (skip) or a positive run time, got {args.work_us}")
    if args.work_tasks < 1:
        parser.error(f"--work-tasks must be at least 1, got {args.work_tasks}")
    result: dict[str, Any] = {"benchmark": "cluster", "cpus": os.cpu_count()}
    ray = args.peer == "ray"
    if args.only in (None, "control"):
        cluster = Cluster()
        try:
            cluster.start_head()
            result.update(measure_rpcs(cluster, args.heartbeats))
            result["dead_node_detection_s"] = measure_detection(cluster, args.kills)
        finally:
            cluster.close()
    if args.only in (None, "throughput"):
        sizes = [1, 2, 3]
        ours = result["tiny_tasks_per_s"] = measure_throughput(
            sizes, args.tasks, args.rounds, args.work_us, args.work_tasks
        )
        three = ours["nodes_3"]["median"]
        result["three_nodes_vs_local"] = round(three / ours["local"]["median"], 2)
        if "spinning" in ours:
            result["spinning_tasks_per_s"] = ours.pop("spinning")
        if ray:
            theirs = measure_ray_throughput(args.ray_python, sizes, args.tasks, args.rounds)
            result["ray_tiny_tasks_per_s"] = theirs
            result["throughput_ratio_3_nodes"] = round(three / theirs["nodes_3"]["median"], 2)
    if args.only in (None, "transfer"):
        mib, repeats = args.transfer_mib, args.transfers
        result["transfer_gbps"] = measure_transfer(mib, repeats, direct=True)
        result["transfer_grpc_gbps"] = measure_transfer(mib, repeats, direct=False)
        engine, chain = measure_engine_transfer(args.transfer_mib, args.transfers)
        result["engine_transfer_gbps"] = engine
        result["engine_chain_s"] = chain
        if ray:
            theirs = measure_ray_transfer(args.ray_python, args.transfer_mib, args.transfers)
            result["ray_transfer_gbps"] = theirs
            result["transfer_ratio"] = round(
                result["engine_transfer_gbps"]["median"] / theirs["median"], 2
            )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
