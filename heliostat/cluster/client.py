"""A client of the head's control plane, in heliostat's terms.

:class:`HeadClient` wraps one gRPC channel: every call carries the cluster token
(:func:`~heliostat.cluster.auth.call_metadata`) and a deadline, answers come back as
the dataclasses of :mod:`heliostat.cluster.rpc`, and gRPC failures become heliostat
errors a user can act on:

* ``UNAUTHENTICATED`` -> :class:`~heliostat.exceptions.ClusterAuthError`;
* ``UNAVAILABLE`` or a missed deadline -> :class:`~heliostat.exceptions.ClusterUnreachableError`;
* ``NOT_FOUND`` on a heartbeat -> :class:`NodeNotKnown` (the node registers again);
* anything else -> :class:`~heliostat.exceptions.ClusterError`.

Addresses are ``HOST:PORT`` (``[::1]:PORT`` for IPv6). With ``tls_cert`` the channel
is TLS and trusts that certificate (a self-signed head certificate, or its CA).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import grpc

from heliostat.cluster import rpc
from heliostat.cluster.auth import call_metadata
from heliostat.cluster.v1 import control_pb2 as pb
from heliostat.exceptions import ClusterAuthError, ClusterError, ClusterUnreachableError

__all__ = [
    "DEFAULT_TIMEOUT",
    "HeadClient",
    "NodeNotKnown",
    "parse_address",
]

DEFAULT_TIMEOUT: Final = 5.0
"""Seconds a control-plane call may take before the head counts as unreachable."""

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})$")


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``.

    Raises:
        ValueError: not of that form, or the port is out of range.
    """
    match = _ADDRESS.match(address.strip())
    if match is None:
        raise ValueError(f"{address!r} is not a head address of the form HOST:PORT")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"{address!r}: the port must be 1-65535")
    return match["v6"] or match["host"], port


class NodeNotKnown(ClusterError):
    """The head does not count this node as alive (unknown, dead or gone): register again."""


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

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> HeadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(
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
        self, node_id: str, available: Mapping[str, float], *, timeout: float | None = None
    ) -> int:
        """Say the node lives; returns its incarnation.

        Raises:
            NodeNotKnown: the head does not count the node as alive.
        """
        reply = self._call(
            "Heartbeat",
            pb.HeartbeatRequest(node_id=node_id, available=rpc.resources_to_pb(available)),
            timeout=timeout,
        )
        return int(reply.incarnation)

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
