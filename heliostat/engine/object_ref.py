"""ObjectRef, and the per-process counting that keeps referenced objects alive.

Reference counting protocol (ownership lives in the node manager's object table):

1. The manager counts *holds*: one per process that has at least one live
   ``ObjectRef`` for the object, plus *pins* (a task in flight whose arguments
   contain the ref, an object whose value contains it, lineage).
2. A process counts its own ``ObjectRef`` instances per id in a :class:`RefTracker`
   and talks to the manager only on the edges: it reports a *release* when its
   count falls to zero.
3. A process never reports an *add*. Refs come into being in exactly two ways, both
   already counted by the manager:
   - the process minted the id (``submit``, ``put``): the manager records the hold
     when it registers the object;
   - the process unpickled it from a value the manager handed over (task arguments,
     a ``get`` result): the manager added a hold for that process *before* sending
     the value. Unpickling *adopts* that hold; if the process already had a live ref
     for the id, the extra hold is released at once.
   So no window exists in which an object is referenced but uncounted.
4. ``__del__`` only appends the id to a deque (atomic, lock-free, safe from any
   thread and from inside a garbage collection). The runtime drains the deque at
   each API call and on its I/O loop's tick, and reports releases in one batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from heliostat.engine.ids import format_id
from heliostat.engine.serialization import note_ref

__all__ = [
    "ObjectID",
    "ObjectRef",
    "RefTracker",
    "install_async_support",
    "process_tracker",
    "set_process_tracker",
]


class RefTracker:
    """Counts the live refs (object refs and actor handles) of one process.

    ``report_release`` receives batches of ids whose local count reached zero (or
    extra holds to return) and must forward them to the manager, in order.
    """

    def __init__(self, report_release: Callable[[list[int]], None]) -> None:
        self._counts: dict[int, int] = {}
        self._dead: deque[int] = deque()
        self._lock = threading.Lock()
        self._report = report_release
        self.closed = False

    def minted(self, ident: int) -> None:
        """A ref to an id this process created (the manager holds for it already)."""
        with self._lock:
            self._counts[ident] = self._counts.get(ident, 0) + 1

    def adopted(self, ident: int) -> None:
        """A ref unpickled from a value the manager pre-held for this process."""
        with self._lock:
            count = self._counts.get(ident, 0)
            self._counts[ident] = count + 1
        if count:
            # We already held it: give the manager's extra hold back.
            self._dead.append(-ident - 1)

    def died(self, ident: int) -> None:
        """Called from ``__del__``: must not lock (it may run inside a locked region)."""
        self._dead.append(ident)

    def drain(self) -> None:
        """Turn queued deaths into releases and report them in one batch."""
        dead = self._dead
        if not dead or self.closed:
            return
        released: list[int] = []
        with self._lock:
            counts = self._counts
            while dead:
                ident = dead.popleft()
                if ident < 0:  # an extra hold to return, encoded as -(id)-1
                    released.append(-ident - 1)
                    continue
                count = counts.get(ident, 0) - 1
                if count > 0:
                    counts[ident] = count
                else:
                    counts.pop(ident, None)
                    released.append(ident)
        if released:
            self._report(released)

    def has_pending(self) -> bool:
        return bool(self._dead)

    def count(self, ident: int) -> int:
        return self._counts.get(ident, 0)


_process_tracker: RefTracker | None = None


def set_process_tracker(tracker: RefTracker | None) -> None:
    """Install the tracker that unpickled refs in this process adopt into."""
    global _process_tracker
    _process_tracker = tracker


def process_tracker() -> RefTracker | None:
    """The tracker of this process (None before init or after shutdown)."""
    return _process_tracker


# ``await ref`` and ``ref.future()`` are implemented in ``async_refs.py``, which needs
# the runtime (above this module); it installs them here when it is imported.
_await_ref: Callable[[ObjectRef], Any] | None = None
_ref_future: Callable[[ObjectRef], Any] | None = None


def install_async_support(
    await_ref: Callable[[ObjectRef], Any], ref_future: Callable[[ObjectRef], Any]
) -> None:
    """Provide the implementations of ``ObjectRef.__await__`` and ``ObjectRef.future``."""
    global _await_ref, _ref_future
    _await_ref, _ref_future = await_ref, ref_future


def _async_support() -> tuple[Callable[[ObjectRef], Any], Callable[[ObjectRef], Any]]:
    if _await_ref is None or _ref_future is None:
        raise RuntimeError("heliostat.engine.async_refs is not imported")
    return _await_ref, _ref_future


def _rebuild_ref(object_id: int) -> ObjectRef:
    return ObjectRef(object_id, _process_tracker, adopt=True)


class ObjectRef:
    """A reference to a value that exists, or will, in the object store.

    Pass it to tasks (top-level arguments are resolved to values before the task
    runs; refs nested in containers stay refs) or read it with ``get``. The value is
    kept alive while any ref to it exists anywhere in the cluster.
    """

    __slots__ = ("id", "_tracker", "__weakref__")

    def __init__(self, object_id: int, tracker: RefTracker | None, *, adopt: bool = False) -> None:
        self.id = object_id
        self._tracker = tracker
        if tracker is not None:
            if adopt:
                tracker.adopted(object_id)
            else:
                tracker.minted(object_id)

    def __del__(self) -> None:
        tracker = self._tracker
        if tracker is not None:
            tracker.died(self.id)

    def __reduce__(self) -> tuple[Any, ...]:
        note_ref(self.id)
        return (_rebuild_ref, (self.id,))

    def __copy__(self) -> ObjectRef:
        return ObjectRef(self.id, self._tracker)

    def __deepcopy__(self, memo: dict[int, Any]) -> ObjectRef:
        return ObjectRef(self.id, self._tracker)

    def __await__(self) -> Any:
        """``await ref`` in asyncio code: the value, without blocking the event loop."""
        return _async_support()[0](self)

    def future(self) -> Any:
        """A ``concurrent.futures.Future`` that gets the value (or the error) when ready.

        ``asyncio.wrap_future(ref.future())`` turns it into an asyncio future.
        """
        return _async_support()[1](self)

    def as_future(self) -> Any:
        """An asyncio future for the value, on the running loop (as Ray's ``as_future``)."""
        import asyncio  # not at module level: every worker would pay for it

        return asyncio.ensure_future(self._awaitable())

    async def _awaitable(self) -> Any:
        return await self

    def hex(self) -> str:
        """The id as fixed-width hex (as in Ray)."""
        return format_id(self.id)

    def __repr__(self) -> str:
        return f"ObjectRef({format_id(self.id)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


ObjectID = ObjectRef
"""Ray's first name for :class:`ObjectRef`, which Ray 2 still exports (``ray.ObjectID``)."""
