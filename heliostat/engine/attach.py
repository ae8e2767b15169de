"""A driver attached to a node daemon of its own machine.

A driver that joins a cluster (``init(address=...)``) would otherwise start a node of
its own without CPUs (``engine/cluster_join.py``), so that every task it submits
crosses gRPC twice (there and back) and two node managers handle it. When a node
daemon of the same cluster runs on the driver's machine, started by the same user,
the driver attaches to it instead, as a Ray driver connects to its machine's raylet:

1. it finds the node among those published on this machine
   (``cluster/local_nodes.py``), preferring the one whose address is the one the head
   sees this machine by;
2. it connects to that node manager's Unix socket and sends ``ATTACH``; the node
   adopts the connection as a process of its own that is never given a task
   (``WorkerState.DRIVER``) and answers with the driver's process index (its ids are
   minted under it), the node's session and a shared-memory probe;
3. the driver reads the probe's file back: only a driver that sees the node's
   ``/dev/shm`` (not one in another mount namespace or container) can read objects
   zero-copy from it, and only such a driver attaches.

From then on the driver is a client of that node like any of its workers
(:class:`AttachedClient`): it submits over the socket, reads values from the node's
shared memory, and the node's scheduler places its work on this node or on others.
When the driver disconnects (``shutdown``, exit, or death) the node releases every ref
it held and stops the actors it created, detached ones excepted.

A driver with a ``runtime_env`` (``working_dir``, ``py_modules``, ``env_vars``) has
its node install the packages first (the ``set_job`` verb); its tasks carry them. The
node sends the driver the output of its job's tasks (``LOG_LINES``), from this node and
from the others, which it prints unless ``init(log_to_driver=False)``.

A driver that cannot attach (no node here, another user's, another ``/dev/shm``) joins
as a node of its own, as before; so does one with ``max_workers`` or ``_temp_dir``,
which only a node of its own can honour. ``HELIOSTAT_ATTACH=0`` turns attaching off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from heliostat.engine.ids import IdMinter, format_id
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.protocol import BlockingChannel, ConnectionClosed, Op
from heliostat.engine.runtime import close_extensions
from heliostat.engine.worker_client import WorkerClient
from heliostat.engine.worker_output import print_worker_output
from heliostat.exceptions import ClusterError

__all__ = [
    "ATTACH_ENV",
    "AttachedClient",
    "AttachedRuntime",
    "attach_enabled",
    "attach_to",
    "choose_local_node",
]

log = logging.getLogger("heliostat.cluster")

ATTACH_ENV = "HELIOSTAT_ATTACH"
CONNECT_TIMEOUT_S = 10.0
RELEASE_INTERVAL_S = 0.2  # how soon an idle driver reports the refs it dropped


def attach_enabled() -> bool:
    """``HELIOSTAT_ATTACH``: unset or ``1`` on, ``0`` off; anything else is refused."""
    value = os.environ.get(ATTACH_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{ATTACH_ENV} must be 0 or 1, got {value!r}.")
    return value != "0"


def choose_local_node(nodes: list[Any], own_host: str) -> Any | None:
    """The node to attach to: the one whose address is ``own_host`` (the address the
    head sees this machine by), else the first; None when there is none."""
    for node in nodes:
        host = node.node_address.rsplit(":", 1)[0].strip("[]")
        if host == own_host:
            return node
    return nodes[0] if nodes else None


class AttachedClient(WorkerClient):
    """The core client of a driver attached to its machine's node (over its socket).

    A worker's client, minus the worker: requests and replies are the same; no task
    ever arrives. ``on_ready`` (the durable executor's way of watching steps) is a
    ``wait`` whose reply calls back.
    """

    def __init__(
        self,
        channel: BlockingChannel,
        sock: socket.socket,
        *,
        log_to_driver: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(channel, sock, **kwargs)
        self._print_output = print_worker_output if log_to_driver else None
        # A worker reports the refs it dropped whenever it next talks to its node; a
        # driver may sit idle for long, so a thread of its own reports them soon (and
        # reads what the node sent meanwhile: the output of the job's tasks).
        self._stop_releasing = threading.Event()
        self._releaser = threading.Thread(
            target=self._report_dropped_refs, name="heliostat-ref-release", daemon=True
        )
        self._releaser.start()

    def _report_dropped_refs(self) -> None:
        tracker = self.tracker
        while not self._stop_releasing.wait(RELEASE_INTERVAL_S):
            try:
                if tracker.has_pending():
                    tracker.drain()
                self.pump_now()  # no-op while another thread reads the socket
            except (OSError, ValueError, ConnectionClosed):
                return  # the node went away (or we closed): nothing is held there any more

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        if message[0] == Op.LOG_LINES:  # output of this job's tasks, from its node
            if self._print_output is not None:
                self._print_output(*message[1:])
            return
        super()._dispatch(message)

    def on_ready(self, ref: ObjectRef, callback: Callable[[ObjectRef], None]) -> None:
        req_id = self.next_request_id()
        # Ready means made: a value on another node is not pulled here for this.
        self._call_async("wait", (req_id, [ref.id], 1, False), lambda ok, value: callback(ref))

    def close(self) -> None:
        """Disconnect: the node releases what this driver held."""
        self._stop_releasing.set()
        if self.tracker.has_pending():
            with contextlib.suppress(OSError, ConnectionClosed):
                self.tracker.drain()
        self.tracker.closed = True
        self.closed = True
        self.exiting = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._releaser is not threading.current_thread():
            self._releaser.join(timeout=5)
        self.mappings.clear()


@dataclass(frozen=True, slots=True)
class _AttachedConfig:
    """The few facts of a runtime's node that code outside the engine reads."""

    socket_path: str
    node_index: int


class AttachedRuntime:
    """A driver's runtime whose node is a daemon of this machine (see the module doc).

    Offers what code outside the engine uses of a :class:`~heliostat.engine.runtime.
    Runtime`: ``client``, ``session``, ``session_dir`` (the node's: lease beacons go
    there, where the node answers for them), ``namespace``, ``storage``,
    ``extensions``, ``config.socket_path``, ``info()`` and ``shutdown()``.
    """

    started_by_cli = False

    def __init__(
        self,
        client: AttachedClient,
        facts: dict[str, Any],
        *,
        socket_path: str,
        namespace: str,
        storage: str | None,
    ) -> None:
        self.client = client
        self.session = str(facts["session"])
        self.session_dir = str(facts["session_dir"])
        self.namespace = namespace
        self.storage = storage
        self.node_id = format_id(int(facts["node_index"]))
        self.config = _AttachedConfig(socket_path=socket_path, node_index=int(facts["node_index"]))
        self.extensions: dict[str, Any] = {}
        self._closed = False

    def info(self) -> dict[str, Any]:
        return self.client.cluster_info()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        close_extensions(self.extensions)
        self.client.close()


def attach_to(
    socket_path: str, *, namespace: str, storage: str | None, log_to_driver: bool = True
) -> AttachedRuntime | None:
    """Attach to the node manager listening at ``socket_path``; ``log_to_driver``:
    print the output of the job's tasks here (wherever they ran).

    Returns None when this process cannot share that node's memory (the probe
    differs), so the caller joins as a node of its own.

    Raises:
        ClusterError: the node refused or closed the connection.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(socket_path)
        channel = BlockingChannel(sock)
        channel.send([(Op.ATTACH, os.getpid())])
        try:
            first = channel.recv()[0]
        except ConnectionClosed:
            raise ClusterError(f"the node at {socket_path} refused to attach this driver") from None
        sock.settimeout(None)
        if first[0] != Op.REPLY or first[1] != 0 or not first[2]:
            raise ClusterError(f"unexpected answer to ATTACH from {socket_path}: {first!r}")
        facts: dict[str, Any] = first[3]
        if not _same_memory(str(facts["probe"]), str(facts["nonce"])):
            log.info(
                "not attaching to node %s: its shared memory is not this process's",
                format_id(int(facts["node_index"])),
            )
            sock.close()
            return None
    except OSError as exc:
        sock.close()
        raise ClusterError(f"cannot attach to the node at {socket_path}: {exc}") from None
    except BaseException:
        sock.close()
        raise
    client = AttachedClient(
        channel,
        sock,
        log_to_driver=log_to_driver,
        minter=IdMinter(int(facts["node_index"]), int(facts["index"])),
        session=str(facts["session"]),
        namespace=namespace,
    )
    return AttachedRuntime(
        client, facts, socket_path=socket_path, namespace=namespace, storage=storage
    )


def _same_memory(probe: str, nonce: str) -> bool:
    """Whether the node's probe file reads back as it wrote it, here."""
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return os.read(fd, 256).decode("ascii", "replace") == nonce
    finally:
        os.close(fd)
