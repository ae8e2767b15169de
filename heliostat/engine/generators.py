"""What a caller holds for a generator task: ``ObjectRefGenerator`` (streaming) and
``DynamicObjectRefGenerator`` (``num_returns="dynamic"``).

How the stream works inside the engine is told in ``streams.py``. Here, an
:class:`ObjectRefGenerator` is the caller's cursor over it: it owns the stream id (the
task's one return id; ``completed()`` returns a ref to it) and the index of the next
item. ``next()`` asks the node manager for that item and blocks until the task has
yielded it; ``__anext__`` asks without blocking the event loop. Dropping the generator
drops the stream id, which tells the node manager to release what was never asked for.

``wait()`` takes generators as well as refs (as Ray's does): a generator is ready when
``next()`` would not block, that is when its next item has been yielded or the stream
has ended. To find out without blocking, wait asks for the next item ahead of time
(:meth:`ObjectRefGenerator._prefetch`); the answer is kept and the following ``next()``
or ``__anext__`` takes it, so no item is skipped or asked for twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from heliostat.engine.async_refs import deliver
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.runtime import current_client

if TYPE_CHECKING:
    import asyncio

__all__ = ["DynamicObjectRefGenerator", "ObjectRefGenerator", "wait_with_generators"]


class _Ahead:
    """The answer to a ``gen_next`` asked ahead of ``next()`` (by ``wait``).

    ``done`` is set once the reply came; then exactly one of ``ref`` (the item, its
    hold adopted), ``end`` (the stream is over) or ``error`` is meaningful.
    """

    __slots__ = ("_lock", "_wakers", "done", "end", "error", "ref")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ref: ObjectRef | None = None
        self.end = False
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._wakers: list[threading.Event] = []  # set on the reply (each waiting wait())

    def add_waker(self, wakeup: threading.Event) -> None:
        with self._lock:
            if not self.done.is_set():
                self._wakers.append(wakeup)
                return
        wakeup.set()

    def settle(self) -> None:
        """Mark the answer recorded and wake whoever waits for it."""
        with self._lock:
            self.done.set()
            wakers, self._wakers = self._wakers, []
        for waker in wakers:
            waker.set()


class ObjectRefGenerator:
    """The refs a streaming generator task yields, in order, as soon as each is yielded.

    Returned by ``.remote()`` of a generator function or method (``num_returns`` left
    out or ``"streaming"``). Iterate it (``for ref in gen``, ``next(gen)``) or, in
    asyncio code, ``async for ref in gen`` / ``await gen.__anext__()``. Each ref is
    ready when returned. If the generator raised, the ref after the last yielded
    value raises that error at ``get``, and iteration stops after it. Not thread-safe,
    and not serializable (as in Ray).

    Example:
        ```python
        @hs.remote
        def count(n):
            yield from range(n)

        [hs.get(ref) for ref in count.remote(3)]  # [0, 1, 2]
        ```
    """

    def __init__(self, completed: ObjectRef) -> None:
        self._completed = completed
        self._index = 0
        self._finished = False
        # An item asked for by a cancelled ``__anext__``: its answer is kept for the
        # next call, so no item is skipped.
        self._pending: asyncio.Future[ObjectRef | None] | None = None
        # The next item asked for by ``wait()``; ``next``/``__anext__`` take it first.
        self._ahead: _Ahead | None = None

    def completed(self) -> ObjectRef:
        """A ref that is ready when the task ends; it raises if the task failed."""
        return self._completed

    def is_finished(self) -> bool:
        """Whether iteration reached the end (``next`` raised StopIteration)."""
        return self._finished

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        """The next item's ref; blocks until the task yields it."""
        if self._finished:
            raise StopIteration
        if self._ahead is not None:
            self._ahead.done.wait()
            return self._take_ahead(StopIteration)
        client = current_client()
        object_id: int = client._call("gen_next", self._completed.id, self._index)
        return self._advance(object_id, client.tracker)

    def _prefetch(self, wakeup: threading.Event) -> _Ahead:
        """Ask for the next item now, without blocking; ``wakeup`` is set on the reply."""
        ahead = self._ahead
        if ahead is not None:
            ahead.add_waker(wakeup)
            return ahead
        ahead = self._ahead = _Ahead()
        ahead.add_waker(wakeup)
        tracker = current_client().tracker

        def on_reply(ok: bool, value: Any) -> None:
            # Runs on an internal thread (in the driver, with the node manager's lock
            # held): only record the answer and wake the waiters.
            if not ok:
                ahead.error = value if isinstance(value, BaseException) else RuntimeError(value)
            elif value:
                ahead.ref = ObjectRef(value, tracker, adopt=True)
            else:
                ahead.end = True
            ahead.settle()

        current_client()._call_async("gen_next", (self._completed.id, self._index), on_reply)
        return ahead

    def _next_ready(self) -> bool:
        """Whether ``next()`` would return (or stop) without blocking; set after _prefetch."""
        return self._finished or (self._ahead is not None and self._ahead.done.is_set())

    def _take_ahead(self, stop: type[Exception]) -> ObjectRef:
        ahead = self._ahead
        assert ahead is not None and ahead.done.is_set()
        self._ahead = None
        if ahead.error is not None:
            raise ahead.error
        if ahead.end or ahead.ref is None:
            self._finished = True
            raise stop
        self._index += 1
        return ahead.ref

    def _advance(self, object_id: int, tracker: Any) -> ObjectRef:
        if object_id == 0:
            self._finished = True
            raise StopIteration
        self._index += 1
        # The node manager holds the item for this process; the ref adopts that hold.
        return ObjectRef(object_id, tracker, adopt=True)

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        """The next item's ref, awaited without blocking the event loop."""
        import asyncio  # not at module level: it costs every import of heliostat ~15 ms

        if self._finished:
            raise StopAsyncIteration
        if self._ahead is not None:
            if not self._ahead.done.is_set():
                await asyncio.to_thread(self._ahead.done.wait)
            return self._take_ahead(StopAsyncIteration)
        client = current_client()
        pending = self._pending
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = self._pending = _ask_next(client, self._completed.id, self._index)
        ref = await asyncio.shield(pending)
        self._pending = None
        if ref is None:
            self._finished = True
            raise StopAsyncIteration
        self._index += 1
        return ref

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "An ObjectRefGenerator cannot be passed to another task or actor (as in Ray); "
            "pass the refs it yields, or use num_returns='dynamic'."
        )

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._completed.hex()}, next={self._index})"


# How long a wait over refs and generators together waits on the refs before looking
# at the generators again. Only such mixed waits poll; a wait over refs alone or over
# generators alone blocks until it is answered.
_MIXED_SLICE_S = 0.02


def wait_with_generators(
    client: Any,
    items: Sequence[ObjectRef | ObjectRefGenerator],
    num_returns: int,
    timeout: float | None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """``wait()`` over refs and generators: a generator is ready when ``next`` won't block.

    Each generator's next item is asked for ahead (kept for its next ``next()``); refs
    are waited on by the node manager as usual. The two lists keep the input order.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    wakeup = threading.Event()
    gens = [g for g in items if isinstance(g, ObjectRefGenerator)]
    refs = [r for r in items if not isinstance(r, ObjectRefGenerator)]
    for gen in gens:
        if not gen._finished:
            gen._prefetch(wakeup)
    ready_refs: list[ObjectRef] = []
    while True:
        ready_gens = [g for g in gens if g._next_ready()]
        need = num_returns - len(ready_gens)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if refs and need > 0:
            ready_refs, _ = client.wait(refs, min(need, len(refs)), 0, fetch_local)
        if need <= len(ready_refs) or left == 0.0:
            break
        if refs and len(ready_refs) < len(refs):
            # Refs not all ready: wait on them a little, then look at the generators.
            step = _MIXED_SLICE_S if left is None else min(_MIXED_SLICE_S, left)
            client.wait(refs, min(need, len(refs)), step, fetch_local)
        else:
            wakeup.wait(left)
            wakeup.clear()
    ready_ids = {id(x) for x in ready_gens} | {id(x) for x in ready_refs}
    ready: list[Any] = []
    not_ready: list[Any] = []
    for item in items:
        (ready if id(item) in ready_ids and len(ready) < num_returns else not_ready).append(item)
    return ready, not_ready


def _ask_next(client: Any, stream_id: int, index: int) -> asyncio.Future[ObjectRef | None]:
    """Ask the node manager for item ``index``; the future gets its ref (None: the end)."""
    import asyncio

    loop = asyncio.get_running_loop()
    future: asyncio.Future[ObjectRef | None] = loop.create_future()

    def on_reply(ok: bool, value: Any) -> None:
        if ok and value:
            # Adopt the node manager's hold now: if nobody takes the ref (the loop is
            # gone), dropping it releases the item.
            value = ObjectRef(value, client.tracker, adopt=True)
        elif ok:
            value = None
        deliver(loop, future, ok, value)

    client._call_async("gen_next", (stream_id, index), on_reply)
    return future


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: the refs of what it yielded.

    Iterate it for the refs in yield order; if the generator raised, the last ref
    raises that error at ``get``. It can be passed to other tasks (its refs travel
    with it).
    """

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
