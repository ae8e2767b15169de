"""The public core API (Ray-compatible names): init, remote, get, put, wait, ...

Each function delegates to the current runtime (``runtime.py``). ``import heliostat as
ray`` should be enough to port a Ray program that uses these calls.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

from heliostat.engine import async_refs  # noqa: F401  (installs await ref, ref.future())
from heliostat.engine import runtime as _rt
from heliostat.engine.actor import ActorClass, ActorHandle
from heliostat.engine.events import to_chrome_trace
from heliostat.engine.generators import ObjectRefGenerator, wait_with_generators
from heliostat.engine.init_options import check_init_options
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.remote_function import RemoteFunction, task_options
from heliostat.exceptions import HeliostatError

if TYPE_CHECKING:
    from heliostat.engine.attach import AttachedRuntime

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
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: float | None = None,
    local_mode: bool = False,
    ignore_reinit_error: bool = False,
    namespace: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    logging_level: int | str | None = None,
    logging_format: str | None = None,
    configure_logging: bool = True,
    log_to_driver: bool | None = None,
    storage: str | None = None,
    token: str | None = None,
    max_workers: int | None = None,
    **ray_options: Any,
) -> _rt.Runtime | AttachedRuntime:
    """Start a local node (driver, node manager, worker pool), or join a cluster, and
    make it current.

    Takes ``ray.init``'s keywords. Those that mean something here work;
    Ray's others (``include_dashboard``, ``dashboard_host``, ``dashboard_port``,
    ``job_config``, ``labels``, ``_system_config``, ``_node_ip_address`` and Ray's other
    ``_private`` keywords) are accepted and change nothing, which one debug log line
    says. A keyword Ray does not have either raises ``TypeError``.

    Args:
        address: ``None`` or ``"local"`` starts a local node (unless
            ``HELIOSTAT_ADDRESS`` is set); ``"HOST:PORT"`` joins the cluster whose head
            is there, ``"auto"`` the head this machine runs. A driver on a machine that
            runs a node attaches to it; elsewhere it joins as a node without CPUs.
        num_cpus: CPUs this node offers (default: all cores).
        num_gpus: GPUs this node offers (the ``GPU`` resource; default none).
        resources: custom resources, e.g. ``{"db": 1}``.
        object_store_memory: bytes of shared memory before objects spill to disk
            (default: 30% of RAM); a whole float such as ``700e6`` is taken, as Ray does.
        local_mode: Ray's deprecated serial mode: only ``False`` is supported.
        ignore_reinit_error: return the running runtime instead of raising.
        namespace: default namespace for named actors.
        runtime_env: ``{"env_vars": {...}}`` is set in every worker.
            ``working_dir`` (a local directory) and ``py_modules`` (local packages,
            ``.py`` files or imported modules) are copied now, as Ray does: workers
            import from the copies and run in the working_dir's copy, so later edits
            are not seen. ``excludes`` leaves files out of the copies. Other keys
            (``pip``, ``conda`` ...) raise ``ValueError``; see "Shipping code" in the
            porting guide.
        logging_level: level of the ``heliostat`` logger (``logging.DEBUG`` or
            ``"debug"``); given, ``init`` also adds a stderr handler to that logger
            (removed again by ``shutdown``).
        logging_format: format of that handler.
        configure_logging: ``False`` leaves logging alone.
        log_to_driver: ``False`` stops printing workers' stdout and stderr here.
        storage: workflow storage URL (used by durable workflows).
        token: the cluster token, with ``address`` (else ``HELIOSTAT_TOKEN``, or the
            head's token file on this machine); refused for a local node.
        max_workers: cap on pool workers (blocked workers included).
        **ray_options: ``_temp_dir`` (where the session directory goes) and Ray's
            keywords without effect here, named above.

    Returns:
        The runtime; ``shutdown()`` ends it.

    Raises:
        HeliostatError: already initialized (unless ``ignore_reinit_error``).
        ClusterError: the cluster cannot be joined (no head there, a wrong token).
        TypeError: an unknown keyword or a value of the wrong type.
        ValueError: a value heliostat cannot honour.
    """
    _check_type("num_cpus", num_cpus, (int, float))
    _check_type("resources", resources, dict)
    _check_type("object_store_memory", object_store_memory, (int, float))
    if isinstance(object_store_memory, float):
        # Ray scripts often write sizes as 700e6: a whole number of bytes is fine.
        if not object_store_memory.is_integer():
            raise ValueError(
                f"init(): object_store_memory must be a whole number of bytes, "
                f"got {object_store_memory!r}."
            )
        object_store_memory = int(object_store_memory)
    _check_type("namespace", namespace, str)
    _check_type("address", address, str)
    if token is not None and not isinstance(token, str):  # never echo a secret's value
        raise TypeError(f"init(): token must be str, not {type(token).__name__}.")
    if token is not None and address in (None, "local") and not _env_address():
        raise ValueError(
            "init(): token= is the cluster token for joining a cluster with address=; "
            "a local node takes none."
        )
    _check_type("storage", storage, str)
    _check_type("max_workers", max_workers, int)
    if not isinstance(ignore_reinit_error, bool):
        raise TypeError(
            f"init(): ignore_reinit_error must be a bool, not {type(ignore_reinit_error).__name__}."
        )
    checked = check_init_options(
        num_gpus=num_gpus,
        logging_level=logging_level,
        logging_format=logging_format,
        configure_logging=configure_logging,
        log_to_driver=log_to_driver,
        runtime_env=runtime_env,
        local_mode=local_mode,
        extra=ray_options,
    )
    current = _rt.current_runtime()
    if current is not None:
        if ignore_reinit_error:
            return current
        if current.started_by_cli:
            log.info(
                "init(): the heliostat command already started this process's runtime "
                "(session %s); using it, so these init() arguments have no effect.",
                current.session,
            )
            return current
        raise HeliostatError(
            "heliostat is already initialized; call shutdown() first or pass "
            "ignore_reinit_error=True."
        )
    head_address = None
    if address not in (None, "local") or (address is None and _env_address()):
        # Only when joining a cluster: the cluster's modules (grpc, SQL models) are
        # heavy, and a local node's init() must stay fast.
        from heliostat.engine.cluster_join import resolve_address

        head_address = resolve_address(address)
    if head_address is not None:
        given = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "resources": resources,
            "object_store_memory": object_store_memory,
        }
        refused = [name for name, value in given.items() if value is not None]
        if refused:
            raise ValueError(
                f"init(): {', '.join(refused)} cannot be given when connecting to a "
                "cluster: the nodes' resources are set by 'heliostat start'."
            )
        runtime = _connect(
            head_address,
            token,
            namespace=namespace,
            max_workers=max_workers,  # the driver node's own workers (tasks needing no CPU)
            storage=storage,
            log_to_driver=checked.log_to_driver,
            env_vars=checked.env_vars,
            code=checked.code,
            temp_dir=checked.temp_dir,
        )
    else:
        runtime = _rt.Runtime(
            num_cpus=num_cpus,
            resources=resources,
            object_store_memory=object_store_memory,
            namespace=namespace,
            max_workers=max_workers,
            storage=storage,
            num_gpus=checked.gpus,
            log_to_driver=checked.log_to_driver,
            env_vars=checked.env_vars,
            code=checked.code,
            temp_dir=checked.temp_dir,
        )
        runtime.start()
    if checked.logging_level is not None:
        runtime.extensions["logging"] = _LoggerSetup(checked.logging_level, checked.logging_format)
    _rt.set_current(runtime)
    log.debug("started local node, session %s", runtime.session)
    if checked.without_effect:
        log.debug(
            "init(): accepted Ray keyword(s) with no effect on a local heliostat node: %s",
            ", ".join(checked.without_effect),
        )
    return runtime


def _env_address() -> bool:
    return bool(os.environ.get("HELIOSTAT_ADDRESS", "").strip())


def _connect(address: str, token: str | None, **options: Any) -> _rt.Runtime | AttachedRuntime:
    """Join the cluster whose head is at ``address`` as a driver node (no CPUs)."""
    from heliostat.cluster.client import HeadClient
    from heliostat.cluster.packages import publish
    from heliostat.engine.cluster_join import (
        ClusterMembership,
        join_with_free_index,
        local_address_towards,
        peer_tls_from_env,
        resolve_token,
    )

    secret = resolve_token(token)
    tls = peer_tls_from_env()  # a half-set pair fails here, before anything starts
    head = HeadClient(address, secret, tls_cert=os.environ.get("HELIOSTAT_TLS_CERT") or None)
    try:
        attached = _attach_here(head, address, options)
    except BaseException:
        head.close()
        raise
    if attached is not None:
        return attached
    runtime: _rt.Runtime | None = None

    def start_runtime(index: int) -> _rt.Runtime:
        started = _rt.Runtime(
            num_cpus=0,
            resources=None,
            object_store_memory=None,
            node_index=index,
            **options,
        )
        started.start()
        return started

    def join(started: _rt.Runtime) -> ClusterMembership:
        membership = ClusterMembership(
            started, head=head, token=secret, host=local_address_towards(address), tls=tls
        )
        membership.start()
        return membership

    try:
        head.cluster_info()  # a wrong token or an empty address fails here, clearly
        runtime, membership = join_with_free_index(head, start_runtime, join)
        runtime.manager.mark_driver_node()  # it leaves with this driver
        runtime.extensions["cluster"] = membership
        # Where the job's durable workflows record (heliostat.workflows.services).
        membership.workflow_stores = head.workflow_stores()
        # The job's own modules (runtime_env working_dir / py_modules), for the nodes.
        membership.set_code(publish(head, options.get("code")), options.get("env_vars"))
        membership.job_id = head.register_job(" ".join(sys.argv), socket.gethostname(), os.getpid())
    except BaseException:
        if runtime is not None:
            runtime.shutdown()
        head.close()
        raise
    log.info("connected to the heliostat cluster at %s as node %s", address, membership.node_id)
    return runtime


def _attach_here(head: Any, address: str, options: dict[str, Any]) -> AttachedRuntime | None:
    """Attach to a node daemon of this machine (``engine/attach.py``); None when there
    is none to attach to, or the options ask for a node of the driver's own."""
    from heliostat.cluster.local_nodes import local_nodes
    from heliostat.engine.attach import attach_enabled, attach_to, choose_local_node
    from heliostat.engine.cluster_join import (
        AttachedMembership,
        await_node_view,
        local_address_towards,
    )

    own_node_only = options.get("max_workers") is not None or options.get("temp_dir") is not None
    if own_node_only or not attach_enabled():
        return None
    cluster_id = head.cluster_info().cluster_id  # a wrong token fails here, clearly
    node = choose_local_node(local_nodes(cluster_id), local_address_towards(address))
    if node is None:
        return None
    runtime = attach_to(
        node.socket,
        namespace=options.get("namespace") or "default",
        storage=options["storage"],
        log_to_driver=options.get("log_to_driver", True),
    )
    if runtime is None:
        return None
    try:
        code, env_vars = options.get("code"), options.get("env_vars")
        if (code is not None and not code.empty) or env_vars:
            # The job's runtime_env: its packages go to the head, and the node installs
            # them; its tasks and actors carry them wherever they run.
            from heliostat.cluster.packages import publish

            runtime.client._call(
                "set_job", publish(head, code), tuple(sorted((env_vars or {}).items()))
            )
        membership = AttachedMembership(head, node_id=node.node_id)
        runtime.extensions["cluster"] = membership
        membership.workflow_stores = head.workflow_stores()
        membership.job_id = head.register_job(" ".join(sys.argv), socket.gethostname(), os.getpid())
        await_node_view(
            head, node.node_id, lambda: int(runtime.client.cluster_info()["cluster_peers"])
        )
    except BaseException:
        runtime.shutdown()
        raise
    log.info("connected to the heliostat cluster at %s through node %s", address, node.node_id)
    return runtime


def _check_type(name: str, value: Any, types: type | tuple[type, ...]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, types):
        wanted = (
            types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        )
        raise TypeError(f"init(): {name} must be {wanted}, not {type(value).__name__} ({value!r}).")


class _LoggerSetup:
    """``init(logging_level=...)``: the ``heliostat`` logger's level and a stderr handler.

    Closed by ``shutdown`` (a runtime extension), which puts the logger back as it was.
    """

    def __init__(self, level: int, fmt: str) -> None:
        self._logger = logging.getLogger("heliostat")
        self._old_level = self._logger.level
        self._handler = logging.StreamHandler()
        self._handler.setFormatter(logging.Formatter(fmt))
        self._logger.setLevel(level)
        self._logger.addHandler(self._handler)

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._old_level)


def _auto_init() -> None:
    """Start a default runtime on first use of ``.remote()``, ``put()`` or ``get_actor()``."""
    runtime = init()
    log.info(
        "Started a local heliostat node automatically (session %s); call heliostat.init() "
        "first to choose its options.",
        runtime.session,
    )


_rt.set_auto_init(_auto_init)


def shutdown() -> None:
    """Stop the local node: workers, fork server, shared memory, temp files."""
    runtime = _rt.current_runtime()
    if runtime is None:
        return
    _rt.set_current(None)
    runtime.shutdown()


def is_initialized() -> bool:
    """Whether a runtime is up in this process (``init()`` ran, ``shutdown()`` did not)."""
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

    Raises:
        TypeError: called with empty parentheses (``@remote()``), which Ray refuses
            too, or with positional arguments other than the one function or class.
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
    if not options:
        raise TypeError(
            "@remote() with empty parentheses is not allowed (as in Ray): write @remote, "
            "or give options, e.g. @remote(num_cpus=2)."
        )
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
    """Store a value in the object store and return a ref to it (starts a runtime if none)."""
    return _rt.client_or_auto_init().put(value)


def wait(
    refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split ``refs`` into (ready, not ready) once ``num_returns`` are ready or time is up.

    ``refs`` may hold ``ObjectRefGenerator``s too, as in Ray: a generator is ready when
    ``next()`` on it would not block (its next item was yielded, or it has ended).
    Both lists keep the input order. With ``fetch_local`` (the default, as in Ray) a
    value made on another node of a cluster is ready once it has been pulled to this
    node; ``fetch_local=False`` counts it ready where it is, and pulls nothing. On one
    node every value is already local.
    """
    if not isinstance(fetch_local, bool):
        raise TypeError(f"wait(): fetch_local must be a bool, not {type(fetch_local).__name__}.")
    if not isinstance(refs, (list, tuple)) or any(
        type(r) is not ObjectRef and not isinstance(r, ObjectRefGenerator) for r in refs
    ):
        raise TypeError("wait() takes a list of ObjectRefs and ObjectRefGenerators.")
    if not refs:
        return [], []  # as Ray: nothing to wait for
    keys = {r.id if type(r) is ObjectRef else ("gen", id(r)) for r in refs}
    if len(keys) != len(refs):
        raise ValueError("wait() got the same ObjectRef (or generator) twice.")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 0 and {len(refs)}, got {num_returns}.")
    client = _rt.current_client()
    if any(type(r) is not ObjectRef for r in refs):
        return wait_with_generators(client, refs, num_returns, timeout, fetch_local)
    return client.wait(refs, num_returns, timeout, fetch_local)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``; ``force`` kills its worker.

    With ``recursive`` (the default, as in Ray) the tasks that task submitted, and
    theirs, are cancelled too; with ``recursive=False`` only the task itself. An
    ``ObjectRefGenerator`` cancels its generator task, as in Ray.
    """
    if isinstance(ref, ObjectRefGenerator):
        ref = ref.completed()
    if type(ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, not {type(ref).__name__}.")
    if not isinstance(force, bool):
        raise TypeError(f"cancel(force=...) must be a bool, got {type(force).__name__}.")
    if not isinstance(recursive, bool):
        raise TypeError(f"cancel(recursive=...) must be a bool, got {type(recursive).__name__}.")
    _rt.current_client().cancel(ref, force, recursive)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor now; later calls raise ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, not {type(actor).__name__}.")
    _rt.current_client().kill_actor(actor._actor_id, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a named actor. Raises ValueError if there is none."""
    client = _rt.client_or_auto_init()
    actor_id, class_name, methods = client.get_actor(name, namespace or client.namespace)
    return ActorHandle(actor_id, class_name, methods, client.tracker, adopt=True)


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """The names of the live named actors, as Ray's ``ray.util.list_named_actors``.

    In this job's namespace, as a list of names; with ``all_namespaces=True``, in every
    namespace, as a list of ``{"name": ..., "namespace": ...}`` dicts. Joined to a
    cluster, the actors of every node (the head keeps the names).
    """
    if not isinstance(all_namespaces, bool):
        raise TypeError(
            f"list_named_actors(all_namespaces=...) must be a bool, got "
            f"{type(all_namespaces).__name__}."
        )
    client = _rt.client_or_auto_init()
    found = client.list_named_actors(None if all_namespaces else client.namespace)
    if all_namespaces:
        return [{"name": name, "namespace": namespace} for namespace, name in found]
    return [name for _namespace, name in found]


def _head() -> Any:
    """The head this driver joined (a ``HeadClient``), or None on a node of its own."""
    runtime = _rt.current_runtime()
    membership = runtime.extensions.get("cluster") if runtime is not None else None
    return getattr(membership, "head", None)


def nodes() -> list[dict[str, Any]]:
    """One dict per node, with Ray's keys (NodeID, Alive, Resources, ...).

    In a cluster, every node the head lists (dead ones with ``Alive`` False).
    """
    head = _head()
    if head is not None:
        return [
            {
                "NodeID": view.node_id,
                "Alive": view.state.value in ("ALIVE", "SUSPECT"),
                "alive": view.state.value in ("ALIVE", "SUSPECT"),
                "NodeManagerAddress": view.address.rsplit(":", 1)[0],
                "NodeManagerHostname": view.hostname,
                "Resources": dict(view.total),
                "IsHead": view.is_head,
                "State": view.state.value,
            }
            for view in head.list_nodes()
        ]
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
    """The node's resources, as Ray reports them.

    ``CPU``, ``GPU`` and custom resources; ``memory`` (bytes that ``memory=`` requests
    of tasks and actors are counted against: memory available at ``init()`` less the
    object store, or ``init(resources={"memory": ...})``); ``object_store_memory``
    (the shared-memory limit in bytes).
    """
    head = _head()
    if head is not None:  # a cluster: the live nodes' totals, as the head adds them up
        return dict(head.cluster_resources().total)
    info = _rt.current_client().cluster_info()
    total = dict(info["total"])
    total["object_store_memory"] = float(info["object_store"]["shm_limit"])
    return total


def available_resources() -> dict[str, float]:
    """What :func:`cluster_resources` has free now; resources with none free are left out.

    ``object_store_memory`` is the limit less the bytes objects hold in shared memory.
    """
    head = _head()
    if head is not None:  # as the nodes last reported it in their heartbeats
        return {k: v for k, v in head.cluster_resources().available.items() if v > 0}
    info = _rt.current_client().cluster_info()
    available = dict(info["available"])
    store = info["object_store"]
    available["object_store_memory"] = float(max(store["shm_limit"] - store["shm_bytes"], 0))
    return {k: v for k, v in available.items() if v > 0}


def timeline(filename: str | None = None) -> list[dict[str, Any]]:
    """Task events as Chrome-trace JSON (also written to ``filename`` if given)."""
    trace = to_chrome_trace(_rt.current_client().task_events())
    if filename is not None:
        with open(filename, "w", encoding="utf-8") as fh:
            json.dump(trace, fh)
    return trace
