"""What a caller holds for a generator task: ``ObjectRefGenerator`` (streaming) and
``DynamicObjectRefGenerator`` (``num_returns="dynamic"``).

How the stream works inside the engine is told in ``streams.py``. Here, an
:class:`ObjectRefGenerator` is the caller's cursor over it: it owns the stream id (the
task's one return id; ``completed()`` returns a ref to it) and the index of the next
item. ``next()`` asks the node manager for that item and blocks until the task has
yielded it; ``__anext__`` asks without blocking the event loop. Dropping the generator
drops the stream id, which tells the node manager to release what was never asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from heliostat.engine.async_refs import deliver
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.runtime import current_client

if TYPE_CHECKING:
    import asyncio

__all__ = ["DynamicObjectRefGenerator", "ObjectRefGenerator"]


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
        client = current_client()
        object_id: int = client._call("gen_next", self._completed.id, self._index)
        return self._advance(object_id, client.tracker)

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
