"""Where the cluster's objects are stored, as the head knows it (pure).

The owner of an object (the node that made its ref) is the authority on where its
value is and decides every pull and free (``engine/peers.py``), as in Ray's ownership
model; nothing in the task path asks the head. The head keeps a second, *eventual*
index for people and tools (``heliostat status``, ``heliostat list objects
--cluster``, the UI): which nodes' stores hold each object kept in shared memory or
spilled to disk. Values small enough to travel inline live in their owner's table and
are not listed.

* A node sends, with each heartbeat, what changed in its store since its last
  heartbeat the head accepted (:meth:`ObjectReport.delta`), or all of it (``full``)
  on its first heartbeat after registering: a restarted head, or one that declared
  the node dead, learns everything again. Applying a report twice is harmless, so a
  heartbeat whose answer was lost is simply covered by the next one.
* The head applies reports (:meth:`ObjectLocations.apply`) and forgets a node's
  objects when the node is declared dead or leaves (:meth:`ObjectLocations.node_gone`).
  A head that has no full report of a node (it restarted and recovered the node from
  its database, which keeps no objects) asks for one in its answer to the heartbeat.

So the index lags the stores by up to a heartbeat interval (half a second by default).
A node reports at most :data:`MAX_REPORTED` objects (the largest, when it holds more),
so that a store of many small segments cannot make heartbeats heavy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["MAX_REPORTED", "ObjectLocations", "ObjectPlace", "ObjectReport", "StoreDelta"]

MAX_REPORTED = 20_000
"""Objects of one node the head is told about, at most."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreDelta:
    """What changed in a node's store: objects added (id -> size in bytes) and removed.
    ``full``: ``added`` is everything the node holds; forget what it said before."""

    added: Mapping[int, int]
    removed: tuple[int, ...] = ()
    full: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.full)


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectPlace:
    """One object and the nodes whose stores hold it."""

    object_id: int
    size: int
    node_ids: tuple[str, ...]


class ObjectReport:
    """A node's side: what its next heartbeat says about its store.

    Not thread-safe: the node's agent thread alone uses it.
    """

    def __init__(self) -> None:
        self._acked: dict[int, int] | None = None  # None: the head knows nothing yet

    def delta(self, stored: Mapping[int, int]) -> StoreDelta:
        """The change from what the head last accepted to ``stored`` (id -> size)."""
        current = _capped(stored)
        acked = self._acked
        if acked is None:
            return StoreDelta(added=current, full=True)
        added = {oid: size for oid, size in current.items() if oid not in acked}
        removed = tuple(oid for oid in acked if oid not in current)
        return StoreDelta(added=added, removed=removed)

    def accepted(self, stored: Mapping[int, int]) -> None:
        """The heartbeat that carried the delta of ``stored`` was accepted."""
        self._acked = _capped(stored)

    def forget(self) -> None:
        """The node registers again: its next report is a full one."""
        self._acked = None


def _capped(stored: Mapping[int, int]) -> dict[int, int]:
    if len(stored) <= MAX_REPORTED:
        return dict(stored)
    largest = sorted(stored.items(), key=lambda item: item[1], reverse=True)
    return dict(largest[:MAX_REPORTED])


class ObjectLocations:
    """The head's side: objects by id, with the nodes that hold them.

    Not thread-safe: the head calls it under its own lock.
    """

    def __init__(self) -> None:
        self._where: dict[int, dict[str, int]] = {}  # object id -> node id -> size
        self._held: dict[str, set[int]] = {}  # node id -> object ids (the same facts)
        self._complete: set[str] = set()  # nodes whose full report this table has

    def apply(self, node_id: str, delta: StoreDelta) -> bool:
        """Take a node's report in; False if the table still lacks a full one of it
        (the node should send one)."""
        if delta.full:
            self.node_gone(node_id)
            self._complete.add(node_id)
        held = self._held.setdefault(node_id, set())
        for oid in delta.removed:
            if oid in held:
                held.discard(oid)
                self._drop(oid, node_id)
        for oid, size in delta.added.items():
            held.add(oid)
            self._where.setdefault(oid, {})[node_id] = size
        if not held:
            del self._held[node_id]
        return node_id in self._complete

    def node_gone(self, node_id: str) -> None:
        """A node died or left: its store is gone."""
        self._complete.discard(node_id)
        for oid in self._held.pop(node_id, ()):
            self._drop(oid, node_id)

    def _drop(self, oid: int, node_id: str) -> None:
        nodes = self._where.get(oid)
        if nodes is not None:
            nodes.pop(node_id, None)
            if not nodes:
                del self._where[oid]

    def __len__(self) -> int:
        return len(self._where)

    def locate(self, object_ids: Iterable[int]) -> list[ObjectPlace]:
        """The places of the given objects that some node holds (others are left out)."""
        return [self._place(oid) for oid in object_ids if oid in self._where]

    def listing(self, limit: int) -> tuple[list[ObjectPlace], int]:
        """Up to ``limit`` objects, largest first, and how many there are in all."""
        largest = sorted(self._where, key=lambda oid: max(self._where[oid].values()), reverse=True)
        return [self._place(oid) for oid in largest[:limit]], len(self._where)

    def node_summary(self, node_id: str) -> tuple[int, int]:
        """How many objects a node holds, and their bytes."""
        held = self._held.get(node_id, ())
        return len(held), sum(self._where[oid][node_id] for oid in held)

    def _place(self, oid: int) -> ObjectPlace:
        nodes = self._where[oid]
        return ObjectPlace(object_id=oid, size=max(nodes.values()), node_ids=tuple(sorted(nodes)))
