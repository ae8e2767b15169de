"""Look at the local runtimes of other processes: what ``heliostat status`` shows.

Every driver's node manager listens on ``node.sock`` in its session directory
(``/tmp/heliostat-{pid:x}-{token}-*``, created mode 0700, so only its user can connect).
A tool connects, sends one ``INTROSPECT`` message naming a snapshot, and reads back one
length-prefixed JSON document; the manager builds it under its lock, as one consistent
picture, and sends it from a short-lived thread so a slow reader never stalls the node.

Snapshots:

* ``status``: node resources (``total``, ``available``), ``workers`` (pid, state, task,
  actor), ``object_store`` use, ``tasks`` (counts by state), ``actors`` (a count),
  ``session``, ``pid`` and ``started_at``.
* ``tasks``: unfinished tasks and the most recent finished attempts.
* ``actors``: every actor with its state, pid and restarts.
* ``objects``: every live object with its location kind, size and reference count.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Final

import psutil

from heliostat.engine.protocol import Op, encode_frame
from heliostat.engine.runtime import session_dirs
from heliostat.exceptions import HeliostatError

__all__ = ["SNAPSHOTS", "SessionInfo", "live_sessions", "snapshot"]

SNAPSHOTS: Final = ("status", "tasks", "actors", "objects")
_MAX_REPLY = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionInfo:
    """A local runtime whose driver process is alive."""

    session: str
    pid: int
    started_at: float
    socket_path: str


def live_sessions() -> list[SessionInfo]:
    """The runtimes on this machine whose driver is alive, oldest first."""
    found = []
    for entry in session_dirs():
        sock = os.path.join(entry.path, "node.sock")
        if not os.path.exists(sock):
            continue
        try:
            started = psutil.Process(entry.pid).create_time()
        except psutil.Error:
            continue  # the driver is gone; init() of the next driver sweeps its files
        found.append(
            SessionInfo(session=entry.session, pid=entry.pid, started_at=started, socket_path=sock)
        )
    return sorted(found, key=lambda s: (s.started_at, s.session))


def snapshot(session: SessionInfo, what: str, timeout: float = 2.0) -> Any:
    """Ask ``session``'s node manager for one snapshot (see the module docstring).

    Raises:
        ValueError: ``what`` is not one of :data:`SNAPSHOTS`.
        HeliostatError: the runtime did not answer within ``timeout`` or refused.
    """
    if what not in SNAPSHOTS:
        raise ValueError(f"unknown snapshot {what!r}; known: {', '.join(SNAPSHOTS)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(session.socket_path)
        sock.sendall(encode_frame([(Op.INTROSPECT, what)]))
        size = int.from_bytes(_recv_exactly(sock, 8), "little")
        if size > _MAX_REPLY:
            raise HeliostatError(f"runtime {session.session} sent a {size}-byte reply")
        body = json.loads(_recv_exactly(sock, size))
    except (OSError, ValueError) as exc:
        raise HeliostatError(
            f"runtime {session.session} (pid {session.pid}) did not answer: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    if not body.get("ok"):
        raise HeliostatError(f"runtime {session.session} refused: {body.get('error')}")
    return body["value"]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed early")
        buf += chunk
    return bytes(buf)
