"""Generated gRPC modules of the cluster (``make proto``; do not edit).

``control_pb2`` / ``control_pb2_grpc``: the ``ControlPlane`` and ``Packages``
services, from ``proto/heliostat/cluster/v1/control.proto``; :mod:`heliostat.cluster.rpc`
serves them and :mod:`heliostat.cluster.client` calls them, and the rest of heliostat
sees dataclasses and bytes. ``objects_pb2`` /
``objects_pb2_grpc``: the ``ObjectTransfer`` service, from ``objects.proto``;
:mod:`heliostat.cluster.transfer` imports only ``objects_pb2`` (it registers the method
itself, to serialize chunks without copies), so ``objects_pb2_grpc`` is generated for
other clients and not called by heliostat.
"""

from __future__ import annotations

__all__: list[str] = []
