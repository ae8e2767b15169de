"""heliostat: remote tasks, actors, a zero-copy object store, and durable DAG workflows.

Ray-compatible core API: ``import heliostat as hs`` then ``hs.init()``, ``@hs.remote``,
``hs.get``, ``hs.put``, ``hs.wait`` ... This module only re-exports.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from heliostat import actor, exceptions
from heliostat.engine import (
    ActorClass,
    ActorHandle,
    ObjectID,
    ObjectRef,
    ObjectRefGenerator,
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
from heliostat.runtime_context import RuntimeContext, get_gpu_ids, get_runtime_context

if _typing.TYPE_CHECKING:
    from heliostat import util
    from heliostat import workflows as workflow
    from heliostat.workflows import schedules

__version__ = "0.1.0"


def __getattr__(name: str) -> _typing.Any:
    # ``heliostat.workflow`` is imported on first use: it brings SQLAlchemy, Alembic,
    # fsspec and pyarrow, which a program using only tasks and actors (and every worker
    # process) should not pay for at import time.
    if name == "workflow":
        # ``heliostat.workflow`` is another name for the ``heliostat.workflows``
        # package (see heliostat/workflow.py): importing it makes both names one module.
        workflow = _importlib.import_module("heliostat.workflow")
        globals()["workflow"] = workflow
        return workflow
    if name == "util":  # ActorPool, Queue ...: a few ms that most programs never use
        util = _importlib.import_module("heliostat.util")
        globals()["util"] = util
        return util
    if name == "schedules":  # same reason: it is part of the workflows layer
        from heliostat.workflows import schedules

        globals()["schedules"] = schedules
        return schedules
    raise AttributeError(f"module 'heliostat' has no attribute {name!r}")


__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "RuntimeContext",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "schedules",
    "shutdown",
    "timeline",
    "util",
    "wait",
    "workflow",
]
