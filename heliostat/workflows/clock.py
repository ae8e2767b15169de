"""Time as heliostat's time-based logic sees it: a real clock, and a fake one for tests.

Everything that decides by time (the trigger loop's fire times, workflow leases and
their heartbeats) takes a :class:`Clock` instead of calling ``datetime.now``: tests
pass a :class:`FakeClock` and move time on with :meth:`FakeClock.advance`, so an
expiry or a missed interval needs no real waiting (trio's ``MockClock``).
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """A source of time: the current UTC time, and a wait that a wake event cuts short."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...

    def wait(self, until: dt.datetime, wake: threading.Event) -> bool:
        """Block until ``until`` or until ``wake`` is set; True if woken by ``wake``."""
        ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)`` and ``Event.wait`` with a timeout."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def wait(self, until: dt.datetime, wake: threading.Event) -> bool:
        timeout = (until - self.now()).total_seconds()
        if timeout <= 0:
            return wake.is_set()
        return wake.wait(timeout)


@dataclass(eq=False, slots=True)
class _Sleeper:
    until: dt.datetime
    wake: threading.Event
    timed_out: bool = field(default=False)


class FakeClock:
    """A clock that moves only when told, for tests (trio's ``MockClock``).

    ``wait`` blocks until :meth:`advance` (or :meth:`set`) reaches its deadline, which
    then sets the waiter's ``wake`` event, or until someone else sets ``wake``.
    :meth:`wait_for_sleepers` lets a test wait, without sleeping, until a loop thread is
    idle in ``wait`` before it moves time on.
    """

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(dt.UTC)
        self._cond = threading.Condition()
        self._sleepers: list[_Sleeper] = []

    def now(self) -> dt.datetime:
        with self._cond:
            return self._now

    def advance(self, delta: dt.timedelta | float) -> dt.datetime:
        """Move time forward by ``delta`` (seconds or a timedelta); returns the new now."""
        step = delta if isinstance(delta, dt.timedelta) else dt.timedelta(seconds=delta)
        if step < dt.timedelta(0):
            raise ValueError("a FakeClock never goes backwards")
        with self._cond:
            return self._move_to(self._now + step)

    def set(self, to: dt.datetime) -> dt.datetime:
        """Move time forward to ``to``."""
        with self._cond:
            if to < self._now:
                raise ValueError("a FakeClock never goes backwards")
            return self._move_to(to.astimezone(dt.UTC))

    def _move_to(self, to: dt.datetime) -> dt.datetime:
        self._now = to
        due = [s for s in self._sleepers if s.until <= to]
        for sleeper in due:
            sleeper.timed_out = True
            self._sleepers.remove(sleeper)
            sleeper.wake.set()
        self._cond.notify_all()
        return to

    def wait(self, until: dt.datetime, wake: threading.Event) -> bool:
        sleeper = _Sleeper(until=until, wake=wake)
        with self._cond:
            if self._now >= until:
                return False
            self._sleepers.append(sleeper)
            self._cond.notify_all()
        wake.wait()
        with self._cond:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)
                self._cond.notify_all()
            return not sleeper.timed_out

    @property
    def deadlines(self) -> list[dt.datetime]:
        """The times the threads blocked in :meth:`wait` wait for, earliest first."""
        with self._cond:
            return sorted(s.until for s in self._sleepers)

    @property
    def sleepers(self) -> int:
        """How many threads are blocked in :meth:`wait` now."""
        with self._cond:
            return len(self._sleepers)

    def wait_for_sleepers(self, n: int, timeout: float = 10.0) -> None:
        """Block until at least ``n`` threads are in :meth:`wait`.

        Raises:
            TimeoutError: they are not, after ``timeout`` real seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._sleepers) >= n, timeout):
                raise TimeoutError(
                    f"{len(self._sleepers)} of {n} threads are waiting on the FakeClock "
                    f"after {timeout} s"
                )
