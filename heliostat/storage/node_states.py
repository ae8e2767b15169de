"""The states of a cluster node (standard library only).

:mod:`heliostat.storage.cluster_nodes` stores them in SQL and re-exports
:class:`NodeState`; the control plane's payloads (:mod:`heliostat.cluster.rpc`) take
it from here, so a node daemon or a driver that joins a cluster does not import
SQLAlchemy for an enum (about 0.4 s of its start).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["NodeState"]


class NodeState(StrEnum):
    """Where a node stands in the head's eyes (the values are what SQL stores).

    The allowed edges and the machine that takes them are in
    :mod:`heliostat.cluster.membership`.
    """

    ALIVE = "ALIVE"
    SUSPECT = "SUSPECT"
    DEAD = "DEAD"
    LEFT = "LEFT"
