"""``Queue``: a first-in first-out queue shared by tasks and actors (Ray's ``ray.util.queue``).

The items live in an actor, so any process holding the ``Queue`` (it pickles as its
actor handle) puts and gets through the same queue. Blocking ``put``/``get`` wait
inside the actor on a condition variable, one actor thread per waiting caller (the
actor runs with ``max_concurrency`` threads), so one caller blocked on an empty queue
does not stop another caller's ``put``. The driver side turns the actor's answer into
:class:`Empty` / :class:`Full`, which derive from the standard library's
``queue.Empty`` / ``queue.Full``.
"""

from __future__ import annotations

import collections
import queue as _stdlib_queue
import threading
import time
from collections.abc import Iterable
from typing import Any

from heliostat.engine import ActorHandle, get, kill, remote, wait

__all__ = ["Empty", "Full", "Queue"]

# Threads of the queue actor: how many callers may wait in put/get at once.
_MAX_WAITERS = 1000


class Empty(_stdlib_queue.Empty):
    """``get`` found the queue empty (after ``timeout``, or at once without blocking)."""


class Full(_stdlib_queue.Full):
    """``put`` found the queue full (after ``timeout``, or at once without blocking)."""


class _QueueState:
    """The queue itself, inside its actor: a deque guarded by one condition."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: collections.deque[Any] = collections.deque()
        self.cond = threading.Condition()
        self.waiting = 0  # calls blocked in put/get right now

    def _full(self) -> bool:
        return 0 < self.maxsize <= len(self.items)

    def qsize(self) -> int:
        return len(self.items)

    def put(self, item: Any, timeout: float | None) -> bool:
        """Add ``item``, waiting up to ``timeout`` (0: not at all); False if still full."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self._full():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wait(remaining)
            self.items.append(item)
            self.cond.notify_all()
            return True

    def put_batch(self, items: list[Any]) -> str:
        """Add all of ``items`` or none; the refusal's message, or "" when added."""
        with self.cond:
            if self.maxsize > 0 and len(items) + len(self.items) > self.maxsize:
                return (
                    f"Cannot add {len(items)} items to queue of size {len(self.items)} "
                    f"and maxsize {self.maxsize}."
                )
            self.items.extend(items)
            self.cond.notify_all()
            return ""

    def get(self, timeout: float | None) -> tuple[bool, Any]:
        """Take the oldest item, waiting up to ``timeout``; (False, None) if none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not self.items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False, None
                self._wait(remaining)
            item = self.items.popleft()
            self.cond.notify_all()
            return True, item

    def _wait(self, timeout: float | None) -> None:
        """Wait on the condition (held), counted as a blocked call while it waits."""
        self.waiting += 1
        try:
            self.cond.wait(timeout)
        finally:
            self.waiting -= 1
            self.cond.notify_all()  # a drain() may be waiting for the count to drop

    def drain(self, grace_period_s: float) -> bool:
        """Wait up to ``grace_period_s`` for blocked puts and gets to end; True if they did."""
        deadline = time.monotonic() + grace_period_s
        with self.cond:
            while self.waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def get_batch(self, n: int) -> tuple[bool, list[Any]]:
        """Take the ``n`` oldest items, or none if fewer are there."""
        with self.cond:
            if n > len(self.items):
                return False, []
            out = [self.items.popleft() for _ in range(n)]
            self.cond.notify_all()
            return True, out


_QueueActor = remote(max_concurrency=_MAX_WAITERS)(_QueueState)


def _check_timeout(block: Any, timeout: Any) -> float | None:
    """The wait in seconds the actor should use: 0 without blocking, None forever."""
    if not isinstance(block, bool):
        raise TypeError(f"block must be a bool, not {type(block).__name__}.")
    if not block:
        return 0.0
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}.")
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return float(timeout)


class Queue:
    """A FIFO queue that tasks, actors and the driver share.

    Args:
        maxsize: The most items it holds; 0 or less means no limit.
        actor_options: Options of the actor that holds the items
            (``Actor.options(**actor_options)``), e.g. ``{"name": "q"}``.

    Example:
        >>> q = Queue(maxsize=10)
        >>> q.put(1)
        >>> q.get()
        1
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}.")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options must be a dict, not {type(actor_options).__name__}.")
        self.maxsize = maxsize
        self.actor: ActorHandle = _QueueActor.options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return int(get(self.actor.qsize.remote()))

    def qsize(self) -> int:
        """The number of items in the queue."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return self.size() == 0

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, without a limit)."""
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item`` at the back.

        Args:
            item: Any picklable value.
            block: Wait for room if the queue is full (else raise :class:`Full` at once).
            timeout: With ``block``, the most seconds to wait; None waits forever.

        Raises:
            Full: no room (at once, or after ``timeout``).
            ValueError: a negative ``timeout``.
        """
        wait = _check_timeout(block, timeout)
        if not get(self.actor.put.remote(item, wait)):
            raise Full

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """:meth:`put` for asyncio code: waits without blocking the event loop."""
        _check_timeout(block, timeout)
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.put, item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the item at the front.

        Args:
            block: Wait for an item if the queue is empty (else raise :class:`Empty`).
            timeout: With ``block``, the most seconds to wait; None waits forever.

        Raises:
            Empty: no item (at once, or after ``timeout``).
            ValueError: a negative ``timeout``.
        """
        wait = _check_timeout(block, timeout)
        ok, item = get(self.actor.get.remote(wait))
        if not ok:
            raise Empty
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """:meth:`get` for asyncio code: waits without blocking the event loop."""
        _check_timeout(block, timeout)
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.get, block, timeout)

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add every item of ``items`` at once, or none of them.

        Raises:
            TypeError: ``items`` is not iterable.
            Full: they do not all fit.
        """
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        refusal = get(self.actor.put_batch.remote(list(items)))
        if refusal:
            raise Full(refusal)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the ``num_items`` oldest items, or none.

        Raises:
            TypeError: ``num_items`` is not an int.
            ValueError: ``num_items`` is negative.
            Empty: fewer items are in the queue.
        """
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        ok, items = get(self.actor.get_batch.remote(num_items))
        if not ok:
            raise Empty(f"Cannot get {num_items} items from the queue.")
        return list(items)

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Stop the queue's actor; its items are gone and later calls fail.

        Args:
            force: Kill the actor at once: callers blocked in ``put``/``get`` see
                ``ActorDiedError``.
            grace_period_s: Without ``force``, how long calls blocked in ``put``/``get``
                may still be served (or time out as they asked) before the actor is
                killed; ``shutdown`` returns when they have ended or the period is over.
        """
        if not isinstance(force, bool):
            raise TypeError(f"force must be a bool, not {type(force).__name__}.")
        if isinstance(grace_period_s, bool) or not isinstance(grace_period_s, (int, float)):
            raise TypeError("grace_period_s must be a number.")
        if grace_period_s < 0:
            raise ValueError(f"grace_period_s must be >= 0, got {grace_period_s!r}.")
        if self.actor is not None:
            if not force:
                wait([self.actor.drain.remote(float(grace_period_s))], timeout=grace_period_s + 5)
            kill(self.actor)
            self.actor = None  # type: ignore[assignment]
