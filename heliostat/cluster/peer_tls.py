"""TLS between nodes: the credentials of ``NodeService.Deliver`` and ``ObjectTransfer.Pull``.

One model, the simple one: the cluster has **one certificate and key**, whose subject
alternative names list every address a node or driver is reached at (``IP:10.0.0.5``,
``DNS:node-3``). Every node serves its peer services with it and dials its peers
trusting it (as its root), so only holders of the key can serve as a node, and peers
check that the address they dial is named in it. A head started with ``--tls-cert`` and
``--tls-key`` serves TLS on its own node's peer port too, so the whole cluster is TLS:
nodes get both files (``heliostat start --tls-cert C --tls-key K``), drivers
``HELIOSTAT_TLS_CERT`` and ``HELIOSTAT_TLS_KEY``.

Only channel and server-port creation lives here, so the code that sends over them
(``engine/node_link.py``, ``cluster/transfer.py``) needs no other change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = ["PeerTls", "add_peer_port", "peer_channel"]


@dataclass(frozen=True, slots=True)
class PeerTls:
    """The cluster's certificate (PEM, chain allowed) and its private key (PEM)."""

    cert: bytes
    key: bytes

    def __repr__(self) -> str:  # never the key
        return f"PeerTls(cert=<{len(self.cert)} bytes>, key=<hidden>)"

    @classmethod
    def load(cls, cert_path: str, key_path: str) -> PeerTls:
        """Read both files.

        Raises:
            ValueError: a file cannot be read or is not PEM (the message names it).
        """
        return cls(cert=_read_pem(cert_path, "certificate"), key=_read_pem(key_path, "key"))


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path!r}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"the TLS {what} {path!r} is not in PEM form")
    return data


def peer_channel(address: str, tls: PeerTls | None, options: Sequence[tuple[str, Any]]) -> Any:
    """A channel to a peer at ``address``: TLS trusting the cluster's certificate, or
    plain TCP without ``tls``."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.cert)
    return grpc.secure_channel(address, credentials, options=list(options))


def add_peer_port(server: grpc.Server, target: str, tls: PeerTls | None) -> int:
    """Listen on ``target`` (TLS with the cluster's key and certificate, or plain TCP);
    the port bound, 0 when none could be."""
    if tls is None:
        return int(server.add_insecure_port(target))
    credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)])
    return int(server.add_secure_port(target, credentials))
