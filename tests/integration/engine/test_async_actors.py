"""Async actors, and waiting for refs from asyncio code (Ray's async API).

Async actors: a class with an ``async def`` method runs its calls on one event loop;
``max_concurrency`` (1000 by default) bounds the coroutines running at once; ``await
ref`` works inside them; ``cancel`` cancels the coroutine. In the driver: ``await ref``,
``asyncio.gather(*refs)``, ``ref.future()`` and ``asyncio.wrap_future`` wait without
blocking the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from signal_actor import Signal

import heliostat as hs
from heliostat.exceptions import TaskCancelledError, TaskError

TIMEOUT = 20


@hs.remote
class Tally:
    """Notes what other actors report, so a test can watch a busy actor from outside."""

    def __init__(self) -> None:
        self.notes: list[object] = []

    def note(self, item: object) -> None:
        self.notes.append(item)

    def seen(self) -> list[object]:
        return self.notes


@hs.remote
class Gatherer:
    """Calls meet at a rendezvous: only possible if they run concurrently."""

    def __init__(self) -> None:
        self.arrived = 0
        self.all_here = asyncio.Event()
        self.order: list[int] = []
        self.running = 0
        self.peak = 0
        self.saw_cancel = False
        self.started = False
        self.ran: list[str] = []

    async def meet(self, parties: int) -> int:
        self.arrived += 1
        if self.arrived == parties:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), TIMEOUT)
        return threading.get_ident()

    def sync_ident(self) -> int:
        return threading.get_ident()

    async def record(self, i: int) -> None:
        self.order.append(i)
        await asyncio.sleep(0)

    def recorded(self) -> list[int]:
        return self.order

    async def hold_slot(self, signal: list[object], tally: object) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await tally.note.remote(self.running)  # type: ignore[attr-defined]
            await signal[0]  # type: ignore[misc]
        finally:
            self.running -= 1
        return self.peak

    async def relay(self, refs: list[hs.ObjectRef]) -> object:
        return await refs[0]

    async def relay_error(self, refs: list[hs.ObjectRef]) -> str:
        try:
            await refs[0]
        except ValueError as exc:
            return f"caught {type(exc).__name__}: {exc}"
        return "no error"

    async def ping(self) -> str:
        return "pong"

    async def sleep_long(self) -> str:
        self.started = True
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            self.saw_cancel = True
            raise
        return "slept"

    def state(self) -> dict[str, object]:
        return {"started": self.started, "saw_cancel": self.saw_cancel, "ran": self.ran}

    async def mark(self, label: str, signal: list[object], tally: object) -> str:
        self.ran.append(label)
        await tally.note.remote(label)  # type: ignore[attr-defined]
        await signal[0]  # type: ignore[misc]
        return label


@hs.remote
def add(a: int, b: int) -> int:
    return a + b


@hs.remote
def fail(message: str) -> None:
    raise ValueError(message)


@hs.remote
def wait_signal(signal: object) -> str:
    hs.get(signal.wait.remote(), timeout=TIMEOUT)  # type: ignore[attr-defined]
    return "released"


# --- async actors ---------------------------------------------------------------------


def test_async_calls_run_concurrently_on_one_loop_thread(runtime) -> None:
    g = Gatherer.remote()
    # Ten calls can only all return if they wait at the rendezvous at the same time.
    idents = hs.get([g.meet.remote(10) for _ in range(10)], timeout=TIMEOUT)
    assert len(set(idents)) == 1
    # Plain methods of an async actor run on that same loop thread (as in Ray).
    assert hs.get(g.sync_ident.remote(), timeout=TIMEOUT) == idents[0]


def test_default_max_concurrency_of_async_actor_allows_many_calls(runtime) -> None:
    g = Gatherer.remote()
    parties = 200  # far above 1 (a sync actor's default); Ray's default is 1000
    assert len(hs.get([g.meet.remote(parties) for _ in range(parties)], timeout=TIMEOUT)) == parties


def test_max_concurrency_bounds_running_coroutines(runtime, wait_for) -> None:
    g = Gatherer.options(max_concurrency=2).remote()
    signal, tally = Signal.remote(), Tally.remote()
    gate = [signal.wait.remote()]
    refs = [g.hold_slot.remote(gate, tally) for _ in range(6)]
    wait_for(lambda: 2 in hs.get(tally.seen.remote()), what="two calls to hold the slots")
    # The other four wait for a slot: were the bound not kept, a third would be in
    # now and the peak each call reports would be above 2.
    signal.send.remote()
    peaks = hs.get(refs, timeout=TIMEOUT)
    assert max(peaks) == 2


def test_calls_start_in_submission_order(runtime) -> None:
    g = Gatherer.remote()
    hs.get([g.record.remote(i) for i in range(50)], timeout=TIMEOUT)
    assert hs.get(g.recorded.remote()) == list(range(50))


def test_await_ref_inside_async_method_does_not_block_other_calls(runtime) -> None:
    g = Gatherer.remote()
    signal = Signal.remote()
    relayed = g.relay.remote([wait_signal.remote(signal)])
    # While relay awaits a ref that is not ready, the actor still answers.
    assert hs.get(g.ping.remote(), timeout=TIMEOUT) == "pong"
    ready, _ = hs.wait([relayed], timeout=0.2)
    assert ready == []
    signal.send.remote()
    assert hs.get(relayed, timeout=TIMEOUT) == "released"
    assert hs.get(g.relay.remote([add.remote(2, 3)]), timeout=TIMEOUT) == 5


def test_awaited_ref_raises_the_task_error_class(runtime) -> None:
    g = Gatherer.remote()
    out = hs.get(g.relay_error.remote([fail.remote("bad input")]), timeout=TIMEOUT)
    assert out.startswith("caught ") and "bad input" in out


def test_cancel_running_async_call_cancels_its_coroutine(runtime, wait_for) -> None:
    g = Gatherer.remote()
    ref = g.sleep_long.remote()
    wait_for(lambda: hs.get(g.state.remote())["started"], what="the call to start")
    hs.cancel(ref)
    with pytest.raises(TaskCancelledError):
        hs.get(ref, timeout=TIMEOUT)
    assert hs.get(g.state.remote())["saw_cancel"] is True
    assert hs.get(g.ping.remote(), timeout=TIMEOUT) == "pong"  # the actor lives on


def test_cancel_call_waiting_for_a_slot_never_runs_it(runtime, wait_for) -> None:
    g = Gatherer.options(max_concurrency=1).remote()
    signal, tally = Signal.remote(), Tally.remote()
    gate = [signal.wait.remote()]
    first = g.mark.remote("first", gate, tally)
    wait_for(lambda: hs.get(tally.seen.remote()) == ["first"], what="the first call")
    second = g.mark.remote("second", gate, tally)  # waits for the only slot
    hs.cancel(second)
    with pytest.raises(TaskCancelledError):
        hs.get(second, timeout=TIMEOUT)
    signal.send.remote()
    assert hs.get(first, timeout=TIMEOUT) == "first"
    assert hs.get(g.state.remote())["ran"] == ["first"]


def test_cancel_of_force_on_actor_call_is_refused(runtime) -> None:
    g = Gatherer.remote()
    ref = g.sleep_long.remote()
    with pytest.raises(ValueError, match="force"):
        hs.cancel(ref, force=True)
    hs.cancel(ref)


@hs.remote
class Blocker:
    """A sync actor whose call blocks until a signal is sent."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def block(self, label: str, signal: object, marker: str) -> str:
        self.ran.append(label)
        with open(marker, "a") as fh:
            fh.write(label + "\n")
        hs.get(signal.wait.remote(), timeout=TIMEOUT)  # type: ignore[attr-defined]
        return label

    def history(self) -> list[str]:
        return self.ran


def test_cancel_queued_call_of_sync_actor_drops_it(runtime, wait_for, tmp_path) -> None:
    b = Blocker.remote()
    signal = Signal.remote()
    marker = tmp_path / "started"
    first = b.block.remote("first", signal, str(marker))
    second = b.block.remote("second", signal, str(marker))
    wait_for(marker.exists, what="the first call to start")
    # The running call of a sync actor is not interrupted; the queued one is dropped.
    hs.cancel(second)
    with pytest.raises(TaskCancelledError):
        hs.get(second, timeout=TIMEOUT)
    hs.cancel(first)
    signal.send.remote()
    assert hs.get(first, timeout=TIMEOUT) == "first"
    assert hs.get(b.history.remote(), timeout=TIMEOUT) == ["first"]


# --- refs in driver asyncio code ------------------------------------------------------


def test_await_ref_and_gather_in_driver(runtime) -> None:
    async def main() -> tuple[int, list[int]]:
        one = await add.remote(1, 2)
        many = await asyncio.gather(*[add.remote(i, i) for i in range(10)])
        return one, list(many)

    one, many = asyncio.run(main())
    assert one == 3
    assert many == [2 * i for i in range(10)]


def test_await_ref_raises_the_task_error(runtime) -> None:
    async def main() -> None:
        await fail.remote("nope")

    with pytest.raises(ValueError, match="nope") as info:
        asyncio.run(main())
    assert isinstance(info.value, TaskError)


def test_await_ref_does_not_block_the_event_loop(runtime) -> None:
    signal = Signal.remote()
    pending = wait_signal.remote(signal)

    async def release_later() -> None:
        await asyncio.sleep(0.05)
        signal.send.remote()

    async def main() -> str:
        # If awaiting blocked the loop thread, release_later could never run.
        value, _ = await asyncio.wait_for(asyncio.gather(pending, release_later()), TIMEOUT)
        return value  # type: ignore[no-any-return]

    assert asyncio.run(main()) == "released"


def test_ref_future_is_a_concurrent_future(runtime) -> None:
    future = add.remote(20, 22).future()
    assert future.result(timeout=TIMEOUT) == 42
    failing = fail.remote("through a future").future()
    error = failing.exception(timeout=TIMEOUT)
    assert isinstance(error, ValueError) and "through a future" in str(error)

    async def main() -> int:
        return await asyncio.wrap_future(add.remote(1, 1).future())  # type: ignore[no-any-return]

    assert asyncio.run(main()) == 2


def test_future_callbacks_may_use_the_api(runtime) -> None:
    """Callbacks run on a thread of their own, never under the node manager's lock."""
    done = threading.Event()
    seen: list[int] = []

    def callback(fut: object) -> None:
        seen.append(hs.get(add.remote(fut.result(), 1), timeout=TIMEOUT))  # type: ignore[attr-defined]
        done.set()

    add.remote(1, 1).future().add_done_callback(callback)
    assert done.wait(TIMEOUT)
    assert seen == [3]


def test_cancelled_await_leaves_the_ref_usable(runtime) -> None:
    signal = Signal.remote()
    pending = wait_signal.remote(signal)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pending, 0.1)

    asyncio.run(main())
    signal.send.remote()
    assert hs.get(pending, timeout=TIMEOUT) == "released"


@hs.remote
def awaits_in_a_task(refs: list[hs.ObjectRef]) -> int:
    async def main() -> int:
        values = await asyncio.gather(*refs)
        return sum(values)

    return asyncio.run(main())


def test_await_ref_inside_a_task_running_its_own_loop(runtime) -> None:
    refs = [add.remote(i, 0) for i in range(5)]
    assert hs.get(awaits_in_a_task.remote(refs), timeout=TIMEOUT) == 10


def test_as_future_on_running_loop(runtime) -> None:
    async def main() -> int:
        fut = add.remote(3, 3).as_future()
        assert isinstance(fut, asyncio.Future)
        return await fut  # type: ignore[no-any-return]

    start = time.monotonic()
    assert asyncio.run(main()) == 6
    assert time.monotonic() - start < TIMEOUT
