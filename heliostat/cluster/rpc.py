"""The control plane's RPC edge: typed payloads, protobuf conversion, the servicer.

Protobuf types stop here. Everything else in heliostat speaks in the frozen dataclasses
below; :class:`ControlPlaneServicer` turns each gRPC request into a call on a
:class:`HeadHandler` (the head's service, :mod:`heliostat.cluster.head`) and the
answer back into protobuf, and the client (:mod:`heliostat.cluster.client`) does the
reverse. A handler that has to refuse a call raises :class:`RpcRefusal` with the gRPC
status to answer (``NOT_FOUND`` for a heartbeat from a node the head does not count
as alive, which then registers again).

The messages are defined in ``proto/heliostat/cluster/v1/control.proto``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from heliostat.cluster.names import NamedActor
from heliostat.cluster.object_locations import ObjectPlace, StoreDelta
from heliostat.cluster.package_store import PackageTooLarge
from heliostat.cluster.v1 import control_pb2 as pb
from heliostat.cluster.v1 import control_pb2_grpc as pb_grpc
from heliostat.storage.node_states import NodeState
from heliostat.storage.packages import PackageError

__all__ = [
    "ActorNamesServicer",
    "ClusterInfo",
    "ClusterTotals",
    "ControlPlaneServicer",
    "HeadHandler",
    "JobView",
    "NameHandler",
    "NodeView",
    "PackageHandler",
    "PackagesServicer",
    "RegisterAck",
    "Registration",
    "RpcRefusal",
    "WorkflowStores",
    "add_names_servicer",
    "add_package_servicer",
    "add_servicer",
    "job_from_pb",
    "named_actor_from_pb",
    "named_actor_to_pb",
    "names_stub",
    "node_from_pb",
    "package_stub",
    "resources_from_pb",
    "resources_to_pb",
    "stub",
]

log = logging.getLogger("heliostat.cluster")


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """What a node tells the head when it joins."""

    node_id: str
    address: str
    hostname: str
    pid: int
    total: Mapping[str, float] = field(default_factory=dict)
    available: Mapping[str, float] = field(default_factory=dict)
    is_head: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterAck:
    """The head's answer to a registration: how to heartbeat from now on."""

    cluster_id: str
    incarnation: int
    heartbeat_interval: float
    dead_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    """A node as ``heliostat status`` shows it (times: Unix seconds, wall clock)."""

    node_id: str
    address: str
    hostname: str
    pid: int
    state: NodeState
    total: Mapping[str, float]
    available: Mapping[str, float]
    incarnation: int
    registered_at: float
    last_heartbeat_at: float | None
    silent_for: float
    is_head: bool
    objects: int = 0  # in its store, as last reported (cluster/object_locations.py)
    object_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAck:
    """The head's answer to a heartbeat."""

    incarnation: int
    objects_wanted: bool = False  # send a full report of the object store next time


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterTotals:
    """Resources of the live nodes."""

    total: Mapping[str, float]
    available: Mapping[str, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterInfo:
    """Who the head is (what a client checks first)."""

    cluster_id: str
    version: str
    started_at: float
    nodes_alive: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStores:
    """Where the cluster's durable workflows keep their state, as the head publishes it.

    Holds secrets (a password inside ``db_url``, ``signing_key``): never log it whole;
    its ``repr`` hides both.
    """

    db_url: str
    storage_url: str
    storage_configured: bool  # False: the default under the head's HELIOSTAT_HOME
    signing_key: bytes
    head_machine: str  # the head's machine, as heliostat.cluster.local.machine_id() says

    def __repr__(self) -> str:
        return (
            f"WorkflowStores(db_url=<{len(self.db_url)} chars>, "
            f"storage_url={self.storage_url!r}, storage_configured={self.storage_configured}, "
            f"signing_key=<hidden>, head_machine={self.head_machine!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobView:
    """A driver registered with the head."""

    job_id: str
    entrypoint: str
    hostname: str
    pid: int
    started_at: float
    finished_at: float | None


class RpcRefusal(Exception):
    """Raised by a :class:`HeadHandler` to answer a call with a gRPC error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PackageHandler(Protocol):
    """What the package service needs (implemented by
    :class:`~heliostat.cluster.package_store.PackageStore`).

    Its refusals are :class:`~heliostat.storage.packages.PackageError`s, answered
    ``RESOURCE_EXHAUSTED`` for a ``PackageTooLarge`` and ``INVALID_ARGUMENT`` otherwise.
    """

    def size_of(self, uri: str) -> int | None: ...
    def receive(self, uri: str, total_size: int, chunks: Iterable[bytes]) -> bool: ...
    def read(self, uri: str) -> tuple[int, Generator[bytes, None, None]] | None: ...


class NameHandler(Protocol):
    """What the ``ActorNames`` service needs (implemented by ``HeadService``)."""

    def claim_name(self, entry: NamedActor) -> NamedActor | None: ...
    def lookup_name(self, namespace: str, name: str) -> NamedActor | None: ...
    def release_name(self, namespace: str, name: str, actor_id: int) -> bool: ...
    def list_names(self, namespace: str | None) -> list[NamedActor]: ...


class HeadHandler(Protocol):
    """What the servicer needs from the head (implemented by ``HeadService``)."""

    def register_node(self, registration: Registration, *, cause_id: str) -> RegisterAck: ...
    def heartbeat(
        self,
        node_id: str,
        available: Mapping[str, float],
        *,
        cause_id: str,
        incarnation: int = 0,
        objects: StoreDelta | None = None,
    ) -> HeartbeatAck: ...
    def deregister_node(self, node_id: str, *, cause_id: str) -> None: ...
    def list_nodes(self) -> list[NodeView]: ...
    def cluster_resources(self) -> ClusterTotals: ...
    def cluster_info(self) -> ClusterInfo: ...
    def locate_objects(
        self, object_ids: list[int], limit: int
    ) -> tuple[list[ObjectPlace], int]: ...
    def workflow_stores(self) -> WorkflowStores | None: ...
    def register_job(self, entrypoint: str, hostname: str, pid: int) -> str: ...
    def finish_job(self, job_id: str) -> None: ...
    def list_jobs(self) -> list[JobView]: ...


# --- conversion -----------------------------------------------------------------------

_STATE_TO_PB = {
    NodeState.ALIVE: pb.NODE_STATE_ALIVE,
    NodeState.SUSPECT: pb.NODE_STATE_SUSPECT,
    NodeState.DEAD: pb.NODE_STATE_DEAD,
    NodeState.LEFT: pb.NODE_STATE_LEFT,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def resources_to_pb(amounts: Mapping[str, float]) -> Any:
    return pb.ResourceMap(amounts={str(k): float(v) for k, v in amounts.items()})


def resources_from_pb(message: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in message.amounts.items()}


def _node_to_pb(node: NodeView) -> Any:
    return pb.NodeInfo(
        node_id=node.node_id,
        address=node.address,
        hostname=node.hostname,
        pid=node.pid,
        state=_STATE_TO_PB[node.state],
        total=resources_to_pb(node.total),
        available=resources_to_pb(node.available),
        incarnation=node.incarnation,
        registered_at=node.registered_at,
        last_heartbeat_at=node.last_heartbeat_at or 0.0,
        silent_for_s=node.silent_for,
        is_head=node.is_head,
        objects=node.objects,
        object_bytes=node.object_bytes,
    )


def node_from_pb(message: Any) -> NodeView:
    return NodeView(
        node_id=message.node_id,
        address=message.address,
        hostname=message.hostname,
        pid=message.pid,
        state=_STATE_FROM_PB.get(message.state, NodeState.DEAD),
        total=resources_from_pb(message.total),
        available=resources_from_pb(message.available),
        incarnation=message.incarnation,
        registered_at=message.registered_at,
        last_heartbeat_at=message.last_heartbeat_at or None,
        silent_for=message.silent_for_s,
        is_head=message.is_head,
        objects=message.objects,
        object_bytes=message.object_bytes,
    )


def store_delta_to_pb(delta: StoreDelta) -> dict[str, Any]:
    """A store report as the fields of a ``HeartbeatRequest``."""
    return {
        "objects_added": [
            pb.StoredObject(object_id=_id_bytes(oid), size=size)
            for oid, size in delta.added.items()
        ],
        "objects_removed": [_id_bytes(oid) for oid in delta.removed],
        "objects_full": delta.full,
    }


def store_delta_from_pb(request: Any) -> StoreDelta:
    return StoreDelta(
        added={int.from_bytes(o.object_id, "big"): o.size for o in request.objects_added},
        removed=tuple(int.from_bytes(oid, "big") for oid in request.objects_removed),
        full=request.objects_full,
    )


def place_from_pb(message: Any) -> ObjectPlace:
    return ObjectPlace(
        object_id=int.from_bytes(message.object_id, "big"),
        size=message.size,
        node_ids=tuple(message.node_ids),
    )


def _job_to_pb(job: JobView) -> Any:
    return pb.JobInfo(
        job_id=job.job_id,
        entrypoint=job.entrypoint,
        hostname=job.hostname,
        pid=job.pid,
        started_at=job.started_at,
        finished_at=job.finished_at or 0.0,
    )


def job_from_pb(message: Any) -> JobView:
    return JobView(
        job_id=message.job_id,
        entrypoint=message.entrypoint,
        hostname=message.hostname,
        pid=message.pid,
        started_at=message.started_at,
        finished_at=message.finished_at or None,
    )


def _id_bytes(ident: int) -> bytes:
    return ident.to_bytes(10, "big")  # as node.proto carries ids


def named_actor_to_pb(entry: NamedActor) -> Any:
    return pb.NamedActor(
        namespace=entry.namespace,
        name=entry.name,
        actor_id=_id_bytes(entry.actor_id),
        owner_node_id=entry.owner,
        class_name=entry.class_name,
        methods={str(k): int(v) for k, v in entry.methods.items()},
        detached=entry.detached,
    )


def named_actor_from_pb(message: Any) -> NamedActor:
    return NamedActor(
        namespace=message.namespace,
        name=message.name,
        actor_id=int.from_bytes(message.actor_id, "big"),
        owner=message.owner_node_id,
        class_name=message.class_name,
        methods={str(k): int(v) for k, v in message.methods.items()},
        detached=message.detached,
    )


def _cause(context: grpc.ServicerContext) -> str:
    """A correlation id for the log lines of one call: who called."""
    return str(context.peer())


# --- the servicer ---------------------------------------------------------------------


class ControlPlaneServicer(pb_grpc.ControlPlaneServicer):
    """The ``ControlPlane`` service: each method converts and delegates to the handler."""

    def __init__(self, handler: HeadHandler) -> None:
        self._handler = handler

    def _refused(self, context: grpc.ServicerContext, refusal: RpcRefusal) -> None:
        context.abort(refusal.code, refusal.message)

    def RegisterNode(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.node_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id is required")
        try:
            ack = self._handler.register_node(
                Registration(
                    node_id=request.node_id,
                    address=request.address,
                    hostname=request.hostname,
                    pid=request.pid,
                    total=resources_from_pb(request.total),
                    available=resources_from_pb(request.available),
                    is_head=request.is_head,
                ),
                cause_id=_cause(context),
            )
        except RpcRefusal as refusal:
            self._refused(context, refusal)
        return pb.RegisterNodeReply(
            cluster_id=ack.cluster_id,
            incarnation=ack.incarnation,
            heartbeat_interval_s=ack.heartbeat_interval,
            dead_after_s=ack.dead_after,
        )

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            ack = self._handler.heartbeat(
                request.node_id,
                resources_from_pb(request.available),
                cause_id=_cause(context),
                incarnation=request.incarnation,
                objects=store_delta_from_pb(request),
            )
        except RpcRefusal as refusal:
            self._refused(context, refusal)
        return pb.HeartbeatReply(incarnation=ack.incarnation, objects_wanted=ack.objects_wanted)

    def DeregisterNode(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._handler.deregister_node(request.node_id, cause_id=_cause(context))
        return pb.DeregisterNodeReply()

    def ListNodes(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ListNodesReply(nodes=[_node_to_pb(n) for n in self._handler.list_nodes()])

    def GetClusterResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        totals = self._handler.cluster_resources()
        return pb.GetClusterResourcesReply(
            total=resources_to_pb(totals.total), available=resources_to_pb(totals.available)
        )

    def GetClusterInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = self._handler.cluster_info()
        return pb.GetClusterInfoReply(
            cluster_id=info.cluster_id,
            version=info.version,
            started_at=info.started_at,
            nodes_alive=info.nodes_alive,
        )

    def LocateObjects(self, request: Any, context: grpc.ServicerContext) -> Any:
        places, total = self._handler.locate_objects(
            [int.from_bytes(oid, "big") for oid in request.object_ids], request.limit
        )
        return pb.LocateObjectsReply(
            places=[
                pb.ObjectPlace(
                    object_id=_id_bytes(p.object_id), size=p.size, node_ids=list(p.node_ids)
                )
                for p in places
            ],
            total=total,
        )

    def GetWorkflowStores(self, request: Any, context: grpc.ServicerContext) -> Any:
        stores = self._handler.workflow_stores()
        if stores is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "this head publishes no workflow stores")
        assert stores is not None  # abort raised
        return pb.GetWorkflowStoresReply(
            db_url=stores.db_url,
            storage_url=stores.storage_url,
            storage_configured=stores.storage_configured,
            signing_key=stores.signing_key,
            head_machine=stores.head_machine,
        )

    def RegisterJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        job_id = self._handler.register_job(request.entrypoint, request.hostname, request.pid)
        return pb.RegisterJobReply(job_id=job_id)

    def FinishJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._handler.finish_job(request.job_id)
        except RpcRefusal as refusal:
            self._refused(context, refusal)
        return pb.FinishJobReply()

    def ListJobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ListJobsReply(jobs=[_job_to_pb(j) for j in self._handler.list_jobs()])


class ActorNamesServicer(pb_grpc.ActorNamesServicer):
    """The ``ActorNames`` service: cluster-wide actor names, kept by the head."""

    def __init__(self, handler: NameHandler) -> None:
        self._handler = handler

    def ClaimName(self, request: Any, context: grpc.ServicerContext) -> Any:
        entry = named_actor_from_pb(request.actor)
        if not entry.name or not entry.owner:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a name and its owner are required")
        holder = self._handler.claim_name(entry)
        if holder is None:
            return pb.ClaimNameReply(claimed=True)
        return pb.ClaimNameReply(claimed=False, holder=named_actor_to_pb(holder))

    def LookupName(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = self._handler.lookup_name(request.namespace, request.name)
        if found is None:
            return pb.LookupNameReply(found=False)
        return pb.LookupNameReply(found=True, actor=named_actor_to_pb(found))

    def ReleaseName(self, request: Any, context: grpc.ServicerContext) -> Any:
        released = self._handler.release_name(
            request.namespace, request.name, int.from_bytes(request.actor_id, "big")
        )
        return pb.ReleaseNameReply(released=released)

    def ListNames(self, request: Any, context: grpc.ServicerContext) -> Any:
        namespace = None if request.all_namespaces else request.namespace
        return pb.ListNamesReply(
            actors=[named_actor_to_pb(e) for e in self._handler.list_names(namespace)]
        )


class PackagesServicer(pb_grpc.PackagesServicer):
    """The ``Packages`` service: uploads and downloads of code archives, in chunks."""

    def __init__(self, store: PackageHandler) -> None:
        self._store = store

    @staticmethod
    def _refuse(context: grpc.ServicerContext, what: str, error: PackageError) -> None:
        code = (
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if isinstance(error, PackageTooLarge)
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        log.warning("refused %s from %s: %s", what, context.peer(), error)
        context.abort(code, f"heliostat head: {error}")

    def HasPackage(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            size = self._store.size_of(request.uri)
        except PackageError as error:
            self._refuse(context, "HasPackage", error)
        return pb.HasPackageReply(present=size is not None, size=size or 0)

    def UploadPackage(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        first = next(request_iterator, None)
        if first is None or not first.uri:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "heliostat head: an upload's first message must name the package",
            )
        assert first is not None  # abort raised
        uri = first.uri

        def chunks() -> Iterator[bytes]:
            for message in itertools.chain([first], request_iterator):
                if message.uri and message.uri != uri:
                    raise PackageError(f"an upload of {uri} went on with chunks of {message.uri}")
                yield message.data

        try:
            stored = self._store.receive(uri, first.total_size, chunks())
            size = self._store.size_of(uri)
        except PackageError as error:
            self._refuse(context, "UploadPackage", error)
        return pb.UploadPackageReply(stored=stored, size=size or 0)

    def DownloadPackage(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            found = self._store.read(request.uri)
        except PackageError as error:
            self._refuse(context, "DownloadPackage", error)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"heliostat head: no package {request.uri}")
        assert found is not None  # abort raised
        size, chunks = found
        sent_any = False
        try:
            for data in chunks:
                yield pb.PackageChunk(total_size=size if not sent_any else 0, data=data)
                sent_any = True
            if not sent_any:  # an empty file still says its size
                yield pb.PackageChunk(total_size=size)
        finally:
            chunks.close()


def add_package_servicer(server: grpc.Server, store: PackageHandler) -> None:
    """Serve the ``Packages`` service of ``store`` on ``server``."""
    pb_grpc.add_PackagesServicer_to_server(  # type: ignore[no-untyped-call]
        PackagesServicer(store), server
    )


def add_names_servicer(server: grpc.Server, handler: NameHandler) -> None:
    """Serve the ``ActorNames`` service of ``handler`` on ``server``."""
    pb_grpc.add_ActorNamesServicer_to_server(  # type: ignore[no-untyped-call]
        ActorNamesServicer(handler), server
    )


def names_stub(channel: grpc.Channel) -> Any:
    """An ``ActorNames`` client stub on ``channel``."""
    return pb_grpc.ActorNamesStub(channel)  # type: ignore[no-untyped-call]


def package_stub(channel: grpc.Channel) -> Any:
    """A ``Packages`` client stub on ``channel``."""
    return pb_grpc.PackagesStub(channel)  # type: ignore[no-untyped-call]


def add_servicer(server: grpc.Server, handler: HeadHandler) -> None:
    """Serve the ``ControlPlane`` service of ``handler`` on ``server``."""
    pb_grpc.add_ControlPlaneServicer_to_server(  # type: ignore[no-untyped-call]
        ControlPlaneServicer(handler), server
    )


def stub(channel: grpc.Channel) -> Any:
    """A ``ControlPlane`` client stub on ``channel``."""
    return pb_grpc.ControlPlaneStub(channel)  # type: ignore[no-untyped-call]
