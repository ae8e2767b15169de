"""A client of the head's control plane, in heliostat's terms.

:class:`HeadClient` wraps one gRPC channel: every call carries the cluster token
(:func:`~heliostat.cluster.auth.call_metadata`) and a deadline, answers come back as
the dataclasses of :mod:`heliostat.cluster.rpc`, and gRPC failures become heliostat
errors a user can act on:

* ``UNAUTHENTICATED`` -> :class:`~heliostat.exceptions.ClusterAuthError`;
* ``UNAVAILABLE`` or a missed deadline -> :class:`~heliostat.exceptions.ClusterUnreachableError`;
* ``NOT_FOUND`` on a heartbeat -> :class:`NodeNotKnown` (the node registers again);
* ``ALREADY_EXISTS`` on a registration -> :class:`NodeIdTaken` (the node picks another id);
* ``NOT_FOUND`` on a package download -> :class:`PackageNotOnHead`;
* anything else -> :class:`~heliostat.exceptions.ClusterError`, with the head's reason
  (a package refused for its digest or size says so).

Code packages travel in chunks of :data:`~heliostat.cluster.package_store.DEFAULT_PACKAGE_CHUNK`
bytes both ways, under a longer deadline (:data:`PACKAGE_TIMEOUT`) than control calls.

Addresses are ``HOST:PORT`` (``[::1]:PORT`` for IPv6). With ``tls_cert`` the channel
is TLS and trusts that certificate (a self-signed head certificate, or its CA).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import grpc

from heliostat.cluster import rpc
from heliostat.cluster.addresses import parse_address
from heliostat.cluster.auth import call_metadata
from heliostat.cluster.names import NamedActor
from heliostat.cluster.object_locations import ObjectPlace, StoreDelta
from heliostat.cluster.package_store import DEFAULT_PACKAGE_CHUNK
from heliostat.cluster.v1 import control_pb2 as pb
from heliostat.exceptions import ClusterAuthError, ClusterError, ClusterUnreachableError

__all__ = [
    "DEFAULT_TIMEOUT",
    "PACKAGE_TIMEOUT",
    "HeadClient",
    "NodeIdTaken",
    "NodeNotKnown",
    "PackageNotOnHead",
    "StoresNotPublished",
    "parse_address",
]

DEFAULT_TIMEOUT: Final = 5.0
"""Seconds a control-plane call may take before the head counts as unreachable."""

PACKAGE_TIMEOUT: Final = 300.0
"""Seconds an upload or download of one package may take (100 MiB at 0.35 MB/s)."""


class NodeNotKnown(ClusterError):
    """The head does not count this node as alive (unknown, dead or gone): register again."""


class NodeIdTaken(ClusterError):
    """A live node of another process holds the node id a registration asked for."""


class StoresNotPublished(ClusterError):
    """The head publishes no workflow stores (one embedded in a test, without them)."""


class PackageNotOnHead(ClusterError):
    """The head has no package of that URI (never uploaded, or the head's store was wiped)."""


class HeadClient:
    """One connection to a head. Thread-safe (gRPC channels are); close it when done.

    Args:
        address: ``HOST:PORT`` of the head.
        token: the cluster token.
        tls_cert: a PEM file to trust for TLS (``None``: plain TCP).
        timeout: the deadline of each call, in seconds.
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        tls_cert: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        parse_address(address)
        self.address = address
        self.timeout = timeout
        self._metadata = call_metadata(token)
        options = [
            ("grpc.enable_retries", 0),
            # gRPC's own reconnect backoff grows to 120 s; a node must find a restarted
            # head within its grace period (dead_after), so reconnect at least every second.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if tls_cert is not None:
            with open(tls_cert, "rb") as fh:
                credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = rpc.stub(self._channel)
        self._packages = rpc.package_stub(self._channel)
        self._names = rpc.names_stub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> HeadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: str, request: Any, *, timeout: float | None = None, stub: Any = None
    ) -> Any:
        try:
            return getattr(stub or self._stub, method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None

    def _error(self, method: str, exc: grpc.RpcError) -> ClusterError:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        where = f"the heliostat head at {self.address}"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return ClusterAuthError(
                f"{where} refused the cluster token ({detail}). Pass the token that "
                "'heliostat start --head' printed (--token or HELIOSTAT_TOKEN).",
                address=self.address,
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return ClusterUnreachableError(
                f"{where} is unreachable ({code.name}: {detail}). Is it running "
                "('heliostat start --head'), and is the address right?",
                address=self.address,
            )
        if code == grpc.StatusCode.NOT_FOUND and method == "Heartbeat":
            return NodeNotKnown(str(detail), address=self.address)
        if code == grpc.StatusCode.ALREADY_EXISTS and method == "RegisterNode":
            return NodeIdTaken(f"{where}: {detail}", address=self.address)
        if code == grpc.StatusCode.NOT_FOUND and method == "GetWorkflowStores":
            return StoresNotPublished(str(detail), address=self.address)
        if code == grpc.StatusCode.NOT_FOUND and method == "DownloadPackage":
            return PackageNotOnHead(
                f"{where} has no such package ({detail}); publish it again", address=self.address
            )
        name = code.name if code is not None else "error"
        return ClusterError(f"{where}: {method} failed ({name}: {detail})", address=self.address)

    # --- membership

    def register_node(self, registration: rpc.Registration) -> rpc.RegisterAck:
        reply = self._call(
            "RegisterNode",
            pb.RegisterNodeRequest(
                node_id=registration.node_id,
                address=registration.address,
                hostname=registration.hostname,
                pid=registration.pid,
                total=rpc.resources_to_pb(registration.total),
                available=rpc.resources_to_pb(registration.available),
                is_head=registration.is_head,
            ),
        )
        return rpc.RegisterAck(
            cluster_id=reply.cluster_id,
            incarnation=reply.incarnation,
            heartbeat_interval=reply.heartbeat_interval_s,
            dead_after=reply.dead_after_s,
        )

    def heartbeat(
        self,
        node_id: str,
        available: Mapping[str, float],
        *,
        timeout: float | None = None,
        incarnation: int = 0,
        objects: StoreDelta | None = None,
    ) -> rpc.HeartbeatAck:
        """Say the node lives, as ``incarnation`` (0: not said), with what changed in
        its object store (``objects``); returns its incarnation and whether the head
        wants a full report of the store next time.

        Raises:
            NodeNotKnown: the head does not count the node as alive, or that incarnation
                of it is over.
        """
        reply = self._call(
            "Heartbeat",
            pb.HeartbeatRequest(
                node_id=node_id,
                available=rpc.resources_to_pb(available),
                incarnation=incarnation,
                **(rpc.store_delta_to_pb(objects) if objects else {}),
            ),
            timeout=timeout,
        )
        return rpc.HeartbeatAck(
            incarnation=int(reply.incarnation), objects_wanted=reply.objects_wanted
        )

    def locate_objects(
        self, object_ids: Iterable[int] = (), *, limit: int = 1000
    ) -> tuple[list[ObjectPlace], int]:
        """Which nodes' stores hold these objects (none given: the largest objects of
        the cluster, up to ``limit``), as their heartbeats said; and how many objects
        the head knows of in all. Objects no node holds are left out."""
        reply = self._call(
            "LocateObjects",
            pb.LocateObjectsRequest(
                object_ids=[oid.to_bytes(10, "big") for oid in object_ids], limit=limit
            ),
        )
        return [rpc.place_from_pb(p) for p in reply.places], int(reply.total)

    def deregister_node(self, node_id: str) -> None:
        self._call("DeregisterNode", pb.DeregisterNodeRequest(node_id=node_id))

    # --- the cluster

    def list_nodes(self) -> list[rpc.NodeView]:
        reply = self._call("ListNodes", pb.ListNodesRequest())
        return [rpc.node_from_pb(n) for n in reply.nodes]

    def cluster_resources(self) -> rpc.ClusterTotals:
        reply = self._call("GetClusterResources", pb.GetClusterResourcesRequest())
        return rpc.ClusterTotals(
            total=rpc.resources_from_pb(reply.total),
            available=rpc.resources_from_pb(reply.available),
        )

    def cluster_info(self) -> rpc.ClusterInfo:
        reply = self._call("GetClusterInfo", pb.GetClusterInfoRequest())
        return rpc.ClusterInfo(
            cluster_id=reply.cluster_id,
            version=reply.version,
            started_at=reply.started_at,
            nodes_alive=reply.nodes_alive,
        )

    def workflow_stores(self) -> rpc.WorkflowStores | None:
        """Where the cluster's workflows keep their state (``None``: the head says none).

        The answer holds secrets (a database password, the signing key): see
        :class:`~heliostat.cluster.rpc.WorkflowStores`.
        """
        try:
            reply = self._call("GetWorkflowStores", pb.GetWorkflowStoresRequest())
        except StoresNotPublished:
            return None
        return rpc.WorkflowStores(
            db_url=reply.db_url,
            storage_url=reply.storage_url,
            storage_configured=reply.storage_configured,
            signing_key=bytes(reply.signing_key),
            head_machine=reply.head_machine,
        )

    # --- jobs

    def register_job(self, entrypoint: str, hostname: str, pid: int) -> str:
        reply = self._call(
            "RegisterJob", pb.RegisterJobRequest(entrypoint=entrypoint, hostname=hostname, pid=pid)
        )
        return str(reply.job_id)

    def finish_job(self, job_id: str) -> None:
        self._call("FinishJob", pb.FinishJobRequest(job_id=job_id))

    def list_jobs(self) -> list[rpc.JobView]:
        reply = self._call("ListJobs", pb.ListJobsRequest())
        return [rpc.job_from_pb(j) for j in reply.jobs]

    # --- actor names

    def claim_name(self, entry: NamedActor) -> NamedActor | None:
        """Claim ``entry``'s name for its actor; None when claimed, else the holder."""
        reply = self._call(
            "ClaimName", pb.ClaimNameRequest(actor=rpc.named_actor_to_pb(entry)), stub=self._names
        )
        return None if reply.claimed else rpc.named_actor_from_pb(reply.holder)

    def lookup_name(self, namespace: str, name: str) -> NamedActor | None:
        """The actor named so, or None."""
        reply = self._call(
            "LookupName", pb.LookupNameRequest(namespace=namespace, name=name), stub=self._names
        )
        return rpc.named_actor_from_pb(reply.actor) if reply.found else None

    def release_name(self, namespace: str, name: str, actor_id: int) -> bool:
        """Forget the name if ``actor_id`` still holds it; whether it did."""
        reply = self._call(
            "ReleaseName",
            pb.ReleaseNameRequest(
                namespace=namespace, name=name, actor_id=actor_id.to_bytes(10, "big")
            ),
            stub=self._names,
        )
        return bool(reply.released)

    def list_names(self, namespace: str | None) -> list[NamedActor]:
        """The named actors of ``namespace`` (None: of every namespace)."""
        request = pb.ListNamesRequest(all_namespaces=namespace is None, namespace=namespace or "")
        reply = self._call("ListNames", request, stub=self._names)
        return [rpc.named_actor_from_pb(a) for a in reply.actors]

    # --- code packages

    def has_package(self, uri: str) -> bool:
        """Whether the head holds the package ``uri``."""
        reply = self._call("HasPackage", pb.HasPackageRequest(uri=uri), stub=self._packages)
        return bool(reply.present)

    def upload_package(
        self,
        uri: str,
        data: bytes,
        *,
        chunk_size: int = DEFAULT_PACKAGE_CHUNK,
        timeout: float = PACKAGE_TIMEOUT,
    ) -> bool:
        """Send a package's archive to the head, in chunks.

        Args:
            uri: the package's URI (its kind and the SHA-256 of ``data``).
            data: the archive.
            chunk_size: bytes per message.
            timeout: seconds the whole upload may take.

        Returns:
            True when the head stored it, False when it had it already (then most of
            ``data`` is not sent).

        Raises:
            ClusterError: the head refused it (its digest is not the URI's, it is over
                the head's limit); the message says which.
        """
        view = memoryview(data)

        def chunks() -> Iterator[Any]:
            yield pb.PackageChunk(uri=uri, total_size=len(data), data=bytes(view[:chunk_size]))
            for offset in range(chunk_size, len(data), chunk_size):
                yield pb.PackageChunk(data=bytes(view[offset : offset + chunk_size]))

        reply = self._call("UploadPackage", chunks(), timeout=timeout, stub=self._packages)
        return bool(reply.stored)

    def download_package(self, uri: str, *, timeout: float = PACKAGE_TIMEOUT) -> bytes:
        """The archive of ``uri`` from the head (not checked here: the installer checks it).

        Raises:
            PackageNotOnHead: the head does not have it.
            ClusterError: the stream broke off or disagreed with itself.
        """
        method = "DownloadPackage"
        buffer = bytearray()
        total = -1
        try:
            stream = self._packages.DownloadPackage(
                pb.DownloadPackageRequest(uri=uri), timeout=timeout, metadata=self._metadata
            )
            for chunk in stream:
                if total < 0:
                    total = int(chunk.total_size)
                buffer += chunk.data
                if len(buffer) > total:
                    stream.cancel()
                    break
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None
        if len(buffer) != total:
            raise ClusterError(
                f"the heliostat head at {self.address}: package {uri} arrived with "
                f"{len(buffer)} bytes of the {max(total, 0)} announced",
                address=self.address,
            )
        return bytes(buffer)
