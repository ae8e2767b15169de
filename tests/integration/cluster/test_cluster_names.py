"""Named and detached actors across a real cluster: names are the head's, cluster-wide.

A head and one node run as daemons; this process is one driver, and other drivers run
as separate processes (``Daemons.driver``), as two jobs of one cluster would.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import cloudpickle
import pytest
from cluster_daemons import Daemons

import heliostat as hs
from heliostat.exceptions import ActorDiedError

# The nodes cannot import this test module: its classes travel by value, as __main__'s do.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Names:
    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        daemons.start_head()
        self.n1 = daemons.start_node("n1", "127.0.0.2", num_cpus=2)


@pytest.fixture(scope="module")
def names(module_daemons: Daemons) -> Names:
    return Names(module_daemons)


@pytest.fixture
def driver(names: Names) -> Iterator[Names]:
    hs.init(address=names.daemons.address, token=names.daemons.token)
    try:
        yield names
    finally:
        hs.shutdown()


@hs.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def node(self) -> str:
        return hs.get_runtime_context().get_node_id()


# What the other drivers run: the same class, defined in their own __main__.
COUNTER = (
    "import sys\n"
    "import heliostat as hs\n"
    "from heliostat.exceptions import ActorDiedError\n"
    "@hs.remote\n"
    "class Counter:\n"
    "    def __init__(self, start=0):\n"
    "        self.n = start\n"
    "    def incr(self, by=1):\n"
    "        self.n += by\n"
    "        return self.n\n"
    "    def node(self):\n"
    "        return hs.get_runtime_context().get_node_id()\n"
    "hs.init()\n"
)


def test_another_driver_finds_a_named_actor_calls_it_and_cannot_take_its_name(
    driver: Names,
) -> None:
    here = Counter.options(name="here").remote(10)  # lives on this driver's own node
    there = Counter.options(name="there", num_cpus=1).remote(100)  # lives on another node
    assert hs.get([here.incr.remote(), there.incr.remote()], timeout=60) == [11, 101]
    me = hs.get_runtime_context().get_node_id()
    assert hs.get(here.node.remote(), timeout=60) == me
    assert hs.get(there.node.remote(), timeout=60) != me
    assert sorted(hs.util.list_named_actors()) == ["here", "there"]
    code = COUNTER + (
        "here, there = hs.get_actor('here'), hs.get_actor('there')\n"
        "print(hs.get([here.incr.remote(5) for _ in range(3)], timeout=60))\n"
        "print(hs.get([there.incr.remote(5) for _ in range(3)], timeout=60))\n"
        "try:\n"
        "    Counter.options(name='there').remote()\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "again = Counter.options(name='there', get_if_exists=True).remote()\n"
        "print(hs.get(again.incr.remote(0), timeout=60))\n"
        "print(sorted(hs.util.list_named_actors()))\n"
        "try:\n"
        "    hs.get_actor('nobody', namespace='elsewhere')\n"
        "except ValueError as e:\n"
        "    print('missing:', e)\n"
    )
    lines = driver.daemons.driver(code).splitlines()
    assert lines[0] == "[16, 21, 26]" and lines[1] == "[106, 111, 116]"
    assert lines[2].startswith("refused:") and "'there' already exists" in lines[2]
    assert lines[3] == "116"  # get_if_exists: the one this driver created
    assert lines[4] == "['here', 'there']"
    assert "'nobody'" in lines[5] and "'elsewhere'" in lines[5]
    # The calls of the other driver ran on the same actors, in one queue with ours.
    assert hs.get([here.incr.remote(0), there.incr.remote(0)], timeout=60) == [26, 116]


def test_a_borrowers_kill_ends_the_actor_and_frees_its_name(
    driver: Names, wait_for: Callable[..., None]
) -> None:
    victim = Counter.options(name="victim", num_cpus=1).remote()
    assert hs.get(victim.incr.remote(), timeout=60) == 1
    # kill() is asynchronous, as Ray's: the next call (sent after it, to the same owner)
    # says when it took effect.
    code = COUNTER + (
        "victim = hs.get_actor('victim')\n"
        "hs.kill(victim)\n"
        "try:\n"
        "    hs.get(victim.incr.remote(), timeout=60)\n"
        "except ActorDiedError:\n"
        "    print('killed')\n"
    )
    assert driver.daemons.driver(code).split() == ["killed"]
    with pytest.raises(ActorDiedError, match="kill"):
        hs.get(victim.incr.remote(), timeout=60)
    wait_for(lambda: "victim" not in hs.util.list_named_actors(), 30, what="the name freed")
    # Free cluster-wide: another driver takes it.
    code = COUNTER + (
        "c = Counter.options(name='victim').remote(7)\nprint(hs.get(c.incr.remote(), timeout=60))\n"
    )
    assert driver.daemons.driver(code).split() == ["8"]


def test_a_detached_actor_outlives_its_driver_with_its_state(
    names: Names, wait_for: Callable[..., None]
) -> None:
    create = COUNTER + (
        "c = Counter.options(name='keeper', lifetime='detached').remote()\n"
        "print(hs.get([c.incr.remote() for _ in range(3)], timeout=60)[-1])\n"
        "print(hs.get(c.node.remote(), timeout=60) != hs.get_runtime_context().get_node_id())\n"
    )
    # A driver with a node of its own (not attached) hands its detached actor over to
    # a node with CPUs; then that driver exits.
    assert names.daemons.driver(create, env={"HELIOSTAT_ATTACH": "0"}).split() == ["3", "True"]
    later = COUNTER + (
        "c = hs.get_actor('keeper')\n"
        "print(hs.get(c.incr.remote(), timeout=60))\n"
        "hs.kill(c)\n"
        "try:\n"  # kill() is asynchronous: its effect, before this driver exits
        "    hs.get(c.incr.remote(), timeout=60)\n"
        "except ActorDiedError:\n"
        "    pass\n"
    )
    assert names.daemons.driver(later).split() == ["4"]
    gone = COUNTER + (
        "try:\n"
        "    hs.get_actor('keeper')\n"
        "    print('found')\n"
        "except ValueError as e:\n"
        "    print('missing:', e)\n"
    )
    wait_for(
        lambda: names.daemons.driver(gone).startswith("missing:"),
        60,
        what="the detached actor's name freed by kill()",
    )


def test_a_named_actor_goes_with_its_driver_and_so_does_its_name(
    names: Names, wait_for: Callable[..., None]
) -> None:
    create = COUNTER + (
        "c = Counter.options(name='mortal', num_cpus=1).remote()\n"
        "print(hs.get(c.incr.remote(), timeout=60))\n"
    )
    assert names.daemons.driver(create).split() == ["1"]
    check = COUNTER + "print(sorted(hs.util.list_named_actors(all_namespaces=True)))\n"
    wait_for(
        lambda: "mortal" not in names.daemons.driver(check),
        30,
        what="the name of a departed driver's actor forgotten",
    )
