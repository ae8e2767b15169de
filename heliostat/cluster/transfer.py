"""Objects between nodes: a node pulls the bytes of an object another node holds.

The node that holds an object serves it (:class:`ObjectTransferServicer` over an
:class:`ObjectSource`); a node that needs it pulls it (:func:`pull_object`) into an
:class:`ObjectSink`, in practice a new shared-memory segment of its own
(:class:`~heliostat.cluster.segments.SegmentSink`), so that once the bytes are there
every local reader maps them zero-copy as if the object had been made on this node.

Two ways for the bytes, one entry point:

* **The direct data port** (the default, when the serving node has one): an ``Open``
  call, token-checked like every call, pins the object and answers its size and a
  one-time ticket; the bytes then come over plain TCP connections to the node's data
  port (:mod:`heliostat.cluster.direct`), sent with ``sendfile`` and written into the
  segment from one reused buffer per connection. About a third of the CPU per byte
  of the gRPC stream, which is what bounds a transfer on a small machine.
* **The gRPC stream** (``Pull``), for a node without a data port (``Open`` answers
  ``UNIMPLEMENTED``) or when asked (``direct=False``): the server slices the object's
  mapping one chunk at a time into ``ObjectChunk`` messages (:func:`encode_chunk`), and
  the receiver parses them without copying (:func:`decode_chunk`).

Either way the bytes move **in chunks, never whole** (neither side holds a second copy
of the object: the memory in flight is a buffer or a few chunks per stream), and a
large object moves as **several ranges at once**: over ``split_at`` bytes, it is cut
into ``streams`` ranges pulled in parallel. :func:`pull_objects` pulls several objects
concurrently.

A missing object answers ``NOT_FOUND`` and raises :class:`ObjectNotOnNodeError`; the
caller (the node manager) then asks the head for another location or rebuilds the
object from lineage. The cluster token travels as call metadata like every other call
(the server's interceptor checks it); this module only passes ``metadata`` through.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import grpc

from heliostat.cluster.chunks import Chunk, decode_chunk, encode_chunk
from heliostat.cluster.direct import DirectServer, receive_range
from heliostat.cluster.segments import SegmentSink, SourceObject, segment_object
from heliostat.cluster.v1 import objects_pb2

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_SPLIT_AT",
    "DEFAULT_STREAMS",
    "MAX_MESSAGE_BYTES",
    "Chunk",
    "DataPortUnreachableError",
    "DirectServer",
    "ObjectNotOnNodeError",
    "ObjectSink",
    "ObjectSource",
    "ObjectTransferServicer",
    "PulledObject",
    "SegmentSink",
    "SourceObject",
    "TransferError",
    "add_transfer_service",
    "channel_options",
    "decode_chunk",
    "encode_chunk",
    "id_bytes",
    "pull_object",
    "pull_objects",
    "segment_object",
]

log = logging.getLogger("heliostat.cluster")

# 1 MiB chunks measured best over loopback: big enough that per-message costs vanish,
# small enough that a chunk stays in the CPU caches between the two copies.
DEFAULT_CHUNK_SIZE = 1 << 20
# Objects up to this size travel as one stream; the rest of a bigger one is split.
DEFAULT_SPLIT_AT = 32 << 20
DEFAULT_STREAMS = 3
# gRPC refuses messages over 4 MiB by default; chunks stay well under this.
MAX_MESSAGE_BYTES = 16 << 20
_MAX_CHUNK = MAX_MESSAGE_BYTES - 4096


def channel_options() -> list[tuple[str, int]]:
    """Channel and server options that let chunks through, in few frames and reads.

    The largest HTTP/2 frames and TCP reads of up to 16 MiB cut gRPC's own work per
    byte: over loopback they took a 1 GiB pull from about 0.5 to about 0.75 GB/s.
    """
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.http2.max_frame_size", (1 << 24) - 1),
        ("grpc.experimental.tcp_min_read_chunk_size", 1 << 20),
        ("grpc.experimental.tcp_max_read_chunk_size", 1 << 24),
    ]


class TransferError(RuntimeError):
    """A pull failed (the peer went away, sent inconsistent chunks, ...)."""


class ObjectNotOnNodeError(TransferError):
    """The node asked does not hold the object (any more)."""

    def __init__(self, object_id: int, peer: str) -> None:
        super().__init__(f"object {object_id:#x} is not on node {peer}")
        self.object_id = object_id
        self.peer = peer


class ObjectSource(Protocol):
    """What a node serves from: its local objects."""

    def open_object(self, object_id: int) -> SourceObject | None:
        """The object's bytes, pinned until released; None when it is not here."""


class ObjectSink(Protocol):
    """Where pulled bytes go: ``begin``, then ``write`` pieces (from several threads at
    once, at disjoint offsets), then ``commit`` or ``abort``."""

    def begin(self, object_id: int, size: int, is_error: bool) -> None:
        """Make room for ``size`` bytes of ``object_id``."""

    def write(self, object_id: int, offset: int, data: memoryview) -> None:
        """Put ``data`` at ``offset`` of the object."""

    def region(
        self, object_id: int, offset: int, length: int
    ) -> AbstractContextManager[memoryview | None]:
        """``[offset, offset+length)`` of the object as writable memory for a data-port
        range to be received into in place, or None: ``write`` it instead."""

    def commit(self, object_id: int) -> Any:
        """Every byte arrived; make the object available. Returns what the caller needs."""

    def abort(self, object_id: int) -> None:
        """The pull failed; drop what ``begin`` allocated."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PulledObject:
    """The outcome of one successful pull."""

    object_id: int
    size: int
    is_error: bool
    result: Any  # what the sink's commit returned (e.g. the segment's path)


def id_bytes(ident: int) -> bytes:
    """An object id as the protos carry it: 10 bytes, big-endian (ids are 80 bits)."""
    return ident.to_bytes(10, "big")


# --- serving ---------------------------------------------------------------------------


_SERVICE = objects_pb2.DESCRIPTOR.services_by_name["ObjectTransfer"].full_name


class ObjectTransferServicer:
    """Serves this node's objects to the other nodes (the ``ObjectTransfer`` service).

    Args:
        source: this node's objects.
        chunk_size: bytes per ``Pull`` message unless the request asks otherwise.
        direct: this node's data port (started and closed by the caller); without
            one, ``Open`` is not served and peers pull over ``Pull``.
    """

    def __init__(
        self,
        source: ObjectSource,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        direct: DirectServer | None = None,
    ) -> None:
        if not 0 < chunk_size <= _MAX_CHUNK:
            raise ValueError(f"chunk_size must be in (0, {_MAX_CHUNK}], not {chunk_size}")
        self._source = source
        self._chunk_size = chunk_size
        self.direct = direct

    def Open(self, request: Any, context: grpc.ServicerContext) -> Any:  # the RPC's name
        """Pin an object for the data port: its size, kind, and a ticket for its bytes."""
        assert self.direct is not None  # only registered with a data port
        object_id = int.from_bytes(request.object_id, "big")
        obj = self._source.open_object(object_id)
        if obj is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"object {object_id:#x} not here")
        assert obj is not None  # abort raised
        size = obj.data.nbytes
        if size == 0:  # nothing to fetch: no ticket, nothing pinned
            if obj.release is not None:
                obj.release()
            return objects_pb2.OpenReply(is_error=obj.is_error, address=self.direct.address)
        return objects_pb2.OpenReply(
            total_size=size,
            is_error=obj.is_error,
            address=self.direct.address,
            ticket=self.direct.issue(obj),
        )

    def Pull(  # the RPC's name in the .proto
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        object_id = int.from_bytes(request.object_id, "big")
        obj = self._source.open_object(object_id)
        if obj is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"object {object_id:#x} not here")
        assert obj is not None  # abort raised
        try:
            yield from _chunks(obj, request, self._chunk_size, context)
        finally:
            if obj.release is not None:
                obj.release()


def _chunks(
    obj: SourceObject, request: Any, default_chunk: int, context: grpc.ServicerContext
) -> Iterator[bytes]:
    data = obj.data
    total = data.nbytes
    start = request.offset
    # A range past the end is cut at the end: the first pull asks for up to
    # ``split_at`` bytes before it knows the object's size.
    end = total if request.length == 0 else min(total, start + request.length)
    if start > total:
        context.abort(
            grpc.StatusCode.OUT_OF_RANGE, f"offset {start} asked of an object of {total} bytes"
        )
    step = min(request.chunk_size or default_chunk, _MAX_CHUNK)
    if start == end:  # an empty object (or range) still answers with its size
        yield encode_chunk(total, start, data[:0], obj.is_error)
        return
    for offset in range(start, end, step):
        yield encode_chunk(total, offset, data[offset : min(offset + step, end)], obj.is_error)


def _already_serialized(message: bytes) -> bytes:
    return message


def add_transfer_service(server: grpc.Server, servicer: ObjectTransferServicer) -> None:
    """Register the object transfer service on a node's gRPC server.

    The same method paths and wire format as the generated registration; only
    ``Pull``'s replies are serialized by :func:`encode_chunk` instead of the message
    class. ``Open`` is registered only when the servicer has a data port.
    """
    handlers = {
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull,
            request_deserializer=objects_pb2.PullRequest.FromString,
            response_serializer=_already_serialized,
        )
    }
    if servicer.direct is not None:
        handlers["Open"] = grpc.unary_unary_rpc_method_handler(
            servicer.Open,
            request_deserializer=objects_pb2.OpenRequest.FromString,
            response_serializer=objects_pb2.OpenReply.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))


# --- pulling ---------------------------------------------------------------------------


def _status_error(exc: grpc.RpcError, object_id: int, peer: str) -> TransferError:
    code = exc.code() if hasattr(exc, "code") else None
    if code is grpc.StatusCode.NOT_FOUND:
        return ObjectNotOnNodeError(object_id, peer)
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    return TransferError(f"pulling object {object_id:#x} from {peer} failed: {name}: {details}")


class _Receiver:
    """One object's pull in progress: the sink's object, and how many bytes arrived."""

    def __init__(self, sink: ObjectSink, object_id: int, peer: str) -> None:
        self.sink = sink
        self.object_id = object_id
        self.peer = peer
        self.begun = False
        self.size = -1
        self.is_error = False
        self.received = 0
        self._lock = threading.Lock()
        self._stops: list[Callable[[], None]] = []  # stop each stream in flight
        self.failed = False

    def begin(self, size: int, is_error: bool) -> None:
        """Set the object up in the sink, once (several streams may race to do it)."""
        with self._lock:
            if not self.begun:
                self.size = size
                self.is_error = is_error
                self.sink.begin(self.object_id, size, is_error)
                self.begun = True

    def write(self, offset: int, data: memoryview) -> None:
        end = offset + data.nbytes
        if end > self.size:
            raise TransferError(
                f"object {self.object_id:#x} from {self.peer}: a chunk ends at {end}, past "
                f"the object's {self.size} bytes"
            )
        self.sink.write(self.object_id, offset, data)
        with self._lock:
            self.received += data.nbytes

    def take(self, chunk: Chunk) -> None:
        """One ``Pull`` message."""
        if not self.begun:
            self.begin(chunk.total_size, chunk.is_error)
        if chunk.total_size != self.size:
            raise TransferError(
                f"object {self.object_id:#x} from {self.peer}: chunks disagree on its size "
                f"({chunk.total_size} after {self.size})"
            )
        self.write(chunk.offset, chunk.data)

    def _started(self, stop: Callable[[], None]) -> bool:
        """Register a new stream's stop; False (and stopped) if the pull already failed."""
        with self._lock:
            if not self.failed:
                self._stops.append(stop)
                return True
        stop()
        return False

    def stream(self, pull: Any, offset: int, length: int, chunk_size: int, metadata: Any) -> None:
        """Pull ``[offset, offset+length)`` over ``Pull`` (length 0: to the end)."""
        request = objects_pb2.PullRequest(
            object_id=id_bytes(self.object_id),
            offset=offset,
            length=length,
            chunk_size=chunk_size,
        )
        call = pull(request, metadata=metadata)
        if not self._started(call.cancel):
            return
        try:
            for chunk in call:
                self.take(chunk)
        except grpc.RpcError as exc:
            if self.failed and exc.code() is grpc.StatusCode.CANCELLED:
                return  # cancelled because a sibling stream failed
            raise _status_error(exc, self.object_id, self.peer) from exc

    def fetch(self, address: str, ticket: bytes, offset: int, length: int, buffer: int) -> None:
        """Fetch ``[offset, offset+length)`` from a data port with an ``Open`` ticket."""

        connected = False

        def opened(sock: socket.socket) -> None:
            nonlocal connected
            connected = True
            if not self._started(lambda: _shut(sock)):
                raise TransferError("stopped: a sibling stream failed")

        sink_failed = False

        def write(at: int, data: memoryview) -> None:
            nonlocal sink_failed
            try:
                self.write(at, data)
            except BaseException:
                sink_failed = True
                raise

        # The sink's own errors (no memory for a mapping...) pass through as they are.
        with self.sink.region(self.object_id, offset, length) as into:
            try:
                receive_range(
                    address, ticket, offset, length, write,
                    buffer_size=buffer, opened=opened, into=into,
                )  # fmt: skip
            except OSError as exc:
                if sink_failed:
                    raise  # the sink's own error (a full disk...), as the caller knows it
                if self.failed:
                    return  # shut down because a sibling stream failed
                if not connected:
                    raise DataPortUnreachableError(
                        f"the data port {address} of {self.peer} cannot be reached: {exc}"
                    ) from exc
                raise TransferError(
                    f"pulling object {self.object_id:#x} from {self.peer} failed: {exc}"
                ) from exc
        if into is not None:  # filled in place: no write() counted it
            with self._lock:
                self.received += length

    def stop(self) -> None:
        """Stop every stream of this pull (one of them failed)."""
        with self._lock:
            self.failed = True
            stops = list(self._stops)
        for stop in stops:
            stop()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already: the stream is over anyway


def _ranges(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into at most ``parts`` contiguous (offset, length) ranges."""
    parts = max(1, min(parts, end - start))
    size, extra = divmod(end - start, parts)
    out = []
    offset = start
    for i in range(parts):
        length = size + (1 if i < extra else 0)
        out.append((offset, length))
        offset += length
    return out


def _in_parallel(
    receiver: _Receiver,
    jobs: Sequence[Callable[[], None]],
    executor: ThreadPoolExecutor | None,
) -> None:
    """Run a pull's streams at once; on a failure, stop the others and re-raise."""
    if len(jobs) == 1:
        jobs[0]()
        return
    own = executor or ThreadPoolExecutor(len(jobs), thread_name_prefix="hs-pull")
    futures = [own.submit(job) for job in jobs]
    try:
        for future in futures:
            future.result()
    finally:
        # On a failure, stop the other streams and wait for them before the abort:
        # no thread may write into a segment being unlinked.
        if any(not f.done() or f.exception() is not None for f in futures):
            receiver.stop()
        wait(futures)
        if executor is None:
            own.shutdown(wait=True)


def _open(channel: grpc.Channel, object_id: int, peer: str, metadata: Any) -> Any | None:
    """The ``Open`` reply for a direct pull; None when the node has no data port."""
    opener = channel.unary_unary(
        f"/{_SERVICE}/Open",
        request_serializer=objects_pb2.OpenRequest.SerializeToString,
        response_deserializer=objects_pb2.OpenReply.FromString,
    )
    try:
        return opener(objects_pb2.OpenRequest(object_id=id_bytes(object_id)), metadata=metadata)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise _status_error(exc, object_id, peer) from exc


class DataPortUnreachableError(TransferError):
    """A node's data port could not be reached (a firewall, a wrong address): the
    pull is made again over the gRPC stream."""


def pull_object(
    channel: grpc.Channel,
    object_id: int,
    sink: ObjectSink,
    *,
    direct: bool = True,
    **options: Any,
) -> PulledObject:
    """Pull one object from the node behind ``channel`` into ``sink``.

    Args:
        channel: a channel to the node that holds the object (made with
            :func:`channel_options`).
        object_id: the object.
        sink: where its bytes go.
        direct: use the node's data port when it has one (False: always ``Pull``);
            a data port that cannot be reached falls back to ``Pull``.
        options: ``peer`` (the node's name, for errors and logs), ``metadata`` (call
            metadata: the cluster token), ``chunk_size`` (bytes per message, and per
            write into the sink), ``split_at`` and ``streams`` (objects bigger than
            ``split_at`` are pulled over ``streams`` streams), ``executor`` (threads
            for the extra streams; a private pool when None).

    Raises:
        ObjectNotOnNodeError: the node does not hold the object.
        TransferError: the pull failed; nothing is left in the sink.
    """
    if direct:
        try:
            return _pull_once(channel, object_id, sink, direct=True, **options)
        except DataPortUnreachableError as exc:
            log.warning("%s; pulling object %#x over gRPC instead", exc, object_id)
    return _pull_once(channel, object_id, sink, direct=False, **options)


def _pull_once(
    channel: grpc.Channel,
    object_id: int,
    sink: ObjectSink,
    *,
    peer: str = "?",
    metadata: Sequence[tuple[str, str]] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    split_at: int = DEFAULT_SPLIT_AT,
    streams: int = DEFAULT_STREAMS,
    executor: ThreadPoolExecutor | None = None,
    direct: bool,
) -> PulledObject:
    """One pull (see :func:`pull_object`)."""
    receiver = _Receiver(sink, object_id, peer)
    try:
        opened = _open(channel, object_id, peer, metadata) if direct else None
        if opened is not None:
            receiver.begin(opened.total_size, opened.is_error)
            parts = streams if opened.total_size > split_at else 1
            jobs = [
                partial(receiver.fetch, opened.address, opened.ticket, off, length, chunk_size)
                for off, length in _ranges(0, opened.total_size, parts)
                if length
            ]
            if jobs:
                _in_parallel(receiver, jobs, executor)
        else:
            # The generated stub's method, but replies parsed by decode_chunk (no copies).
            pull = channel.unary_stream(
                f"/{_SERVICE}/Pull",
                request_serializer=objects_pb2.PullRequest.SerializeToString,
                response_deserializer=decode_chunk,
            )
            receiver.stream(pull, 0, split_at, chunk_size, metadata)
            if not receiver.begun:
                raise TransferError(f"object {object_id:#x} from {peer}: the stream was empty")
            if receiver.size > split_at:
                jobs = [
                    partial(receiver.stream, pull, off, length, chunk_size, metadata)
                    for off, length in _ranges(split_at, receiver.size, streams)
                ]
                _in_parallel(receiver, jobs, executor)
        if receiver.received != receiver.size:
            raise TransferError(
                f"object {object_id:#x} from {peer}: {receiver.received} of "
                f"{receiver.size} bytes arrived"
            )
    except BaseException:
        if receiver.begun:
            sink.abort(object_id)
        raise
    result = sink.commit(object_id)
    return PulledObject(
        object_id=object_id, size=receiver.size, is_error=receiver.is_error, result=result
    )


def pull_objects(
    channel: grpc.Channel,
    object_ids: Sequence[int],
    sink: ObjectSink,
    *,
    peer: str = "?",
    metadata: Sequence[tuple[str, str]] | None = None,
    parallel: int = 4,
    **options: Any,
) -> dict[int, PulledObject | TransferError]:
    """Pull several objects at once; returns each one's outcome (a pull or its error)."""
    results: dict[int, PulledObject | TransferError] = {}
    with ThreadPoolExecutor(max(1, min(parallel, len(object_ids))), "hs-pulls") as pool:
        futures = {
            oid: pool.submit(
                pull_object, channel, oid, sink, peer=peer, metadata=metadata, **options
            )
            for oid in object_ids
        }
        for oid, future in futures.items():
            try:
                results[oid] = future.result()
            except TransferError as exc:
                results[oid] = exc
    return results
