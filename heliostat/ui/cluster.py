"""The cluster as the web UI shows it, when a head serves the UI.

A head daemon runs the UI in its own process (``heliostat start --head --ui-port``) and
hands ``create_app`` its control plane (:class:`ClusterSource`: the head's
``HeadService``), so the runtime page and ``/api/cluster`` read the node and job
tables straight from memory, as ``heliostat status`` reads them over gRPC. A UI started
with ``heliostat ui`` has no head: ``/api/cluster`` answers 404 and the page shows the
local runtimes only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from heliostat.cluster.rpc import JobView, NodeView

__all__ = ["ClusterSource", "cluster_view"]

_STATE_CLASS = {"ALIVE": "SUCCESSFUL", "SUSPECT": "NEEDS_ATTENTION", "DEAD": "FAILED"}
"""The colour of a node state: a workflow status whose badge looks right."""


class ClusterSource(Protocol):
    """What the UI reads of a head (implemented by ``heliostat.cluster.HeadService``)."""

    def list_nodes(self) -> list[NodeView]: ...
    def list_jobs(self) -> list[JobView]: ...


def _iso(when: float | None) -> str | None:
    return None if when is None else dt.datetime.fromtimestamp(when, dt.UTC).isoformat()


def _in_use(total: Mapping[str, float], available: Mapping[str, float]) -> dict[str, Any]:
    return {
        name: {"total": amount, "used": max(amount - available.get(name, amount), 0.0)}
        for name, amount in sorted(total.items())
    }


def cluster_view(source: ClusterSource) -> dict[str, Any]:
    """The nodes (every state, in order of registration) and the jobs, as plain data."""
    nodes = [
        {
            "node_id": n.node_id,
            "address": n.address,
            "hostname": n.hostname,
            "pid": n.pid,
            "state": n.state.value,
            "state_class": _STATE_CLASS.get(n.state.value, "CANCELED"),
            "is_head": n.is_head,
            "incarnation": n.incarnation,
            "total": dict(n.total),
            "available": dict(n.available),
            "resources": _in_use(n.total, n.available),
            "registered_at": _iso(n.registered_at),
            "last_heartbeat_at": _iso(n.last_heartbeat_at),
            "silent_for": round(n.silent_for, 2),
            "objects": n.objects,
            "object_bytes": n.object_bytes,
        }
        for n in source.list_nodes()
    ]
    jobs = [
        {
            "job_id": j.job_id,
            "entrypoint": j.entrypoint,
            "hostname": j.hostname,
            "pid": j.pid,
            "started_at": _iso(j.started_at),
            "finished_at": _iso(j.finished_at),
            "running": j.finished_at is None,
        }
        for j in reversed(source.list_jobs())  # newest first
    ]
    alive = sum(1 for n in nodes if n["state"] in ("ALIVE", "SUSPECT"))
    return {"nodes": nodes, "jobs": jobs, "nodes_alive": alive}
