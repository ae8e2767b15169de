"""The public core API (Ray-compatible names): init, remote, get, put, wait, ...

Each function delegates to the current runtime (``runtime.py``). ``import heliostat as
ray`` should be enough to port a Ray program that uses these calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, overload

from heliostat.engine import async_refs  # noqa: F401  (installs await ref, ref.future())
from heliostat.engine import runtime as _rt
from heliostat.engine.actor import ActorClass, ActorHandle
from heliostat.engine.events import to_chrome_trace
from heliostat.engine.generators import ObjectRefGenerator
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.remote_function import RemoteFunction, task_options
from heliostat.exceptions import HeliostatError

__all__ = [
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "wait",
]

log = logging.getLogger("heliostat")


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    storage: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    ignore_reinit_error: bool = False,
    max_workers: int | None = None,
) -> _rt.Runtime:
    """Start a local node (driver, node manager, worker pool) and make it current.

    Args:
        address: ``None`` or ``"local"`` starts a local node. Connecting to a cluster
            head is not available yet.
        num_cpus: CPUs this node offers (default: all cores).
        resources: custom resources, e.g. ``{"db": 1}``.
        object_store_memory: bytes of shared memory before objects spill to disk
            (default: 30% of RAM).
        storage: workflow storage URL (used by durable workflows).
        namespace: namespace for named actors.
        token: cluster token (for clusters; unused locally).
        ignore_reinit_error: return the running runtime instead of raising.
        max_workers: cap on pool workers (blocked workers included).

    Returns:
        The runtime; ``shutdown()`` ends it.

    Raises:
        HeliostatError: already initialized (unless ``ignore_reinit_error``), or a
            cluster address was given.
    """
    current = _rt.current_runtime()
    if current is not None:
        if ignore_reinit_error:
            return current
        raise HeliostatError(
            "heliostat is already initialized; call shutdown() first or pass "
            "ignore_reinit_error=True."
        )
    if address not in (None, "local"):
        raise HeliostatError(
            f"Cannot connect to {address!r}: joining a cluster is not supported yet; "
            "call init() without an address for a local node."
        )
    runtime = _rt.Runtime(
        num_cpus=num_cpus,
        resources=resources,
        object_store_memory=object_store_memory,
        namespace=namespace,
        max_workers=max_workers,
        storage=storage,
    )
    runtime.start()
    _rt.set_current(runtime)
    log.debug("started local node, session %s", runtime.session)
    return runtime


def shutdown() -> None:
    """Stop the local node: workers, fork server, shared memory, temp files."""
    runtime = _rt.current_runtime()
    if runtime is None:
        return
    _rt.set_current(None)
    runtime.shutdown()


def is_initialized() -> bool:
    return _rt.current_runtime() is not None


@overload
def remote(__target: type) -> ActorClass: ...  # type: ignore[overload-overlap]
@overload
def remote(__target: Callable[..., Any]) -> RemoteFunction: ...
@overload
def remote(**options: Any) -> Callable[[Any], Any]: ...


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote task, or a class an actor, as ``@ray.remote`` does.

    Use bare (``@remote``) or with options (``@remote(num_cpus=2, max_retries=0)``).
    """

    def make(target: Any) -> Any:
        if isinstance(target, type):
            return ActorClass(target, options)
        if callable(target):
            what = f"remote function {getattr(target, '__qualname__', target)!r}"
            return RemoteFunction(target, task_options(options, what=what))
        raise TypeError(f"@remote applies to functions and classes, not {type(target).__name__}.")

    if len(args) == 1 and not options and (callable(args[0]) or isinstance(args[0], type)):
        return make(args[0])
    if args:
        raise TypeError("@remote takes either one function/class or keyword options only.")
    return make


def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """Values of one ref or a list of refs; blocks until they are ready.

    Raises:
        TypeError: ``refs`` is not an ObjectRef or a list of them.
        TaskError: the task raised (also an instance of the original exception class).
        GetTimeoutError: ``timeout`` seconds passed first.
    """
    client = _rt.current_client()
    if type(refs) is ObjectRef:
        return client.get((refs,), timeout)[0]
    if isinstance(refs, (list, tuple)):
        for ref in refs:
            if type(ref) is not ObjectRef:
                raise TypeError(
                    f"get() takes ObjectRefs; the list holds a {type(ref).__name__}: {ref!r}."
                )
        return client.get(refs, timeout)
    raise TypeError(f"get() takes an ObjectRef or a list of ObjectRefs, not {type(refs).__name__}.")


def put(value: Any) -> ObjectRef:
    """Store a value in the object store and return a ref to it."""
    return _rt.current_client().put(value)


def wait(
    refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split ``refs`` into (ready, not ready) once ``num_returns`` are ready or time is up."""
    if not isinstance(refs, (list, tuple)) or any(type(r) is not ObjectRef for r in refs):
        raise TypeError("wait() takes a list of ObjectRefs.")
    if len({r.id for r in refs}) != len(refs):
        raise ValueError("wait() got the same ObjectRef twice.")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 0 and {len(refs)}, got {num_returns}.")
    return _rt.current_client().wait(refs, num_returns, timeout)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``; ``force`` kills its worker."""
    if isinstance(ref, ObjectRefGenerator):  # as in Ray: cancels the generator task
        ref = ref.completed()
    if type(ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, not {type(ref).__name__}.")
    _rt.current_client().cancel(ref, force)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor now; later calls raise ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, not {type(actor).__name__}.")
    _rt.current_client().kill_actor(actor._actor_id, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a named actor. Raises ValueError if there is none."""
    client = _rt.current_client()
    actor_id, class_name, methods = client.get_actor(name, namespace or client.namespace)
    return ActorHandle(actor_id, class_name, methods, client.tracker, adopt=True)


def nodes() -> list[dict[str, Any]]:
    """One dict per node, with Ray's keys (NodeID, Alive, Resources, ...)."""
    info = _rt.current_client().cluster_info()
    return [
        {
            "NodeID": info["node_id"],
            "Alive": True,
            "NodeManagerAddress": info["address"],
            "Resources": info["total"],
            "alive": True,
            "Workers": len(info["workers"]),
        }
    ]


def cluster_resources() -> dict[str, float]:
    return dict(_rt.current_client().cluster_info()["total"])


def available_resources() -> dict[str, float]:
    available = _rt.current_client().cluster_info()["available"]
    return {k: v for k, v in available.items() if v > 0}


def timeline(filename: str | None = None) -> list[dict[str, Any]]:
    """Task events as Chrome-trace JSON (also written to ``filename`` if given)."""
    trace = to_chrome_trace(_rt.current_client().task_events())
    if filename is not None:
        with open(filename, "w", encoding="utf-8") as fh:
            json.dump(trace, fh)
    return trace
