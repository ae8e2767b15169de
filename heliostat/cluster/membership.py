"""Cluster membership: which nodes are in the cluster and which of them are alive.

This is the head's node table as a pure state machine. It does no I/O and reads no
clock: each event carries the time it happened (``now``, seconds on one monotonic
clock that the caller owns), and :meth:`Membership.handle` returns the instructions
the caller carries out (persist a record, log, answer a heartbeat with NOT_FOUND).
So every timing rule is tested by feeding events with chosen times, no processes and
no sleeping (the pattern of dask's ``worker_state_machine``).

Liveness protocol:

1. A node registers (:class:`NodeRegistered`) and then heartbeats every
   :attr:`Timing.heartbeat_interval` seconds (:class:`HeartbeatReceived`).
2. The head ticks often (:class:`Tick`). A node silent for
   :attr:`Timing.suspect_after` seconds becomes SUSPECT (nothing is taken from it yet;
   one heartbeat brings it back); silent for :attr:`Timing.dead_after`, it is DEAD.
   Detection therefore takes at most ``dead_after`` plus one tick period after the
   last heartbeat the node managed to send.
3. A DEAD node's heartbeats are rejected (:class:`HeartbeatRejected`; the RPC layer
   answers NOT_FOUND), so a node that was only cut off registers again and comes
   back as a new *incarnation*: whatever the cluster did about its death (tasks
   retried elsewhere) stays done, and the node starts afresh.
4. A node that leaves on purpose deregisters (:class:`NodeDeregistered`) and is LEFT.
4a. Node ids are chosen by the nodes (a random index, ``engine/cluster_join.py``), so
   two nodes joining at once can pick the same one. A registration under the id of a
   live node from *another process* (another hostname, pid or address) is refused
   (:class:`RegistrationRefused`; the RPC layer answers ALREADY_EXISTS and the joining
   node picks another id). Only the same process may register again while it is live
   (after a head restart); a DEAD or LEFT node's id may be taken by anyone, as a new
   incarnation. Heartbeats carry the incarnation they belong to, so those of a process
   whose id was taken meanwhile are rejected rather than counted for the new holder.
5. A restarted head builds the machine from the persisted records
   (``Membership(nodes=...)``): nodes that were ALIVE or SUSPECT get a full
   ``dead_after`` of grace from the moment of recovery, since the head cannot know
   how long they were silent while it was down. Nodes that heartbeat in that window
   carry on without registering again.

State changes only through :meth:`Membership.handle`, against :data:`NODE_TRANSITIONS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from heliostat.exceptions import InvalidTransition
from heliostat.storage.node_states import NodeState

__all__ = [
    "LIVE_STATES",
    "NODE_TRANSITIONS",
    "ClusterResources",
    "Event",
    "HeartbeatAccepted",
    "HeartbeatReceived",
    "HeartbeatRejected",
    "Instruction",
    "Membership",
    "NodeAlive",
    "NodeDead",
    "NodeDeregistered",
    "NodeLeft",
    "NodeRecord",
    "NodeRegistered",
    "NodeState",
    "NodeSuspect",
    "RegistrationRefused",
    "Tick",
    "Timing",
    "check_node_transition",
]


NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.ALIVE: frozenset({NodeState.SUSPECT, NodeState.DEAD, NodeState.LEFT}),
    NodeState.SUSPECT: frozenset({NodeState.ALIVE, NodeState.DEAD, NodeState.LEFT}),
    # Only registering again leaves DEAD or LEFT, as a new incarnation.
    NodeState.DEAD: frozenset({NodeState.ALIVE}),
    NodeState.LEFT: frozenset({NodeState.ALIVE}),
}
"""The edges a node may take; any other raises :class:`InvalidTransition`."""

LIVE_STATES = frozenset({NodeState.ALIVE, NodeState.SUSPECT})
"""States whose node counts towards the cluster's resources."""


def check_node_transition(node_id: str, start: NodeState, finish: NodeState) -> None:
    """Raise :class:`InvalidTransition` unless ``start -> finish`` is in the table."""
    if finish not in NODE_TRANSITIONS[start]:
        raise InvalidTransition("Node", node_id, start.value, finish.value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How often nodes heartbeat and how long a silence the head tolerates (seconds).

    The defaults declare a node dead 3 s after its last heartbeat (DESIGN §3: under
    5 s), so a killed node is seen dead 2.5-3.5 s after the kill, depending on where in
    its heartbeat period it died and on the head's tick period.
    """

    heartbeat_interval: float = 0.5
    suspect_after: float = 1.5
    dead_after: float = 3.0

    def __post_init__(self) -> None:
        values = (self.heartbeat_interval, self.suspect_after, self.dead_after)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"cluster timing must be finite numbers, not {values}")
        if not 0 < self.heartbeat_interval < self.suspect_after <= self.dead_after:
            raise ValueError(
                "cluster timing needs 0 < heartbeat_interval < suspect_after <= dead_after; "
                f"got {self.heartbeat_interval}, {self.suspect_after}, {self.dead_after}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """One node as the head knows it. Times are on the machine's clock (see module doc)."""

    node_id: str
    address: str
    hostname: str
    pid: int
    is_head: bool = False
    state: NodeState = NodeState.ALIVE
    incarnation: int = 1
    total: Mapping[str, float] = field(default_factory=dict)
    available: Mapping[str, float] = field(default_factory=dict)
    registered_at: float = 0.0
    last_heartbeat_at: float | None = None  # None until the first heartbeat
    last_seen: float = 0.0  # invariant: the latest of registered_at and last_heartbeat_at,
    # except after a head restart, when it is the moment of recovery (the grace period)

    def silent_for(self, now: float) -> float:
        """Seconds since the head last heard from this node."""
        return max(0.0, now - self.last_seen)


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRegistered:
    """A node asked to join (or to join again)."""

    node_id: str
    address: str
    hostname: str
    pid: int
    total: Mapping[str, float]
    available: Mapping[str, float]
    is_head: bool = False
    now: float
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatReceived:
    """A node says it is alive, with the resources it has free, as the incarnation it
    registered as (0: not said)."""

    node_id: str
    available: Mapping[str, float]
    now: float
    incarnation: int = 0
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDeregistered:
    """A node leaves on purpose (``heliostat stop``)."""

    node_id: str
    now: float
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """Time passed: find the nodes that have been silent too long."""

    now: float
    cause_id: str = ""


Event = NodeRegistered | HeartbeatReceived | NodeDeregistered | Tick

# --- instructions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeAlive:
    """A node joined, rejoined (``rejoined``: a new incarnation) or came back from
    SUSPECT. Persist ``node``."""

    node: NodeRecord
    rejoined: bool = False
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSuspect:
    """A node has been silent for ``silent_for`` seconds; persist ``node``."""

    node: NodeRecord
    silent_for: float
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDead:
    """A node is declared dead after ``silent_for`` seconds of silence; persist ``node``.

    Later: its running tasks are retried elsewhere and its actors restarted.
    """

    node: NodeRecord
    silent_for: float
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLeft:
    """A node deregistered; persist ``node``."""

    node: NodeRecord
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAccepted:
    """Answer the heartbeat: OK, with the node's incarnation."""

    node_id: str
    incarnation: int
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRejected:
    """Answer the heartbeat with NOT_FOUND: the node must register again."""

    node_id: str
    reason: str
    cause_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationRefused:
    """Answer the registration with ALREADY_EXISTS: a live node of another process holds
    ``node_id`` (``holder``); the registering node must pick another id."""

    node_id: str
    holder: NodeRecord
    cause_id: str = ""


Instruction = (
    NodeAlive
    | NodeSuspect
    | NodeDead
    | NodeLeft
    | HeartbeatAccepted
    | HeartbeatRejected
    | RegistrationRefused
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterResources:
    """Resources of the live nodes: in total, and free as their heartbeats last said."""

    total: Mapping[str, float]
    available: Mapping[str, float]


# --- the machine ----------------------------------------------------------------------


class Membership:
    """The node table of a head. Change it only through :meth:`handle`.

    Args:
        timing: heartbeat period and silence thresholds.
        nodes: records persisted by an earlier head (recovery; see the module doc).
        now: the clock's value at construction (the start of the grace period).
    """

    def __init__(
        self, *, timing: Timing | None = None, nodes: Iterable[NodeRecord] = (), now: float = 0.0
    ) -> None:
        self.timing = timing if timing is not None else Timing()
        self._nodes: dict[str, NodeRecord] = {}
        for node in nodes:
            if node.state in LIVE_STATES:
                node = dataclasses.replace(node, last_seen=now)
            self._nodes[node.node_id] = node

    # --- reading

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def nodes(self) -> tuple[NodeRecord, ...]:
        """Every node, in order of registration."""
        return tuple(sorted(self._nodes.values(), key=lambda n: (n.registered_at, n.node_id)))

    def alive_count(self) -> int:
        return sum(1 for n in self._nodes.values() if n.state in LIVE_STATES)

    def resources(self) -> ClusterResources:
        total: dict[str, float] = {}
        available: dict[str, float] = {}
        for node in self._nodes.values():
            if node.state not in LIVE_STATES:
                continue
            for name, amount in node.total.items():
                total[name] = total.get(name, 0.0) + amount
            for name, amount in node.available.items():
                available[name] = available.get(name, 0.0) + amount
        return ClusterResources(total=total, available=available)

    # --- the transition function

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; return what the caller must do, in order."""
        if isinstance(event, NodeRegistered):
            return self._registered(event)
        if isinstance(event, HeartbeatReceived):
            return self._heartbeat(event)
        if isinstance(event, NodeDeregistered):
            return self._deregistered(event)
        return self._tick(event)

    def _set(self, node: NodeRecord, state: NodeState, **changes: object) -> NodeRecord:
        if state != node.state:
            check_node_transition(node.node_id, node.state, state)
        new = dataclasses.replace(node, state=state, **changes)  # type: ignore[arg-type]
        self._nodes[node.node_id] = new
        return new

    def _registered(self, ev: NodeRegistered) -> list[Instruction]:
        old = self._nodes.get(ev.node_id)
        info = {
            "address": ev.address,
            "hostname": ev.hostname,
            "pid": ev.pid,
            "is_head": ev.is_head,
            "total": dict(ev.total),
            "available": dict(ev.available),
            "last_seen": ev.now,
        }
        if old is None:
            node = NodeRecord(node_id=ev.node_id, registered_at=ev.now, **info)  # type: ignore[arg-type]
            self._nodes[node.node_id] = node
            return [NodeAlive(node=node, cause_id=ev.cause_id)]
        if old.state in LIVE_STATES:
            if (old.hostname, old.pid, old.address) != (ev.hostname, ev.pid, ev.address):
                # Another process picked a live node's id: it must pick another.
                return [RegistrationRefused(node_id=ev.node_id, holder=old, cause_id=ev.cause_id)]
            # The same incarnation says hello again (a head restart).
            node = self._set(old, NodeState.ALIVE, **info)
            return [NodeAlive(node=node, cause_id=ev.cause_id)]
        node = self._set(
            old,
            NodeState.ALIVE,
            incarnation=old.incarnation + 1,
            registered_at=ev.now,
            last_heartbeat_at=None,
            **info,
        )
        return [NodeAlive(node=node, rejoined=True, cause_id=ev.cause_id)]

    def _heartbeat(self, ev: HeartbeatReceived) -> list[Instruction]:
        old = self._nodes.get(ev.node_id)
        if old is None or old.state not in LIVE_STATES:
            why = "unknown node" if old is None else f"node is {old.state.value}"
            return [HeartbeatRejected(node_id=ev.node_id, reason=why, cause_id=ev.cause_id)]
        if ev.incarnation and ev.incarnation != old.incarnation:
            # A process whose incarnation is over: another one holds the id now.
            why = f"incarnation {ev.incarnation} is over (the node is at {old.incarnation})"
            return [HeartbeatRejected(node_id=ev.node_id, reason=why, cause_id=ev.cause_id)]
        node = self._set(
            old,
            NodeState.ALIVE,
            available=dict(ev.available),
            last_heartbeat_at=ev.now,
            last_seen=max(old.last_seen, ev.now),
        )
        out: list[Instruction] = []
        if old.state is NodeState.SUSPECT:
            out.append(NodeAlive(node=node, cause_id=ev.cause_id))
        out.append(
            HeartbeatAccepted(
                node_id=node.node_id, incarnation=node.incarnation, cause_id=ev.cause_id
            )
        )
        return out

    def _deregistered(self, ev: NodeDeregistered) -> list[Instruction]:
        old = self._nodes.get(ev.node_id)
        if old is None or old.state not in LIVE_STATES:
            return []
        node = self._set(old, NodeState.LEFT, available={})
        return [NodeLeft(node=node, cause_id=ev.cause_id)]

    def _tick(self, ev: Tick) -> list[Instruction]:
        out: list[Instruction] = []
        for old in self.nodes():
            if old.state not in LIVE_STATES:
                continue
            silent = old.silent_for(ev.now)
            if silent >= self.timing.dead_after:
                node = self._set(old, NodeState.DEAD, available={})
                out.append(NodeDead(node=node, silent_for=silent, cause_id=ev.cause_id))
            elif silent >= self.timing.suspect_after and old.state is NodeState.ALIVE:
                node = self._set(old, NodeState.SUSPECT)
                out.append(NodeSuspect(node=node, silent_for=silent, cause_id=ev.cause_id))
        return out
