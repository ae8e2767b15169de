"""Ray's API surface with real workers: init keywords, auto-init, runtime context,
node affinity, ``ray.util``'s ActorPool and Queue, ``method`` options."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time

import pytest

import heliostat as hs
from heliostat.engine import current_runtime
from heliostat.exceptions import (
    ActorDiedError,
    ActorUnschedulableError,
    HeliostatError,
    NotInitializedError,
    PlacementGroupsNotSupportedError,
    TaskUnschedulableError,
)
from heliostat.util import ActorPool, placement_group
from heliostat.util.queue import Empty, Full, Queue
from heliostat.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)


@hs.remote
def context_of_task() -> dict:
    ctx = hs.get_runtime_context()
    return {
        "job": ctx.get_job_id(),
        "node": ctx.get_node_id(),
        "worker": ctx.get_worker_id(),
        "task": ctx.get_task_id(),
        "actor": ctx.get_actor_id(),
        "resources": ctx.get_assigned_resources(),
        "namespace": ctx.namespace,
        "pid": os.getpid(),
    }


@hs.remote
def env_var(name: str) -> str | None:
    return os.environ.get(name)


@hs.remote
def shout(text: str) -> str:
    print(text)
    return text


@hs.remote
def gpu_ids() -> list[int]:
    return hs.get_gpu_ids()


@hs.remote
class Probe:
    def __init__(self, step: int = 1) -> None:
        self.step = step

    def context(self) -> dict:
        ctx = hs.get_runtime_context()
        return {
            "task": ctx.get_task_id(),
            "actor": ctx.get_actor_id(),
            "name": ctx.get_actor_name(),
            "resources": ctx.get_assigned_resources(),
            "reconstructed": ctx.was_current_actor_reconstructed,
            "namespace": ctx.namespace,
        }

    def crash(self) -> None:
        os._exit(1)

    def add(self, x: int) -> int:
        return x + self.step

    def slow_add(self, x: int, seconds: float) -> int:
        import time

        time.sleep(seconds)
        return x + self.step

    @hs.method(num_returns=2)
    def pair(self, x: int) -> tuple[int, int]:
        return x, x + self.step


# --- init() and automatic init ---------------------------------------------------------


def test_remote_starts_a_runtime_when_none_is_up(caplog) -> None:
    hs.shutdown()
    assert not hs.is_initialized()
    with caplog.at_level(logging.INFO, logger="heliostat"):
        ref = env_var.remote("PATH")
    try:
        assert hs.is_initialized()
        assert hs.get(ref) == os.environ["PATH"]
        assert any("automatically" in r.getMessage() for r in caplog.records)
    finally:
        hs.shutdown()
    assert not hs.is_initialized()


def test_put_and_get_actor_start_a_runtime_too() -> None:
    hs.shutdown()
    try:
        assert hs.get(hs.put(41)) == 41
    finally:
        hs.shutdown()
    try:
        with pytest.raises(ValueError):
            hs.get_actor("nobody-by-this-name")
        assert hs.is_initialized()
    finally:
        hs.shutdown()


def test_auto_init_can_be_turned_off(monkeypatch) -> None:
    hs.shutdown()
    monkeypatch.setenv("HELIOSTAT_AUTO_INIT", "0")
    with pytest.raises(NotInitializedError):
        hs.put(1)
    with pytest.raises(NotInitializedError):
        env_var.remote("PATH")
    assert not hs.is_initialized()


def test_get_without_a_runtime_does_not_start_one() -> None:
    hs.shutdown()
    with pytest.raises(NotInitializedError):
        hs.cluster_resources()
    assert not hs.is_initialized()


def test_ray_init_keywords_that_mean_something_work(fresh_runtime, caplog, capfd) -> None:
    logger = logging.getLogger("heliostat")
    level_before = logger.level
    handlers_before = list(logger.handlers)
    temp_dir = tempfile.mkdtemp(prefix="hsk")
    try:
        with caplog.at_level(logging.DEBUG, logger="heliostat"):
            rt = fresh_runtime(
                num_gpus=2,
                include_dashboard=False,
                dashboard_port=8266,
                _system_config={"x": 1},
                logging_level="debug",
                log_to_driver=False,
                namespace="ported",
                runtime_env={"env_vars": {"HS_API_SURFACE": "yes"}},
                _temp_dir=temp_dir,
            )
            assert logger.level == logging.DEBUG
            assert any(isinstance(h, logging.StreamHandler) for h in logger.handlers)
            assert hs.cluster_resources()["GPU"] == 2.0
            assert rt.session_dir.startswith(temp_dir + os.sep)
            assert rt.namespace == "ported"
            line = [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()]
            assert len(line) == 1
            for name in ("_system_config", "dashboard_port", "include_dashboard"):
                assert name in line[0]
            assert hs.get(env_var.remote("HS_API_SURFACE")) == "yes"
            capfd.readouterr()
            assert hs.get(shout.remote("quiet-please-1234")) == "quiet-please-1234"
            hs.shutdown()
            out, err = capfd.readouterr()
            assert "quiet-please-1234" not in out + err
            assert os.listdir(temp_dir) == []  # the session's files went with it
            # shutdown took the handler off again.
            assert logger.handlers == handlers_before
        assert logger.level == level_before
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_worker_output_reaches_the_driver_by_default(runtime, capfd) -> None:
    hs.get(shout.remote("loud-5678"))
    hs.get(shout.remote("flush"))  # the driver prints a task's lines before its result

    out, err = capfd.readouterr()
    assert "loud-5678" in out + err


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"num_gpus": "2"}, "num_gpus"),
        ({"log_to_driver": "yes"}, "log_to_driver"),
        ({"logging_level": [10]}, "logging_level"),
        ({"num_cpus": "4"}, "num_cpus"),
        ({"namespace": 3}, "namespace"),
        ({"ignore_reinit_error": "true"}, "ignore_reinit_error"),
        ({"_system_config": "x"}, "_system_config"),
        ({"no_such_keyword": 1}, "no_such_keyword"),
        ({"runtime_env": ["pip"]}, "runtime_env"),
        ({"object_store_memory": "64MB"}, "object_store_memory"),
    ],
)
def test_init_refuses_wrong_types_and_unknown_keywords(kwargs, names) -> None:
    hs.shutdown()
    with pytest.raises(TypeError, match=names):
        hs.init(**kwargs)
    assert not hs.is_initialized()


def test_init_takes_object_store_memory_written_as_a_float(fresh_runtime) -> None:
    # Ray scripts write sizes such as 700e6; a whole number of bytes is accepted.
    hs.shutdown()
    with pytest.raises(ValueError, match="whole number"):
        hs.init(object_store_memory=1.5)
    assert not hs.is_initialized()
    fresh_runtime(object_store_memory=64e6)
    assert hs.get(hs.put("fits")) == "fits"


def test_init_refuses_what_it_cannot_honour() -> None:
    hs.shutdown()
    with pytest.raises(ValueError, match="pip"):
        hs.init(runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="local_mode"):
        hs.init(local_mode=True)
    with pytest.raises(ValueError, match="num_gpus"):
        hs.init(resources={"GPU": 1})
    assert not hs.is_initialized()


def test_reinit_raises_unless_ignored_or_started_by_the_cli(runtime) -> None:
    with pytest.raises(HeliostatError, match="already initialized"):
        hs.init()
    assert hs.init(ignore_reinit_error=True) is runtime
    runtime.started_by_cli = True
    try:
        assert hs.init(num_cpus=7) is runtime
    finally:
        runtime.started_by_cli = False


# --- get_runtime_context / get_gpu_ids ------------------------------------------------


def test_runtime_context_in_the_driver(runtime) -> None:
    ctx = hs.get_runtime_context()
    assert ctx.get_job_id() == runtime.session
    assert ctx.get_node_id() == hs.nodes()[0]["NodeID"]
    assert ctx.get_task_id() is None
    assert ctx.get_actor_id() is None
    assert ctx.get_actor_name() is None
    assert ctx.get_assigned_resources() == {}
    assert ctx.namespace == "default"
    assert ctx.was_current_actor_reconstructed is False
    assert hs.get_gpu_ids() == []


def test_runtime_context_in_tasks(runtime) -> None:
    driver = hs.get_runtime_context()
    a, b = hs.get([context_of_task.remote(), context_of_task.options(num_cpus=2).remote()])
    for seen in (a, b):
        assert seen["job"] == driver.get_job_id()
        assert seen["node"] == driver.get_node_id()
        assert seen["actor"] is None
        assert seen["task"] is not None
        assert seen["worker"] != driver.get_worker_id()
    assert a["task"] != b["task"]
    assert a["resources"] == {"CPU": 1.0}
    assert b["resources"] == {"CPU": 2.0}


def test_runtime_context_in_actors_and_after_a_restart(runtime) -> None:
    probe = Probe.options(name="ctx-probe", namespace="ns1", max_restarts=1, num_cpus=1).remote()
    first = hs.get(probe.context.remote())
    assert first["actor"] == probe.actor_id
    assert first["name"] == "ctx-probe"
    assert first["namespace"] == "ns1"
    assert first["resources"] == {"CPU": 1.0}
    assert first["reconstructed"] is False
    second = hs.get(probe.context.remote())
    assert second["task"] not in (None, first["task"])
    with pytest.raises(ActorDiedError):
        hs.get(probe.crash.remote())
    again = hs.get(probe.context.remote())
    assert again["reconstructed"] is True
    assert again["actor"] == probe.actor_id
    hs.kill(probe)
    anonymous = Probe.remote()
    assert hs.get(anonymous.context.remote())["name"] is None


def test_get_gpu_ids(fresh_runtime) -> None:
    fresh_runtime(num_gpus=1)
    assert hs.get(gpu_ids.options(num_gpus=1).remote()) == [0]
    assert hs.get(gpu_ids.remote()) == []
    hs.shutdown()
    fresh_runtime(num_gpus=2)
    with pytest.raises(HeliostatError, match="GPU device numbers"):
        hs.get(gpu_ids.options(num_gpus=1).remote())


# --- scheduling strategies -------------------------------------------------------------


def test_node_affinity_is_honoured_on_the_one_node(runtime) -> None:
    here = hs.get_runtime_context().get_node_id()
    on_node = context_of_task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    )
    assert hs.get(on_node.remote())["node"] == here
    elsewhere = NodeAffinitySchedulingStrategy("f" * 20, soft=False)
    with pytest.raises(TaskUnschedulableError, match="f" * 20):
        hs.get(context_of_task.options(scheduling_strategy=elsewhere).remote())
    soft = NodeAffinitySchedulingStrategy("f" * 20, soft=True)
    assert hs.get(context_of_task.options(scheduling_strategy=soft).remote())["node"] == here
    with pytest.raises(ActorUnschedulableError):
        Probe.options(scheduling_strategy=elsewhere).remote()
    actor = Probe.options(scheduling_strategy=soft).remote()
    assert hs.get(actor.add.remote(1)) == 2


def test_named_strategies_and_refusals(runtime) -> None:
    for name in ("DEFAULT", "SPREAD"):
        assert hs.get(env_var.options(scheduling_strategy=name).remote("PATH"))
    with pytest.raises(ValueError, match="PACK"):
        env_var.options(scheduling_strategy="PACK")
    with pytest.raises(TypeError, match="scheduling_strategy"):
        env_var.options(scheduling_strategy=3)
    with pytest.raises(TypeError, match="soft"):
        NodeAffinitySchedulingStrategy("x", soft="no")
    with pytest.raises(PlacementGroupsNotSupportedError, match="not supported yet"):
        PlacementGroupSchedulingStrategy(placement_group=None)
    with pytest.raises(PlacementGroupsNotSupportedError, match="not supported yet"):
        placement_group([{"CPU": 1}])
    assert hs.util.get_current_placement_group() is None


def test_method_num_returns_and_concurrency_group(runtime) -> None:
    probe = Probe.remote(10)
    first, second = probe.pair.remote(1)
    assert hs.get([first, second]) == [1, 11]
    with pytest.raises(ValueError, match="concurrency groups are not supported"):
        hs.method(concurrency_group="io")


# --- ActorPool -------------------------------------------------------------------------


def _add(actor, value):
    return actor.add.remote(value)


def test_actor_pool_map_and_map_unordered(runtime) -> None:
    pool = ActorPool([Probe.remote(1), Probe.remote(1)])
    # Later calls finish first: map still yields in submission order.
    ordered = pool.map(lambda a, v: a.slow_add.remote(v, 0.3 if v == 0 else 0.0), range(6))
    assert list(ordered) == [1, 2, 3, 4, 5, 6]
    unordered = list(
        pool.map_unordered(lambda a, v: a.slow_add.remote(v, 1.0 if v == 0 else 0.0), range(4))
    )
    assert sorted(unordered) == [1, 2, 3, 4]
    assert unordered[-1] == 1  # the slow one came last


def test_actor_pool_keeps_submission_order_and_queues_extra_work(runtime) -> None:
    one = Probe.remote(0)
    pool = ActorPool([one])
    for v in range(5):
        pool.submit(lambda a, x: a.add.remote(x), v)
    assert not pool.has_free()
    assert pool.has_next()
    assert [pool.get_next() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert not pool.has_next()
    assert pool.has_free()
    with pytest.raises(StopIteration):
        pool.get_next()


def test_actor_pool_idle_actors_and_push(runtime) -> None:
    a, b = Probe.remote(0), Probe.remote(0)
    pool = ActorPool([a])
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a)
    pool.push(b)
    popped = pool.pop_idle()
    assert popped in (a, b)
    assert pool.pop_idle() in (a, b)
    assert pool.pop_idle() is None
    pool.push(popped)
    pool.submit(_add, 1)
    assert pool.get_next() == 1


# A call that outlasts the pools' 0.05 s timeouts thirty times over; the tests wait
# for it to end, so it is no longer than that needs.
SLOW_S = 1.5


def test_actor_pool_timeouts(runtime) -> None:
    pool = ActorPool([Probe.remote(0)])
    pool.submit(lambda a, v: a.slow_add.remote(v, SLOW_S), 1)
    pool.submit(_add, 2)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    assert pool.has_next()  # not dropped: the same result is still next
    with pytest.raises(TimeoutError, match="dropped"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert pool.get_next() == 2  # the dropped call's actor went on to the next one
    assert not pool.has_next()


def test_actor_pool_unordered_timeout_ignored_returns_none(runtime) -> None:
    # Ray: get_next_unordered(timeout, ignore_if_timedout=True) gives None on a
    # timeout instead of raising; the timed-out call is dropped, its actor reused.
    pool = ActorPool([Probe.remote(0)])
    pool.submit(lambda a, v: a.slow_add.remote(v, SLOW_S), 1)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.05)
    assert pool.get_next_unordered(timeout=0.05, ignore_if_timedout=True) is None
    assert not pool.has_next()
    pool.submit(_add, 2)
    assert pool.get_next_unordered() == 2


def test_actor_pool_get_next_after_unordered_is_refused(runtime) -> None:
    pool = ActorPool([Probe.remote(0), Probe.remote(0)])
    pool.submit(lambda a, v: a.slow_add.remote(v, SLOW_S), 1)
    pool.submit(_add, 2)
    assert pool.get_next_unordered() == 2
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    assert pool.get_next_unordered() == 1


# --- Queue -----------------------------------------------------------------------------


@hs.remote
def put_later(queue: Queue, item: int) -> None:
    queue.put(item)


@hs.remote
def drain(queue: Queue, n: int) -> list[int]:
    return [queue.get(timeout=30) for _ in range(n)]


def test_queue_put_get_and_sizes(runtime) -> None:
    q = Queue(maxsize=2)
    try:
        assert q.empty() and not q.full() and len(q) == 0
        q.put(1)
        q.put_nowait(2)
        assert q.full() and q.qsize() == 2 and q.size() == 2
        with pytest.raises(Full):
            q.put_nowait(3)
        with pytest.raises(Full):
            q.put(3, timeout=0.05)
        assert q.get() == 1
        assert q.get_nowait() == 2
        with pytest.raises(Empty):
            q.get_nowait()
        with pytest.raises(Empty):
            q.get(timeout=0.05)
        with pytest.raises(ValueError):
            q.get(timeout=-1)
        with pytest.raises(TypeError):
            q.get(block="no")
    finally:
        q.shutdown()


def test_queue_batches(runtime) -> None:
    q = Queue(maxsize=3)
    try:
        q.put_nowait_batch([1, 2])
        with pytest.raises(Full):
            q.put_nowait_batch([3, 4])
        assert q.qsize() == 2  # all or nothing
        with pytest.raises(Empty):
            q.get_nowait_batch(3)
        assert q.get_nowait_batch(2) == [1, 2]
        with pytest.raises(TypeError):
            q.get_nowait_batch("2")
        with pytest.raises(ValueError):
            q.get_nowait_batch(-1)
        with pytest.raises(TypeError):
            q.put_nowait_batch(5)
    finally:
        q.shutdown()


def test_queue_is_shared_with_tasks_and_a_blocked_get_wakes(runtime) -> None:
    q = Queue()
    try:
        consumer = drain.remote(q, 3)
        hs.get([put_later.remote(q, i) for i in range(3)])
        assert sorted(hs.get(consumer, timeout=60)) == [0, 1, 2]
        hs.get(put_later.remote(q, 9))
        assert q.get(timeout=30) == 9
    finally:
        q.shutdown()


def test_queue_async_methods(runtime) -> None:
    q = Queue()

    async def main() -> list[int]:
        await q.put_async(1)
        await q.put_async(2, timeout=1)
        return [await q.get_async(), await q.get_async(timeout=1)]

    try:
        assert asyncio.run(main()) == [1, 2]
    finally:
        q.shutdown()


def test_queue_shutdown_ends_its_actor(runtime) -> None:
    q = Queue()
    actor = q.actor
    q.shutdown()
    with pytest.raises(ActorDiedError):
        hs.get(actor.qsize.remote())


def _blocked_get(q: Queue, timeout: float) -> tuple[threading.Thread, list[BaseException]]:
    """A thread blocked in ``q.get(timeout=...)``; what it raised lands in the list."""
    raised: list[BaseException] = []
    started = threading.Event()

    def consume() -> None:
        started.set()
        try:
            q.get(timeout=timeout)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert started.wait(10)
    return thread, raised


def test_queue_shutdown_lets_blocked_calls_end_within_the_grace_period(runtime) -> None:
    q = Queue()
    actor = q.actor
    hs.get(actor.qsize.remote())  # the actor is up
    thread, raised = _blocked_get(q, timeout=1.0)
    # Wait until the get really blocks in the actor, then shut down gracefully: it is
    # served its own timeout (Empty), not cut off by the kill.
    deadline = time.monotonic() + 10
    while hs.get(actor.drain.remote(0.0)) is not False:
        assert time.monotonic() < deadline, "the get never blocked in the actor"
    q.shutdown(grace_period_s=10)
    thread.join(10)
    assert [type(e) for e in raised] == [Empty]


def test_queue_shutdown_with_force_cuts_blocked_calls_off(runtime) -> None:
    q = Queue()
    actor = q.actor
    hs.get(actor.qsize.remote())
    thread, raised = _blocked_get(q, timeout=60)
    deadline = time.monotonic() + 10
    while hs.get(actor.drain.remote(0.0)) is not False:
        assert time.monotonic() < deadline, "the get never blocked in the actor"
    q.shutdown(force=True)
    thread.join(30)
    assert [type(e) for e in raised] == [ActorDiedError]


def test_runtime_is_current_after_these_tests(runtime) -> None:
    assert current_runtime() is runtime


# --- Ray's older submit forms and names -------------------------------------------------


@hs.remote
def spread(n: int, offset: int = 0) -> list[int]:
    return [offset + i for i in range(n)]


@hs.remote
class Pair:
    def __init__(self, x: int, y: int = 0) -> None:
        self.x, self.y = x, y

    def four(self, a: object, b: int = 0) -> tuple[object, ...]:
        return self.x, self.y, a, b


def test_underscore_remote_takes_args_kwargs_and_options(runtime) -> None:
    # Ray's ``f._remote(args=, kwargs=, **options)`` is ``f.options(...).remote(...)``.
    assert hs.get(spread._remote(args=[2], kwargs={"offset": 5}), timeout=30) == [5, 6]
    first, second = spread._remote(args=[2], num_returns=2)
    assert hs.get([first, second], timeout=30) == [0, 1]
    assert hs.get(spread._remote(kwargs={"n": 1}), timeout=30) == [0]
    actor = Pair._remote(args=[1], kwargs={"y": 2}, num_cpus=0)
    refs = actor.four._remote(args=["a"], kwargs={"b": 3}, num_returns=4)
    assert hs.get(refs, timeout=30) == [1, 2, "a", 3]
    assert hs.get(Pair._remote(args=[7]).four._remote(args=[0]), timeout=30) == (7, 0, 0, 0)
    with pytest.raises(TypeError, match="spread"):  # the signature is still checked
        spread._remote(args=[1, 2, 3])


def test_object_id_is_ray_s_old_name_for_object_ref(runtime) -> None:
    assert hs.ObjectID is hs.ObjectRef
    assert isinstance(hs.put(1), hs.ObjectID)


def test_remote_with_empty_parentheses_is_refused_as_in_ray() -> None:
    with pytest.raises(TypeError, match="empty parentheses"):

        @hs.remote()
        class Nothing:
            pass

    with pytest.raises(TypeError, match="empty parentheses"):

        @hs.remote()
        def nothing() -> None:
            pass


def test_actor_handle_lists_its_methods(runtime) -> None:
    actor = Pair.remote(1)
    assert {"four", "__ray_terminate__"} <= set(dir(actor))
    hs.kill(actor)
