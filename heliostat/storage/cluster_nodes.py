"""A cluster head's node table in SQL: what a restarted head needs to know its nodes.

The head keeps its node table in memory (the membership state machine in
:mod:`heliostat.cluster.membership`) and writes a node's row here each time the node
changes state: it joins, turns suspect, dies, leaves or comes back. Heartbeats are not
written one by one (a cluster of a hundred nodes would write 200 rows a second for
nothing); the row's ``last_heartbeat_at`` is the last one known at the latest state
change. A restarted head reads the rows back (:meth:`NodeTableStore.load`) and gives
the nodes that were alive a grace period to heartbeat again.

The table lives in the metadata database (SQLite or PostgreSQL, the same migrations)
next to the workflow lineage: a cluster needs no second database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from heliostat.storage.node_states import NodeState
from heliostat.storage.sql_base import Base, state_column_type, utcnow

__all__ = [
    "NODE_ID_LENGTH",
    "ClusterNode",
    "NodeRow",
    "NodeState",
    "NodeTableStore",
]

NODE_ID_LENGTH = 64
"""Longest node id, in characters (node daemons make 32 hex digits)."""


class ClusterNode(Base):
    """One node of the cluster, as of its latest change of state."""

    __tablename__ = "cluster_nodes"
    __table_args__ = (sa.Index(None, "state"),)

    node_id: Mapped[str] = mapped_column(sa.String(NODE_ID_LENGTH), primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(255))
    hostname: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int]
    is_head: Mapped[bool] = mapped_column(default=False)
    state: Mapped[NodeState] = mapped_column(state_column_type(NodeState, "state"))
    incarnation: Mapped[int] = mapped_column(default=1)
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Total resources the node offers (JSON: ``{"CPU": 4.0, "db": 1.0}``)."""
    registered_at: Mapped[dt.datetime]
    last_heartbeat_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    """When the row last changed (the node's latest change of state)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRow:
    """A ``cluster_nodes`` row as plain values (times are aware UTC datetimes)."""

    node_id: str
    address: str
    hostname: str
    pid: int
    is_head: bool
    state: NodeState
    incarnation: int
    resources: Mapping[str, float] = field(default_factory=dict)
    registered_at: dt.datetime
    last_heartbeat_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


class NodeTableStore:
    """Reads and writes the node table through one engine (owned by the caller)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._table: sa.Table = ClusterNode.__table__  # type: ignore[assignment]

    def load(self) -> list[NodeRow]:
        """Every node row, oldest registration first."""
        t = self._table
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.registered_at, t.c.node_id)).all()
        return [
            NodeRow(
                node_id=r.node_id,
                address=r.address,
                hostname=r.hostname,
                pid=r.pid,
                is_head=bool(r.is_head),
                state=NodeState(r.state),
                incarnation=r.incarnation,
                resources={str(k): float(v) for k, v in (r.resources or {}).items()},
                registered_at=r.registered_at,
                last_heartbeat_at=r.last_heartbeat_at,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    def save(self, rows: list[NodeRow]) -> None:
        """Insert or replace these rows, in one transaction."""
        if not rows:
            return
        t = self._table
        with self._engine.begin() as conn:
            for row in rows:
                values = {
                    "address": row.address,
                    "hostname": row.hostname,
                    "pid": row.pid,
                    "is_head": row.is_head,
                    "state": row.state,
                    "incarnation": row.incarnation,
                    "resources": dict(row.resources),
                    "registered_at": row.registered_at,
                    "last_heartbeat_at": row.last_heartbeat_at,
                    "updated_at": row.updated_at or utcnow(),
                }
                # UPDATE first, INSERT when there was nothing: portable (no dialect
                # upsert), and one head is the only writer of its table.
                done = conn.execute(
                    sa.update(t).where(t.c.node_id == row.node_id).values(**values)
                ).rowcount
                if not done:
                    conn.execute(sa.insert(t).values(node_id=row.node_id, **values))

    def forget(self, node_ids: list[str]) -> int:
        """Delete these nodes' rows; returns how many there were."""
        if not node_ids:
            return 0
        t = self._table
        with self._engine.begin() as conn:
            return int(conn.execute(sa.delete(t).where(t.c.node_id.in_(node_ids))).rowcount)
