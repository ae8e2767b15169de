"""A cluster head's actor names in SQL: what a restarted head needs to find them again.

The head keeps the cluster's actor names in memory (``cluster/names.py``) and writes
each change here: a name claimed (or taken over by the node that now owns the actor),
a name released, the names of a node that died or left. A restarted head reads them
back (:meth:`NameTableStore.load`) and keeps those whose owner is a node it knows as
alive, so a driver's ``get_actor`` finds a detached actor across a head restart.

The table lives in the metadata database next to the node table (SQLite or
PostgreSQL, the same migrations).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from heliostat.storage.cluster_nodes import NODE_ID_LENGTH
from heliostat.storage.sql_base import Base, utcnow

__all__ = ["ACTOR_NAME_LENGTH", "ClusterActorName", "NameRow", "NameTableStore"]

ACTOR_NAME_LENGTH = 255
"""Longest actor name or namespace, in characters."""


class ClusterActorName(Base):
    """One named actor of the cluster."""

    __tablename__ = "cluster_actor_names"
    __table_args__ = (sa.Index(None, "owner_node_id"),)

    namespace: Mapped[str] = mapped_column(sa.String(ACTOR_NAME_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(ACTOR_NAME_LENGTH), primary_key=True)
    actor_id: Mapped[str] = mapped_column(sa.String(32))
    """The actor's 80-bit id in hex."""
    owner_node_id: Mapped[str] = mapped_column(sa.String(NODE_ID_LENGTH))
    class_name: Mapped[str] = mapped_column(sa.String(255))
    methods: Mapped[dict[str, int]] = mapped_column(sa.JSON, default=dict)
    detached: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True, slots=True, kw_only=True)
class NameRow:
    """A ``cluster_actor_names`` row as plain values."""

    namespace: str
    name: str
    actor_id: int
    owner_node_id: str
    class_name: str
    methods: Mapping[str, int] = field(default_factory=dict)
    detached: bool = False


class NameTableStore:
    """Reads and writes the actor names through one engine (owned by the caller)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._table: sa.Table = ClusterActorName.__table__  # type: ignore[assignment]

    def load(self) -> list[NameRow]:
        t = self._table
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.namespace, t.c.name)).all()
        return [
            NameRow(
                namespace=r.namespace,
                name=r.name,
                actor_id=int(r.actor_id, 16),
                owner_node_id=r.owner_node_id,
                class_name=r.class_name,
                methods={str(k): int(v) for k, v in (r.methods or {}).items()},
                detached=bool(r.detached),
            )
            for r in rows
        ]

    def put(self, row: NameRow) -> None:
        """Insert or replace the row of ``row``'s name."""
        t = self._table
        values = {
            "actor_id": f"{row.actor_id:x}",
            "owner_node_id": row.owner_node_id,
            "class_name": row.class_name,
            "methods": dict(row.methods),
            "detached": row.detached,
            "updated_at": utcnow(),
        }
        key = (t.c.namespace == row.namespace) & (t.c.name == row.name)
        with self._engine.begin() as conn:
            if not conn.execute(sa.update(t).where(key).values(**values)).rowcount:
                conn.execute(sa.insert(t).values(namespace=row.namespace, name=row.name, **values))

    def delete(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete the rows of these (namespace, name) pairs, in one transaction."""
        t = self._table
        with self._engine.begin() as conn:
            for namespace, name in keys:
                conn.execute(sa.delete(t).where((t.c.namespace == namespace) & (t.c.name == name)))
