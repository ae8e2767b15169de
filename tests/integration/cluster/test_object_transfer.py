"""Object transfer between processes: chunks, ranges, errors, cleanup, both ways.

A real server process serves files from its own directory (standing in for its node's
segments), over gRPC and over its direct data port; the test process pulls them into
segments of its own and compares bytes. Every test that moves bytes runs both ways:
``direct`` (``Open`` and the data port, the default) and ``grpc`` (the ``Pull`` stream).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from heliostat.cluster.transfer import (
    ObjectNotOnNodeError,
    SegmentSink,
    TransferError,
    channel_options,
    pull_object,
    pull_objects,
)

_SERVER = textwrap.dedent(
    """
    import os, sys, signal
    from concurrent import futures
    import grpc
    from heliostat.cluster.transfer import (
        DirectServer, ObjectTransferServicer, add_transfer_service, channel_options,
        segment_object,
    )

    root = sys.argv[1]

    class Files:
        def open_object(self, object_id):
            path = os.path.join(root, f"{object_id:x}")
            if not os.path.exists(path):
                return None
            return segment_object(path, is_error=os.path.exists(path + ".error"))

    direct = DirectServer("127.0.0.1")
    direct.start()
    server = grpc.server(futures.ThreadPoolExecutor(8), options=channel_options())
    servicer = ObjectTransferServicer(Files(), chunk_size=int(sys.argv[2]), direct=direct)
    add_transfer_service(server, servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    signal.sigwait({signal.SIGTERM})
    server.stop(0)
    direct.close()
    """
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, grpc.Channel]]:
    """A server process over ``tmp_path/served``; yields that dir and a channel to it."""
    root = tmp_path / "served"
    root.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(root), str(256 * 1024)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
        grpc.channel_ready_future(channel).result(timeout=30)
        yield root, channel
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(params=["direct", "grpc"])
def direct(request: pytest.FixtureRequest) -> bool:
    """Pull over the data port (the default) or over the ``Pull`` stream."""
    return bool(request.param == "direct")


@pytest.fixture
def sink_dir(tmp_path: Path) -> Path:
    path = tmp_path / "local"
    path.mkdir()
    return path


def _sink(root: Path) -> SegmentSink:
    return SegmentSink(lambda oid: str(root / f"{oid:x}"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 1000, 256 * 1024, 5 * 2**20 + 17])
def test_an_object_arrives_byte_for_byte(served, sink_dir: Path, size: int, direct: bool) -> None:
    root, channel = served
    (root / "2a").write_bytes(os.urandom(size))
    pulled = pull_object(
        channel, 0x2A, _sink(sink_dir), peer="node-a", split_at=2**20, direct=direct
    )
    assert (pulled.object_id, pulled.size, pulled.is_error) == (0x2A, size, False)
    assert pulled.result == str(sink_dir / "2a")
    assert (sink_dir / "2a").read_bytes() == (root / "2a").read_bytes()
    assert (sink_dir / "2a").stat().st_mode & 0o777 == 0o600


def test_a_large_array_over_several_streams(served, sink_dir: Path, direct: bool) -> None:
    root, channel = served
    array = np.random.default_rng(7).integers(0, 2**62, size=200 * 2**20 // 8, dtype=np.int64)
    (root / "7").write_bytes(array.tobytes())
    pulled = pull_object(channel, 7, _sink(sink_dir), split_at=8 * 2**20, streams=3, direct=direct)
    assert pulled.size == array.nbytes
    back = np.frombuffer((sink_dir / "7").read_bytes(), dtype=np.int64)
    assert np.array_equal(back, array)


def test_errors_keep_their_kind(served, sink_dir: Path, direct: bool) -> None:
    root, channel = served
    (root / "5").write_bytes(b"pickled exception")
    (root / "5.error").write_bytes(b"")
    pulled = pull_object(channel, 5, _sink(sink_dir), direct=direct)
    assert pulled.is_error
    assert (sink_dir / "5").read_bytes() == b"pickled exception"


def test_a_missing_object_raises_and_leaves_nothing(served, sink_dir: Path, direct: bool) -> None:
    _root, channel = served
    with pytest.raises(ObjectNotOnNodeError, match="0x63 is not on node node-b") as info:
        pull_object(channel, 0x63, _sink(sink_dir), peer="node-b", direct=direct)
    assert info.value.object_id == 0x63
    assert list(sink_dir.iterdir()) == []


def test_many_objects_at_once(served, sink_dir: Path, direct: bool) -> None:
    root, channel = served
    sizes = {i: (i * 977_351) % (3 * 2**20) for i in range(1, 25)}
    for oid, size in sizes.items():
        (root / f"{oid:x}").write_bytes(os.urandom(size))
    results = pull_objects(channel, [*sizes, 0xDEAD], _sink(sink_dir), parallel=6, direct=direct)
    assert isinstance(results.pop(0xDEAD), ObjectNotOnNodeError)
    for oid, outcome in results.items():
        assert not isinstance(outcome, TransferError), outcome
        assert outcome.size == sizes[oid]
        assert _digest(sink_dir / f"{oid:x}")[:8] == _digest(root / f"{oid:x}")[:8] or (
            sizes[oid] == 0
        )


class _BrokenSink(SegmentSink):
    """Fails while writing, to show an abort cleans up after several streams."""

    def __init__(self, root: Path, fail_after: int) -> None:
        super().__init__(lambda oid: str(root / f"{oid:x}"))
        self.fail_after = fail_after
        self.writes = 0
        self._count_lock = threading.Lock()

    def write(self, object_id: int, offset: int, data: memoryview) -> None:
        with self._count_lock:
            self.writes += 1
            if self.writes > self.fail_after:
                raise OSError("no space left on device (injected)")
        super().write(object_id, offset, data)


def test_a_failed_pull_unlinks_its_segment_and_stops_its_streams(
    served, sink_dir: Path, direct: bool
) -> None:
    root, channel = served
    (root / "9").write_bytes(os.urandom(40 * 2**20))
    broken = _BrokenSink(sink_dir, 12)
    with pytest.raises(OSError, match="injected"):
        pull_object(channel, 9, broken, split_at=4 * 2**20, streams=3, direct=direct)
    assert list(sink_dir.iterdir()) == []
    # The server is fine afterwards: the next pull works.
    pulled = pull_object(channel, 9, _sink(sink_dir), direct=direct)
    assert pulled.size == 40 * 2**20
    assert _digest(sink_dir / "9") == _digest(root / "9")


def test_a_server_that_goes_away_is_a_transfer_error(sink_dir: Path, direct: bool) -> None:
    channel = grpc.insecure_channel("127.0.0.1:1", options=channel_options())
    with pytest.raises(TransferError, match="UNAVAILABLE"):
        pull_object(channel, 1, _sink(sink_dir), peer="gone", direct=direct)
    channel.close()
    assert list(sink_dir.iterdir()) == []
