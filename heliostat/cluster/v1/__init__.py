"""Generated gRPC modules of the cluster control plane (``make proto``; do not edit).

``control_pb2`` holds the messages and ``control_pb2_grpc`` the ``ControlPlane`` stub
and servicer, both generated from ``proto/heliostat/cluster/v1/control.proto``. Only
:mod:`heliostat.cluster.rpc` imports them: the rest of heliostat sees dataclasses.
"""

from __future__ import annotations

__all__: list[str] = []
