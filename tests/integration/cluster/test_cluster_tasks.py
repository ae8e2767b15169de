"""Work across a real cluster: a head and two nodes as daemons, this process the driver.

The nodes run with private ``/dev/shm`` mounts (see ``conftest.py``) where the machine
allows it (always in CI), so an object produced on one node and read on another has
crossed gRPC. The driver joins with ``hs.init(address=..., token=...)`` as Ray's does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cluster_daemons import Daemons, can_isolate_shm, driving

import heliostat as hs
from heliostat.cluster import HeadClient
from heliostat.engine.ids import format_id
from heliostat.engine.scheduling_strategies import NodeAffinitySchedulingStrategy
from heliostat.exceptions import (
    ClusterAuthError,
    InfeasibleResourcesError,
    TaskUnschedulableError,
)

PRIVATE_SHM = can_isolate_shm()
if os.environ.get("CI") == "true":
    assert PRIVATE_SHM, "CI must run the cluster tests with a private /dev/shm per node"


class Cluster:
    def __init__(self, daemons: Daemons, db_url: str | None = None) -> None:
        self.daemons = daemons
        daemons.start_head(db_url=db_url)
        self.head = daemons.head_node_id()
        self.n1 = daemons.start_node("n1", "127.0.0.2", num_cpus=2, private_shm=PRIVATE_SHM)
        self.n2 = daemons.start_node("n2", "127.0.0.3", num_cpus=2, private_shm=PRIVATE_SHM)
        self.address = daemons.address
        self.token = daemons.token


@pytest.fixture(scope="module")
def cluster(module_daemons: Daemons) -> Cluster:
    """One head and two nodes for the module's tests (none of them kills a node)."""
    return Cluster(module_daemons)


@contextlib.contextmanager
def joined(cluster: Cluster) -> Iterator[Cluster]:
    with driving(cluster.daemons):
        yield cluster


@pytest.fixture
def driver(cluster: Cluster) -> Iterator[Cluster]:
    with joined(cluster) as c:
        yield c


@hs.remote
def node_of(i: int) -> tuple[str, int]:
    return hs.get_runtime_context().get_node_id(), i


def test_tasks_run_on_every_node_spread_and_spilled(driver: Cluster) -> None:
    nodes = {driver.head, driver.n1, driver.n2}
    spread = hs.get(
        [node_of.options(scheduling_strategy="SPREAD").remote(i) for i in range(30)], timeout=60
    )
    assert {node for node, _ in spread} == nodes
    assert sorted(i for _, i in spread) == list(range(30))
    # DEFAULT: the driver's node has no CPUs, so every task spills to a node with room.
    spilled = hs.get([node_of.remote(i) for i in range(300)], timeout=60)
    assert [i for _, i in spilled] == list(range(300))
    assert {node for node, _ in spilled} <= nodes and len({n for n, _ in spilled}) >= 2
    me = hs.get_runtime_context().get_node_id()
    assert me not in nodes  # the driver is a node too, without CPUs
    listed = {n["NodeID"]: n for n in hs.nodes() if n["Alive"]}
    assert set(listed) >= nodes | {me} and listed[driver.head]["IsHead"]
    assert hs.cluster_resources()["CPU"] == 5.0  # the head's 1 and the nodes' 2 each


def test_node_affinity_pins_a_task_and_an_impossible_one_fails_fast(driver: Cluster) -> None:
    for target in (driver.n1, driver.n2, driver.head):
        pinned = node_of.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)
        )
        assert {hs.get(pinned.remote(i), timeout=60)[0] for i in range(3)} == {target}
    gone = node_of.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy("ffff" * 5, soft=False)
    )
    with pytest.raises(TaskUnschedulableError):
        hs.get(gone.remote(0), timeout=60)
    soft = node_of.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy("ffff" * 5, soft=True)
    )
    assert hs.get(soft.remote(1), timeout=60)[1] == 1
    with pytest.raises(InfeasibleResourcesError, match="unobtainium"):
        hs.get(node_of.options(resources={"unobtainium": 1}).remote(0), timeout=60)


@hs.remote
def make_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


@hs.remote
def describe(array: np.ndarray) -> tuple[str, float, tuple[int, ...]]:
    return hs.get_runtime_context().get_node_id(), float(array.sum()), array.shape


@hs.remote
def make_table(rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(rows)), "name": [f"row-{i}" for i in range(rows)]})


@hs.remote
def table_facts(table: pa.Table) -> tuple[str, int, int]:
    return (
        hs.get_runtime_context().get_node_id(),
        table.num_rows,
        sum(table.column("id").to_pylist()),
    )


def test_a_200_mb_array_and_an_arrow_table_move_between_nodes(driver: Cluster) -> None:
    on_n1 = NodeAffinitySchedulingStrategy(driver.n1, soft=False)
    on_n2 = NodeAffinitySchedulingStrategy(driver.n2, soft=False)
    n = 25_000_000  # 200 MB of float64
    array = make_array.options(scheduling_strategy=on_n1).remote(n)
    where, total, shape = hs.get(
        describe.options(scheduling_strategy=on_n2).remote(array), timeout=120
    )
    assert where == driver.n2 and shape == (n,) and total == float(n) * (n - 1) / 2
    local = hs.get(array, timeout=120)  # and in the driver, a copy of its own
    assert local.shape == (n,) and local[-1] == n - 1

    rows = 100_000
    table = make_table.options(scheduling_strategy=on_n2).remote(rows)
    where, count, id_sum = hs.get(
        table_facts.options(scheduling_strategy=on_n1).remote(table), timeout=120
    )
    assert (where, count, id_sum) == (driver.n1, rows, rows * (rows - 1) // 2)


def test_the_head_knows_which_nodes_store_an_object(
    driver: Cluster, wait_for: Callable[..., Any]
) -> None:
    on_n1 = NodeAffinitySchedulingStrategy(driver.n1, soft=False)
    array = make_array.options(scheduling_strategy=on_n1).remote(1_000_000)  # 8 MB
    assert hs.get(array, timeout=60)[-1] == 999_999
    me = hs.get_runtime_context().get_node_id()
    oid = array.id
    with HeadClient(driver.address, driver.token) as head:

        def holders() -> tuple[str, ...]:
            places, _total = head.locate_objects([oid])
            return places[0].node_ids if places else ()

        # The driver read it: its own store has a copy, which its heartbeats report.
        wait_for(lambda: me in holders(), 10, what="the head to list the driver's copy")
        assert set(holders()) <= {me, driver.n1}
        [place] = head.locate_objects([oid])[0]
        assert place.size >= 8_000_000
        stored = {n.node_id: n.objects for n in head.list_nodes()}
        assert stored[me] >= 1
        del array  # the last ref: every copy is freed, and the head hears of it
        wait_for(
            lambda: not head.locate_objects([oid])[0], 10, what="the head to forget the object"
        )


@hs.remote
def nested(refs: list[Any]) -> int:
    return sum(hs.get(refs))


def test_refs_inside_arguments_and_results_cross_nodes(driver: Cluster) -> None:
    @hs.remote
    def plus_one(x: int) -> int:
        return x + 1

    @hs.remote
    def refs_of(n: int) -> list[Any]:
        return [plus_one.remote(i) for i in range(n)]

    inner = [hs.put(i) for i in range(10)]
    on_n1 = NodeAffinitySchedulingStrategy(driver.n1, soft=False)
    assert hs.get(nested.options(scheduling_strategy=on_n1).remote(inner), timeout=60) == 45
    on_n2 = NodeAffinitySchedulingStrategy(driver.n2, soft=False)
    returned = hs.get(refs_of.options(scheduling_strategy=on_n2).remote(5), timeout=60)
    assert hs.get(returned, timeout=60) == [1, 2, 3, 4, 5]


@hs.remote(max_retries=3)
def square_slowly(i: int) -> tuple[int, str]:
    import time

    time.sleep(0.02)  # the work itself: long enough that the kill finds tasks running
    return i * i, hs.get_runtime_context().get_node_id()


def counter_class() -> Any:
    """An actor class defined in a function, so that it travels by value (the nodes
    cannot import this test module)."""

    @hs.remote(num_cpus=1, max_restarts=2, max_task_retries=2)
    class Counter:
        def __init__(self) -> None:
            self.count = 0

        def incr(self) -> tuple[int, str]:
            self.count += 1
            return self.count, hs.get_runtime_context().get_node_id()

    return Counter


def test_actors_live_on_nodes_and_keep_their_state(
    driver: Cluster, wait_for: Callable[..., Any]
) -> None:
    nodes = {driver.head, driver.n1, driver.n2}
    Counter = counter_class()
    counters = [Counter.remote() for _ in range(3)]  # the driver has no CPUs to give
    results = hs.get([c.incr.remote() for c in counters for _ in range(3)], timeout=60)
    assert [count for count, _ in results] == [1, 2, 3] * 3  # state kept, calls in order
    assert {node for _, node in results} <= nodes
    for i in range(len(counters)):
        assert len({node for _, node in results[3 * i : 3 * i + 3]}) == 1  # it stays put
    pinned = Counter.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver.n2, soft=False), name="pinned"
    ).remote()
    assert hs.get(pinned.incr.remote(), timeout=60) == (1, driver.n2)
    assert hs.get(hs.get_actor("pinned").incr.remote(), timeout=60) == (2, driver.n2)
    # Its process killed (restarts allowed): the owner restarts it, state anew. (A call
    # sent right after the kill may still reach the old process, as in Ray.)
    hs.kill(counters[0], no_restart=False)
    wait_for(
        lambda: hs.get(counters[0].incr.remote(), timeout=60)[0] == 1,
        60,
        what="the killed actor to answer from its restart",
    )
    hs.kill(pinned)
    with pytest.raises(hs.exceptions.ActorDiedError):
        hs.get(pinned.incr.remote(), timeout=60)
    with pytest.raises(InfeasibleResourcesError):
        hs.get(Counter.options(num_cpus=64).remote().incr.remote(), timeout=60)


def test_a_node_killed_while_1000_tasks_run_loses_no_result(
    pg_schema_url: Callable[[], str], daemons: Daemons, wait_for: Callable[..., Any]
) -> None:
    """On a cluster of its own (it kills a node), with the head's tables in PostgreSQL
    (the module's shared cluster keeps them in SQLite)."""
    with joined(Cluster(daemons, pg_schema_url())) as driver:
        _kill_a_node_under_load(driver, wait_for)


def _kill_a_node_under_load(driver: Cluster, wait_for: Callable[..., Any]) -> None:
    survivor = (
        counter_class()
        .options(scheduling_strategy=NodeAffinitySchedulingStrategy(driver.n1, soft=True))
        .remote()
    )
    assert hs.get(survivor.incr.remote(), timeout=60) == (1, driver.n1)
    refs = [square_slowly.remote(i) for i in range(1000)]
    wait_for(
        lambda: len(hs.wait(refs, num_returns=len(refs), timeout=0)[0]) >= 100,
        60,
        what="the first results",
    )
    victim = driver.daemons.pid("n1", "node")
    os.killpg(victim, signal.SIGKILL)  # the node and all its workers, as a machine failing
    try:
        results = hs.get(refs, timeout=180)
    except hs.exceptions.GetTimeoutError:
        pytest.fail(f"results missing after the kill: {_unfinished(refs)}")
    assert [value for value, _ in results] == [i * i for i in range(1000)]
    late = {node for _, node in results[-100:]}
    assert driver.n2 in {node for _, node in results} and late <= {
        driver.head,
        driver.n1,
        driver.n2,
    }
    # The actor that lived on the killed node answers again from another (state anew).
    count, where = hs.get(survivor.incr.remote(), timeout=60)
    assert where in (driver.head, driver.n2) and count == 1
    # The driver let go of its connection to the dead node (no thread or channel left).
    link = hs.engine.current_runtime().extensions["cluster"].link
    wait_for(lambda: int(driver.n1, 16) not in link._senders, 30, what="the dead peer's sender")


def _unfinished(refs: list[Any]) -> str:
    """Where the driver's node thinks the tasks behind the refs not ready yet are (a
    failure's diagnosis: the task's state, the peer it was sent to, its attempts)."""
    manager = hs.engine.current_runtime().extensions["cluster"].link._manager
    if not manager._lock.acquire(timeout=10):
        return f"the driver's node lock is held (stuck?); its threads:\n{_stacks()}"
    manager._lock.release()
    _ready, waiting = hs.wait(refs, num_returns=len(refs), timeout=0)
    with manager._lock:
        state = manager.state
        seen = []
        for ref in waiting[:5]:
            entry = state.objects.entries.get(ref.id)
            spec = entry.lineage if entry is not None else None
            seen.append(
                "no entry"
                if entry is None
                else f"{entry.kind.name}, task "
                + (
                    "unknown"
                    if spec is None
                    else f"{spec.state} on {format_id(spec.remote_node)} x{spec.attempts}"
                )
            )
        sent = {
            format_id(index): len(specs) for index, specs in state.peers.inflight.items() if specs
        }
        queued = sum(len(queue) for queue in state.dispatch.ready.values())
    return (
        f"{len(waiting)} of {len(refs)} ({', '.join(seen)}); sent to peers {sent}, "
        f"queued here {queued}, peers {[format_id(i) for i in state.peers.nodes]}"
    )


def _stacks() -> str:
    """The innermost frames of every thread of this process."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "\n".join(
        f"{names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)[-6:])
        for ident, frame in sys._current_frames().items()
    )


def test_a_wrong_token_is_refused_and_nothing_is_left_running(cluster: Cluster) -> None:
    with pytest.raises(ClusterAuthError):
        hs.init(address=cluster.address, token="not-the-token")
    assert hs.is_initialized() is False
    with pytest.raises(ValueError, match="num_cpus"):
        hs.init(address=cluster.address, token=cluster.token, num_cpus=2)


def test_a_user_module_ships_to_the_nodes_with_working_dir(cluster: Cluster, tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "shipped_pricing.py").write_text("def with_tax(x):\n    return round(x * 1.2, 2)\n")
    (project / "rates.txt").write_text("1.2\n")

    @hs.remote
    def priced(x: float) -> tuple[float, str, str]:

        import shipped_pricing  # only in the shipped copy: not on any node's path

        with open("rates.txt") as fh:  # relative to the working_dir copy
            rate = fh.read().strip()
        return shipped_pricing.with_tax(x), rate, hs.get_runtime_context().get_node_id()

    hs.init(address=cluster.address, token=cluster.token, runtime_env={"working_dir": str(project)})
    try:
        for target in (cluster.head, cluster.n1, cluster.n2):
            pinned = priced.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)
            )
            assert hs.get(pinned.remote(10.0), timeout=60) == (12.0, "1.2", target)
    finally:
        hs.shutdown()


def test_a_jobs_runtime_env_reaches_its_actors_and_nested_tasks_on_every_node(
    cluster: Cluster, tmp_path
) -> None:
    """env_vars and working_dir hold wherever the job's work runs: tasks, an actor
    created on a node before any task of the job ran there, and tasks submitted from
    a task on another node. The next job without them sees neither."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "shipped_ledger.py").write_text("def entry(x):\n    return f'ledger:{x}'\n")
    variable = "HS_TEST_LEDGER_REGION"

    @hs.remote
    def environment() -> tuple[str, str | None]:
        return hs.get_runtime_context().get_node_id(), os.environ.get(variable)

    @hs.remote
    class Ledger:
        def __init__(self) -> None:
            import shipped_ledger  # only in the shipped copy

            self.module = shipped_ledger

        def write(self, x: int) -> tuple[str, str | None]:
            return self.module.entry(x), os.environ.get(variable)

    @hs.remote
    def nested(target: str) -> tuple[str, str | None]:
        @hs.remote
        def inner() -> tuple[str, str | None]:
            import shipped_ledger

            return shipped_ledger.entry(hs.get_runtime_context().get_node_id()), os.environ.get(
                variable
            )

        pinned = NodeAffinitySchedulingStrategy(target, soft=False)
        return hs.get(inner.options(scheduling_strategy=pinned).remote(), timeout=60)

    env = {"working_dir": str(project), "env_vars": {variable: "eu-west"}}
    nodes = (cluster.head, cluster.n1, cluster.n2)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(variable, raising=False)
        hs.init(address=cluster.address, token=cluster.token, runtime_env=env)
        try:
            on_n2 = NodeAffinitySchedulingStrategy(cluster.n2, soft=False)
            ledger = Ledger.options(scheduling_strategy=on_n2).remote()  # the job's first work
            assert hs.get(ledger.write.remote(7), timeout=60) == ("ledger:7", "eu-west")
            for target in nodes:
                pinned = NodeAffinitySchedulingStrategy(target, soft=False)
                assert hs.get(environment.options(scheduling_strategy=pinned).remote()) == (
                    target,
                    "eu-west",
                )
            on_n1 = NodeAffinitySchedulingStrategy(cluster.n1, soft=False)
            inner = hs.get(nested.options(scheduling_strategy=on_n1).remote(cluster.n2))
            assert inner == (f"ledger:{cluster.n2}", "eu-west")
        finally:
            hs.shutdown()
        hs.init(address=cluster.address, token=cluster.token)  # a job without them
        try:
            for target in nodes:
                pinned = NodeAffinitySchedulingStrategy(target, soft=False)
                found = hs.get(environment.options(scheduling_strategy=pinned).remote())
                assert found == (target, None)
        finally:
            hs.shutdown()


def test_two_jobs_shipping_a_module_of_one_name_each_run_their_own_on_shared_workers(
    cluster: Cluster, tmp_path
) -> None:
    """A node's workers serve every job, so the second job's ``shipped_tariff`` must
    not be the first job's, already imported in the same worker (Ray gives each job
    workers of its own); nor must a module read the other job's env var at import."""

    @hs.remote
    def tariff() -> tuple[str, str | None, int]:
        import shipped_tariff  # in each job's own working_dir, with its own value

        return shipped_tariff.RATE, shipped_tariff.REGION, os.getpid()

    seen: dict[str, set[int]] = {}
    pinned = NodeAffinitySchedulingStrategy(cluster.n1, soft=False)
    for job, rate in (("a", "0.20"), ("b", "0.07"), ("a", "0.20")):
        project = tmp_path / f"{job}-{len(seen)}"
        project.mkdir()
        (project / "shipped_tariff.py").write_text(
            f"import os\nRATE = {rate!r}\nREGION = os.environ.get('HS_TEST_TARIFF')\n"
        )
        env = {"working_dir": str(project), "env_vars": {"HS_TEST_TARIFF": f"region-{job}"}}
        hs.init(address=cluster.address, token=cluster.token, runtime_env=env)
        try:
            found = hs.get([tariff.options(scheduling_strategy=pinned).remote() for _ in range(6)])
        finally:
            hs.shutdown()
        assert {(r, region) for r, region, _ in found} == {(rate, f"region-{job}")}
        seen[f"{job}-{len(seen)}"] = {pid for _, _, pid in found}
    # The jobs did share workers: else this test would prove nothing.
    assert seen["a-0"] & seen["b-1"] and seen["b-1"] & seen["a-2"]


def test_a_departed_drivers_actors_free_their_nodes(
    cluster: Cluster, wait_for: Callable[..., Any]
) -> None:
    """Fate sharing across nodes: a driver that exits without killing its actors takes
    them with it, and the CPUs they held are free for the next job."""
    cpus = {cluster.head: 1, cluster.n1: 2, cluster.n2: 2}
    code = (
        "import sys\n"
        "import heliostat as hs\n"
        "from heliostat.engine.scheduling_strategies import NodeAffinitySchedulingStrategy\n"
        "@hs.remote\n"
        "class Hog:\n"
        "    def where(self):\n"
        "        return hs.get_runtime_context().get_node_id()\n"
        f"cpus = {cpus!r}\n"
        "hogs = [Hog.options(num_cpus=n, scheduling_strategy=NodeAffinitySchedulingStrategy("
        "node, soft=False)).remote() for node, n in cpus.items()]\n"
        "assert hs.get([h.where.remote() for h in hogs], timeout=60) == list(cpus)\n"
        "print('held')\n"
    )
    assert cluster.daemons.driver(code).split() == ["held"]

    def free_cpus() -> float:
        with cluster.daemons.client() as client:
            return client.cluster_resources().available.get("CPU", 0.0)

    wait_for(lambda: free_cpus() == sum(cpus.values()), 30, what="the actors' CPUs back")


def test_two_drivers_at_once_each_get_their_own_results(cluster: Cluster) -> None:
    """Two jobs share the nodes: each owns its tasks, ids never collide, nothing mixes."""
    from concurrent.futures import ThreadPoolExecutor

    code = (
        "import sys\n"
        "import heliostat as hs\n"
        "@hs.remote\n"
        "def tag(i, who):\n"
        "    return (who, i * i, hs.get_runtime_context().get_node_id())\n"
        "who = sys.argv[1]\n"
        "out = hs.get([tag.remote(i, who) for i in range(300)], timeout=120)\n"
        "assert [v for _, v, _ in out] == [i * i for i in range(300)], out[:5]\n"
        "assert {w for w, _, _ in out} == {who}\n"
        "print(len({n for _, _, n in out}), hs.get_runtime_context().get_node_id())\n"
    )
    # "a" attaches to the head's node (a process of it); "b" joins as a node of its own.
    attach = {"a": "1", "b": "0"}
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda who: cluster.daemons.driver(
                    code, args=(who,), env={"HELIOSTAT_ATTACH": attach[who]}
                ),
                "ab",
            )
        )
    driver_nodes = [run.split()[1] for run in runs]
    assert driver_nodes[0] == cluster.daemons.head_node_id()
    assert driver_nodes[1] not in (cluster.head, cluster.n1, cluster.n2)  # a node of its own
    assert all(int(run.split()[0]) >= 2 for run in runs)  # and used several nodes
