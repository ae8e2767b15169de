"""Large values stay on the node that made them, on a real cluster (a head, two nodes).

The driver owns the tasks it submits, and a large result is left where it was made:
the driver records where it lives and the bytes move only when something needs them,
straight from that node. Each node says how many objects it pulled from its peers
(``cluster_info()["objects_pulled"]``) and what its store holds, so a test sees which
nodes the bytes went through. The nodes have private ``/dev/shm`` mounts where the
machine allows it, as in ``test_cluster_tasks.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from cluster_daemons import Daemons, can_isolate_shm, driving, on

import heliostat as hs
from heliostat.engine.runtime import current_client, current_runtime
from heliostat.engine.scheduling_strategies import NodeAffinitySchedulingStrategy

PRIVATE_SHM = can_isolate_shm()
SIZE = 64 << 20  # bytes per value: far above the inline threshold


class Cluster:
    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        daemons.start_head()
        self.a = daemons.start_node("a", "127.0.0.2", num_cpus=2, private_shm=PRIVATE_SHM)
        self.b = daemons.start_node("b", "127.0.0.3", num_cpus=2, private_shm=PRIVATE_SHM)


@contextlib.contextmanager
def joined(cluster: Cluster) -> Iterator[Cluster]:
    with driving(cluster.daemons):
        yield cluster


@pytest.fixture(scope="module")
def started(module_daemons: Daemons) -> Cluster:
    """One head and two nodes for the module's tests (none of them kills a node)."""
    return Cluster(module_daemons)


@pytest.fixture
def cluster(started: Cluster) -> Iterator[Cluster]:
    with joined(started) as c:
        yield c


@hs.remote
def make(size: int, seed: int) -> tuple[str, np.ndarray]:
    """A large value, tagged with the node that made it."""
    node = hs.get_runtime_context().get_node_id()
    return node, np.full(size // 8, seed, dtype=np.int64)


@hs.remote
def read(made: tuple[str, np.ndarray]) -> tuple[str, str, int]:
    """Where the value was made, where it is read, and a checksum of it."""
    maker, array = made
    return maker, hs.get_runtime_context().get_node_id(), int(array[0] + array[-1])


@hs.remote
def store_facts() -> tuple[str, int, int]:
    """This node's id, the objects it pulled so far, and the bytes in its store."""
    info = current_client().cluster_info()
    return info["node_id"], info["objects_pulled"], info["object_store"]["shm_bytes"]


def facts(node: str) -> tuple[int, int]:
    where, pulled, used = hs.get(store_facts.options(scheduling_strategy=on(node)).remote())
    assert where == node
    return pulled, used


def driver_facts() -> tuple[int, int]:
    runtime = current_runtime()
    assert runtime is not None
    info = runtime.manager.cluster_info()
    return info["objects_pulled"], info["object_store"]["shm_bytes"]


def location(ref: hs.ObjectRef) -> str:
    runtime = current_runtime()
    assert runtime is not None
    kind, _path = runtime.manager.object_location(ref.id)
    return kind


def test_a_value_read_again_on_the_node_that_made_it_never_reaches_its_owner(
    cluster: Cluster,
) -> None:
    pulled_before, _ = driver_facts()
    a_pulled, _ = facts(cluster.a)
    ref = make.options(scheduling_strategy=on(cluster.a)).remote(SIZE, 3)
    ready, _ = hs.wait([ref], timeout=60, fetch_local=False)
    assert ready == [ref]
    assert location(ref) == "REMOTE"  # the driver knows where it is, nothing more
    maker, reader, checksum = hs.get(read.options(scheduling_strategy=on(cluster.a)).remote(ref))
    assert (maker, reader, checksum) == (cluster.a, cluster.a, 6)
    # No byte moved: not to the driver (the owner), not to A (it had them).
    assert location(ref) == "REMOTE"
    assert driver_facts() == (pulled_before, 0)
    assert facts(cluster.a)[0] == a_pulled


def test_a_value_made_on_one_node_goes_straight_to_the_node_that_reads_it(
    cluster: Cluster,
) -> None:
    pulled_before, _ = driver_facts()
    b_pulled, _ = facts(cluster.b)
    ref = make.options(scheduling_strategy=on(cluster.a)).remote(SIZE, 5)
    assert hs.wait([ref], timeout=60, fetch_local=False)[0] == [ref]
    maker, reader, checksum = hs.get(read.options(scheduling_strategy=on(cluster.b)).remote(ref))
    assert (maker, reader, checksum) == (cluster.a, cluster.b, 10)
    # B pulled it, from A: the driver, which owns it, never had the bytes.
    assert facts(cluster.b)[0] == b_pulled + 1
    assert location(ref) == "REMOTE"
    assert driver_facts() == (pulled_before, 0)
    # A get in the driver pulls it now (a wait with fetch_local too, as in Ray's).
    ready, _ = hs.wait([ref], timeout=60)
    assert ready == [ref] and location(ref) == "SHM"
    node, array = hs.get(ref)
    assert node == cluster.a and int(array[-1]) == 5
    assert driver_facts()[0] == pulled_before + 1


def test_the_node_that_made_a_value_frees_it_when_the_driver_drops_it(
    cluster: Cluster, wait_for: Callable[..., Any]
) -> None:
    # What earlier drivers left on A went with them (A frees what it kept for them).
    wait_for(lambda: facts(cluster.a)[1] == 0, 30, what="A's store to be empty")
    ref = make.options(scheduling_strategy=on(cluster.a)).remote(SIZE, 7)
    assert hs.wait([ref], timeout=60, fetch_local=False)[0] == [ref]
    assert facts(cluster.a)[1] >= SIZE  # A keeps it for the driver
    del ref
    wait_for(lambda: facts(cluster.a)[1] == 0, 30, what="A to free the value")
    assert driver_facts()[1] == 0


def test_a_value_lost_with_its_node_before_anyone_pulled_it_is_rebuilt(
    daemons: Daemons,
) -> None:
    """On a cluster of its own: it kills node A."""
    with joined(Cluster(daemons)) as cluster:
        soft_a = NodeAffinitySchedulingStrategy(cluster.a, soft=True)
        ref = make.options(scheduling_strategy=soft_a, max_retries=2).remote(SIZE, 9)
        assert hs.wait([ref], timeout=60, fetch_local=False)[0] == [ref]
        assert location(ref) == "REMOTE"
        os.killpg(daemons.pid("a", "node"), signal.SIGKILL)  # the node and its workers
        # A reader sent to B at once is told the value is on A (the driver does not
        # know A is dead yet): B cannot pull it, and the driver rebuilds it and runs
        # the reader again.
        reader = read.options(scheduling_strategy=on(cluster.b)).remote(ref)
        node, array = hs.get(ref, timeout=120)  # re-run where it can run now
        assert node != cluster.a
        assert int(array[0]) == 9 and array.nbytes == SIZE
        maker, where, checksum = hs.get(reader, timeout=120)
        assert maker != cluster.a and where == cluster.b and checksum == 18


@hs.remote
def pool_facts() -> dict[str, int]:
    """This node's segment pool: files kept, and files handed out again so far."""
    store = current_client().cluster_info()["object_store"]
    return {"files": store.get("pool_files", 0), "reused": store.get("pool_reused", 0)}


def test_a_pull_reuses_a_freed_segment_and_shows_only_its_own_bytes(
    cluster: Cluster, wait_for: Callable[..., Any]
) -> None:
    def b_pool() -> dict[str, int]:
        return hs.get(pool_facts.options(scheduling_strategy=on(cluster.b)).remote())

    reused_before = b_pool()["reused"]
    ref = make.options(scheduling_strategy=on(cluster.a)).remote(SIZE, 7)
    assert hs.get(read.options(scheduling_strategy=on(cluster.b)).remote(ref))[2] == 14
    del ref  # B's copy is freed: into B's pool, not unlinked
    wait_for(lambda: b_pool()["files"] >= 1, 30, what="B to keep the freed copy")
    ref = make.options(scheduling_strategy=on(cluster.a)).remote(SIZE, 9)
    maker, reader, checksum = hs.get(read.options(scheduling_strategy=on(cluster.b)).remote(ref))
    # The new value, landed in the old one's pages: none of the old bytes show.
    assert (maker, reader, checksum) == (cluster.a, cluster.b, 18)
    assert b_pool()["reused"] > reused_before
