"""heliostat: remote tasks, actors, a zero-copy object store, and durable DAG workflows.

Ray-compatible core API: ``import heliostat as hs`` then ``hs.init()``, ``@hs.remote``,
``hs.get``, ``hs.put``, ``hs.wait`` ... This module only re-exports.
"""

from __future__ import annotations

from heliostat import exceptions
from heliostat import workflows as workflow
from heliostat.engine import (
    ActorClass,
    ActorHandle,
    ObjectRef,
    RemoteFunction,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    init,
    is_initialized,
    kill,
    method,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "RemoteFunction",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "wait",
    "workflow",
]
