"""Serialization: pickle 5 with out-of-band buffers, the packed layout, captured refs."""

from __future__ import annotations

import copyreg
import os
import pickle
import struct
import threading
import types
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa
import pytest

from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.serialization import (
    ALIGNMENT,
    Pickler,
    SerializedValue,
    capture_refs,
    cloudpickle_dumps,
    deserialize,
    dumps_function,
    loads_function,
    note_ref,
    serialize,
)
from heliostat.exceptions import SerializationError

HEADER = struct.Struct("<4sIQ")
ENTRY = struct.Struct("<QQ")


def _layout(packed: bytes | bytearray) -> tuple[int, int, list[tuple[int, int]]]:
    """(number of buffers, stream length, [(offset, length)]) read from a packed value."""
    magic, n, data_len = HEADER.unpack_from(packed, 0)
    assert magic == b"HSO1"
    entries = [ENTRY.unpack_from(packed, HEADER.size + i * ENTRY.size) for i in range(n)]
    return n, data_len, entries


# --- plain values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, 0, -7, 3.5, "text", b"bytes", [1, [2, 3]], {"a": (1, 2)}, {1, 2}],
    ids=repr,
)
def test_small_values_round_trip_as_a_bare_stream(value) -> None:
    ser = serialize(value)
    assert ser.buffers == []
    packed = ser.to_bytes()
    assert packed[:2] == b"\x80\x05"  # a bare protocol-5 pickle, no header
    assert ser.total_size == len(packed)
    assert deserialize(packed) == value


def test_closures_and_lambdas_serialize() -> None:
    base = 10
    ser = serialize(lambda x: x + base)
    assert deserialize(ser.to_bytes())(5) == 15


def test_functions_round_trip_through_dumps_function() -> None:
    offset = 3

    def shift(x: int) -> int:
        return x + offset

    assert loads_function(dumps_function(shift, what="shift"))(1) == 4


def test_unpicklable_value_raises_serialization_error_naming_it() -> None:
    with pytest.raises(SerializationError) as info:
        serialize({"lock": threading.Lock()}, what="argument 'state' of 'load'")
    err = info.value
    assert isinstance(err, TypeError)
    assert "argument 'state' of 'load'" in str(err)
    assert "dict" in str(err)
    assert err.__cause__ is not None


def test_unpicklable_function_raises_serialization_error() -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(SerializationError, match="remote function 'uses_lock'"):
        dumps_function(uses_lock, what="remote function 'uses_lock'")


# --- out-of-band buffers and the packed layout ----------------------------------------------


def test_large_array_travels_out_of_band() -> None:
    arr = np.arange(10_000, dtype=np.int64)
    ser = serialize(arr)
    assert len(ser.buffers) == 1
    assert ser.buffers[0].nbytes == arr.nbytes
    assert len(ser.data) < 1000  # the stream holds only a placeholder


def test_small_buffers_stay_in_band() -> None:
    ser = serialize(np.arange(10, dtype=np.int64))
    assert ser.buffers == []
    np.testing.assert_array_equal(deserialize(ser.to_bytes()), np.arange(10))


def test_non_contiguous_array_is_copied_in_band() -> None:
    arr = np.arange(40_000, dtype=np.int64).reshape(-1, 4)[:, ::2]
    ser = serialize(arr)
    assert ser.buffers == []
    np.testing.assert_array_equal(deserialize(ser.to_bytes()), arr)


def test_packed_layout_header_and_alignment() -> None:
    a = np.arange(1000, dtype=np.int64)
    b = np.ones(3001, dtype=np.uint8)  # odd length: the next slot must still be aligned
    ser = serialize({"a": a, "b": b, "tag": "x"})
    packed = ser.to_bytes()
    assert len(packed) == ser.total_size
    n, data_len, entries = _layout(packed)
    assert n == 2 == len(ser.buffers)
    assert data_len == len(ser.data)
    data_offset = -(-(HEADER.size + ENTRY.size * n) // ALIGNMENT) * ALIGNMENT
    assert packed[data_offset : data_offset + data_len] == ser.data
    for (offset, length), buf in zip(entries, ser.buffers, strict=True):
        assert offset % ALIGNMENT == 0
        assert offset >= data_offset + data_len
        assert length == buf.nbytes
        assert packed[offset : offset + length] == bytes(buf)
    offsets = [off for off, _ in entries]
    assert offsets == sorted(offsets)


def test_packed_value_round_trips() -> None:
    value = {"a": np.arange(5000, dtype=np.float64), "b": [np.ones(4096, dtype=np.uint8)], "n": 1}
    back = deserialize(serialize(value).to_bytes())
    np.testing.assert_array_equal(back["a"], value["a"])
    np.testing.assert_array_equal(back["b"][0], value["b"][0])
    assert back["n"] == 1


def test_deserialize_from_read_only_memory_is_zero_copy() -> None:
    arr = np.arange(10_000, dtype=np.int64)
    ser = serialize(arr)
    memory = bytearray(ser.total_size)
    ser.write_into(memoryview(memory))
    back = deserialize(memoryview(memory).toreadonly())
    np.testing.assert_array_equal(back, arr)
    assert not back.flags.writeable
    # A view, not a copy: a change to the underlying memory shows through.
    _n, _len, [(offset, _length)] = _layout(memory)
    memory[offset : offset + 8] = struct.pack("<q", -1)
    assert back[0] == -1


def test_write_into_a_larger_target() -> None:
    arr = np.arange(5000, dtype=np.int32)
    ser = serialize(arr)
    memory = bytearray(ser.total_size + 4096)
    ser.write_into(memoryview(memory))
    np.testing.assert_array_equal(deserialize(memory), arr)


@pytest.mark.parametrize(
    "value",
    [list(range(50_000)), b"z" * 300_000, np.arange(80_000, dtype=np.int64)[::2]],
    ids=["list", "bytes", "strided_array"],
)
def test_value_without_buffers_fits_in_total_size(value) -> None:
    # Shared-memory segments are made exactly total_size bytes long and written with
    # write_into, whether or not the value has out-of-band buffers.
    ser = serialize(value)
    assert ser.buffers == []
    memory = bytearray(ser.total_size)
    ser.write_into(memoryview(memory))
    back = deserialize(memoryview(memory).toreadonly())
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    else:
        assert back == value


@pytest.mark.parametrize(
    "value",
    [
        {"a": np.arange(5001, dtype=np.float64), "b": [np.ones(4097, dtype=np.uint8)], "s": "x"},
        b"z" * 300_001,
        np.arange(3, dtype=np.int8),
    ],
    ids=["buffers", "no_buffers", "tiny"],
)
def test_write_to_file_matches_write_into_over_old_bytes(tmp_path, value) -> None:
    """A segment written with pwrite is byte for byte the packed layout, padding
    included, even in a file that held other bytes (a reused segment)."""
    ser = serialize(value)
    expected = bytearray(ser.total_size)
    ser.write_into(memoryview(expected))
    path = tmp_path / "segment"
    path.write_bytes(b"\xee" * ser.total_size)
    fd = os.open(path, os.O_RDWR)
    try:
        ser.write_to_file(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(expected)


def test_arrow_table_buffers_travel_out_of_band() -> None:
    table = pa.table({"x": np.arange(10_000, dtype=np.int64), "y": np.ones(10_000)})
    ser = serialize(table)
    assert len(ser.buffers) >= 2
    memory = bytearray(ser.total_size)
    ser.write_into(memoryview(memory))
    back = deserialize(memoryview(memory).toreadonly())
    assert back.equals(table)


# --- captured refs --------------------------------------------------------------------------


def test_serialize_records_the_refs_inside_a_value() -> None:
    a, b = ObjectRef(11, None), ObjectRef(22, None)
    ser = serialize({"first": a, "more": [b, "x"]})
    assert sorted(ser.contained) == [11, 22]
    assert serialize([1, 2]).contained == []


def test_capture_list_is_only_active_while_pickling() -> None:
    assert capture_refs() is None
    note_ref(99)  # outside serialization: ignored, no error
    seen: list[list[int] | None] = []

    class Peek:
        def __reduce__(self):
            seen.append(capture_refs())
            note_ref(5)
            return (int, (0,))

    ser = serialize([Peek()])
    assert ser.contained == [5]
    assert seen == [[5]]
    assert capture_refs() is None


def test_nested_serialize_restores_the_outer_capture_list() -> None:
    class Inner:
        def __reduce__(self):
            inner = serialize(ObjectRef(7, None))
            assert inner.contained == [7]
            return (bytes, (inner.to_bytes(),))

    ser = serialize([ObjectRef(1, None), Inner(), ObjectRef(2, None)])
    assert ser.contained == [1, 2]


def test_capture_list_is_reset_after_a_failure() -> None:
    with pytest.raises(SerializationError):
        serialize([ObjectRef(3, None), threading.Lock()])
    assert capture_refs() is None


def test_refs_unpickle_as_refs_with_the_same_id() -> None:
    back = pickle.loads(serialize([ObjectRef(42, None)]).to_bytes())
    assert back == [ObjectRef(42, None)]
    assert isinstance(back[0], ObjectRef)
    assert back[0].hex() == f"{42:020x}"


def test_serialized_value_total_size_counts_aligned_slots() -> None:
    ser = SerializedValue(b"\x80\x05N.", [memoryview(b"a" * 100)], [])
    header = -(-(HEADER.size + ENTRY.size) // ALIGNMENT) * ALIGNMENT
    assert ser.total_size == header + ALIGNMENT + 128
    assert len(ser.to_bytes()) == ser.total_size


# --- code keeps its real file name ------------------------------------------------------


def _local_function_with_a_nested_lambda():
    def outer(values):
        return sorted(values, key=lambda v: -v)

    return outer


def test_code_pickled_by_value_keeps_its_real_file_name() -> None:
    outer = _local_function_with_a_nested_lambda()
    loaded = loads_function(dumps_function(outer, what="outer"))
    assert loaded([1, 3, 2]) == [3, 2, 1]
    assert loaded.__code__.co_filename == __file__
    nested = [c for c in loaded.__code__.co_consts if isinstance(c, types.CodeType)]
    assert nested and all(c.co_filename == __file__ for c in nested)
    assert loaded.__code__.co_firstlineno == outer.__code__.co_firstlineno


def test_cloudpickle_dumps_keeps_file_names_of_functions_inside_values() -> None:
    outer = _local_function_with_a_nested_lambda()
    loaded = pickle.loads(cloudpickle_dumps({"steps": [outer]}))
    assert loaded["steps"][0].__code__.co_filename == __file__
    assert deserialize(serialize(outer).to_bytes()).__code__.co_filename == __file__


def test_pickled_code_is_deterministic() -> None:
    outer = _local_function_with_a_nested_lambda()
    first = dumps_function(outer, what="outer")
    assert dumps_function(outer, what="outer") == first
    # Pickled again after a round trip (new code objects, new strings): same bytes.
    assert dumps_function(loads_function(first), what="outer") == first


def test_cloudpickle_itself_is_not_patched() -> None:
    outer = _local_function_with_a_nested_lambda()
    dumps_function(outer, what="outer")
    plain = pickle.loads(cloudpickle.dumps(outer))
    assert plain.__code__.co_filename == "<dynamic-code>"
    assert cloudpickle.Pickler.dispatch_table is not Pickler.dispatch_table


def test_copyreg_registrations_still_reach_the_pickler() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    def reduce_point(p: Point) -> tuple[object, tuple[int]]:
        return (int, (p.x * 10,))

    copyreg.pickle(Point, reduce_point)
    try:
        assert pickle.loads(cloudpickle_dumps(Point(4))) == 40
    finally:
        del copyreg.dispatch_table[Point]


@pytest.mark.parametrize(
    "value",
    [
        ((1, 2.5, True, None, 3j), {}),
        (("text", b"bytes"), {"k": [1, {"nested": (2, 3)}]}),
        ((), {}),
    ],
)
def test_plain_values_take_the_fast_path_with_the_same_bytes(value: Any) -> None:
    ser = serialize(value)
    assert ser.data == cloudpickle_dumps(value)  # what cloudpickle would have written
    assert ser.contained == [] and ser.buffers == []
    assert pickle.loads(ser.data) == value


@pytest.mark.parametrize(
    "value",
    [
        ((lambda: 1,), {}),  # code: cloudpickle's job
        ((b"x" * 4096,), {}),  # large enough to travel out of band
        ((list(range(100)),), {}),  # too many items to look through
    ],
)
def test_other_values_are_pickled_by_cloudpickle(value: Any) -> None:
    ser = serialize(value)
    restored = pickle.loads(ser.data, buffers=ser.buffers)
    assert type(restored) is tuple and len(restored[0]) == 1
