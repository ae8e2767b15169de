"""Actor handles that cross nodes: passed to tasks, returned by them, put in objects.

A head and one node run as daemons (private ``/dev/shm`` where the machine allows it);
this process is the driver, a node without CPUs, so the actors it creates live on the
other nodes while its own node owns them. A handle that reaches another node calls the
actor through its owner, keeps the actor alive while it exists there, and fails with
``ActorDiedError`` once the owner's node is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import psutil
import pytest
from cluster_daemons import Daemons, can_isolate_shm, driving, on
from waiting import poll_for

import heliostat as hs
from heliostat.exceptions import ActorDiedError, TaskCancelledError
from heliostat.storage.cluster_nodes import NodeState

# The nodes cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PRIVATE_SHM = can_isolate_shm()


class Cluster:
    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        daemons.start_head()
        self.head = daemons.head_node_id()
        self.n1 = daemons.start_node("n1", "127.0.0.2", num_cpus=2, private_shm=PRIVATE_SHM)


@contextlib.contextmanager
def joined(cluster: Cluster) -> Iterator[Cluster]:
    with driving(cluster.daemons):
        yield cluster


@pytest.fixture(scope="module")
def cluster(module_daemons: Daemons) -> Cluster:
    """One head and one node for the module's tests (none of them kills a node)."""
    return Cluster(module_daemons)


@pytest.fixture
def driver(cluster: Cluster) -> Iterator[Cluster]:
    with joined(cluster) as c:
        yield c


@hs.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


@hs.remote
def call_n_times(counter: Any, n: int) -> tuple[str, list[int]]:
    """Call ``counter`` n times from this task (its calls in order: one caller)."""
    values = hs.get([counter.incr.remote() for _ in range(n)], timeout=60)
    return hs.get_runtime_context().get_node_id(), values


@hs.remote
def call_nested(box: list[Any]) -> int:
    (counter,) = box
    return int(hs.get(counter.incr.remote(), timeout=60))


@hs.remote
def make_counter() -> tuple[Any, int, str]:
    """An unnamed actor created (and owned) here, handed back to the caller."""
    counter = Counter.remote()
    first = hs.get(counter.incr.remote(), timeout=60)
    return counter, first, hs.get_runtime_context().get_node_id()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _borrowed() -> dict[int, Any]:
    """The driver's node's records of actors other nodes own (read for the test)."""
    link = hs.engine.current_runtime().extensions["cluster"].link
    borrowed: dict[int, Any] = link._manager.state.actors.borrowed
    return borrowed


def test_a_handle_passed_to_tasks_on_other_nodes_shares_the_actors_state(
    driver: Cluster,
) -> None:
    counter = Counter.options(scheduling_strategy=on(driver.head)).remote()
    assert hs.get(counter.incr.remote(), timeout=60) == 1
    # A task on a node that only borrows it, then one on the node it lives on: each
    # task's calls run in its order, and every call changes the one state.
    where, values = hs.get(
        call_n_times.options(scheduling_strategy=on(driver.n1)).remote(counter, 5), timeout=60
    )
    assert where == driver.n1 and values == [2, 3, 4, 5, 6]
    where, values = hs.get(
        call_n_times.options(scheduling_strategy=on(driver.head)).remote(counter, 3), timeout=60
    )
    assert where == driver.head and values == [7, 8, 9]
    assert hs.get(counter.incr.remote(), timeout=60) == 10
    # Nested in a value, and inside an object made with put().
    assert hs.get(call_nested.options(scheduling_strategy=on(driver.n1)).remote([counter])) == 11
    boxed = hs.put([counter])
    assert hs.get(call_nested.options(scheduling_strategy=on(driver.n1)).remote(boxed)) == 12
    # The driver's handle is the last: when it goes, the actor ends.
    pid = hs.get(counter.pid.remote(), timeout=60)
    del counter, boxed
    poll_for(lambda: _gone(pid), 30, what="the actor to end with its last handle")


def test_a_handle_returned_by_a_task_on_another_node_works_here_and_keeps_the_actor(
    driver: Cluster,
) -> None:
    counter, first, where = hs.get(
        make_counter.options(scheduling_strategy=on(driver.n1)).remote(), timeout=60
    )
    assert first == 1 and where == driver.n1
    # Its creator (the task) is done: this handle, borrowed from n1, keeps it alive.
    assert hs.get([counter.incr.remote() for _ in range(3)], timeout=60) == [2, 3, 4]
    actor_id = counter._actor_id
    assert actor_id in _borrowed()
    # Passed on to a task on a third node (the head's): the owner is still n1.
    _, values = hs.get(
        call_n_times.options(scheduling_strategy=on(driver.head)).remote(counter, 2), timeout=60
    )
    assert values == [5, 6]
    pid = hs.get(counter.pid.remote(), timeout=60)
    del counter
    # The last handle here went: the record goes, n1 is told, and the actor ends.
    poll_for(lambda: actor_id not in _borrowed(), 30, what="the borrowed record to go")
    poll_for(lambda: _gone(pid), 30, what="the borrowed actor to end with its last handle")


def test_a_borrowed_call_is_cancelled_by_the_owner(driver: Cluster) -> None:
    counter, _first, _where = hs.get(
        make_counter.options(scheduling_strategy=on(driver.n1)).remote(), timeout=60
    )
    busy = counter.nap.remote(3.0)
    queued = counter.incr.remote()  # waits behind the nap, at the owner
    hs.cancel(queued)
    with pytest.raises(TaskCancelledError):
        hs.get(queued, timeout=60)
    assert hs.get(busy, timeout=60) == 3.0
    assert hs.get(counter.incr.remote(), timeout=60) == 2  # the cancelled call never ran
    # An actor of the driver's node that lives on another: the node it lives on cancels.
    own = Counter.options(scheduling_strategy=on(driver.n1)).remote()
    busy = own.nap.remote(3.0)
    queued = own.incr.remote()
    hs.cancel(queued)
    with pytest.raises(TaskCancelledError):
        hs.get(queued, timeout=60)
    assert hs.get([busy, own.incr.remote()], timeout=60) == [3.0, 1]


@hs.remote(num_cpus=1, max_restarts=2, max_task_retries=-1)
class Roaming:
    """An actor that restarts (and whose calls are retried) when its process dies."""

    def __init__(self) -> None:
        self.calls = 0

    def where(self) -> str:
        self.calls += 1
        return hs.get_runtime_context().get_node_id()

    def count(self) -> int:
        return self.calls


@hs.remote(num_cpus=0)
def follow(actor: Any, deadline_s: float) -> list[str]:
    """Call ``actor`` until it has answered from three places in turn (or until the
    deadline): the node of each run of answers."""
    runs: list[str] = []
    end = time.monotonic() + deadline_s
    while len(runs) < 3 and time.monotonic() < end:
        node = hs.get(actor.where.remote(), timeout=60)
        if not runs or runs[-1] != node:
            runs.append(node)
    return runs


def test_a_borrower_follows_an_actor_restarted_on_its_node_and_away_again(
    driver: Cluster,
) -> None:
    """The owner (the driver's node) restarts the actor on the node of a task that
    borrows it, then, killed there, on the other node. The task's calls held at the
    owner during the first restart come back to its own node to run (they once lost
    their results there, and its get hung); its calls made straight to the actor on
    its node follow it away (they once failed with ActorDiedError for good)."""
    actor = Roaming.remote()
    first = hs.get(actor.where.remote(), timeout=60)
    other = driver.head if first == driver.n1 else driver.n1

    def answered_here(n: int) -> bool:
        return hs.get(actor.count.remote(), timeout=60) > n

    runs = follow.options(scheduling_strategy=on(other)).remote(actor, 120.0)
    poll_for(lambda: answered_here(5), 60, what="the borrower's first calls")
    # Restarts go to the node holding fewest of the owner's actors: the other one.
    hs.kill(actor, no_restart=False)
    poll_for(
        lambda: hs.get(actor.where.remote(), timeout=60) == other,
        60,
        what="the restart on the borrower's node",
    )
    poll_for(lambda: answered_here(5), 60, what="the borrower's calls on its own node")
    hs.kill(actor, no_restart=False)
    assert hs.get(runs, timeout=120) == [first, other, first]


def test_a_borrowed_actor_whose_owners_node_is_killed_fails_its_calls(daemons: Daemons) -> None:
    """On a cluster of its own: it kills a node."""
    with joined(Cluster(daemons)) as driver:
        counter, _first, _where = hs.get(
            make_counter.options(scheduling_strategy=on(driver.n1)).remote(), timeout=60
        )
        assert hs.get(counter.incr.remote(), timeout=60) == 2
        in_flight = counter.nap.remote(60.0)
        os.killpg(daemons.pid("n1", "node"), signal.SIGKILL)  # the owner, as a machine failing
        with pytest.raises(ActorDiedError):
            hs.get(in_flight, timeout=60)
        with pytest.raises(ActorDiedError, match="owner's node"):
            hs.get(counter.incr.remote(), timeout=60)


@hs.remote
def make_named(name: str) -> int:
    """A detached named actor created (and owned) by the node that runs this task."""
    counter = Counter.options(name=name, lifetime="detached").remote()
    return int(hs.get(counter.incr.remote(), timeout=60))


def _call_by_name(name: str) -> int | None:
    try:
        return int(hs.get(hs.get_actor(name).incr.remote(), timeout=30))
    except ValueError:  # not known at the head (yet)
        return None


def test_a_node_cut_off_and_back_claims_its_actors_names_again(daemons: Daemons) -> None:
    """On a cluster of its own: it freezes a node (SIGSTOP) until the head declares it
    dead, then lets it go on; its actor lived on meanwhile, and is found by name again."""
    with joined(Cluster(daemons)) as driver:
        make = make_named.options(scheduling_strategy=on(driver.n1))
        assert hs.get(make.remote("survivor"), timeout=60) == 1
        assert _call_by_name("survivor") == 2
        node = daemons.pid("n1", "node")
        os.kill(node, signal.SIGSTOP)
        try:
            poll_for(
                lambda: daemons.states().get(driver.n1) is NodeState.DEAD,
                30,
                what="the head to declare the frozen node dead",
            )
            assert _call_by_name("survivor") is None  # its names went with it
        finally:
            os.kill(node, signal.SIGCONT)
        # Back (a new incarnation): the name is claimed again, the actor's state intact.
        assert poll_for(lambda: _call_by_name("survivor"), 60, what="the name again") == 3
        assert "survivor" in hs.util.list_named_actors()


# What the first driver runs: a detached unnamed counter (handed over to the head's
# node, which owns it from then on) kept by a named registry actor on n1.
REGISTRY = (
    "import sys\n"
    "import heliostat as hs\n"
    "from heliostat.engine.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
    "@hs.remote\n"
    "class Counter:\n"
    "    def __init__(self):\n"
    "        self.n = 0\n"
    "    def incr(self):\n"
    "        self.n += 1\n"
    "        return self.n\n"
    "@hs.remote\n"
    "class Registry:\n"
    "    def keep(self, counter):\n"
    "        self.counter = counter\n"
    "    def use(self):\n"
    "        return hs.get(self.counter.incr.remote(), timeout=60)\n"
    "    def give(self):\n"
    "        return self.counter\n"
    "hs.init()\n"
    "head, n1 = sys.argv[1:3]\n"
    "counter = Counter.options(lifetime='detached', scheduling_strategy=On(head, soft=False))"
    ".remote()\n"
    "registry = Registry.options(name='registry', lifetime='detached',"
    " scheduling_strategy=On(n1, soft=False)).remote()\n"
    "print(hs.get(counter.incr.remote(), timeout=60))\n"
    "hs.get(registry.keep.remote(counter), timeout=60)\n"
    "print(hs.get(registry.use.remote(), timeout=60))\n"
)


def test_a_drivers_detached_actor_is_called_through_a_handle_its_driver_passed_on(
    driver: Cluster,
) -> None:
    # The first driver creates both, hands the counter's handle to the registry, exits.
    out = driver.daemons.driver(REGISTRY, args=(driver.head, driver.n1))
    assert out.split() == ["1", "2"]
    # Its node is gone: the registry's handle names the counter's host as its owner.
    registry = hs.get_actor("registry")
    assert hs.get(registry.use.remote(), timeout=60) == 3
    counter = hs.get(registry.give.remote(), timeout=60)  # and handed on to this driver
    assert hs.get(counter.incr.remote(), timeout=60) == 4
    hs.kill(counter)
    hs.kill(registry)
    with pytest.raises(ActorDiedError):
        hs.get(counter.incr.remote(), timeout=60)
