"""The cluster's control plane: a head that knows its nodes, and nodes that join it.

Layering: above the scheduler and storage (it persists its node table through
:mod:`heliostat.storage.cluster_nodes`), below the engine, which will ask it where
objects and actors live. The daemons that ``heliostat start`` runs put this together
with the engine, the trigger loop and the UI (:mod:`heliostat.cli.daemon`).

* :mod:`~heliostat.cluster.membership`: the node table as a pure state machine
  (registered, heartbeat, tick, deregistered in; alive, suspect, dead, left out).
* :mod:`~heliostat.cluster.head`: the head's service around it, its gRPC server,
  its ticker and its SQL writer.
* :mod:`~heliostat.cluster.agent`: a node's registration and heartbeats, with backoff.
* :mod:`~heliostat.cluster.client`: a typed client of the head.
* :mod:`~heliostat.cluster.rpc`: the payload dataclasses and the protobuf edge.
* :mod:`~heliostat.cluster.auth`: the cluster token and the interceptor that checks it.
* :mod:`~heliostat.cluster.transfer`: objects between nodes, streamed in chunks over
  gRPC into shared-memory segments (not yet called by the engine).
* :mod:`~heliostat.cluster.local`: pid, log, token and address files under
  ``HELIOSTAT_HOME``.
* :mod:`~heliostat.cluster.packages`: code on other machines: a driver publishes its
  ``working_dir`` / ``py_modules`` packages to the head, nodes fetch them into their
  cache; :mod:`~heliostat.cluster.package_store` keeps them on the head.
* ``v1/``: the generated gRPC modules (``make proto``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from heliostat._lazy import lazy_exports

if TYPE_CHECKING:
    from heliostat.cluster.agent import NodeAgent, ResourceSource, backoff_delay
    from heliostat.cluster.auth import cluster_id_of, ensure_token_file, read_token_file
    from heliostat.cluster.client import (
        DEFAULT_TIMEOUT,
        HeadClient,
        NodeIdTaken,
        NodeNotKnown,
        PackageNotOnHead,
        parse_address,
    )
    from heliostat.cluster.head import HeadServer, HeadService, TlsFiles
    from heliostat.cluster.membership import Membership, NodeState, Timing
    from heliostat.cluster.packages import PackageFetcher, node_cache, publish
    from heliostat.cluster.rpc import ClusterInfo, ClusterTotals, JobView, NodeView

_EXPORTS: dict[str, tuple[str, ...]] = {
    "heliostat.cluster.agent": ("NodeAgent", "ResourceSource", "backoff_delay"),
    "heliostat.cluster.auth": ("cluster_id_of", "ensure_token_file", "read_token_file"),
    "heliostat.cluster.client": (
        "DEFAULT_TIMEOUT",
        "HeadClient",
        "NodeIdTaken",
        "NodeNotKnown",
        "PackageNotOnHead",
        "parse_address",
    ),
    "heliostat.cluster.head": ("HeadServer", "HeadService", "TlsFiles"),
    "heliostat.cluster.membership": ("Membership", "NodeState", "Timing"),
    "heliostat.cluster.packages": ("PackageFetcher", "node_cache", "publish"),
    "heliostat.cluster.rpc": ("ClusterInfo", "ClusterTotals", "JobView", "NodeView"),
}
"""Where each public name lives, imported on first use: a command that only reads this
home's pid and address files (``heliostat.cluster.local``) must not pay for gRPC, the
head's server and SQLAlchemy (about 0.5 s) before it knows a head is there at all."""

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClusterInfo",
    "ClusterTotals",
    "HeadClient",
    "HeadServer",
    "HeadService",
    "JobView",
    "Membership",
    "NodeAgent",
    "NodeIdTaken",
    "NodeNotKnown",
    "NodeState",
    "NodeView",
    "PackageFetcher",
    "PackageNotOnHead",
    "ResourceSource",
    "Timing",
    "TlsFiles",
    "backoff_delay",
    "cluster_id_of",
    "ensure_token_file",
    "node_cache",
    "parse_address",
    "publish",
    "read_token_file",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
