"""``ActorPool``: spread work over a fixed set of actors (Ray's ``ray.util.ActorPool``).

The pool hands each submitted value to an idle actor (``fn(actor, value)`` returns the
ref); when every actor is busy the submission waits in the pool until one frees up,
which happens when its result is taken with ``get_next`` / ``get_next_unordered``.
``get_next`` returns results in submission order; ``get_next_unordered`` as they
finish. The two must not be mixed once results are taken out of order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from heliostat.engine import ActorHandle, ObjectRef, get, wait

__all__ = ["ActorPool"]

_Submit = Callable[[Any, Any], Any]


def _key(future: Any) -> Any:
    """A dict key for what ``fn`` returned: one ref, or a tuple of several."""
    return tuple(future) if isinstance(future, list) else future


def _first_ref(future: Any) -> ObjectRef:
    if isinstance(future, (list, tuple)):
        return future[0]  # type: ignore[no-any-return]
    if not isinstance(future, ObjectRef):
        raise TypeError(
            f"ActorPool: the submitted function must return an ObjectRef (call "
            f"actor.method.remote(...)), not {type(future).__name__}."
        )
    return future


class ActorPool:
    """A pool of actors that work through submitted values.

    Args:
        actors: The actors to use; each runs at most one of the pool's calls at a time.

    Example:
        >>> pool = ActorPool([Worker.remote(), Worker.remote()])
        >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))
        [2, 4, 6]
    """

    def __init__(self, actors: Iterable[ActorHandle]) -> None:
        actors = list(actors)
        for actor in actors:
            if not isinstance(actor, ActorHandle):
                raise TypeError(f"ActorPool takes actor handles, not {type(actor).__name__}.")
        self._idle: list[ActorHandle] = actors
        # Invariant: a busy actor appears in exactly one ``_busy`` entry; a submission
        # waits in ``_waiting`` only while ``_idle`` is empty.
        self._busy: dict[Any, tuple[int, ActorHandle]] = {}  # future key -> (index, actor)
        self._by_index: dict[int, Any] = {}  # submission index -> future
        self._next_index = 0  # index of the next submission that reaches an actor
        self._next_return = 0  # index get_next returns next
        self._waiting: list[tuple[_Submit, Any]] = []

    def map(self, fn: _Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn(actor, value)`` to every value; yield the results in order.

        Results of earlier submissions not taken yet are dropped first.
        """
        self._drop_pending_results()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: _Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Like :meth:`map`, yielding each result as soon as it is ready."""
        self._drop_pending_results()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _drop_pending_results(self) -> None:
        while self.has_next():
            self.get_next_unordered(timeout=0, ignore_if_timedout=True)

    def submit(self, fn: _Submit, value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or once one is free."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        try:
            _first_ref(future)
        except TypeError:
            self._idle.append(actor)
            raise
        index = self._next_index
        self._next_index += 1
        self._busy[_key(future)] = (index, actor)
        self._by_index[index] = future

    def has_next(self) -> bool:
        """Whether some submitted call's result has not been taken yet."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order.

        Args:
            timeout: Seconds to wait for it; None waits as long as it takes.
            ignore_if_timedout: On a timeout, drop that call (its actor goes back to
                the pool) before raising, so the next call moves on.

        Raises:
            StopIteration: no result is pending.
            ValueError: results were taken out of order with ``get_next_unordered``.
            TimeoutError: the result was not ready within ``timeout``.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return not in self._by_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._by_index[self._next_return]
        timed_out = False
        if timeout is not None:
            ready, _ = wait([_first_ref(future)], timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError(f"Timed out after {timeout} s waiting for a result.")
                timed_out = True
        del self._by_index[self._next_return]
        self._next_return += 1
        _index, actor = self._busy.pop(_key(future))
        self._return_actor(actor)
        if timed_out:
            raise TimeoutError(
                f"Timed out after {timeout} s waiting for a result; that call was dropped."
            )
        return get(future)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """The result of whichever pending call finishes first.

        Args:
            timeout: Seconds to wait; None waits as long as it takes.
            ignore_if_timedout: On a timeout, drop the oldest pending call (its actor
                goes back to the pool) and return ``None`` instead of raising, as
                Ray's pool does.

        Returns:
            The result, or ``None`` after a timeout with ``ignore_if_timedout``.

        Raises:
            StopIteration: no result is pending.
            TimeoutError: no result was ready within ``timeout`` (and
                ``ignore_if_timedout`` is false).
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        firsts = {
            _first_ref(future): key
            for key, (_i, _a) in self._busy.items()
            for future in [self._by_index[_i]]
        }
        ready, _ = wait(list(firsts), num_returns=1, timeout=timeout)
        if ready:
            key = firsts[ready[0]]
        elif ignore_if_timedout:
            key = min(self._busy, key=lambda k: self._busy[k][0])
        else:
            raise TimeoutError(f"Timed out after {timeout} s waiting for a result.")
        index, actor = self._busy.pop(key)
        future = self._by_index.pop(index)
        self._next_return = max(self._next_return, index + 1)
        self._return_actor(actor)
        return get(future) if ready else None

    def _return_actor(self, actor: ActorHandle) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.pop(0))

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> ActorHandle | None:
        """Take an idle actor out of the pool; None if none is free."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: ActorHandle) -> None:
        """Add an actor to the pool (it starts on a waiting submission, if any).

        Raises:
            ValueError: the actor is in the pool already.
        """
        if not isinstance(actor, ActorHandle):
            raise TypeError(f"push() takes an actor handle, not {type(actor).__name__}.")
        busy = [a for _i, a in self._busy.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
