"""Head addresses as users write them (``HOST:PORT``, ``[V6]:PORT``).

Standard library only: ``heliostat start`` checks ``--address`` with it before it
starts a node daemon, without importing gRPC and the head's client for that.
:mod:`heliostat.cluster.client` re-exports :func:`parse_address`.
"""

from __future__ import annotations

import re

__all__ = ["parse_address"]

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
