"""The runtime: tasks, actors, workers, the object store and the node manager.

Re-exports what the layers above (workflows, UI, CLI, the public package) may use.
"""

from __future__ import annotations

from heliostat.engine.actor import ActorClass, ActorHandle, ActorMethod, method
from heliostat.engine.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from heliostat.engine.events import TaskEvent
from heliostat.engine.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from heliostat.engine.object_ref import ObjectID, ObjectRef
from heliostat.engine.remote_function import RemoteFunction
from heliostat.engine.runtime import Runtime, current_client, current_runtime
from heliostat.engine.serialization import cloudpickle_dumps

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorMethod",
    "DynamicObjectRefGenerator",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "Runtime",
    "TaskEvent",
    "available_resources",
    "cancel",
    "cloudpickle_dumps",
    "cluster_resources",
    "current_client",
    "current_runtime",
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
]
