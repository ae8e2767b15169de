"""A node manager's wires to the rest of the cluster: the I/O side of ``engine/peers.py``.

:class:`NodeLink` is the only code that moves tasks and objects between nodes. It

* serves this node over gRPC: ``NodeService.Deliver`` (batches of forwarded tasks,
  reports, values, releases, cancellations from other node managers) and
  ``ObjectTransfer`` (this node's objects, straight from their shared-memory
  segments), both behind the cluster token, and the direct data port that
  ``ObjectTransfer.Open`` hands out tickets for (``cluster/direct.py``);
* sends what the node manager decided for other nodes (the effects of ``peers.py``,
  as ``peer_wire.py`` encodes them): one sender thread per peer drains that peer's
  queue and sends everything queued as one ``Deliver`` call, so order is kept per
  peer and a burst of small tasks costs one round trip per batch, not per task;
* pulls objects the node needs into its own segments (``transfer.pull_object``) on a
  small thread pool, from whichever node ``peers.py`` names: the one that holds the
  bytes, which is not always the one that told us about them;
* keeps local copies of other nodes' workflow lease beacons for the steps that run
  here (``engine/beacon_mirror.py``), and answers ``NodeService.LeaseDeadline`` about
  its own driver's;
* polls the head's node table and tells the node manager who is alive, which is how
  a dead peer's tasks get retried;
* asks the head about actor names (the node manager's ``HEAD_EFFECTS``), one question
  at a time and in order, and hands each answer back (:meth:`NodeLink._ask_head`).

Everything it learns goes into the node manager as one call under the manager's lock
(:meth:`NodeManager.peer_event`); every decision is made there, none here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from heliostat.cluster.auth import TokenInterceptor, call_metadata
from heliostat.cluster.client import HeadClient
from heliostat.cluster.names import NamedActor
from heliostat.cluster.packages import PackageFetcher, node_cache
from heliostat.cluster.peer_tls import PeerTls, add_peer_port, peer_channel
from heliostat.cluster.transfer import (
    DirectServer,
    ObjectTransferServicer,
    SegmentSink,
    SourceObject,
    TransferError,
    add_transfer_service,
    channel_options,
    pull_object,
    segment_object,
)
from heliostat.cluster.v1 import node_pb2
from heliostat.engine.beacon_mirror import BeaconMirror, beacon_path
from heliostat.engine.deadline_file import read_deadline
from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    HEAD_EFFECTS,
    ClaimName,
    InstallCode,
    ListNames,
    LogLines,
    LookupName,
    ReleaseName,
)
from heliostat.engine.peer_stream import SERVICE, DeliveryLedger, PeerSender
from heliostat.engine.peer_wire import apply_envelope, encode_effect
from heliostat.engine.peers import (
    PeerInfo,
    PullObject,
)
from heliostat.engine.shm import SegmentPool, segment_path
from heliostat.exceptions import ClusterError
from heliostat.scheduler import ResourceSet
from heliostat.storage.node_states import NodeState

__all__ = ["NodeLink"]

_DRAIN_S = 2.0  # at most, for the messages still queued for peers at shutdown
POOL_SHARE = 4  # freed segments kept for reuse: up to 1/POOL_SHARE of the store

log = logging.getLogger("heliostat.cluster")


class NodeLink:
    """Serve this node to its peers, send them what the node manager decided, watch
    the head's node table.

    Args:
        manager: the node manager (``engine.node_manager.NodeManager``) of this node.
        head: a connection to the head.
        token: the cluster token.
        host: the address to serve on (this node's address as peers reach it).
        poll_interval: seconds between two reads of the head's node table.
        tls: serve and dial peers with TLS (:mod:`heliostat.cluster.peer_tls`).
    """

    def __init__(
        self,
        manager: Any,
        *,
        head: HeadClient,
        token: str,
        host: str = "127.0.0.1",
        poll_interval: float = 0.5,
        pull_threads: int = 4,
        tls: PeerTls | None = None,
    ) -> None:
        self._manager = manager
        self.tls = tls
        self._head = head
        self.metadata = call_metadata(token)
        self.node_index = manager.config.node_index
        self.node_id = format_id(self.node_index)
        self._poll_interval = poll_interval
        self._senders: dict[int, PeerSender] = {}
        self._addresses: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # read the head's node table now, not at the beat
        session = manager.config.session
        # Freed segments are kept (up to a quarter of the store) for pulls to land in
        # pages that exist already: see SegmentPool.
        self._segments = SegmentPool(
            session, manager.config.object_store_memory // POOL_SHARE, warm=True
        )
        self._sink = SegmentSink(
            lambda oid: segment_path(session, oid), reuse=self._segments.take_mapped
        )
        self._packages = PackageFetcher(head, node_cache())
        self._pulls = futures.ThreadPoolExecutor(pull_threads, thread_name_prefix="hs-pull")
        self._ledger = DeliveryLedger()  # used under the node lock only
        # Each peer's open Deliver stream holds a server thread while it lasts (a
        # second at most), and each pull one per stream: room for a large cluster.
        # One thread: questions to the head are asked in the order they were decided
        # (a name released, then claimed again, must reach the head in that order).
        self._asks = futures.ThreadPoolExecutor(1, thread_name_prefix="hs-head-ask")
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="hs-node-rpc"),
            interceptors=[TokenInterceptor(token)],
            options=[*channel_options(), ("grpc.so_reuseport", 0)],
        )
        deliver = grpc.stream_unary_rpc_method_handler(
            self._on_deliver,
            request_deserializer=node_pb2.DeliverRequest.FromString,
            response_serializer=node_pb2.DeliverReply.SerializeToString,
        )
        lease = grpc.unary_unary_rpc_method_handler(
            self._on_lease_deadline,
            request_deserializer=node_pb2.LeaseDeadlineRequest.FromString,
            response_serializer=node_pb2.LeaseDeadlineReply.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Deliver": deliver, "LeaseDeadline": lease}
                ),
            )
        )
        self._session_dir = manager.config.session_dir
        self.beacons = BeaconMirror(
            os.path.join(self._session_dir, "lease-mirrors"), self._ask_lease_deadline
        )
        # Object bytes go over the data port (a third of gRPC's CPU per byte); the
        # gRPC stream stays for peers that ask for it. The data port is plain TCP, so
        # a cluster with TLS has none: its bytes go over the encrypted gRPC stream
        # (Open answers UNIMPLEMENTED, and pullers fall back to Pull).
        self._direct = DirectServer(host) if tls is None else None
        add_transfer_service(self._server, ObjectTransferServicer(self, direct=self._direct))
        target = f"[{host}]:0" if ":" in host else f"{host}:0"
        port = add_peer_port(self._server, target, tls)
        if not port:
            raise OSError(f"cannot listen on {target}")
        self.address = f"{host}:{port}"
        self._watcher = threading.Thread(target=self._watch, name="hs-cluster-watch", daemon=True)

    # ------------------------------------------------------------------ lifecycle --

    def start(self) -> None:
        """Serve, attach to the node manager, and start watching the head."""
        self._server.start()
        if self._direct is not None:
            self._direct.start()
        self._manager.attach_peers(self.send)
        self._manager.on_driver_attached = self._wake.set
        self._manager.use_segment_pool(self._segments)
        self.beacons.start()
        self._manager.beacon_mirror = self.beacons
        self.refresh()
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._manager.on_driver_attached = None
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)
        with self._lock:
            senders = list(self._senders.values())
        # What this node told its peers last (a kill, a release) still reaches them.
        deadline = time.monotonic() + _DRAIN_S
        for sender in senders:
            sender.drain(max(deadline - time.monotonic(), 0.0))
        self._manager.attach_peers(None)
        self._manager.beacon_mirror = None
        self.beacons.stop()
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            sender.close()
        self._pulls.shutdown(wait=True, cancel_futures=True)
        self._manager.use_segment_pool(None)
        self._segments.close()
        self._asks.shutdown(wait=True)  # names released at the end still reach the head
        with contextlib.suppress(Exception):
            self._server.stop(1.0).wait(2.0)
        if self._direct is not None:
            self._direct.close()

    # ------------------------------------------------------------------ membership --

    def refresh(self) -> None:
        """Read the head's node table once and tell the node manager."""
        views = self._head.list_nodes()
        infos = []
        for view in views:
            try:
                index = int(view.node_id, 16)
            except ValueError:
                continue
            alive = view.state in (NodeState.ALIVE, NodeState.SUSPECT)
            infos.append(
                PeerInfo(
                    index=index,
                    address=view.address,
                    total=ResourceSet.from_dict(dict(view.total)),
                    available=ResourceSet.from_dict(dict(view.available)),
                    alive=alive and ":" in view.address,
                )
            )
        live = {
            info.index: info.address
            for info in infos
            if info.alive and info.index != self.node_index
        }
        gone: list[PeerSender] = []
        with self._lock:
            # A peer that died, or came back elsewhere, loses its sender (its thread
            # and channel): nodes come and go, and their senders must not pile up.
            for index, address in list(self._addresses.items()):
                if live.get(index) != address:
                    del self._addresses[index]
                    sender = self._senders.pop(index, None)
                    if sender is not None:
                        gone.append(sender)
            self._addresses.update(live)
        self._manager.peer_event(lambda state: state.peers.update(infos))
        for sender in gone:
            sender.close()

    def _watch(self) -> None:
        # A driver that attaches wakes this loop: a node that joined since the last
        # read is known before the driver's first task (its SPREAD sees every node).
        while True:
            self._wake.wait(self._poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # the head restarting: keep the last view
                log.debug("reading the head's node table failed: %s", exc)

    # ---------------------------------------------------------------------- out --

    def send(self, effect: Any) -> None:
        """Carry out one peer effect (called under the node lock: must not block)."""
        if type(effect) is PullObject:
            self._pulls.submit(self._pull, effect.node, effect.object_id)
            return
        if type(effect) in HEAD_EFFECTS:
            self._asks.submit(self._ask_head, effect)
            return
        sender = self._sender(effect.node)
        if sender is None:
            # A task's output for a node that died is no news (its tasks are gone too).
            level = logging.DEBUG if type(effect) is LogLines else logging.WARNING
            log.log(level, "dropped a message for node %s: not a live node", format_id(effect.node))
            return
        sender.put(effect)

    def _sender(self, index: int) -> PeerSender | None:
        with self._lock:
            sender = self._senders.get(index)
            if sender is None:
                address = self._addresses.get(index)
                if address is None:
                    return None
                sender = self._senders[index] = PeerSender(
                    index=index,
                    address=address,
                    from_node=self.node_id,
                    metadata=self.metadata,
                    encode=encode_effect,
                    channel=peer_channel(address, self.tls, channel_options()),
                )
            return sender

    def _pull(self, index: int, object_id: int) -> None:
        """Copy one object from node ``index`` into a segment of ours (a pool thread).

        ``index`` may be a node this one has not heard from yet (the owner of a task
        named where its argument lives): the head's node table says where it is.
        """
        sender = self._sender(index)
        if sender is None:
            with contextlib.suppress(Exception):
                self.refresh()
            sender = self._sender(index)
        try:
            if sender is None:
                raise TransferError(f"node {format_id(index)} is not a live node")
            pulled = pull_object(
                sender.channel, object_id, self._sink, peer=sender.address, metadata=self.metadata
            )
        except Exception as exc:
            reason = str(exc)
            self._manager.peer_event(lambda state: state.peers.pull_failed(object_id, reason))
            return
        self._manager.peer_event(
            lambda state: state.peers.pulled(object_id, pulled.result, pulled.size)
        )

    def _ask_head(self, effect: Any) -> None:
        """Ask the head one question (actor names, an attached driver's code packages);
        hand the answer back."""
        head = self._head
        kind = type(effect)
        value: Any = None
        try:
            if kind is ClaimName:
                value = head.claim_name(
                    NamedActor(
                        namespace=effect.namespace,
                        name=effect.name,
                        actor_id=effect.actor_id,
                        owner=self.node_id,
                        class_name=effect.class_name,
                        methods=effect.methods,
                        detached=effect.detached,
                    )
                )
            elif kind is LookupName:
                value = head.lookup_name(effect.namespace, effect.name)
                if value is not None and value.owner != self.node_id:
                    with contextlib.suppress(ValueError):
                        if int(value.owner, 16) not in self._addresses:
                            self.refresh()  # a node newer than our view: learn where it is
            elif kind is ReleaseName:
                head.release_name(effect.namespace, effect.name, effect.actor_id)
                return
            elif kind is ListNames:
                value = head.list_names(effect.namespace)
            elif kind is InstallCode:  # an attached driver's job: into our package cache
                value = self._installed(effect.uris)
            ok = True
        except Exception as exc:
            if kind is ReleaseName:
                log.warning(
                    "could not release actor name %s/%s at the head: %s",
                    effect.namespace,
                    effect.name,
                    exc,
                )
                return
            ok, value = False, exc
        req = effect.req
        self._manager.peer_event(lambda state: state.actors.head_answer(req, ok, value))

    # ----------------------------------------------------------------------- in --

    def _on_deliver(self, requests: Any, context: grpc.ServicerContext) -> Any:
        """One peer's stream of batches: each applied once, in order, as it arrives."""
        epoch = index = 0
        for request in requests:
            try:
                index = int(request.from_node, 16)
            except ValueError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "from_node is not a node id")
            epoch = request.epoch
            self._apply_batch(index, request)
        # Every batch of this stream went through peer_event before this point (one
        # the node manager refused, stopping, is not counted: the sender keeps it).
        return node_pb2.DeliverReply(applied=self._ledger.applied(index, epoch))

    def _apply_batch(self, index: int, request: Any) -> None:
        if index not in self._addresses:
            self.refresh()  # a node we have not seen yet: learn where to answer it
        messages = list(request.messages)
        code = self._install_code(messages)
        ledger, epoch, seq = self._ledger, request.epoch, request.seq

        def apply(state: Any) -> None:
            if ledger.fresh(index, epoch, seq):
                with state.dispatch.batch():  # one scheduling pass for the whole batch
                    for envelope in messages:
                        apply_envelope(state, index, envelope, code)

        self._manager.peer_event(apply)

    def _on_lease_deadline(self, request: Any, context: grpc.ServicerContext) -> Any:
        """How long a lease beacon of this node's driver still holds (by our clock)."""
        try:
            path = beacon_path(self._session_dir, request.beacon)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        deadline = read_deadline(path)
        if not deadline:
            return node_pb2.LeaseDeadlineReply(found=False)
        return node_pb2.LeaseDeadlineReply(found=True, remaining=deadline - time.monotonic())

    def _ask_lease_deadline(self, index: int, beacon: str, timeout: float) -> tuple[bool, float]:
        """Ask node ``index`` about one of its lease beacons (the mirror's thread)."""
        sender = self._sender(index)
        if sender is None:
            raise ClusterError(f"node {format_id(index)} is not a live node")
        call = sender.channel.unary_unary(
            f"/{SERVICE}/LeaseDeadline",
            request_serializer=node_pb2.LeaseDeadlineRequest.SerializeToString,
            response_deserializer=node_pb2.LeaseDeadlineReply.FromString,
        )
        reply = call(
            node_pb2.LeaseDeadlineRequest(beacon=beacon), timeout=timeout, metadata=self.metadata
        )
        return reply.found, reply.remaining

    def _install_code(self, messages: list[Any]) -> dict[tuple[str, ...], Any]:
        """Install the code packages forwarded tasks need (outside the node lock).

        A package that cannot be had leaves its tasks without it: they fail with
        ``ModuleNotOnNodeError`` naming the module and this node, if they need it.
        """
        wanted = {
            tuple(m.forward.code)
            for m in messages
            if m.WhichOneof("body") == "forward" and m.forward.code
        }
        installed: dict[tuple[str, ...], Any] = {}
        for uris in wanted:
            try:
                installed[uris] = self._installed(uris)
            except Exception:
                log.exception("could not install the code packages %s", ", ".join(uris))
        return installed

    def _installed(self, uris: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
        """Install packages (once per node) from the head: (import paths, working dir
        or "")."""
        code = self._packages.fetch(uris)
        return (
            tuple(str(p) for p in code.import_paths),
            str(code.working_dir) if code.working_dir is not None else "",
        )

    def open_object(self, object_id: int) -> SourceObject | None:
        """ObjectSource for the transfer service: the object's bytes, if here."""
        source: SourceObject | None = self._manager.open_object(object_id, segment_object)
        return source
