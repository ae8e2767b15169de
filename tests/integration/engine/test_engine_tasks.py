"""Tasks on a local node: results, arguments, nesting, wait, timeouts, cancel, resources."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pytest

import heliostat as hs
from heliostat.exceptions import (
    GetTimeoutError,
    InfeasibleResourcesError,
    TaskCancelledError,
)


@hs.remote
def add(a, b=0):
    return a + b


@hs.remote
def echo(value):
    return value


@hs.remote(num_returns=2)
def divmod_task(a, b):
    return a // b, a % b


@hs.remote
def three(x):
    return x, x * 2, x * 3


@hs.remote
def describe(value):
    """What the task received: the type name, and the value if it is not a ref."""
    return type(value).__name__


@hs.remote
def read_nested(refs):
    """Receives refs inside a list: checks they are refs and reads them itself."""
    assert all(isinstance(r, hs.ObjectRef) for r in refs), [type(r) for r in refs]
    return [type(r).__name__ for r in refs], hs.get(refs)


@hs.remote
def fan_out(n):
    return sum(hs.get([add.remote(i, i) for i in range(n)]))


@hs.remote
def chain(depth):
    """A recursion of nested tasks, each blocked in get on the next."""
    if depth == 0:
        return 0
    return 1 + hs.get(chain.remote(depth - 1))


@hs.remote
def fib(n):
    if n < 2:
        return n
    a, b = fib.remote(n - 1), fib.remote(n - 2)
    return hs.get(a) + hs.get(b)


@hs.remote
def wait_for_file(path, timeout=30.0):
    """Sleeps (in short steps) until ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return "released"


@hs.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@hs.remote
def touch_and_sleep(marker, seconds):
    Path(marker).touch()
    time.sleep(seconds)
    return "finished"


@hs.remote
def touch_and_sleep_until(marker, gate):
    Path(marker).touch()
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


@hs.remote(resources={"db": 1}, num_cpus=0)
def use_db(log_path, tag):
    start = time.time()
    time.sleep(0.3)
    end = time.time()
    with open(log_path, "a") as fh:
        fh.write(json.dumps({"tag": tag, "start": start, "end": end}) + "\n")
    return tag


@pytest.fixture
def gate(tmp_path):
    """A file whose creation releases gated tasks; created at teardown in any case."""
    path = tmp_path / "gate"
    yield path
    path.touch()


# --- results and arguments ------------------------------------------------------------


def test_get_single_ref_returns_value(runtime) -> None:
    assert hs.get(add.remote(1, 2)) == 3


def test_get_list_returns_values_in_order(runtime) -> None:
    refs = [add.remote(i, 100) for i in range(20)]
    assert hs.get(refs) == [i + 100 for i in range(20)]


def test_num_returns_two_gives_two_refs(runtime) -> None:
    refs = divmod_task.remote(17, 5)
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, hs.ObjectRef) for r in refs)
    assert hs.get(refs) == [3, 2]


def test_num_returns_three_via_options(runtime) -> None:
    a, b, c = three.options(num_returns=3).remote(7)
    assert hs.get(c) == 21
    assert hs.get([a, b]) == [7, 14]


def test_kwargs_are_passed(runtime) -> None:
    assert hs.get(add.remote(a=2, b=40)) == 42
    assert hs.get(add.remote(1, b=hs.put(9))) == 10


def test_top_level_ref_argument_is_resolved_to_its_value(runtime) -> None:
    ref = hs.put({"k": [1, 2, 3]})
    assert hs.get(describe.remote(ref)) == "dict"
    assert hs.get(echo.remote(ref)) == {"k": [1, 2, 3]}
    # A task's output as the input of another one.
    assert hs.get(add.remote(add.remote(1, 2), add.remote(3, 4))) == 10


def test_refs_nested_in_a_list_are_passed_as_refs(runtime) -> None:
    refs = [hs.put("a"), add.remote(1, 1)]
    types, values = hs.get(read_nested.remote(refs))
    assert types == ["ObjectRef", "ObjectRef"]
    assert values == ["a", 2]


# --- nested tasks -----------------------------------------------------------------------


def test_task_submits_tasks_and_gets_them(runtime) -> None:
    assert hs.get(fan_out.remote(10)) == sum(2 * i for i in range(10))


def test_nested_chain_deeper_than_cpus_does_not_deadlock(runtime) -> None:
    # Each level blocks in get() while holding a worker: with 2 CPUs this only finishes
    # if blocked workers give their CPU back.
    assert hs.get(chain.remote(8), timeout=60) == 8


def test_recursive_fib_deeper_than_cpus_does_not_deadlock(runtime) -> None:
    assert hs.get(fib.remote(8), timeout=60) == 21


def test_short_tasks_do_not_wait_behind_a_long_one_while_a_cpu_is_free(
    fresh_runtime, tmp_path, gate, wait_for
) -> None:
    fresh_runtime(num_cpus=2)
    hs.get([add.remote(i, 0) for i in range(4)])  # both workers up
    running = tmp_path / "running"
    long = touch_and_sleep_until.remote(str(running), str(gate))
    wait_for(running.exists, what="the long task to start")
    # The other CPU is free (or about to be): all of these must finish while the long
    # task still runs.
    other = sleep_then.remote(0.2, "other")
    quick = [add.remote(i, 1) for i in range(6)]
    assert hs.get(other, timeout=20) == "other"
    assert hs.get(quick, timeout=20) == [i + 1 for i in range(6)]
    assert not gate.exists()
    gate.touch()
    assert hs.get(long) == "released"


@hs.remote
def nested_sum(n):
    return sum(hs.get([add.remote(i, 1) for i in range(n)]))


def test_no_task_is_lost_when_queued_tasks_are_taken_back(fresh_runtime) -> None:
    # Short tasks are sent ahead to busy workers and taken back when a worker blocks
    # in get() or another one goes idle; a task handed back must run exactly once.
    fresh_runtime(num_cpus=2)
    for round_no in range(100):
        refs = [sleep_then.remote(0.002 * (round_no % 3), "slept")]
        refs += [add.remote(i, 0) for i in range(6)]
        refs += [nested_sum.remote(3)]
        refs += [add.remote(i, 10) for i in range(6)]
        expected = ["slept", *range(6), 6, *range(10, 16)]
        assert hs.get(refs, timeout=20) == expected, f"round {round_no}"
    info = hs.engine.current_runtime().manager.cluster_info()
    assert not [w for w in info["workers"] if w["task"] is not None]


# --- wait -------------------------------------------------------------------------------


def test_wait_returns_ready_and_not_ready_in_order(runtime, gate) -> None:
    blocked = wait_for_file.remote(str(gate))
    done = [add.remote(i, 0) for i in range(3)]
    hs.get(done, timeout=20)
    refs = [done[0], blocked, done[1], done[2]]
    ready, not_ready = hs.wait(refs, num_returns=3, timeout=10)
    assert ready == [done[0], done[1], done[2]]
    assert not_ready == [blocked]
    gate.touch()
    assert hs.get(blocked) == "released"


def test_wait_num_returns_limits_ready_list(runtime) -> None:
    refs = [add.remote(i, 0) for i in range(4)]
    hs.get(refs)
    ready, not_ready = hs.wait(refs, num_returns=2)
    assert ready == refs[:2]
    assert not_ready == refs[2:]


def test_wait_timeout_returns_what_is_ready(runtime, gate) -> None:
    slow = wait_for_file.remote(str(gate))
    fast = add.remote(1, 1)
    hs.get(fast, timeout=20)
    ready, not_ready = hs.wait([slow, fast], num_returns=2, timeout=0.2)
    assert ready == [fast]
    assert not_ready == [slow]
    gate.touch()
    hs.get(slow)


def test_wait_timeout_zero_with_nothing_ready(runtime, gate) -> None:
    slow = wait_for_file.remote(str(gate))
    ready, not_ready = hs.wait([slow], num_returns=1, timeout=0)
    assert ready == []
    assert not_ready == [slow]
    gate.touch()
    hs.get(slow)


def test_wait_without_timeout_blocks_until_enough_ready(runtime, gate) -> None:
    slow = wait_for_file.remote(str(gate))
    fast = add.remote(2, 2)
    ready, not_ready = hs.wait([slow, fast], num_returns=1)
    assert ready == [fast]
    assert not_ready == [slow]
    gate.touch()
    ready, not_ready = hs.wait([slow, fast], num_returns=2)
    assert ready == [slow, fast]
    assert not_ready == []


def test_wait_rejects_bad_arguments(runtime) -> None:
    ref = hs.put(1)
    with pytest.raises(ValueError):
        hs.wait([ref], num_returns=2)
    with pytest.raises(ValueError):
        hs.wait([ref, ref])
    with pytest.raises(TypeError):
        hs.wait([1, 2])


# --- get timeout ------------------------------------------------------------------------


def test_get_timeout_raises_get_timeout_error(runtime, gate) -> None:
    slow = wait_for_file.remote(str(gate))
    with pytest.raises(GetTimeoutError) as info:
        hs.get(slow, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    gate.touch()
    # The ref is still usable after a timed-out get.
    assert hs.get(slow, timeout=30) == "released"


# --- cancel -----------------------------------------------------------------------------


def test_cancel_queued_task_raises_cancelled_at_get(
    fresh_runtime, tmp_path, gate, wait_for
) -> None:
    fresh_runtime(num_cpus=1)
    running = tmp_path / "running"
    hold = touch_and_sleep_until.remote(str(running), str(gate))  # takes the only CPU
    wait_for(running.exists, what="the blocking task to start")
    queued = add.remote(1, 2)
    hs.cancel(queued)
    with pytest.raises(TaskCancelledError):
        hs.get(queued, timeout=10)
    gate.touch()
    assert hs.get(hold) == "released"
    # The node still runs tasks afterwards.
    assert hs.get(add.remote(5, 5)) == 10


@pytest.mark.parametrize("force", [False, True], ids=["soft", "force"])
def test_cancel_running_task_raises_cancelled_at_get(
    fresh_runtime, tmp_path, wait_for, force
) -> None:
    fresh_runtime()
    marker = tmp_path / "running"
    ref = touch_and_sleep.remote(str(marker), 60)
    wait_for(marker.exists, what="the task to start running")
    hs.cancel(ref, force=force)
    with pytest.raises(TaskCancelledError):
        hs.get(ref, timeout=20)
    assert hs.get(add.remote(1, 1), timeout=20) == 2


def test_cancel_finished_task_keeps_its_value(runtime) -> None:
    ref = add.remote(3, 4)
    assert hs.get(ref) == 7
    hs.cancel(ref)
    assert hs.get(ref) == 7


# --- resources --------------------------------------------------------------------------


def test_custom_resource_serializes_tasks(fresh_runtime, tmp_path) -> None:
    fresh_runtime(num_cpus=2, resources={"db": 1})
    log_path = tmp_path / "db.log"
    refs = [use_db.remote(str(log_path), tag) for tag in ("a", "b", "c")]
    assert sorted(hs.get(refs, timeout=30)) == ["a", "b", "c"]
    intervals = sorted(
        (rec["start"], rec["end"]) for rec in map(json.loads, log_path.read_text().splitlines())
    )
    assert len(intervals) == 3
    for (_s1, e1), (s2, _e2) in itertools.pairwise(intervals):
        assert e1 <= s2, f"tasks holding db=1 overlapped: {intervals}"


def test_cluster_and_available_resources(fresh_runtime, wait_for) -> None:
    store = 64 << 20
    fresh_runtime(num_cpus=2, resources={"db": 1, "memory": 1 << 30}, object_store_memory=store)
    expected = {"CPU": 2.0, "db": 1.0, "memory": float(1 << 30)}
    assert hs.cluster_resources() == {**expected, "object_store_memory": float(store)}
    wait_for(
        lambda: (
            {k: v for k, v in hs.available_resources().items() if k != "object_store_memory"}
            == expected
        ),
        what="all resources to be available",
    )
    assert 0 < hs.available_resources()["object_store_memory"] <= store
    (node,) = hs.nodes()
    assert node["Alive"] is True
    assert node["Resources"] == expected


def test_memory_is_reported_and_counted_against_memory_requests(fresh_runtime) -> None:
    # As Ray: the node has a ``memory`` resource by default, and a task's memory=
    # request is taken from it while the task runs.
    fresh_runtime(num_cpus=2)
    total = hs.cluster_resources()["memory"]
    assert total > 0

    @hs.remote(memory=100 << 20)
    def free_memory() -> float:
        return hs.available_resources()["memory"]

    assert hs.get(free_memory.remote(), timeout=30) == total - (100 << 20)
    assert hs.get(free_memory.options(memory=200 << 20).remote(), timeout=30) == total - (200 << 20)


def test_a_memory_request_above_the_node_s_is_infeasible(fresh_runtime) -> None:
    fresh_runtime(num_cpus=1, resources={"memory": 1 << 20})

    @hs.remote(memory=2 << 20)
    def big() -> None:
        return None

    with pytest.raises(InfeasibleResourcesError, match="memory"):
        hs.get(big.remote(), timeout=30)


@pytest.mark.parametrize(
    ("options", "resource"),
    [({"num_cpus": 64}, "CPU"), ({"resources": {"gpu": 1}}, "gpu")],
    ids=["cpus", "custom"],
)
def test_infeasible_request_raises_at_remote(runtime, options, resource) -> None:
    with pytest.raises(InfeasibleResourcesError) as info:
        add.options(**options).remote(1, 2)
    assert isinstance(info.value, ValueError)
    assert resource in str(info.value)


def test_infeasible_request_from_inside_a_task(runtime) -> None:
    @hs.remote
    def submit_infeasible():
        try:
            hs.get(add.options(resources={"gpu": 1}).remote(1, 2), timeout=10)
        except InfeasibleResourcesError as exc:
            return "gpu" in str(exc)
        return "no error"

    assert hs.get(submit_infeasible.remote(), timeout=20) is True


# --- options validation -----------------------------------------------------------------


def test_unknown_option_lists_known_ones(runtime) -> None:
    with pytest.raises(ValueError) as info:
        add.options(num_cpu=1)
    message = str(info.value)
    assert "num_cpu" in message
    for known in ("num_cpus", "max_retries", "num_returns", "resources"):
        assert known in message


def test_unknown_option_in_decorator_is_rejected() -> None:
    with pytest.raises(ValueError, match="known options"):
        hs.remote(retries=3)(lambda: None)


@pytest.mark.parametrize(
    "options",
    [{"num_returns": 0}, {"max_retries": -2}],
    ids=["num_returns", "max_retries"],
)
def test_invalid_option_values_are_rejected(options) -> None:
    with pytest.raises(ValueError):
        add.options(**options)


def test_retry_exceptions_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="retry_exceptions"):
        add.options(retry_exceptions="yes")


def test_unknown_actor_option_lists_known_ones() -> None:
    class Thing:
        pass

    with pytest.raises(ValueError) as info:
        hs.remote(max_restart=1)(Thing)
    assert "max_restarts" in str(info.value)


@hs.remote
def heap_state():
    import gc

    return gc.get_freeze_count(), gc.isenabled()


def test_workers_start_with_the_fork_servers_heap_frozen(runtime) -> None:
    """What a worker inherits (heliostat, cloudpickle, numpy) is out of its full
    collections' walks; its own objects are still collected (the collector is on)."""
    frozen, enabled = hs.get(heap_state.remote())
    assert frozen > 1000 and enabled
