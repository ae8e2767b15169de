"""``get_runtime_context()`` and ``get_gpu_ids()``: where the calling code runs.

As Ray's ``ray.get_runtime_context()``: the same calls answer in the driver, in a task
and in an actor. Ids are hex strings. The job id is the session of the driver that
started the node (one job per driver here); the node id is the one ``nodes()`` shows;
task and actor ids are the ones the worker received with the task (``None`` where
there is none, as in Ray). What only the node manager knows (an actor's name and
restarts, the resources a task holds) is asked for when called, so nothing is added
to the task path.
"""

from __future__ import annotations

import math
from typing import Any

from heliostat.engine import ActorHandle, current_client, current_runtime, get_actor
from heliostat.engine.ids import format_id
from heliostat.engine.task_context import actor_id, context_info, task_id
from heliostat.exceptions import HeliostatError

__all__ = ["RuntimeContext", "get_gpu_ids", "get_runtime_context"]


class RuntimeContext:
    """What the calling code is: job, node, worker, task, actor, resources.

    Get one with :func:`get_runtime_context`. Every method reads the process's state
    when called, so one object may be kept and asked again later.
    """

    def get_job_id(self) -> str:
        """The id of the job (the driver's session), as hex."""
        return current_client().session

    def get_node_id(self) -> str:
        """The id of the node running this code (``nodes()[i]["NodeID"]``)."""
        return format_id(current_client().minter.node_index)

    def get_worker_id(self) -> str:
        """The id of this process: the driver, or the worker running this code."""
        minter = current_client().minter
        return format_id((minter.node_index << 64) | (minter.process_index << 40))

    def get_task_id(self) -> str | None:
        """The id of the running task or actor call; None in the driver."""
        ident = task_id()
        return format_id(ident) if ident else None

    def get_actor_id(self) -> str | None:
        """The id of the actor this code runs in; None outside an actor."""
        ident = actor_id()
        return format_id(ident) if ident else None

    def get_actor_name(self) -> str | None:
        """The name the actor was created with; None outside an actor or if unnamed."""
        if not actor_id():
            return None
        return str(context_info()["actor_name"]) or None

    @property
    def current_actor(self) -> ActorHandle:
        """A handle to the actor this code runs in (named actors only here).

        Raises:
            HeliostatError: not in an actor, or the actor has no name to look it up by.
        """
        if not actor_id():
            raise HeliostatError("current_actor is only available inside an actor.")
        info = context_info()
        if not info["actor_name"]:
            raise HeliostatError(
                "current_actor needs a named actor here; create it with "
                ".options(name=...) or pass its handle in."
            )
        return get_actor(info["actor_name"], info["actor_namespace"])

    @property
    def namespace(self) -> str:
        """The namespace named actors are looked up in by default."""
        if actor_id():
            return str(context_info()["actor_namespace"])
        return current_client().namespace

    def get_namespace(self) -> str:
        """Same as :attr:`namespace`."""
        return self.namespace

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor was restarted after its process died (False outside one)."""
        if not actor_id():
            return False
        return int(context_info()["restarts"]) > 0

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task or actor holds, e.g. ``{"CPU": 1.0}``.

        Empty in the driver, which holds none.
        """
        if not task_id() and not actor_id():
            return {}
        resources: dict[str, float] = context_info()["resources"]
        return {name: float(amount) for name, amount in resources.items() if amount}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerator ids the caller may use, by kind (``{"GPU": [...]}``)."""
        return {"GPU": [str(i) for i in get_gpu_ids()]}

    def get_placement_group_id(self) -> None:
        """Always None: placement groups are not supported yet."""
        return None

    @property
    def gcs_address(self) -> str:
        """The address of the node the driver started (a local node: its socket)."""
        runtime = current_runtime()
        if runtime is not None:
            return runtime.config.socket_path
        return str(current_client().cluster_info()["address"])

    def get(self) -> dict[str, Any]:
        """The ids as one dict (Ray's legacy form)."""
        out: dict[str, Any] = {"job_id": self.get_job_id(), "node_id": self.get_node_id()}
        out["namespace"] = self.namespace
        task = self.get_task_id()
        if task is not None:
            out["task_id"] = task
        actor = self.get_actor_id()
        if actor is not None:
            out["actor_id"] = actor
        return out


def get_runtime_context() -> RuntimeContext:
    """The context of the calling code: job, node, worker, task and actor ids.

    Raises:
        NotInitializedError: in a driver before ``init()`` (its methods raise it).
    """
    return RuntimeContext()


def get_gpu_ids() -> list[int]:
    """The GPU ids the caller may use.

    Empty when the caller holds no ``GPU`` resource (the driver holds none). A local
    node accounts GPUs as amounts without assigning device numbers: a task holding
    ``n`` GPUs gets ``[0 .. ceil(n) - 1]`` only when the node has that many GPUs in
    all and no other task could hold one at the same time; otherwise the ids are not
    known, and this raises rather than guessing.

    Raises:
        HeliostatError: the caller holds GPUs but their device ids are not known.
    """
    held = get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    if not held:
        return []
    total = float(current_client().cluster_info()["total"].get("GPU", 0.0))
    if held >= total:
        return list(range(math.ceil(held)))
    raise HeliostatError(
        f"get_gpu_ids(): this task holds {held:g} of the node's {total:g} GPUs, and a local "
        "heliostat node does not assign GPU device numbers yet; ask for all of the node's "
        "GPUs, or read CUDA_VISIBLE_DEVICES yourself."
    )
