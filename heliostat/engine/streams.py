"""Generator tasks: how ``num_returns`` names them, and the node manager's record of a stream.

A task or actor method whose function is a generator returns its values one at a time.
Two forms exist, as in Ray:

* ``num_returns="streaming"`` (the default for generator functions): the caller gets an
  ``ObjectRefGenerator`` at once; the worker reports each yielded value as soon as it
  is yielded, and the caller's ``next()`` returns a ref to it while the task still runs.
* ``num_returns="dynamic"`` (Ray's older form): the task has one return value, an
  iterable of refs to the yielded values, ready when the generator is exhausted.

Inside the engine a generator task is an ordinary task with one return id, the
*stream id*: its value is stored when the task ends (``completed()`` in Ray), and the
yielded values are extra objects the worker mints and reports with the ``gen_item``
verb. The node manager keeps one :class:`StreamState` per streaming task, keyed by the
stream id:

1. The worker reports item ``index`` with an object id it minted. The first report of
   each index is stored and owned by the caller (the caller holds it, as for a task's
   return value); a report of an index already stored is a retry replaying the
   generator and is dropped (Ray retries a generator task from the start, assuming it
   is deterministic).
2. The caller asks for item ``i`` (``gen_next``); the answer is its object id, or 0 when
   the stream ended with fewer items, or it waits.
3. A failure of the task (an exception in the generator, a crashed worker after its
   retries, a cancellation) is stored as one more item that raises at ``get``, after
   the items yielded before it; then the stream ends.
4. When the caller drops the generator (its stream id's count falls to zero), the
   items it never asked for are released, and items still to come are dropped.
5. When the task keeps lineage (a task, not an actor method, with ``max_retries``
   other than 0), each stored item's entry keeps the task's spec and the spec notes
   the item's id (``TaskSpec.item_ids``), as a task's return values are rebuilt: a
   lost item runs the generator again, and that run yields item ``i`` under the id
   noted for ``i`` (the worker is sent the ids), so the caller's ref is filled and
   items still present drop the replay. Items the run does not yield again end with
   an ObjectLostError (``ObjectDirectory.items_not_yielded``).

The state here is pure: the node manager does the I/O and the object table work.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = [
    "DYNAMIC",
    "MANAGER_PROCESS_INDEX",
    "STREAMING",
    "StreamState",
    "is_generator_function",
    "parse_num_returns",
]

# ``num_returns`` codes for generator tasks (positive values are a fixed count).
DYNAMIC = -1
STREAMING = -2

# The process index in the ids the node manager mints itself (the error item that ends
# a failed stream); no worker gets this index.
MANAGER_PROCESS_INDEX = (1 << 24) - 1

_NAMED = {"streaming": STREAMING, "dynamic": DYNAMIC}


def is_generator_function(fn: Any) -> bool:
    """Whether ``fn`` is a generator or async generator function (bound methods too)."""
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def parse_num_returns(value: Any, *, what: str, generator: bool) -> int:
    """The ``num_returns`` code for an option value.

    Args:
        value: what the user gave (None when not given).
        what: names the function or method in error messages.
        generator: whether the function is a generator function: then the default is
            ``"streaming"``, as in Ray.

    Returns:
        A positive count, :data:`STREAMING` or :data:`DYNAMIC`.

    Raises:
        TypeError: not an int or one of the two names.
        ValueError: an int below 1, or an unknown name.
    """
    if value is None:
        return STREAMING if generator else 1
    if isinstance(value, str):
        code = _NAMED.get(value)
        if code is None:
            raise ValueError(
                f"num_returns must be a positive int, 'streaming' or 'dynamic' for {what}, "
                f"got {value!r}."
            )
        return code
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"num_returns must be an int, 'streaming' or 'dynamic' for {what}, "
            f"not {type(value).__name__}."
        )
    if value < 1:
        raise ValueError(f"num_returns must be a positive int for {what}, got {value!r}.")
    return value


# A caller waiting for an item: (index, the process index, reply(ok, value)).
StreamWaiter = tuple[int, int, Callable[[bool, Any], None]]


class StreamState:
    """The items of one streaming generator task, in yield order.

    Invariants: ``items[i]`` is the object id of the value yielded at index ``i`` (or
    of the error stored after the last one); ``delivered`` counts the leading items the
    caller was sent (it holds those itself); once ``finished``, no item is added.
    """

    __slots__ = ("owner", "items", "finished", "dropped", "delivered", "waiters", "lineage")

    def __init__(self, owner: int, lineage: Any = None) -> None:
        self.owner = owner  # process index of the caller, which owns the items
        # The task's spec when its items can be rebuilt from lineage (the items' entries
        # keep it, as a task's return values do); None otherwise.
        self.lineage = lineage
        self.items: list[int] = []
        self.finished = False
        self.dropped = False  # the caller let go of the generator
        self.delivered = 0
        self.waiters: list[StreamWaiter] = []

    def accepts(self, index: int) -> bool:
        """Whether a reported item is new (not a retry's replay, not after the end)."""
        return not self.finished and not self.dropped and index == len(self.items)

    def add(self, object_id: int) -> list[StreamWaiter]:
        """Store the next item; returns the waiters to answer with it."""
        index = len(self.items)
        self.items.append(object_id)
        ready = [w for w in self.waiters if w[0] == index]
        if ready:
            self.waiters = [w for w in self.waiters if w[0] != index]
            self.delivered = max(self.delivered, index + 1)
        return ready

    def lookup(self, index: int) -> int | None:
        """The answer for item ``index`` now: its id, 0 for the end, None to wait."""
        if index < len(self.items):
            self.delivered = max(self.delivered, index + 1)
            return self.items[index]
        if self.finished:
            return 0
        return None

    def finish(self) -> list[StreamWaiter]:
        """End the stream; returns the waiters to answer with the end (0)."""
        self.finished = True
        waiters, self.waiters = self.waiters, []
        return waiters

    def drop(self) -> list[int]:
        """The caller let go: returns the items it holds but never received."""
        self.dropped = True
        undelivered = self.items[self.delivered :]
        self.delivered = len(self.items)
        return undelivered
