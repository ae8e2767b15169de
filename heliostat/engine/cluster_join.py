"""A local runtime joins a cluster: node daemons, the head's own node, and drivers.

Every process that runs a node manager in a cluster (a node daemon, the head, and a
driver that connected with ``init(address=...)``) is a *node* of the cluster:

1. it picks a node index (:func:`choose_node_index`): bits 64..79 of every id its
   processes mint (``engine/ids.py``), so ids stay unique across the cluster without
   asking anyone; its node id is that index in hex;
2. it starts its runtime with that index;
3. :class:`ClusterMembership` serves the node to its peers (``NodeLink``), registers
   it with the head and heartbeats (``NodeAgent``), until closed (``shutdown``).

Two nodes joining at once may pick the same free index. The head refuses the second
registration (``NodeIdTaken``: a live node of another process holds it), and
:func:`join_with_free_index` stops that runtime and starts again with another index.

A driver's node has no CPUs of its own (``num_cpus=0``): every task it submits runs on
the cluster's nodes, its objects stay in its own store until a node pulls them, and it
leaves the cluster when the driver shuts down, as a Ray driver does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from heliostat.cluster.agent import NodeAgent
from heliostat.cluster.client import HeadClient, NodeIdTaken, parse_address
from heliostat.cluster.local_nodes import LocalNode, publish_local_node, withdraw_local_node
from heliostat.cluster.peer_tls import PeerTls
from heliostat.engine.ids import format_id
from heliostat.engine.node_link import NodeLink
from heliostat.exceptions import ClusterError
from heliostat.storage.node_states import NodeState

__all__ = [
    "MAX_NODE_INDEX",
    "AttachedMembership",
    "ClusterMembership",
    "await_node_view",
    "choose_node_index",
    "fetch_workflow_stores",
    "join_with_free_index",
    "local_address_towards",
    "peer_tls_from_env",
    "resolve_address",
    "resolve_token",
]

log = logging.getLogger("heliostat.cluster")

MAX_NODE_INDEX = 0xFFFF  # ids.py gives the node index 16 bits; 0 is a lone node
NODE_VIEW_TIMEOUT_S = 2.0  # for an attached node to learn of peers that joined just now
JOIN_ATTEMPTS = 5  # indexes tried when the head says another node took the one picked


def choose_node_index(taken: set[int], *, rand: Any = secrets.randbelow) -> int:
    """A node index in ``1..MAX_NODE_INDEX`` that no node the head lists holds.

    Random rather than counted, so nodes joining at once rarely pick the same one
    (one chance in 65,535 per pair; the head's table is read first to avoid the rest).
    """
    for _ in range(1000):
        index = 1 + int(rand(MAX_NODE_INDEX))
        if index not in taken:
            return index
    raise ClusterError("no free node index: the cluster lists 65,535 nodes")


def local_address_towards(address: str) -> str:
    """The IP address of this machine that ``address`` (HOST:PORT) would see us from."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))  # no packet is sent for a UDP connect
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def resolve_address(address: str | None) -> str | None:
    """The head address ``init`` should join: ``address``, ``HELIOSTAT_ADDRESS``, or
    (for ``"auto"``) the head started on this machine; None for a local node."""
    if address in (None, "local"):
        env = os.environ.get("HELIOSTAT_ADDRESS", "").strip()
        if address is None and env:
            address = env
        else:
            return None
    if address == "auto":
        from heliostat.cluster.local import read_daemon_info, running_daemon

        info = read_daemon_info("head")
        if info is None or running_daemon("head") is None:
            raise ClusterError(
                "init(address='auto'): no heliostat head runs on this machine under "
                "this HELIOSTAT_HOME; start one with 'heliostat start --head' or give "
                "its address."
            )
        return info.address
    assert address is not None
    parse_address(address)  # a clear error for a malformed one
    return address


def resolve_token(token: str | None) -> str:
    """The cluster token: ``token``, ``HELIOSTAT_TOKEN``, or the token file here."""
    if token:
        return token
    env = os.environ.get("HELIOSTAT_TOKEN", "").strip()
    if env:
        return env
    from heliostat.cluster.auth import read_token_file
    from heliostat.cluster.local import token_path

    path = token_path()
    stored = read_token_file(path)
    if stored:
        return stored
    raise ClusterError(
        "No cluster token: pass init(token=...), set HELIOSTAT_TOKEN, or run on the "
        f"head's machine, where it is kept in {path}."
    )


def peer_tls_from_env() -> PeerTls | None:
    """A driver's TLS between nodes: ``HELIOSTAT_TLS_CERT`` (the cluster's certificate,
    also trusted for the head) with ``HELIOSTAT_TLS_KEY``; ``None`` without either.

    Raises:
        ClusterError: only one of the two is set, or a file cannot be read.
    """
    cert = os.environ.get("HELIOSTAT_TLS_CERT") or None
    key = os.environ.get("HELIOSTAT_TLS_KEY") or None
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "HELIOSTAT_TLS_CERT" if cert is None else "HELIOSTAT_TLS_KEY"
        raise ClusterError(
            f"{missing} is not set: a driver of a TLS cluster needs both HELIOSTAT_TLS_CERT "
            "and HELIOSTAT_TLS_KEY (the cluster's certificate and key), since nodes "
            "deliver its results over TLS to the driver itself"
        )
    try:
        return PeerTls.load(cert, key)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None


def fetch_workflow_stores(address: str, token: str | None) -> Any:
    """What the head at ``address`` publishes about its workflow stores (``None``:
    nothing), asked on a short-lived connection (commands run without a runtime).

    Raises:
        ClusterError: the head refused the token or cannot be reached.
    """
    secret = resolve_token(token)
    with HeadClient(address, secret, tls_cert=os.environ.get("HELIOSTAT_TLS_CERT") or None) as head:
        return head.workflow_stores()


class _LocalResources:
    """What the node agent reports: this node's own resources (not the cluster's)."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    def total(self) -> Mapping[str, float]:
        info = self._manager.cluster_info()
        total = dict(info["total"])
        total["object_store_memory"] = float(info["object_store"]["shm_limit"])
        return total

    def available(self) -> Mapping[str, float]:
        info = self._manager.cluster_info()
        available = dict(info["available"])
        store = info["object_store"]
        available["object_store_memory"] = float(max(store["shm_limit"] - store["shm_bytes"], 0))
        return available


class ClusterMembership:
    """A runtime's place in the cluster: served to its peers and known to the head.

    A runtime extension (``Runtime.extensions``): ``shutdown`` closes it before the
    node manager stops, so the node leaves the cluster (deregistered) first.
    """

    def __init__(
        self,
        runtime: Any,
        *,
        head: HeadClient,
        token: str,
        host: str,
        is_head: bool = False,
        tls: PeerTls | None = None,
    ) -> None:
        self.head = head
        self.runtime = runtime
        self.node_index = runtime.config.node_index
        self.node_id = format_id(self.node_index)
        self.link = NodeLink(runtime.manager, head=head, token=token, host=host, tls=tls)
        self.agent = NodeAgent(
            head,
            node_id=self.node_id,
            address=self.link.address,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            resources=_LocalResources(runtime.manager),
            is_head=is_head,
            stored_objects=runtime.manager.stored_objects,
        )
        # Back after being cut off (declared dead), or the head restarted: the names of
        # this node's living actors are claimed again.
        manager = runtime.manager
        self.agent.set_on_rejoined(
            lambda: manager.peer_event(lambda state: state.actors.reclaim_names())
        )
        self.job_id = ""
        # What the head publishes about the cluster's workflow stores (a driver's
        # workflows record there: heliostat.workflows.services); None on daemons.
        self.workflow_stores: Any = None

    def set_code(self, uris: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        """The job's code packages and env_vars: tasks forwarded from this node carry
        them."""
        self.runtime.manager.set_code(uris, tuple(sorted((env or {}).items())))

    def start(self) -> None:
        """Serve peers, register with the head and heartbeat; fails with the head's reason."""
        self.link.start()
        try:
            self.agent.register()
        except BaseException:
            self.link.stop()
            raise
        self.agent.start()

    def close(self) -> None:
        if self.job_id:
            with contextlib.suppress(Exception):
                self.head.finish_job(self.job_id)
        with contextlib.suppress(Exception):
            self.agent.stop(deregister=True)
        self.link.stop()
        self.head.close()


class AttachedMembership:
    """The cluster side of a driver attached to a node of its machine
    (``engine/attach.py``): the head it talks to and the job it registered there.

    A runtime extension, like :class:`ClusterMembership`, with the attributes the
    layers above read (``head``, ``node_id``, ``job_id``, ``workflow_stores``).
    """

    def __init__(self, head: HeadClient, *, node_id: str) -> None:
        self.head = head
        self.node_id = node_id
        self.job_id = ""
        self.workflow_stores: Any = None

    def close(self) -> None:
        if self.job_id:
            with contextlib.suppress(Exception):
                self.head.finish_job(self.job_id)
        self.head.close()


def await_node_view(
    head: HeadClient,
    node_id: str,
    known_peers: Callable[[], int],
    *,
    timeout: float = NODE_VIEW_TIMEOUT_S,
) -> bool:
    """Wait until the node a driver attached to knows as many live peers as the head
    lists (it reads the head's table when a driver attaches, and on its own beat).

    A node that joined a moment ago is then a candidate for the driver's first task
    (``SPREAD`` included). ``known_peers()`` asks the node how many it knows. Returns
    False when the view did not catch up within ``timeout`` (the driver goes on: the
    node learns of the newcomer at its next read).
    """
    live = sum(
        1
        for view in head.list_nodes()
        if view.state in (NodeState.ALIVE, NodeState.SUSPECT)
        and ":" in view.address
        and view.node_id != node_id
    )
    deadline = time.monotonic() + timeout
    while known_peers() < live:
        if time.monotonic() > deadline:
            log.debug("node %s knows fewer than the %d live peers the head lists", node_id, live)
            return False
        time.sleep(0.005)  # the node's read of the head's table is one round trip
    return True


def taken_indexes(head: HeadClient) -> set[int]:
    """Node indexes the head lists (any state): a new node avoids them."""
    taken = set()
    for view in head.list_nodes():
        with contextlib.suppress(ValueError):
            taken.add(int(view.node_id, 16))
    return taken


def join_with_free_index(
    head: HeadClient,
    start_runtime: Callable[[int], Any],
    join: Callable[[Any], ClusterMembership],
    *,
    choose: Callable[[set[int]], int] = choose_node_index,
    attempts: int = JOIN_ATTEMPTS,
) -> tuple[Any, ClusterMembership]:
    """Start a runtime under a free node index and join the cluster with it.

    ``start_runtime(index)`` starts a runtime; ``join(runtime)`` returns its membership,
    started (registered). When the head refuses the index because a live node of
    another process holds it (two nodes picked it at once), the runtime is shut down and
    another index is picked, up to ``attempts`` times.

    Raises:
        ClusterError: no free index after ``attempts`` tries, or the head's refusal.
    """
    taken = taken_indexes(head)
    refusal: NodeIdTaken | None = None
    for _ in range(attempts):
        index = choose(taken)
        runtime = start_runtime(index)
        try:
            return runtime, join(runtime)
        except NodeIdTaken as exc:
            refusal = exc
            log.info("node index %s: %s; picking another", format_id(index), exc)
            taken.add(index)
            runtime.shutdown()
        except BaseException:
            runtime.shutdown()
            raise
    raise ClusterError(
        f"could not join the cluster: {attempts} node indexes in a row were taken by "
        f"nodes joining at the same time (last: {refusal})"
    )


def start_node_runtime(
    head: HeadClient,
    *,
    token: str,
    host: str,
    num_cpus: float | None,
    resources: dict[str, float] | None,
    is_head: bool = False,
    tls: PeerTls | None = None,
) -> Any:
    """Start this process's runtime as a node of the cluster (``heliostat start``).

    Returns the runtime, current in this process, with its :class:`ClusterMembership`
    among its extensions (``heliostat.shutdown()`` leaves the cluster, then stops).
    """
    from heliostat.engine import runtime as _rt

    def start_runtime(index: int) -> Any:
        runtime = _rt.Runtime(
            num_cpus=num_cpus,
            resources=resources,
            object_store_memory=None,
            namespace=None,
            node_index=index,
        )
        runtime.start()
        return runtime

    def join(runtime: Any) -> ClusterMembership:
        membership = ClusterMembership(
            runtime, head=head, token=token, host=host, is_head=is_head, tls=tls
        )
        membership.start()
        return membership

    runtime, membership = join_with_free_index(head, start_runtime, join)
    runtime.started_by_cli = True  # a scheduled run's own init() returns this node
    runtime.extensions["cluster"] = membership
    published = publish_local_node(
        LocalNode(
            cluster_id=head.cluster_info().cluster_id,
            node_id=membership.node_id,
            node_address=membership.link.address,
            socket=runtime.config.socket_path,
            pid=os.getpid(),
        )
    )
    if published is not None:  # drivers of this machine attach to it (engine/attach.py)
        runtime.extensions["local_node"] = _Withdraw(published)
    _rt.set_current(runtime)
    return runtime


class _Withdraw:
    """Removes a node's published file when its runtime shuts down."""

    def __init__(self, path: Any) -> None:
        self._path = path

    def close(self) -> None:
        withdraw_local_node(self._path)
