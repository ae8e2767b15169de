"""The wire protocol between the node manager and its worker processes.

Transport: a Unix domain stream socket per worker. Each write is one *frame*: a 4-byte
little-endian length, then a pickled ``list`` of messages, so a burst of messages costs
one system call and one pickle call. A message is a plain tuple whose first item is an
opcode from :class:`Op`.

Why tuples and not dataclasses: a tuple of builtins pickles about eight times faster
than a NamedTuple or a dataclass, and on this path every microsecond is paid per task.
The tuple layouts are documented next to each opcode below and built or taken apart
only in ``node_loop.py`` and ``worker.py``; everything else in the engine works with
typed records.

Two connection flavours:

* :class:`BlockingChannel` (workers): ``send`` writes whole frames with ``sendall``
  under a lock; ``recv`` blocks until at least one frame is in.
* :class:`PeerConnection` (the node manager): never blocks. ``send`` queues into an
  outbox and writes what the socket takes; the I/O loop flushes the rest when the
  socket turns writable. ``feed`` reads what is there and returns complete frames. The
  manager must never block on a worker, or a worker blocked writing to the manager
  could deadlock it.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import threading
from collections import deque
from typing import Any

__all__ = [
    "BlockingChannel",
    "ConnectionClosed",
    "Op",
    "PeerConnection",
    "encode_frame",
]

_LEN = struct.Struct("<I")
# Reads go into a preallocated buffer: ``sock.recv(n)`` allocates n bytes per call,
# and for n above malloc's mmap threshold that is an mmap + page faults per message.
_RECV_SIZE = 256 << 10
_SOCKET_BUFFER = 4 << 20


class Op:
    """Message opcodes. Layouts are ``(op, *fields)``.

    Plain ints, not an ``IntEnum``: an enum member pickles as a call to its class, which
    made every message cost about 4 us more to pickle and 5 us more to unpickle.
    """

    # worker -> manager
    REGISTER = 1  # (op, worker_index, pid)
    TASK_DONE = 2  # (op, task_id, results, started, finished)
    #   results: list of (object_id, kind, payload, contained_ids, size) per return
    TASK_FAILED = 3  # (op, task_id, error_payload, retryable, interrupted, started, finished)
    REQUEST = 4  # (op, request_id, verb, args_tuple)
    POST = 5  # (op, verb, args_tuple): a request that needs no reply
    LOG = 6  # (op, stream, task_name, text)
    ACTOR_READY = 7  # (op, actor_id, error_payload_or_None)
    # a tool (``heliostat status``) -> manager, as the first message of a connection;
    # the manager answers with one length-prefixed JSON document and closes it.
    INTROSPECT = 8  # (op, what)
    # a driver on this machine -> manager, as the first message of a connection: it
    # attaches as a process that submits work and is never dispatched to; answered by
    # REPLY with request id 0 and the attachment's facts (``engine/attach.py``).
    ATTACH = 9  # (op, pid)

    # manager -> worker
    EXECUTE = 20  # (op, task_id, fn_id, fn_bytes_or_None, args_payload, ref_positions,
    #               resolved, return_ids, name, retry_exceptions, ahead, generator, code,
    #               item_ids)
    #   ahead: sent to a busy worker; checked for a REVOKE before it runs
    #   (dispatch.py)
    #   code: another node's job's environment (records.InstalledJob), or None
    #   item_ids: a streaming generator re-run to rebuild lost items yields item i
    #   under item_ids[i] (streams.py); () otherwise
    CREATE_ACTOR = 21  # (op, actor_id, cls_id, cls_bytes, args_payload, resolved, name,
    #                    max_concurrency, code)
    ACTOR_CALL = 22  # (op, task_id, method, args_payload, ref_positions, resolved,
    #                  return_ids, name, generator)
    #   generator: 0, or streams.STREAMING / streams.DYNAMIC
    REPLY = 23  # (op, request_id, ok, value)
    UNMAP = 24  # (op, object_ids)
    EXIT = 25  # (op,)
    REVOKE = 26  # (op, task_ids, revoke_id): hand back these queued tasks if not
    #              started; answered by the POST ``returned`` (task_ids, revoke_id)
    CANCEL_CALL = 27  # (op, task_id): cancel this actor call: dropped if not started,
    #                   its coroutine cancelled if it runs on an async actor's loop
    # manager -> attached driver
    LOG_LINES = 28  # (op, stream, task_name, pid, text): a worker's output for the
    #                 driver of its job, which prints it (``init(log_to_driver=)``)


class ConnectionClosed(Exception):
    """The peer closed the socket (or died)."""


def encode_frame(messages: list[tuple[Any, ...]]) -> bytes:
    body = pickle.dumps(messages, protocol=5)
    return _LEN.pack(len(body)) + body


def _tune(sock: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        except OSError:
            pass


class _FrameParser:
    """Accumulates bytes and yields complete frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[tuple[Any, ...]]:
        buf = self._buf
        if not buf and len(data) >= 4:
            # Fast path: the chunk holds whole frames only (the common case).
            (length,) = _LEN.unpack_from(data, 0)
            if len(data) == 4 + length:
                return list(pickle.loads(data[4:]))
        buf += data
        messages: list[tuple[Any, ...]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if end - pos - 4 < length:
                break
            messages.extend(pickle.loads(memoryview(buf)[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return messages


class BlockingChannel:
    """A worker's end of its socket: blocking, thread-safe sends, framed receives."""

    def __init__(self, sock: socket.socket) -> None:
        _tune(sock)
        self._sock = sock
        self._send_lock = threading.Lock()
        self._deferred: deque[bytes] = deque()
        self._parser = _FrameParser()
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        # True when a read found the socket empty after our last write: every frame
        # complete before that write has been received. (Reads happen in the worker's
        # reader role, which a sender checking this holds; see WorkerClient.take.)
        self.caught_up = False

    def send(self, messages: list[tuple[Any, ...]]) -> None:
        frame = encode_frame(messages)
        with self._send_lock:
            self._sock.sendall(frame)
            while self._deferred:
                self._sock.sendall(self._deferred.popleft())
            self.caught_up = False

    def send_soon(self, messages: list[tuple[Any, ...]]) -> None:
        """Send now if no send is in progress, else right after it (never blocks on it).

        For signal handlers: the handler may have interrupted this very thread in the
        middle of ``send``, and waiting for the lock would deadlock.
        """
        frame = encode_frame(messages)
        if self._send_lock.acquire(blocking=False):
            try:
                self._sock.sendall(frame)
                self.caught_up = False
            finally:
                self._send_lock.release()
        else:
            self._deferred.append(frame)

    @property
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def flush_deferred(self) -> None:
        if self._deferred:
            self.send([])

    def recv(self) -> list[tuple[Any, ...]]:
        """Block until at least one whole message is in, and return all that are."""
        while True:
            n = self._sock.recv_into(self._rbuf)
            if not n:
                raise ConnectionClosed("node manager closed the connection")
            if n < _RECV_SIZE:
                self.caught_up = True
            messages = self._parser.feed(self._rview[:n])
            if messages:
                return messages

    def recv_ready(self) -> list[tuple[Any, ...]]:
        """The messages whose frames are complete in the socket now; never blocks.

        Reads until the socket is empty (a short read), so every frame that was
        complete when this was called is among the messages returned.
        """
        messages: list[tuple[Any, ...]] = []
        # poll(0) before recv: a recv that finds nothing raises, which costs more.
        while self._poll.poll(0):
            n = self._sock.recv_into(self._rbuf)
            if not n:
                raise ConnectionClosed("node manager closed the connection")
            messages.extend(self._parser.feed(self._rview[:n]))
            if n < _RECV_SIZE:
                break
        self.caught_up = True
        return messages

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


class PeerConnection:
    """The manager's end of a worker socket: non-blocking, with an outbox.

    Not thread-safe by itself: the node manager calls it only while holding its lock.
    """

    __slots__ = ("sock", "_parser", "_outbox", "closed", "wants_write", "_rbuf", "_rview")

    def __init__(self, sock: socket.socket) -> None:
        _tune(sock)
        sock.setblocking(False)
        self.sock = sock
        self._parser = _FrameParser()
        self._outbox = bytearray()
        self.closed = False
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        # True while bytes wait in the outbox: the I/O loop then watches for writability.
        self.wants_write = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, messages: list[tuple[Any, ...]]) -> bool:
        """Queue a frame and write what the socket accepts now.

        Returns True when bytes are left over and the I/O loop must watch this
        connection for writability.
        """
        if self.closed:
            return False
        frame = encode_frame(messages)
        if self._outbox:
            self._outbox += frame
            return True
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.closed = True
            return False
        if sent < len(frame):
            self._outbox += memoryview(frame)[sent:]
            self.wants_write = True
        return self.wants_write

    def flush(self) -> None:
        """Write queued bytes (called when the socket is writable)."""
        if not self._outbox or self.closed:
            self.wants_write = False
            return
        try:
            sent = self.sock.send(self._outbox)
        except BlockingIOError:
            return
        except OSError:
            self.closed = True
            self.wants_write = False
            return
        del self._outbox[:sent]
        self.wants_write = bool(self._outbox)

    def feed(self) -> list[tuple[Any, ...]]:
        """Read what is available; return complete messages. Raises ConnectionClosed."""
        messages: list[tuple[Any, ...]] = []
        while True:
            try:
                n = self.sock.recv_into(self._rbuf)
            except BlockingIOError:
                return messages
            except OSError as exc:
                self.closed = True
                raise ConnectionClosed(str(exc)) from exc
            if not n:
                self.closed = True
                if messages:
                    return messages
                raise ConnectionClosed("worker closed the connection")
            messages.extend(self._parser.feed(self._rview[:n]))
            if n < _RECV_SIZE:
                return messages

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
