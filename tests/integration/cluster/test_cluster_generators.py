"""Generator tasks across nodes: items stream to the caller from the node that runs them.

A head and two nodes run as daemons (private ``/dev/shm`` where the machine allows it);
this process is the driver, a node without CPUs, so every generator it starts runs on
another node while its own node owns the items. An item reaches the driver while the
generator still runs there; a large one stays on that node until read; a failure ends
the stream with its error; a retry on another node after a node dies replays the
generator, and the caller sees each item once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import numpy as np
import pytest
from cluster_daemons import Daemons, can_isolate_shm, driving, on

import heliostat as hs
from heliostat.engine.scheduling_strategies import NodeAffinitySchedulingStrategy
from heliostat.exceptions import TaskCancelledError, TaskError

# The nodes cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PRIVATE_SHM = can_isolate_shm()


class Cluster:
    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        daemons.start_head()
        self.head = daemons.head_node_id()
        self.n1 = daemons.start_node("n1", "127.0.0.2", num_cpus=2, private_shm=PRIVATE_SHM)
        self.n2 = daemons.start_node("n2", "127.0.0.3", num_cpus=2, private_shm=PRIVATE_SHM)


@contextlib.contextmanager
def joined(cluster: Cluster) -> Iterator[Cluster]:
    with driving(cluster.daemons):
        yield cluster


@pytest.fixture(scope="module")
def cluster(module_daemons: Daemons) -> Cluster:
    """One head and two nodes for the module's tests (none of them kills a node)."""
    return Cluster(module_daemons)


@pytest.fixture
def driver(cluster: Cluster) -> Iterator[Cluster]:
    with joined(cluster) as c:
        yield c


@hs.remote(num_cpus=0)
class Gate:
    """Holds a generator at a point until the test opens it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self) -> bool:
        await self.event.wait()
        return True

    async def open(self) -> None:
        self.event.set()


def _here() -> str:
    return hs.get_runtime_context().get_node_id()


@hs.remote
def numbered(n: int, gate: Any = None, hold_after: int = -1, big_at: int = -1):  # type: ignore[no-untyped-def]
    """Yield ``(node, i, payload)`` for i < n; wait for ``gate`` after item ``hold_after``;
    item ``big_at`` carries 4 MB (stored in shared memory, not inline)."""
    for i in range(n):
        payload = np.full(1 << 19, i, dtype=np.float64) if i == big_at else None
        yield _here(), i, payload
        if i == hold_after:
            hs.get(gate.wait.remote(), timeout=120)


def test_a_generator_on_another_node_streams_items_while_it_runs(driver: Cluster) -> None:
    gate = Gate.options(scheduling_strategy=on(driver.head)).remote()
    gen = numbered.options(scheduling_strategy=on(driver.n1)).remote(5, gate, 1, 3)
    ready, _ = hs.wait([gen], timeout=60)  # the first item is there
    assert ready == [gen]
    # Items 0 and 1 arrive while the generator waits at the gate, on n1.
    first = [hs.get(next(gen), timeout=60) for _ in range(2)]
    assert [(node, i) for node, i, _ in first] == [(driver.n1, 0), (driver.n1, 1)]
    hs.get(gate.open.remote(), timeout=60)
    rest = [hs.get(ref, timeout=60) for ref in gen]
    assert [(node, i) for node, i, _ in rest] == [(driver.n1, 2), (driver.n1, 3), (driver.n1, 4)]
    big = rest[1][2]
    assert big.shape == (1 << 19,) and float(big.sum()) == 3.0 * (1 << 19)
    with pytest.raises(StopIteration):
        next(gen)


def test_a_generator_without_a_strategy_spills_from_a_node_without_cpus(
    driver: Cluster,
) -> None:
    """The driver's node has no CPUs: the generator must run elsewhere, not wait."""
    me = _here()
    items = [hs.get(ref, timeout=60) for ref in numbered.remote(4)]
    assert [i for _, i, _ in items] == [0, 1, 2, 3]
    assert {node for node, _, _ in items} <= {driver.head, driver.n1, driver.n2} - {me}


@hs.remote
def fails_after(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)
    raise ValueError(f"broke after {n}")


def test_a_failing_generator_on_another_node_yields_its_items_then_its_error(
    driver: Cluster,
) -> None:
    gen = fails_after.options(scheduling_strategy=on(driver.n2)).remote(3)
    assert [hs.get(next(gen), timeout=60) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(TaskError, match="broke after 3") as raised:
        hs.get(next(gen), timeout=60)
    assert isinstance(raised.value.cause, ValueError)
    with pytest.raises(StopIteration):
        next(gen)


def test_cancelling_a_generator_on_another_node_ends_its_stream_with_the_cancel(
    driver: Cluster,
) -> None:
    gate = Gate.options(scheduling_strategy=on(driver.head)).remote()  # never opened
    gen = numbered.options(scheduling_strategy=on(driver.n2)).remote(5, gate, 0)
    assert hs.get(next(gen), timeout=60)[:2] == (driver.n2, 0)
    hs.cancel(gen)  # it waits at the gate, on n2: cancelled there
    rest = list(gen)
    assert len(rest) == 1
    with pytest.raises(TaskCancelledError):
        hs.get(rest[0], timeout=60)


@hs.remote
class Reader:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def batches(self, size: int):  # type: ignore[no-untyped-def]
        for start in range(0, self.rows, size):
            yield _here(), list(range(start, min(start + size, self.rows)))


def test_an_actors_generator_method_on_another_node_streams_to_the_caller(
    driver: Cluster,
) -> None:
    reader = Reader.options(scheduling_strategy=on(driver.n1)).remote(10)
    batches = [hs.get(ref, timeout=60) for ref in reader.batches.remote(4)]
    assert [rows for _, rows in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert {node for node, _ in batches} == {driver.n1}


def test_a_dynamic_generator_on_another_node_returns_refs_to_its_items(
    driver: Cluster,
) -> None:
    ref = numbered.options(num_returns="dynamic", scheduling_strategy=on(driver.n2)).remote(3)
    items = [hs.get(r, timeout=60) for r in hs.get(ref, timeout=60)]
    assert [(node, i) for node, i, _ in items] == [(driver.n2, i) for i in range(3)]


def test_a_generator_whose_node_is_killed_is_replayed_elsewhere_and_each_item_seen_once(
    daemons: Daemons,
) -> None:
    """On a cluster of its own: it kills a node. The retry replays the generator from
    the start on another node; the items the caller had are not delivered twice."""
    with joined(Cluster(daemons)) as driver:
        gate = Gate.options(scheduling_strategy=on(driver.head)).remote()
        prefer_n1 = NodeAffinitySchedulingStrategy(driver.n1, soft=True)
        gen = numbered.options(scheduling_strategy=prefer_n1, max_retries=2).remote(6, gate, 2)
        before = [hs.get(next(gen), timeout=60) for _ in range(3)]
        assert [(node, i) for node, i, _ in before] == [(driver.n1, i) for i in range(3)]
        os.killpg(daemons.pid("n1", "node"), signal.SIGKILL)  # the machine fails mid-stream
        hs.get(gate.open.remote(), timeout=60)
        after = [hs.get(ref, timeout=60) for ref in gen]
        assert [i for _, i, _ in after] == [3, 4, 5]
        assert {node for node, _, _ in after} <= {driver.head, driver.n2}


def test_an_item_lost_with_its_node_is_rebuilt_by_running_the_generator_again(
    daemons: Daemons,
) -> None:
    """On a cluster of its own: it kills a node. A finished generator's large item lived
    only on the node that ran it; reading it after that node died runs the generator
    again elsewhere (as Ray rebuilds a generator's lost items), and the item comes back
    under the ref the caller holds. Items the caller already had are not replaced."""
    with joined(Cluster(daemons)) as driver:
        prefer_n1 = NodeAffinitySchedulingStrategy(driver.n1, soft=True)
        gen = numbered.options(scheduling_strategy=prefer_n1, max_retries=1).remote(3, big_at=1)
        refs = list(gen)  # every item yielded, the task ended; none read yet
        assert len(refs) == 3
        os.killpg(daemons.pid("n1", "node"), signal.SIGKILL)  # the big item's only copy
        node, i, payload = hs.get(refs[1], timeout=90)
        assert i == 1 and node in {driver.head, driver.n2}  # made again, elsewhere
        assert payload.shape == (1 << 19,) and float(payload.sum()) == float(1 << 19)
        # The small items were inline at the caller's node: still the first run's.
        assert [hs.get(ref, timeout=30)[:2] for ref in (refs[0], refs[2])] == [
            (driver.n1, 0),
            (driver.n1, 2),
        ]
