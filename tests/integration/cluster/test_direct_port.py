"""The direct data port: tickets only through the token-checked ``Open``, short or
refused ranges detected, pins released, odd buffer sizes.

Servers run in this process (a gRPC server behind the token interceptor, and a
:class:`DirectServer`); objects are files in a temporary directory, or bytes in memory.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from heliostat.cluster import segments
from heliostat.cluster.auth import TokenInterceptor, call_metadata
from heliostat.cluster.direct import DirectRefusedError, DirectServer, receive_range
from heliostat.cluster.transfer import (
    ObjectNotOnNodeError,
    ObjectTransferServicer,
    SegmentSink,
    SourceObject,
    TransferError,
    add_transfer_service,
    channel_options,
    pull_object,
    segment_object,
)
from heliostat.engine.shm import SegmentPool
from tests.waiting import poll_for

TOKEN = "direct-port-test-token"


@dataclass
class Objects:
    """An ObjectSource: files in ``root``, or SourceObjects put in ``extra``."""

    root: Path
    extra: dict[int, SourceObject] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)

    def open_object(self, object_id: int) -> SourceObject | None:
        if object_id in self.extra:
            return self.extra[object_id]
        path = self.root / f"{object_id:x}"
        return segment_object(str(path)) if path.exists() else None


@dataclass
class Node:
    objects: Objects
    direct: DirectServer
    channel: grpc.Channel


def _start(tmp_path: Path, ttl: float) -> tuple[Node, grpc.Server]:
    root = tmp_path / "served"
    root.mkdir()
    objects = Objects(root)
    direct = DirectServer("127.0.0.1", ttl=ttl)
    direct.start()
    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        interceptors=[TokenInterceptor(TOKEN)],
        options=channel_options(),
    )
    add_transfer_service(server, ObjectTransferServicer(objects, direct=direct))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    return Node(objects, direct, channel), server


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    started, server = _start(tmp_path, ttl=60.0)
    yield started
    started.channel.close()
    server.stop(0)
    started.direct.close()


@pytest.fixture
def sink_dir(tmp_path: Path) -> Path:
    path = tmp_path / "local"
    path.mkdir()
    return path


def _sink(root: Path) -> SegmentSink:
    return SegmentSink(lambda oid: str(root / f"{oid:x}"))


def _open(node: Node, object_id: int) -> tuple[str, bytes]:
    from heliostat.cluster.v1 import objects_pb2

    opener = node.channel.unary_unary(
        "/heliostat.cluster.v1.ObjectTransfer/Open",
        request_serializer=objects_pb2.OpenRequest.SerializeToString,
        response_deserializer=objects_pb2.OpenReply.FromString,
    )
    reply = opener(
        objects_pb2.OpenRequest(object_id=object_id.to_bytes(10, "big")),
        metadata=call_metadata(TOKEN),
    )
    return reply.address, reply.ticket


def test_a_pull_needs_the_token_and_then_unpins_its_object(node: Node, sink_dir: Path) -> None:
    data = os.urandom(3 * 2**20 + 5)
    (node.objects.root / "11").write_bytes(data)
    with pytest.raises(TransferError, match="UNAUTHENTICATED"):
        pull_object(node.channel, 0x11, _sink(sink_dir))
    assert node.direct.pinned() == 0
    pulled = pull_object(node.channel, 0x11, _sink(sink_dir), metadata=call_metadata(TOKEN))
    assert (sink_dir / "11").read_bytes() == data
    assert pulled.size == len(data)
    poll_for(lambda: node.direct.pinned() == 0, what="the ticket released after its bytes")


@pytest.mark.parametrize(
    ("size", "buffer", "streams"),
    [(1, 1, 1), (4099 * 3 + 1, 4099, 3), (5 * 2**20 + 17, 65_537, 3), (2**20, 2**20, 7)],
)
def test_odd_sizes_and_buffers_arrive_byte_for_byte(
    node: Node, sink_dir: Path, size: int, buffer: int, streams: int
) -> None:
    data = os.urandom(size)
    (node.objects.root / "21").write_bytes(data)
    pull_object(
        node.channel, 0x21, _sink(sink_dir), metadata=call_metadata(TOKEN),
        chunk_size=buffer, split_at=0, streams=streams,
    )  # fmt: skip
    assert (sink_dir / "21").read_bytes() == data


def test_an_empty_object_needs_no_ticket(node: Node, sink_dir: Path) -> None:
    (node.objects.root / "31").write_bytes(b"")
    pulled = pull_object(node.channel, 0x31, _sink(sink_dir), metadata=call_metadata(TOKEN))
    assert pulled.size == 0
    assert (sink_dir / "31").read_bytes() == b""
    assert node.direct.pinned() == 0


def test_a_vanished_object_fails_cleanly(node: Node, sink_dir: Path) -> None:
    with pytest.raises(ObjectNotOnNodeError):
        pull_object(node.channel, 0x41, _sink(sink_dir), metadata=call_metadata(TOKEN))
    assert list(sink_dir.iterdir()) == []


def test_a_short_stream_is_detected_and_leaves_nothing(
    node: Node, sink_dir: Path, tmp_path: Path
) -> None:
    """The file behind an object is shorter than its bytes claim (cut under us): the
    server's sendfile stops early, and the pull fails instead of committing holes."""
    short = tmp_path / "short"
    short.write_bytes(b"x" * 1000)
    file = open(short, "rb")
    node.objects.extra[0x51] = SourceObject(
        data=memoryview(b"x" * 10_000), file=file, release=file.close
    )
    with pytest.raises(TransferError, match="closed after 1000 of 10000 bytes"):
        pull_object(node.channel, 0x51, _sink(sink_dir), metadata=call_metadata(TOKEN))
    assert list(sink_dir.iterdir()) == []


def test_a_source_without_a_file_is_sent_from_memory(node: Node, sink_dir: Path) -> None:
    data = os.urandom(9 * 2**20 + 3)
    node.objects.extra[0x61] = SourceObject(data=memoryview(data))
    pull_object(node.channel, 0x61, _sink(sink_dir), metadata=call_metadata(TOKEN), split_at=2**20)
    assert (sink_dir / "61").read_bytes() == data


def test_unknown_tickets_and_bad_ranges_are_refused(node: Node) -> None:
    (node.objects.root / "71").write_bytes(b"y" * 100)
    address, ticket = _open(node, 0x71)
    got: list[bytes] = []

    def keep(offset: int, data: memoryview) -> None:
        got.append(bytes(data))

    with pytest.raises(DirectRefusedError):
        receive_range(address, secrets.token_bytes(32), 0, 10, keep, buffer_size=10,
                      opened=lambda sock: None)  # fmt: skip
    with pytest.raises(DirectRefusedError):  # past the object's end
        receive_range(address, ticket, 90, 11, keep, buffer_size=64, opened=lambda sock: None)
    assert receive_range(address, ticket, 0, 100, keep, buffer_size=64,
                         opened=lambda sock: None) == 100  # fmt: skip
    assert b"".join(got) == b"y" * 100
    poll_for(lambda: node.direct.pinned() == 0, what="the ticket released")
    with pytest.raises(DirectRefusedError):  # used up
        receive_range(address, ticket, 0, 100, keep, buffer_size=64, opened=lambda sock: None)


def test_an_unused_ticket_expires_and_unpins(tmp_path: Path) -> None:
    node, server = _start(tmp_path, ttl=0.2)
    try:
        (node.objects.root / "81").write_bytes(b"z" * 50)
        address, ticket = _open(node, 0x81)
        assert node.direct.pinned() == 1
        poll_for(lambda: node.direct.pinned() == 0, what="the unused ticket expired")
        with pytest.raises(DirectRefusedError):
            receive_range(address, ticket, 0, 50, lambda o, d: None, buffer_size=64,
                          opened=lambda sock: None)  # fmt: skip
    finally:
        node.channel.close()
        server.stop(0)
        node.direct.close()


def test_a_wildcard_address_is_refused() -> None:
    with pytest.raises(ValueError, match="peers can reach"):
        DirectServer("0.0.0.0")


def test_an_unreachable_data_port_falls_back_to_the_grpc_stream(
    node: Node, sink_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A firewalled data port (here: an address where nothing listens) costs speed,
    not the pull: the bytes come over the token-checked gRPC stream instead."""
    data = os.urandom(2 * 2**20 + 3)
    (node.objects.root / "51").write_bytes(data)
    monkeypatch.setattr(node.direct, "address", "127.0.0.1:1")
    with caplog.at_level("WARNING", logger="heliostat.cluster"):
        pulled = pull_object(node.channel, 0x51, _sink(sink_dir), metadata=call_metadata(TOKEN))
    assert (sink_dir / "51").read_bytes() == data and pulled.size == len(data)
    assert "cannot be reached" in caplog.text and "over gRPC instead" in caplog.text


class _CountingSink(SegmentSink):
    """A sink over a segment pool that counts the pieces handed to ``write``."""

    def __init__(self, root: Path, pool: SegmentPool) -> None:
        super().__init__(lambda oid: str(root / f"{oid:x}"), reuse=pool.take_mapped)
        self.writes = 0

    def write(self, object_id: int, offset: int, data: memoryview) -> None:
        self.writes += 1
        super().write(object_id, offset, data)


def _pool_with(tmp_path: Path, size: int, *, warm: bool = False) -> SegmentPool:
    """A pool holding one freed segment of ``size`` bytes of stale 0xEE (mapped ahead,
    when ``warm``)."""
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir(exist_ok=True)
    pool = SegmentPool("directtest", 1 << 30, directory=pool_dir, warm=warm)
    old = pool_dir / "old"
    old.write_bytes(b"\xee" * size)
    assert pool.give(str(old), size)
    if warm:
        poll_for(lambda: pool.warmed == 1, what="the pooled file mapped ahead")
    return pool


@pytest.mark.parametrize("warm", [False, True], ids=["mapped-then", "mapped-ahead"])
@pytest.mark.parametrize(
    ("pooled", "size", "streams"),
    [
        (8 * 2**20, 6 * 2**20 + 4097, 3),  # a bigger file: its stale tail is cut off
        (2 * 2**20, 5 * 2**20 + 3, 4),  # a smaller one: the rest is allocated first
        (3 * 2**20, 3 * 2**20, 1),
    ],
)
def test_a_reused_segment_is_received_in_place_byte_for_byte(
    node: Node, sink_dir: Path, tmp_path: Path, pooled: int, size: int, streams: int, warm: bool
) -> None:
    """Into a pooled file the socket writes straight into the mapped pages (no
    ``write`` at all), at unaligned range offsets, and no stale byte survives: through
    a mapping of each range, or the warm pool's mapping of the whole file."""
    data = os.urandom(size)
    (node.objects.root / "91").write_bytes(data)
    pool = _pool_with(tmp_path, pooled, warm=warm)
    sink = _CountingSink(sink_dir, pool)
    pulled = pull_object(
        node.channel, 0x91, sink, metadata=call_metadata(TOKEN),
        chunk_size=65_536, split_at=0, streams=streams,
    )  # fmt: skip
    assert pool.reused == 1 and sink.writes == 0
    assert pulled.size == size
    assert (sink_dir / "91").read_bytes() == data
    pool.close()
    # A fresh file is written piece by piece, as before.
    (sink_dir / "91").unlink()
    fresh = _CountingSink(sink_dir, SegmentPool("directtest-empty", 1 << 30, directory=tmp_path))
    pull_object(node.channel, 0x91, fresh, metadata=call_metadata(TOKEN), chunk_size=65_536)
    assert fresh.writes > 0


@pytest.mark.parametrize("warm", [False, True], ids=["mapped-then", "mapped-ahead"])
def test_a_short_stream_into_a_reused_segment_leaves_nothing(
    node: Node, sink_dir: Path, tmp_path: Path, warm: bool
) -> None:
    """The connection ends mid-range while the socket fills a mapping: the pull fails
    as a transfer error, the mapping is let go, and the half-written file is removed."""
    short = tmp_path / "short"
    short.write_bytes(b"x" * (2**20 + 10))
    file = open(short, "rb")
    node.objects.extra[0xA1] = SourceObject(
        data=memoryview(b"x" * (4 * 2**20)), file=file, release=file.close
    )
    pool = _pool_with(tmp_path, 4 * 2**20, warm=warm)
    with pytest.raises(TransferError, match=f"closed after {2**20 + 10} of {4 * 2**20} bytes"):
        pull_object(node.channel, 0xA1, _CountingSink(sink_dir, pool),
                    metadata=call_metadata(TOKEN))  # fmt: skip
    assert pool.reused == 1
    assert list(sink_dir.iterdir()) == []
    pool.close()


def test_no_memory_for_a_reused_segment_fails_before_any_byte_moves(
    node: Node, sink_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled file smaller than the object needs more pages; when the filesystem has
    none (ENOSPC, injected) the pull fails cleanly instead of the process dying of
    SIGBUS on a write into the mapping, and it leaves nothing behind."""
    data = os.urandom(4 * 2**20)
    (node.objects.root / "b1").write_bytes(data)
    pool = _pool_with(tmp_path, 2 * 2**20)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(segments.os, "posix_fallocate", full)
    with pytest.raises(OSError, match="injected"):
        pull_object(node.channel, 0xB1, _CountingSink(sink_dir, pool),
                    metadata=call_metadata(TOKEN))  # fmt: skip
    assert list(sink_dir.iterdir()) == []


def test_a_region_must_lie_inside_its_object(sink_dir: Path, tmp_path: Path) -> None:
    pool = _pool_with(tmp_path, 2 * 2**20)
    sink = SegmentSink(lambda oid: str(sink_dir / f"{oid:x}"), reuse=pool.take_mapped)
    sink.begin(1, 2 * 2**20, False)
    try:
        with (
            pytest.raises(ValueError, match="outside the object"),
            sink.region(1, 2**20, 2**20 + 1),
        ):
            pass
        with sink.region(1, 5, 0) as empty:
            assert empty is None
    finally:
        sink.abort(1)
    fresh = _sink(sink_dir)
    fresh.begin(2, 2**20, False)
    with fresh.region(2, 0, 2**20) as view:
        assert view is None  # a fresh file is written with pwrite
    fresh.abort(2)
