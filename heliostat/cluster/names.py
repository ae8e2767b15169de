"""The cluster's actor names, as the head keeps them (pure: no I/O, no clock).

Ray keeps actor names at its GCS; heliostat keeps them here, at the head. One entry
per (namespace, name): the actor's id, the node that *owns* it (keeps its record and
queue of calls, and to which every other node sends its calls), and what a handle
needs (its class name and methods).

* A node claims a name before it creates the actor (:meth:`NameRegistry.claim`); a
  name held by another actor is refused. The same actor may claim its name again:
  that is how a detached actor's ownership moves to the node that hosts it.
* The owner releases the name when the actor is dead for good
  (:meth:`NameRegistry.release`), and the head drops every name a node owns when that
  node dies or leaves (:meth:`NameRegistry.node_gone`): its actors went with it.

:class:`~heliostat.cluster.head.HeadService` feeds it under its lock and writes each
change to the metadata database (``storage/cluster_names.py``), so a restarted head
still knows the names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["NameRegistry", "NamedActor"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedActor:
    """One named actor, as the head knows it."""

    namespace: str
    name: str
    actor_id: int
    owner: str  # the node id of the node that owns it
    class_name: str
    methods: Mapping[str, int] = field(default_factory=dict)
    detached: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


class NameRegistry:
    """(namespace, name) -> :class:`NamedActor`. Not thread-safe: the head locks."""

    def __init__(self, entries: Iterable[NamedActor] = ()) -> None:
        self._names: dict[tuple[str, str], NamedActor] = {e.key: e for e in entries}

    def __len__(self) -> int:
        return len(self._names)

    def claim(self, entry: NamedActor) -> NamedActor | None:
        """Record ``entry``; returns None when claimed, else the actor holding the name."""
        held = self._names.get(entry.key)
        if held is not None and held.actor_id != entry.actor_id:
            return held
        self._names[entry.key] = entry
        return None

    def lookup(self, namespace: str, name: str) -> NamedActor | None:
        return self._names.get((namespace, name))

    def release(self, namespace: str, name: str, actor_id: int) -> NamedActor | None:
        """Forget the name if ``actor_id`` holds it; returns the entry forgotten."""
        held = self._names.get((namespace, name))
        if held is None or held.actor_id != actor_id:
            return None
        del self._names[(namespace, name)]
        return held

    def node_gone(self, node_id: str) -> list[NamedActor]:
        """Node ``node_id`` died or left: forget the names of the actors it owned."""
        gone = [e for e in self._names.values() if e.owner == node_id]
        for entry in gone:
            del self._names[entry.key]
        return gone

    def keep_only(self, live_nodes: set[str]) -> list[NamedActor]:
        """Forget the names owned by nodes not in ``live_nodes`` (a head's recovery)."""
        gone = [e for e in self._names.values() if e.owner not in live_nodes]
        for entry in gone:
            del self._names[entry.key]
        return gone

    def list(self, namespace: str | None = None) -> list[NamedActor]:
        """The names in ``namespace`` (None: every namespace), sorted."""
        return sorted(
            (e for e in self._names.values() if namespace is None or e.namespace == namespace),
            key=lambda e: e.key,
        )
