"""Generator tasks and actor methods: ``num_returns="streaming"`` (the default for a
generator function, as in Ray) and ``num_returns="dynamic"`` (Ray's older form)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from signal_actor import Signal

import heliostat as hs
from heliostat.exceptions import TaskCancelledError, TaskError, WorkerCrashedError

TIMEOUT = 20


@hs.remote
def count(n: int) -> Iterator[int]:
    for i in range(n):
        yield i * 10


@hs.remote
def first_then_wait(signal: object) -> Iterator[str]:
    yield "first"
    hs.get(signal.wait.remote(), timeout=TIMEOUT)  # type: ignore[attr-defined]
    yield "second"


@hs.remote
def fails_after_two() -> Iterator[int]:
    yield 1
    yield 2
    raise ValueError("third went wrong")


@hs.remote(num_returns="dynamic")
def dynamic(n: int) -> Iterator[int]:
    yield from range(n)


@hs.remote(num_returns="dynamic")
def dynamic_fails() -> Iterator[int]:
    yield 7
    raise KeyError("missing")


@hs.remote
def total(refs: object) -> int:
    return sum(hs.get(list(refs)))  # type: ignore[call-overload]


@hs.remote
def not_a_generator() -> list[int]:
    return [1, 2]


# --- streaming ------------------------------------------------------------------------


def test_generator_function_streams_by_default(runtime) -> None:
    gen = count.remote(4)
    assert isinstance(gen, hs.ObjectRefGenerator)
    assert [hs.get(ref) for ref in gen] == [0, 10, 20, 30]


def test_items_arrive_before_the_task_finishes(runtime) -> None:
    signal = Signal.remote()
    gen = first_then_wait.remote(signal)
    first = next(gen)
    assert hs.get(first, timeout=TIMEOUT) == "first"
    # The task is still running (it waits for the signal): completed() is not ready.
    ready, _ = hs.wait([gen.completed()], timeout=0.2)
    assert ready == []
    signal.send.remote()
    assert hs.get(next(gen), timeout=TIMEOUT) == "second"
    with pytest.raises(StopIteration):
        next(gen)
    assert hs.get(gen.completed(), timeout=TIMEOUT) is None


def test_next_raises_stop_iteration_at_the_end_and_after(runtime) -> None:
    gen = count.options(num_returns="streaming").remote(1)
    assert hs.get(next(gen)) == 0
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(StopIteration):
        next(gen)
    assert gen.is_finished()


def test_exception_surfaces_at_the_item_where_it_happened(runtime) -> None:
    refs = list(fails_after_two.remote())
    assert len(refs) == 3  # two values, then the error, then the end
    assert hs.get(refs[:2]) == [1, 2]
    with pytest.raises(ValueError, match="third went wrong") as info:
        hs.get(refs[2])
    assert isinstance(info.value, TaskError)


def test_failed_generator_completed_ref_raises(runtime) -> None:
    gen = fails_after_two.remote()
    list(gen)
    with pytest.raises(ValueError, match="third went wrong"):
        hs.get(gen.completed(), timeout=TIMEOUT)


def test_async_for_in_driver(runtime) -> None:
    async def main() -> list[int]:
        return [await ref async for ref in count.remote(3)]

    assert asyncio.run(main()) == [0, 10, 20]


def test_anext_raises_stop_async_iteration(runtime) -> None:
    async def main() -> None:
        gen = count.remote(1)
        assert await (await gen.__anext__()) == 0
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()

    asyncio.run(main())


def test_cancelled_anext_does_not_skip_an_item(runtime) -> None:
    signal = Signal.remote()
    gen = first_then_wait.remote(signal)

    async def main() -> list[str]:
        got = [await (await gen.__anext__())]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(gen.__anext__(), 0.2)  # "second" is not yielded yet
        signal.send.remote()
        got += [await ref async for ref in gen]
        return got

    assert asyncio.run(main()) == ["first", "second"]


def test_wait_on_a_generator_is_ready_when_next_would_not_block(runtime) -> None:
    # Ray's wait(): a generator is ready once its next item has been yielded.
    signal = Signal.remote()
    gen = first_then_wait.remote(signal)
    assert hs.wait([gen], timeout=TIMEOUT) == ([gen], [])
    assert hs.get(next(gen)) == "first"
    # The task is now blocked before its second yield: the generator is not ready.
    assert hs.wait([gen], timeout=0.2) == ([], [gen])
    hs.get(signal.send.remote())
    assert hs.wait([gen], timeout=TIMEOUT) == ([gen], [])
    assert hs.get(next(gen)) == "second"
    # At the end, next() raises StopIteration at once: ready too.
    assert hs.wait([gen], timeout=TIMEOUT) == ([gen], [])
    with pytest.raises(StopIteration):
        next(gen)


def test_wait_mixes_refs_and_generators_in_input_order(runtime) -> None:
    signal = Signal.remote()
    gen = first_then_wait.remote(signal)
    assert hs.get(next(gen)) == "first"
    ref = hs.put(1)
    assert hs.wait([gen, ref], num_returns=1, timeout=TIMEOUT) == ([ref], [gen])
    hs.get(signal.send.remote())
    assert hs.wait([gen, ref], num_returns=2, timeout=TIMEOUT) == ([gen, ref], [])


def test_item_found_by_wait_is_the_next_one_async_too(runtime) -> None:
    gen = count.remote(3)
    assert hs.wait([gen], timeout=TIMEOUT)[0] == [gen]

    async def drain() -> list[int]:
        return [await ref async for ref in gen]

    assert asyncio.run(drain()) == [0, 10, 20]


def test_wait_refuses_the_same_generator_twice(runtime) -> None:
    gen = count.remote(1)
    with pytest.raises(ValueError):
        hs.wait([gen, gen])


def test_generator_cannot_be_passed_to_a_task(runtime) -> None:
    gen = count.remote(2)
    with pytest.raises(TypeError, match="ObjectRefGenerator"):
        total.remote(gen)
    list(gen)


def test_num_returns_streaming_on_a_plain_function_fails_the_task(runtime) -> None:
    gen = not_a_generator.options(num_returns="streaming").remote()
    refs = list(gen)
    assert len(refs) == 1
    with pytest.raises(TypeError, match="not a generator"):
        hs.get(refs[0])


def test_bad_num_returns_values_are_refused(runtime) -> None:
    with pytest.raises(ValueError, match="streaming"):
        count.options(num_returns="stream")
    with pytest.raises(TypeError, match="num_returns"):
        count.options(num_returns=1.5)
    with pytest.raises(ValueError, match="positive"):
        hs.method(num_returns=0)


def test_explicit_count_on_a_generator_function_returns_refs(runtime) -> None:
    a, b = count.options(num_returns=2).remote(2)
    assert hs.get([a, b]) == [0, 10]


@hs.remote
def consume_inside(n: int) -> int:
    return sum(hs.get(ref) for ref in count.remote(n))


def test_generator_task_consumed_inside_a_task(runtime) -> None:
    assert hs.get(consume_inside.remote(4), timeout=TIMEOUT) == 60


def test_dropping_a_generator_frees_its_items(fresh_runtime, wait_for) -> None:
    manager = fresh_runtime().manager  # a node of its own: nothing else frees objects
    before = manager.object_stats()["objects"]
    gen = count.remote(20)
    hs.get(gen.completed(), timeout=TIMEOUT)
    assert manager.object_stats()["objects"] >= before + 20
    first = next(gen)
    del gen
    wait_for(
        lambda: manager.object_stats()["objects"] <= before + 1,
        what="the unconsumed items and the stream to be freed",
    )
    assert hs.get(first) == 0  # the one consumed lives on with its ref
    del first
    wait_for(lambda: manager.object_stats()["objects"] <= before, what="the last item freed")


# --- failures, retries, cancel ------------------------------------------------------


@hs.remote(max_retries=1)
def crashes_once(marker: str) -> Iterator[int]:
    for i in range(5):
        if i == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        yield i


def test_retry_replays_the_generator_without_duplicates(fresh_runtime, tmp_path) -> None:
    fresh_runtime()
    gen = crashes_once.remote(str(tmp_path / "crashed"))
    assert [hs.get(ref, timeout=TIMEOUT) for ref in gen] == [0, 1, 2, 3, 4]


@hs.remote(max_retries=0)
def crashes(marker: str) -> Iterator[int]:
    yield 1
    os._exit(1)


def test_crash_without_retries_ends_the_stream_with_the_error(fresh_runtime, tmp_path) -> None:
    fresh_runtime()
    refs = list(crashes.remote(str(tmp_path / "x")))
    assert len(refs) == 2
    assert hs.get(refs[0]) == 1
    with pytest.raises(WorkerCrashedError):
        hs.get(refs[1])


def test_cancel_a_running_generator_task(fresh_runtime) -> None:
    fresh_runtime()
    signal = Signal.remote()
    gen = first_then_wait.remote(signal)
    assert hs.get(next(gen), timeout=TIMEOUT) == "first"
    hs.cancel(gen)  # a generator is cancelled like its task (as in Ray)
    rest = list(gen)
    assert len(rest) == 1
    with pytest.raises(TaskCancelledError):
        hs.get(rest[0], timeout=TIMEOUT)


# --- dynamic --------------------------------------------------------------------------


def test_dynamic_returns_one_ref_to_the_refs(runtime) -> None:
    ref = dynamic.remote(3)
    assert isinstance(ref, hs.ObjectRef)
    inner = hs.get(ref, timeout=TIMEOUT)
    assert len(inner) == 3
    assert [hs.get(r) for r in inner] == [0, 1, 2]


def test_dynamic_error_is_one_more_final_ref(runtime) -> None:
    inner = list(hs.get(dynamic_fails.remote(), timeout=TIMEOUT))
    assert len(inner) == 2
    assert hs.get(inner[0]) == 7
    with pytest.raises(KeyError):
        hs.get(inner[1])


def test_dynamic_result_passes_to_another_task(runtime) -> None:
    assert hs.get(total.remote(dynamic.remote(5)), timeout=TIMEOUT) == 10


# --- actor methods --------------------------------------------------------------------


@hs.remote
class Source:
    def __init__(self) -> None:
        self.base = 100

    def plain(self, n: int) -> Iterator[int]:
        for i in range(n):
            yield self.base + i

    @hs.method(num_returns="dynamic")
    def dyn(self, n: int) -> Iterator[int]:
        yield from range(n)


@hs.remote
class AsyncSource:
    async def agen(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def sgen(self, n: int) -> Iterator[int]:
        yield from range(n)

    async def broken(self):  # type: ignore[no-untyped-def]
        yield "ok"
        raise RuntimeError("async generator failed")


def test_sync_actor_generator_method(runtime) -> None:
    s = Source.remote()
    gen = s.plain.remote(3)
    assert isinstance(gen, hs.ObjectRefGenerator)
    assert [hs.get(r) for r in gen] == [100, 101, 102]
    assert [hs.get(r) for r in hs.get(s.dyn.remote(2))] == [0, 1]
    # num_returns="streaming" through options, and a fixed count too
    assert [hs.get(r) for r in s.plain.options(num_returns="streaming").remote(1)] == [100]
    assert hs.get(s.plain.options(num_returns=2).remote(2)) == [100, 101]


def test_threaded_actor_generator_method(runtime) -> None:
    s = Source.options(max_concurrency=4).remote()
    gens = [s.plain.remote(3) for _ in range(4)]
    assert [[hs.get(r) for r in g] for g in gens] == [[100, 101, 102]] * 4


def test_async_actor_generator_methods(runtime) -> None:
    a = AsyncSource.remote()
    assert [hs.get(r) for r in a.agen.remote(4)] == [0, 1, 2, 3]
    assert [hs.get(r) for r in a.sgen.remote(2)] == [0, 1]
    refs = list(a.broken.remote())
    assert hs.get(refs[0]) == "ok"
    with pytest.raises(RuntimeError, match="async generator failed"):
        hs.get(refs[1])
    assert [hs.get(r) for r in hs.get(a.agen.options(num_returns="dynamic").remote(2))] == [0, 1]
