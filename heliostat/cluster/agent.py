"""A node's side of membership: register with the head, then heartbeat until stopped.

:class:`NodeAgent` runs one thread. The protocol it follows:

1. Register (:meth:`NodeAgent.register`, called once before the thread starts, so a
   node that cannot join fails at start-up with the head's reason: wrong token,
   nothing at the address).
2. Heartbeat every ``heartbeat_interval`` seconds (the head says how often in its
   answer to the registration), with the resources the node has free.
3. On ``NOT_FOUND`` (the head declared this node dead, or does not know it) register
   again at once: the node comes back as a new incarnation.
4. When the head cannot be reached (``UNAVAILABLE``: it is restarting) keep trying,
   with capped exponential backoff and jitter (:func:`backoff_delay`), by registering
   again, which is harmless for a head that still counts the node alive and is what a
   head that lost its table needs. So nodes rejoin a restarted head by themselves.
5. A refused token is final: the agent stops and reports it (``on_fatal``); retrying
   could not help. So is a registration refused because a live node of another
   process now holds this node's id (it took the id while this node was counted
   dead): the ids this node mints would collide with that one's.
6. :meth:`NodeAgent.stop` ends the thread and, asked to, deregisters (the node LEFT
   rather than dead).

What to report is asked of a :class:`ResourceSource` each time, so the agent holds no
reference to the engine. Each heartbeat also says what changed in the node's object
store (``cluster/object_locations.py``), read from a ``stored_objects`` callable.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from heliostat.cluster.client import HeadClient, NodeIdTaken, NodeNotKnown
from heliostat.cluster.object_locations import ObjectReport
from heliostat.cluster.rpc import RegisterAck, Registration
from heliostat.exceptions import ClusterAuthError, ClusterError

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "NodeAgent", "ResourceSource", "backoff_delay"]

log = logging.getLogger("heliostat.cluster")

BACKOFF_BASE = 0.1
"""Seconds before the first retry of an unreachable head."""

BACKOFF_CAP = 1.0
"""Longest wait between two tries: a restarted head sees its nodes within about this."""


def backoff_delay(
    failures: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after ``failures`` failed tries in a row (``failures >= 1``).

    Doubling from ``base`` up to ``cap``, then "equal jitter": between half and all of
    that, so nodes cut off together do not all come back in the same instant.
    """
    if failures < 1:
        return 0.0
    ceiling = min(cap, base * 2 ** min(failures - 1, 32))
    return float(ceiling / 2 + rand() * ceiling / 2)


class ResourceSource(Protocol):
    """Where the agent reads the node's resources (the engine's runtime, in a daemon)."""

    def total(self) -> Mapping[str, float]: ...
    def available(self) -> Mapping[str, float]: ...


class NodeAgent:
    """Keeps one node registered with the head; see the module docstring.

    Args:
        client: the connection to the head (the agent closes it in :meth:`stop`).
        node_id: this node's id (fixed for the life of the process).
        address: where this node's services are reached (its advertised address).
        hostname: this machine's name.
        pid: the node daemon's pid.
        resources: what the node offers and has free.
        is_head: this node runs inside the head process.
        stored_objects: the objects the node's store holds (id -> bytes), reported to
            the head with the heartbeats; None: none reported.
        on_fatal: called (from the agent's thread) with the error that stopped it.
    """

    def __init__(
        self,
        client: HeadClient,
        *,
        node_id: str,
        address: str,
        hostname: str,
        pid: int,
        resources: ResourceSource,
        is_head: bool = False,
        stored_objects: Callable[[], Mapping[int, int]] | None = None,
        on_fatal: Callable[[ClusterError], None] | None = None,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self._address = address
        self._hostname = hostname
        self._pid = pid
        self._resources = resources
        self._is_head = is_head
        self._stored_objects = stored_objects
        self._report = ObjectReport()  # the agent's thread alone uses it
        self._on_fatal = on_fatal
        self._on_rejoined: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ack: RegisterAck | None = None
        self.heartbeats = 0  # heartbeats the head accepted (for tests and status)
        self.registrations = 0

    def set_on_fatal(self, on_fatal: Callable[[ClusterError], None] | None) -> None:
        """Who to tell when the agent stops for good (set before :meth:`start`)."""
        self._on_fatal = on_fatal

    def set_on_rejoined(self, on_rejoined: Callable[[], None] | None) -> None:
        """Who to tell each time the node registered again (step 3 or 4), so that it
        can tell the head again what the head forgot about it (its actors' names)."""
        self._on_rejoined = on_rejoined

    def register(self) -> RegisterAck:
        """Register now. Raises the client's error when the head refuses or is away."""
        ack = self.client.register_node(
            Registration(
                node_id=self.node_id,
                address=self._address,
                hostname=self._hostname,
                pid=self._pid,
                total=dict(self._resources.total()),
                available=dict(self._resources.available()),
                is_head=self._is_head,
            )
        )
        if self.ack is not None and ack.incarnation != self.ack.incarnation:
            log.info("node %s rejoined as incarnation %d", self.node_id, ack.incarnation)
        self._report.forget()  # the head may have forgotten this node's store
        self.ack = ack
        self.registrations += 1
        return ack

    def start(self) -> None:
        """Start heartbeating (after a successful :meth:`register`)."""
        if self.ack is None:
            raise RuntimeError("register() before start()")
        self._thread = threading.Thread(
            target=self._run, name=f"hs-node-agent-{self.node_id[:8]}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        assert self.ack is not None
        registered = True
        failures = 0
        interval = self.ack.heartbeat_interval
        delay = interval
        while not self._stop.wait(delay):
            try:
                if registered:
                    stored = self._stored_objects() if self._stored_objects else None
                    # A heartbeat answered later than the interval is as good as lost.
                    answer = self.client.heartbeat(
                        self.node_id,
                        self._resources.available(),
                        timeout=max(interval, 1.0),
                        incarnation=self.ack.incarnation,
                        objects=self._report.delta(stored) if stored is not None else None,
                    )
                    if stored is not None:
                        self._report.accepted(stored)
                        if answer.objects_wanted:  # a restarted head
                            self._report.forget()
                    self.heartbeats += 1
                else:
                    interval = self.register().heartbeat_interval
                    registered = True
                    log.info("node %s registered with the head again", self.node_id)
                    if self._on_rejoined is not None:
                        self._on_rejoined()
            except NodeNotKnown as exc:
                log.warning("the head no longer counts node %s (%s)", self.node_id, exc)
                registered, delay = False, 0.0
                continue
            except ClusterAuthError as exc:
                log.error("the head refused node %s's token: %s", self.node_id, exc)
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                return
            except NodeIdTaken as exc:
                log.error("node %s cannot rejoin: %s", self.node_id, exc)
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                return
            except ClusterError as exc:
                failures += 1
                if failures == 1:
                    log.warning("lost the head: %s; retrying", exc)
                registered = False
                delay = backoff_delay(failures)
                continue
            except Exception:  # a bug here must not silently end the node's liveness
                log.exception("node %s: heartbeat failed unexpectedly", self.node_id)
                failures += 1
                delay = backoff_delay(failures)
                continue
            if failures:
                log.info("the head is back after %d failed tries", failures)
            failures = 0
            delay = interval

    def stop(self, *, deregister: bool = True) -> None:
        """Stop heartbeating; tell the head this node leaves (best effort); close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if deregister and self.ack is not None:
            try:
                self.client.deregister_node(self.node_id)
            except ClusterError as exc:
                log.info("could not tell the head that node %s leaves: %s", self.node_id, exc)
        self.client.close()
