"""Workflow leases: who may run a workflow, decided purely; kept alive by a keeper thread.

A running workflow is run by exactly one driver. The right to run it is a *lease* kept
in the workflow's SQL row: an owner (a token unique to one run of one driver), the
owner's host and pid, when it was taken, its last heartbeat, its expiry, and a
*generation*, the fencing token.

The protocol:

1. **Take.** A driver that starts or resumes a workflow takes its lease in one
   transaction that reads the row under a lock and asks :func:`decide_takeover`. A
   lease is *live* while it has an owner and has not expired, unless its owner runs
   on this host and its process is gone (then nobody need wait for the expiry). A
   live lease of another owner is refused (:class:`~heliostat.exceptions.WorkflowLeaseError`
   naming host, pid and since when); otherwise the driver writes itself in as owner
   and bumps the generation. Owners are per run, not per process: two runs of one
   workflow in one process exclude each other like two processes do.
2. **Fence.** Every lineage write of the run (each group commit, the final status)
   happens in a transaction that first updates the row *where the generation is
   still the one the driver took*. If another driver took over meanwhile (the first
   one was paused past its lease, say), the update matches no row, the transaction
   is rolled back, and the driver stops its run at once: it writes nothing more and
   starts no further step. The same update renews the lease.
3. **Heartbeat.** Between commits (a long step), the :class:`LeaseKeeper` renews every
   held lease every third of its timeout, fenced the same way; a renewal that
   matches no row tells the run it lost its lease.
4. **Release.** The run's last transaction clears the owner (fenced).

Why a generation and not just the owner: a lease that expired and was taken by
another driver, then released, then taken again by the first driver's *own* next
run must not let the first run's stale writes through. The generation never repeats.

Time comes from an injected clock (:class:`~heliostat.workflows.clock.Clock`), so
tests move time past an expiry without waiting.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from heliostat.workflows.clock import Clock

__all__ = [
    "DEFAULT_LEASE_TIMEOUT",
    "Lease",
    "LeaseHolder",
    "LeaseKeeper",
    "LeaseOwner",
    "Refuse",
    "Take",
    "decide_takeover",
    "holder_is_live",
    "lease_gone",
    "lease_timeout",
]

log = logging.getLogger("heliostat.workflows")

DEFAULT_LEASE_TIMEOUT = 6.0
"""Seconds a lease lasts without a heartbeat (``HELIOSTAT_LEASE_TIMEOUT`` overrides)."""


def lease_timeout() -> float:
    """The lease timeout in seconds: ``HELIOSTAT_LEASE_TIMEOUT``, else the default.

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get("HELIOSTAT_LEASE_TIMEOUT")
    if raw is None:
        return DEFAULT_LEASE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"HELIOSTAT_LEASE_TIMEOUT must be a number of seconds > 0, not {raw!r}.")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseOwner:
    """One run of one driver: the token written into a lease it holds."""

    owner: str
    host: str
    pid: int

    @staticmethod
    def new() -> LeaseOwner:
        """A fresh owner for a run starting in this process."""
        host = socket.gethostname()
        pid = os.getpid()
        return LeaseOwner(owner=f"{host}:{pid}:{uuid.uuid4().hex[:12]}", host=host, pid=pid)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseHolder:
    """The lease columns of a workflow row as read (owner ``None``: nobody holds it)."""

    owner: str | None
    host: str | None
    pid: int | None
    acquired_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    expires_at: dt.datetime | None
    generation: int

    def describe(self) -> str:
        """``host:pid since 2026-12-02 10:00:00 UTC``, for messages."""
        since = f"{self.acquired_at:%Y-%m-%d %H:%M:%S} UTC" if self.acquired_at else "?"
        return f"{self.host}, pid {self.pid}, since {since}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A lease this process holds: what every fenced write of the run checks."""

    workflow_id: str
    owner: LeaseOwner
    generation: int
    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Take:
    """Decision: write the new owner in with generation ``generation``."""

    generation: int
    expires_at: dt.datetime
    previous: LeaseHolder
    previous_live: bool  # False: a dead holder's lease is taken over


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    """Decision: somebody else holds a live lease."""

    holder: LeaseHolder


def holder_is_live(
    holder: LeaseHolder,
    now: dt.datetime,
    *,
    this_host: str,
    pid_exists: Callable[[int], bool],
) -> bool:
    """Whether ``holder`` still protects its workflow at ``now``.

    Not live: nobody holds it, or it expired, or its owner ran on this host and its
    process no longer exists (no need to wait out the expiry then).
    """
    if holder.owner is None or holder.expires_at is None:
        return False
    if holder.host == this_host and holder.pid and not pid_exists(holder.pid):
        return False
    return holder.expires_at > now


def lease_gone(
    holder: LeaseHolder,
    now: dt.datetime,
    *,
    grace: dt.timedelta,
    this_host: str,
    pid_exists: Callable[[int], bool],
) -> bool:
    """Whether ``holder``'s driver has surely stopped: no owner, its process on this
    host has exited, or its lease lapsed more than ``grace`` ago (a driver riding out a
    database outage renews a lapsed lease once it can)."""
    if holder.owner is None or holder.expires_at is None:
        return True
    if holder.host == this_host and holder.pid and not pid_exists(holder.pid):
        return True
    return holder.expires_at + grace <= now


def decide_takeover(
    holder: LeaseHolder,
    me: LeaseOwner,
    now: dt.datetime,
    timeout: float,
    *,
    pid_exists: Callable[[int], bool],
) -> Take | Refuse:
    """Whether ``me`` may take the lease ``holder`` describes, at ``now``.

    ``me`` is a fresh owner (one per run), so a live lease is refused whoever holds
    it, this process's other runs included.
    """
    live = holder_is_live(holder, now, this_host=me.host, pid_exists=pid_exists)
    if live and holder.owner != me.owner:
        return Refuse(holder=holder)
    return Take(
        generation=holder.generation + 1,
        expires_at=now + dt.timedelta(seconds=timeout),
        previous=holder,
        previous_live=live,
    )


class SupportsRenewal(Protocol):
    """What the keeper needs from the workflow store."""

    def renew_leases(self, leases: list[Lease], now: dt.datetime) -> list[str]:
        """Renew each lease (fenced); return the workflow ids whose lease was lost."""
        ...


class SupportsPublish(Protocol):
    """Where a renewed lease's deadline is published (a :class:`LeaseBeacon`)."""

    def publish(self, deadline: float) -> None: ...


@dataclass(slots=True)
class _Held:
    lease: Lease
    store: SupportsRenewal
    on_lost: Callable[[], None]
    beacon: SupportsPublish | None


class LeaseKeeper:
    """Renews the leases this process holds, every third of their timeout.

    One thread per keeper, started on the first :meth:`hold`, stopped by
    :meth:`close`. A renewal that finds the lease taken by somebody else calls that
    lease's ``on_lost`` (the run stops at once) and forgets it. A renewal that fails
    (the database unreachable) is logged and tried again at the next beat: the
    lease stays good while nobody takes it over, however late the beat.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._held: dict[tuple[str, str], _Held] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def hold(
        self,
        lease: Lease,
        store: SupportsRenewal,
        on_lost: Callable[[], None],
        *,
        beacon: SupportsPublish | None = None,
    ) -> None:
        """Keep ``lease`` alive until :meth:`drop`; call ``on_lost`` if it is taken.

        Each successful renewal publishes to ``beacon`` the monotonic time until which
        the lease is surely held (taken before the renewal was sent, plus the timeout).
        """
        with self._lock:
            if self._closed:
                return
            self._held[(lease.workflow_id, lease.owner.owner)] = _Held(
                lease, store, on_lost, beacon
            )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="heliostat-lease-keeper", daemon=True
                )
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (its run ended and released it)."""
        with self._lock:
            self._held.pop((lease.workflow_id, lease.owner.owner), None)

    def held(self) -> list[Lease]:
        """The leases being kept, for introspection and tests."""
        with self._lock:
            return [h.lease for h in self._held.values()]

    def beat(self) -> None:
        """Renew every held lease now (the loop's body; tests call it directly)."""
        with self._lock:
            held = list(self._held.values())
        by_store: dict[int, tuple[SupportsRenewal, list[_Held]]] = {}
        for h in held:
            by_store.setdefault(id(h.store), (h.store, []))[1].append(h)
        for store, items in by_store.values():
            sent = time.monotonic()  # before the renewal: its deadline is never late
            try:
                lost = set(store.renew_leases([h.lease for h in items], self._clock.now()))
            except Exception:  # the database went away for a moment: next beat retries
                log.warning("could not renew workflow leases", exc_info=True)
                continue
            for h in items:
                if h.lease.workflow_id not in lost and h.beacon is not None:
                    h.beacon.publish(sent + h.lease.timeout)
            for h in items:
                if h.lease.workflow_id in lost:
                    log.error(
                        "workflow %r: lease lost to another driver; stopping its run",
                        h.lease.workflow_id,
                    )
                    self.drop(h.lease)
                    h.on_lost()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                timeouts = [h.lease.timeout for h in self._held.values()]
            period = (min(timeouts) if timeouts else DEFAULT_LEASE_TIMEOUT) / 3
            until = self._clock.now() + dt.timedelta(seconds=period)
            self._clock.wait(until, self._wake)
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
            self.beat()

    def close(self) -> None:
        """Stop the thread; leases still held are left to expire."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._thread = None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
