"""Drivers attached to a node daemon of their own machine (``engine/attach.py``).

A head (its own node, one CPU) and a node on 127.0.0.2 run as daemons. Drivers run as
separate processes with the daemons' temp directory, so they find the nodes this
machine runs and attach to the head's node over its Unix socket instead of starting a
node of their own. Shown: work runs on every node and values come back; when a driver
is killed, the node releases what it held (its objects go, on the head's map too) and
stops the actors it owned, but keeps its detached one; ``HELIOSTAT_ATTACH=0`` gives
the driver a node of its own; a node whose ``/dev/shm`` the driver cannot see is not
attached to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from cluster_daemons import COMMAND_TIMEOUT, Daemons, can_isolate_shm

from heliostat.cluster import HeadClient

PRIVATE_SHM = can_isolate_shm()

FIRST = r"""
import json, signal
import numpy as np
import heliostat as hs
from heliostat.engine import runtime as rt

hs.init()

@hs.remote
def where(i):
    return hs.get_runtime_context().get_node_id(), i * i

@hs.remote
class Keeper:
    def ping(self):
        return "pong"

ran = hs.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(40)])
assert [sq for _, sq in ran] == [i * i for i in range(40)]
big = hs.put(np.arange(2_500_000, dtype=np.int64))  # 20 MB, in the node's memory
assert int(hs.get(big)[-1]) == 2_499_999
owned = Keeper.options(name="owned").remote()
kept = Keeper.options(name="kept", lifetime="detached").remote()
assert hs.get([owned.ping.remote(), kept.ping.remote()]) == ["pong", "pong"]
print(json.dumps({
    "runtime": type(rt.current_runtime()).__name__,
    "driver_node": hs.get_runtime_context().get_node_id(),
    "nodes": sorted({node for node, _ in ran}),
    "big": big.hex(),
}), flush=True)
signal.pause()  # until the test kills us
"""

SECOND = r"""
import json, time
import heliostat as hs

hs.init()
deadline = time.monotonic() + 30
while True:  # the node stops the killed driver's actor once it sees the driver gone
    try:
        hs.get_actor("owned")
    except ValueError:
        break
    assert time.monotonic() < deadline, "the killed driver's actor is still there"
    time.sleep(0.05)
kept = hs.get_actor("kept")
print(json.dumps({"kept": hs.get(kept.ping.remote(), timeout=60)}), flush=True)
hs.kill(kept)
hs.shutdown()
"""

WHICH = r"""
import heliostat as hs
from heliostat.engine import runtime as rt

hs.init()

@hs.remote
def one():
    return 1

assert hs.get(one.remote(), timeout=60) == 1
print(type(rt.current_runtime()).__name__)
hs.shutdown()
"""


def test_a_driver_attaches_and_what_it_held_goes_when_it_is_killed(
    daemons: Daemons, wait_for: Callable[..., Any]
) -> None:
    daemons.start_head()
    n1 = daemons.start_node("n1", "127.0.0.2")
    first = daemons.spawn_driver(FIRST, home="first")
    assert first.stdout is not None
    line = first.stdout.readline()
    assert line, first.stderr.read() if first.stderr else ""
    seen = json.loads(line)
    assert seen["runtime"] == "AttachedRuntime"
    assert seen["driver_node"] == daemons.head_node_id()
    assert seen["nodes"] == sorted({daemons.head_node_id(), n1})
    big = int(seen["big"], 16)
    with HeadClient(daemons.address, daemons.token) as head:
        wait_for(lambda: head.locate_objects([big])[0], 30, what="the head to map the put value")
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=COMMAND_TIMEOUT)
        wait_for(
            lambda: not head.locate_objects([big])[0],
            15,
            what="the killed driver's value to be freed on its node",
        )
    out = daemons.driver(SECOND)
    assert json.loads(out.strip().splitlines()[-1]) == {"kept": "pong"}


SHIPPED = r"""
import json, os, sys
import heliostat as hs
from heliostat.engine import runtime as rt
from heliostat.util.scheduling_strategies import NodeAffinitySchedulingStrategy

hs.init(runtime_env={"working_dir": sys.argv[1], "env_vars": {"HS_TEST_SHIPPED": "yes"}})

@hs.remote
def shipped(i):
    import shipped_greeting  # only in the working_dir's copy

    return hs.get_runtime_context().get_node_id(), shipped_greeting.greet(i), os.environ.get(
        "HS_TEST_SHIPPED"
    )

@hs.remote
def nested(node):
    return hs.get(shipped.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
    ).remote(99))

ran = [
    hs.get(shipped.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
    ).remote(i))
    for i, node in enumerate(sys.argv[2:])
]
print(json.dumps({
    "runtime": type(rt.current_runtime()).__name__,
    "ran": ran,
    "nested": hs.get(nested.remote(sys.argv[2])),
}), flush=True)
hs.shutdown()
"""


def test_a_driver_with_a_runtime_env_attaches_and_its_code_runs_on_every_node(
    daemons: Daemons, tmp_path
) -> None:
    """The node installs the attached driver's packages; its tasks, here and on the
    peer, and the tasks they submit, run with its working_dir and env_vars."""
    daemons.start_head()
    n1 = daemons.start_node("n1", "127.0.0.2")
    head = daemons.head_node_id()
    project = tmp_path / "project"
    project.mkdir()
    (project / "shipped_greeting.py").write_text("def greet(i):\n    return f'hello {i}'\n")
    out = daemons.driver(SHIPPED, args=(str(project), head, n1))
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["runtime"] == "AttachedRuntime"
    assert seen["ran"] == [[head, "hello 0", "yes"], [n1, "hello 1", "yes"]]
    assert seen["nested"] == [head, "hello 99", "yes"]


PRINTS = r"""
import sys
import heliostat as hs
from heliostat.util.scheduling_strategies import NodeAffinitySchedulingStrategy

hs.init(log_to_driver=sys.argv[1] == "1")
here, there = (NodeAffinitySchedulingStrategy(n, soft=False) for n in sys.argv[2:4])

@hs.remote
def shout(word):
    print(f"shouted {word}")
    print(f"complained {word}", file=sys.stderr)
    return word

@hs.remote
def outer():
    return hs.get(shout.options(scheduling_strategy=there).remote("nested"))

@hs.remote
class Parrot:
    def say(self, word):
        print(f"parrot says {word}")
        return word

parrot = Parrot.options(scheduling_strategy=there).remote()
assert hs.get([
    shout.options(scheduling_strategy=here).remote("here"),
    shout.options(scheduling_strategy=there).remote("there"),
    outer.options(scheduling_strategy=here).remote(),
    parrot.say.remote("hello"),
]) == ["here", "there", "nested", "hello"]
print("DONE", flush=True)
hs.shutdown()
"""


def test_an_attached_driver_prints_its_tasks_output_from_every_node(daemons: Daemons) -> None:
    """As a Ray driver does (``log_to_driver=True``, the default): what its tasks and
    actors print, on its node or another, nested or not, shows at the driver, after
    who wrote it; the node's log keeps its copy. ``log_to_driver=False`` shows none."""
    daemons.start_head()
    n1 = daemons.start_node("n1", "127.0.0.2")
    head = daemons.head_node_id()
    result = subprocess.run(
        [sys.executable, "-c", PRINTS, "1", head, n1],
        env=daemons.driver_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert out.rstrip().endswith("DONE")
    assert any(
        line.startswith("(shout pid=") and "shouted here" in line for line in out.splitlines()
    )
    assert f"(shout, node {n1} pid=" in out and "shouted there" in out
    assert "shouted nested" in out and "complained nested" in err
    assert f"(Parrot.say, node {n1} pid=" in out and "parrot says hello" in out
    quiet = daemons.driver(PRINTS, args=("0", head, n1))
    assert quiet.split() == ["DONE"]


def test_heliostat_attach_0_gives_the_driver_a_node_of_its_own(daemons: Daemons) -> None:
    daemons.start_head()
    assert daemons.driver(WHICH).split() == ["AttachedRuntime"]
    assert daemons.driver(WHICH, env={"HELIOSTAT_ATTACH": "0"}).split() == ["Runtime"]
    refused = subprocess.run(
        [sys.executable, "-c", WHICH],
        env={**daemons.driver_env(), "HELIOSTAT_ATTACH": "maybe"},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert refused.returncode != 0
    assert "HELIOSTAT_ATTACH must be 0 or 1, got 'maybe'" in refused.stderr


@pytest.mark.skipif(
    not PRIVATE_SHM and os.environ.get("CI") != "true",
    reason="needs a private /dev/shm (unshare --mount, as root)",
)
def test_a_node_whose_shared_memory_the_driver_cannot_see_is_not_attached_to(
    daemons: Daemons,
) -> None:
    daemons.start_head(private_shm=True)
    assert daemons.driver(WHICH).split() == ["Runtime"]
