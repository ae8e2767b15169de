"""The transfer server's hand-made ObjectChunk encoding is protobuf's, byte for byte."""

from __future__ import annotations

import itertools
import random

import pytest

from heliostat.cluster.chunks import MalformedChunkError, decode_chunk, encode_chunk
from heliostat.cluster.transfer import _ranges
from heliostat.cluster.v1 import objects_pb2


def _cases() -> list[tuple[int, int, bytes, bool]]:
    rng = random.Random(11)
    cases = [(0, 0, b"", False), (0, 0, b"", True), (5, 0, b"", False), (1, 1, b"x", True)]
    for _ in range(200):
        total = rng.choice([0, 1, 127, 128, 300, 2**14, 2**21, 2**35, 2**63 + 5])
        offset = rng.choice([0, 1, 127, 128, 16383, 16384, 2**28, 2**62])
        data = rng.randbytes(rng.choice([0, 1, 127, 128, 129, 5000, 70000]))
        cases.append((total, offset, data, rng.random() < 0.3))
    return cases


@pytest.mark.parametrize(("total", "offset", "data", "is_error"), _cases())
def test_encoding_matches_protobuf(total: int, offset: int, data: bytes, is_error: bool) -> None:
    expected = objects_pb2.ObjectChunk(
        total_size=total, offset=offset, data=data, is_error=is_error
    ).SerializeToString()
    assert encode_chunk(total, offset, memoryview(data), is_error) == expected
    back = objects_pb2.ObjectChunk.FromString(expected)
    assert (back.total_size, back.offset, back.data, back.is_error) == (
        total,
        offset,
        data,
        is_error,
    )


@pytest.mark.parametrize(
    ("start", "end", "parts"), [(0, 10, 3), (5, 6, 4), (32, 1000, 1), (0, 2**31 + 7, 3)]
)
def test_ranges_cover_the_span_once(start: int, end: int, parts: int) -> None:
    ranges = _ranges(start, end, parts)
    assert 1 <= len(ranges) <= parts
    assert ranges[0][0] == start
    for (off, length), (next_off, _) in itertools.pairwise(ranges):
        assert off + length == next_off and length > 0
    assert ranges[-1][0] + ranges[-1][1] == end


@pytest.mark.parametrize(("total", "offset", "data", "is_error"), _cases())
def test_decoding_matches_protobuf(total: int, offset: int, data: bytes, is_error: bool) -> None:
    message = objects_pb2.ObjectChunk(
        total_size=total, offset=offset, data=data, is_error=is_error
    ).SerializeToString()
    chunk = decode_chunk(message)
    assert (chunk.total_size, chunk.offset, bytes(chunk.data), chunk.is_error) == (
        total,
        offset,
        data,
        is_error,
    )


def test_decoding_skips_unknown_fields_and_takes_the_last_value() -> None:
    known = objects_pb2.ObjectChunk(total_size=9, offset=3, data=b"abc").SerializeToString()
    unknown = (
        b"\x48\x96\x01"  # field 9, varint 150
        + b"\x52\x02hi"  # field 10, length-delimited
        + b"\x5d\x00\x00\x80\x3f"  # field 11, fixed32
        + b"\x61"
        + b"\x00" * 8  # field 12, fixed64
    )
    later = objects_pb2.ObjectChunk(offset=4).SerializeToString()
    message = unknown + known + later
    assert objects_pb2.ObjectChunk.FromString(message).offset == 4  # protobuf's reading
    chunk = decode_chunk(message)
    assert (chunk.total_size, chunk.offset, bytes(chunk.data)) == (9, 4, b"abc")


@pytest.mark.parametrize(
    "message",
    [b"\x08", b"\x08\xff", b"\x1a\x05abc", b"\x5d\x00\x00", b"\x0b", b"\x08" + b"\xff" * 11],
)
def test_malformed_chunks_are_refused(message: bytes) -> None:
    with pytest.raises(MalformedChunkError, match="malformed ObjectChunk"):
        decode_chunk(message)
