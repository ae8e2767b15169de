"""The direct data port: object bytes over plain TCP, for a fraction of gRPC's CPU.

Streaming an object as gRPC messages costs about three CPU-seconds per GiB on both
ends together (a copy into a message, HTTP/2 framing, a copy out of gRPC's buffers
into a ``bytes``, the write into the segment); on a small machine that, not the
network, sets the pace. Over a plain socket the sender hands the kernel the segment's
pages with ``sendfile`` and the receiver reads into one reused buffer and writes it
into its segment: about one CPU-second per GiB, most of it the kernel allocating the
new segment's pages.

Who may read what: a node hands out a *ticket* (32 random bytes) for one object only
through the ``ObjectTransfer.Open`` call, which the cluster token guards like every
gRPC call; the data port itself never sees the token. A ticket pins its object until
every byte has been sent once (the ranges of one pull are disjoint), or until it
expires unused (:data:`TICKET_TTL_S`); any other connection is answered with a refusal.

The wire, per connection (one range of one object): the client sends ``ticket``,
``offset`` and ``length`` (:data:`REQUEST`); the server answers one status byte,
:data:`OK` then exactly ``length`` bytes, or :data:`REFUSED` and closes.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from heliostat.cluster.segments import SourceObject

__all__ = [
    "OK",
    "REFUSED",
    "REQUEST",
    "TICKET_TTL_S",
    "DirectRefusedError",
    "DirectServer",
    "receive_range",
]

log = logging.getLogger("heliostat.cluster")

REQUEST = struct.Struct(">32sQQ")
"""A connection's request: the ticket, then the range's offset and length."""
OK = b"\x00"
REFUSED = b"\x01"
TICKET_TTL_S = 60.0
"""Seconds a ticket may go unused before its object is unpinned."""

_REQUEST_TIMEOUT_S = 10.0  # for a connection to send its request
_IO_TIMEOUT_S = 60.0  # for any one send or receive once bytes flow
_MAX_CONNECTIONS = 64  # served at once; more are closed at once
_SEND_PIECE = 4 << 20  # bytes per send from a mapping (when there is no file)


class DirectRefusedError(ConnectionError):
    """The data port refused a range (an unknown, used or expired ticket, or a range
    outside the object)."""


@dataclass(slots=True)
class _Ticket:
    source: SourceObject
    unsent: int  # bytes of the object no finished connection has sent yet
    active: int  # connections serving it now
    expires: float  # monotonic time after which no new connection may use it


class DirectServer:
    """A node's data port: serves the ranges its tickets allow, a thread per connection.

    Args:
        host: the address to listen on, as the other nodes reach it (it is handed out
            in tickets' replies, so a wildcard address is refused).
        ttl: seconds an issued ticket stays good for new connections.
    """

    def __init__(self, host: str, *, ttl: float = TICKET_TTL_S) -> None:
        if host in ("", "0.0.0.0", "::"):
            raise ValueError(f"the data port needs an address peers can reach, not {host!r}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, 0), family=family, backlog=64)
        self._sock.settimeout(max(0.05, min(1.0, ttl)))  # the accept loop's beat: expiry
        port = self._sock.getsockname()[1]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._ttl = ttl
        self._tickets: dict[bytes, _Ticket] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(_MAX_CONNECTIONS)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hs-direct", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, and unpin every object whose ticket no connection is using."""
        self._closed.set()
        if self._thread.is_alive():
            # Wake the accept loop now rather than at its next beat (up to a second):
            # a listening socket shut down makes a blocked accept() fail at once.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(timeout=5)
        self._sock.close()
        self._expire(float("inf"))

    def issue(self, source: SourceObject) -> bytes:
        """A new ticket for ``source`` (not empty); it is released when done or expired."""
        ticket = secrets.token_bytes(REQUEST.size - 16)
        with self._lock:
            self._tickets[ticket] = _Ticket(
                source, source.data.nbytes, 0, time.monotonic() + self._ttl
            )
        return ticket

    def pinned(self) -> int:
        """How many objects tickets hold now."""
        with self._lock:
            return len(self._tickets)

    # --- serving ---

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                self._expire(time.monotonic())
                continue
            except OSError as exc:
                if self._closed.is_set():
                    return
                log.warning("the data port %s could not accept: %s", self.address, exc)
                self._closed.wait(0.1)  # e.g. out of file descriptors: do not spin
                continue
            if not self._slots.acquire(blocking=False):
                log.warning("the data port %s is busy: closed a connection from %s",
                            self.address, peer[0])  # fmt: skip
                conn.close()
                continue
            threading.Thread(
                target=self._serve, args=(conn, peer), name="hs-direct-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            with conn:
                conn.settimeout(_REQUEST_TIMEOUT_S)
                request = _recv_exactly(conn, REQUEST.size)
                if request is None:
                    return
                ticket, offset, length = REQUEST.unpack(request)
                entry = self._claim(ticket, offset, length)
                if entry is None:
                    log.warning("the data port refused a range from %s: no such ticket, or "
                                "a range outside its object", peer[0])  # fmt: skip
                    conn.sendall(REFUSED)
                    return
                sent = 0
                try:
                    conn.settimeout(_IO_TIMEOUT_S)
                    conn.sendall(OK)
                    sent = _send(conn, entry.source, offset, length)
                finally:
                    self._finish(ticket, sent)
        except OSError as exc:  # the client went away mid-range: its pull fails there
            log.debug("serving a range to %s stopped: %s", peer[0], exc)
        finally:
            self._slots.release()

    def _claim(self, ticket: bytes, offset: int, length: int) -> _Ticket | None:
        with self._lock:
            entry = self._tickets.get(ticket)
            if entry is None or time.monotonic() > entry.expires:
                return None
            if length == 0 or offset + length > entry.source.data.nbytes:
                return None
            entry.active += 1
            return entry

    def _finish(self, ticket: bytes, sent: int) -> None:
        with self._lock:
            entry = self._tickets[ticket]
            entry.active -= 1
            entry.unsent -= sent
            if entry.active or (entry.unsent > 0 and time.monotonic() <= entry.expires):
                return
            del self._tickets[ticket]
        _release(entry.source)

    def _expire(self, now: float) -> None:
        with self._lock:
            done = [t for t, e in self._tickets.items() if not e.active and now > e.expires]
            entries = [self._tickets.pop(t) for t in done]
        for entry in entries:
            log.debug("a ticket for %d bytes expired with %d unsent",
                      entry.source.data.nbytes, entry.unsent)  # fmt: skip
            _release(entry.source)


def _release(source: SourceObject) -> None:
    if source.release is not None:
        source.release()


def _send(conn: socket.socket, source: SourceObject, offset: int, length: int) -> int:
    """Send ``length`` bytes of ``source`` from ``offset``; returns how many went."""
    if source.file is not None:
        # sendfile: the kernel sends the file's pages; nothing is copied here.
        return conn.sendfile(source.file, offset, length)
    data = source.data
    for start in range(offset, offset + length, _SEND_PIECE):
        conn.sendall(data[start : min(start + _SEND_PIECE, offset + length)])
    return length


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from ``conn``; None if it closes first."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = conn.recv_into(view[got:])
        if not n:
            return None
        got += n
    return bytes(buf)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def receive_range(
    address: str,
    ticket: bytes,
    offset: int,
    length: int,
    write: Callable[[int, memoryview], None],
    *,
    buffer_size: int,
    opened: Callable[[socket.socket], None],
    into: memoryview | None = None,
) -> int:
    """Fetch ``[offset, offset+length)`` of a ticket's object from the data port at
    ``address``, handing each filled buffer to ``write(offset, data)``.

    One buffer of ``buffer_size`` bytes is reused for the whole range: the memory a
    range costs does not grow with the object. With ``into`` (a writable view of
    exactly ``length`` bytes: the range's place in a mapped segment) the socket fills
    it directly instead, and ``write`` is not called: one copy fewer, and no
    ``pwrite``. ``opened(sock)`` is called with the connection before any byte moves,
    so that a caller can shut it down to stop this range from another thread. Returns
    ``length``.

    Raises:
        DirectRefusedError: the port refused the range.
        ConnectionError: the connection ended before the range did.
        OSError: the port could not be reached, or went silent for a minute.
    """
    if into is not None and into.nbytes != length:
        raise ValueError(f"a view of {into.nbytes} bytes cannot take a range of {length}")
    with socket.create_connection(_split(address), timeout=_REQUEST_TIMEOUT_S) as sock:
        opened(sock)
        sock.settimeout(_IO_TIMEOUT_S)
        sock.sendall(REQUEST.pack(ticket, offset, length))
        status = _recv_exactly(sock, 1)
        if status != OK:
            raise DirectRefusedError(f"the data port {address} refused the range")
        if into is not None:
            _fill(sock, into, address, 0, length)
            return length
        view = memoryview(bytearray(min(buffer_size, length)))
        done = 0
        while done < length:
            want = min(len(view), length - done)
            _fill(sock, view[:want], address, done, length)  # fewer, larger writes
            write(offset + done, view[:want])
            done += want
        return length


def _fill(sock: socket.socket, view: memoryview, address: str, done: int, length: int) -> None:
    """Receive exactly ``view.nbytes`` bytes into ``view``, ``done`` bytes into a range
    of ``length`` (those two only name the place in an error)."""
    filled = 0
    while filled < view.nbytes:
        n = sock.recv_into(view[filled:])
        if not n:
            raise ConnectionError(
                f"the data port {address} closed after {done + filled} of {length} bytes"
            )
        filled += n
