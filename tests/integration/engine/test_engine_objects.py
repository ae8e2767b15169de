"""The object store: zero-copy reads, Arrow, freeing, borrowed refs, spilling, lineage."""

from __future__ import annotations

import gc
import glob
import mmap
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import heliostat as hs
from heliostat.engine.shm import SHM_DIR
from heliostat.exceptions import ObjectLostError

MB = 1 << 20
LARGE = 200_000  # bytes: above the 100 KB inline threshold


def _shm_files(session: str) -> list[str]:
    return sorted(glob.glob(os.path.join(str(SHM_DIR), f"heliostat-{session}-*")))


def _buffer_owner(arr: np.ndarray) -> object:
    """The first object in ``arr.base`` that is not an ndarray (what really owns the bytes)."""
    base: object = arr
    while isinstance(base, np.ndarray):
        assert not base.flags.owndata, "an array in the chain owns a copy of the data"
        base = base.base
    return base


@hs.remote
def inspect_array(arr):
    return {
        "writeable": bool(arr.flags.writeable),
        "owndata": bool(arr.flags.owndata),
        "sum": int(arr.sum()),
    }


@hs.remote
def make_array(n, fill):
    return np.full(n, fill, dtype=np.int64)


@hs.remote
def counted_array(directory, n):
    """A large array; each run leaves a file in ``directory`` so runs can be counted."""
    path = Path(directory)
    (path / f"run-{len(list(path.iterdir()))}").touch()
    return np.arange(n, dtype=np.int64)


@hs.remote
def build_value(make):
    return make()


@hs.remote
def length(value):
    return len(value)


@hs.remote
def table_stats(table):
    return table.num_rows, table.column_names, table.column("x").to_pylist()[:3]


@hs.remote
class Keeper:
    """Stores refs it receives nested in a list (it borrows them)."""

    def __init__(self) -> None:
        self.refs: list[hs.ObjectRef] = []

    def keep(self, refs: list[hs.ObjectRef]) -> int:
        self.refs.extend(refs)
        return len(self.refs)

    def total(self) -> int:
        return int(sum(int(arr.sum()) for arr in hs.get(self.refs)))

    def forget(self) -> None:
        self.refs.clear()


# --- numpy and Arrow -----------------------------------------------------------------------


def test_large_array_comes_back_read_only_and_zero_copy(runtime) -> None:
    original = np.arange(LARGE // 8 * 4, dtype=np.int64)
    ref = hs.put(original)
    first, second = hs.get(ref), hs.get(ref)
    np.testing.assert_array_equal(first, original)
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 1
    assert np.shares_memory(first, second)
    owner = _buffer_owner(first)
    assert isinstance(owner, memoryview)
    assert isinstance(owner.obj, mmap.mmap)


def test_large_array_argument_is_a_read_only_view_in_the_task(runtime) -> None:
    original = np.ones(LARGE, dtype=np.int64)
    seen = hs.get(inspect_array.remote(hs.put(original)))
    assert seen == {"writeable": False, "owndata": False, "sum": LARGE}
    # A large array passed by value is moved to the store too.
    assert hs.get(inspect_array.remote(original)) == seen


def test_large_task_result_is_a_read_only_view(runtime) -> None:
    arr = hs.get(make_array.remote(LARGE, 7))
    assert arr.shape == (LARGE,) and int(arr[-1]) == 7
    assert not arr.flags.writeable
    assert isinstance(_buffer_owner(arr), memoryview)


@pytest.mark.parametrize("n", [0, 1, 100, 1000], ids=["empty", "one", "hundred", "thousand"])
def test_small_arrays_round_trip(runtime, n) -> None:
    original = np.arange(n, dtype=np.float32)
    ref = hs.put(original)
    value = hs.get(ref)
    np.testing.assert_array_equal(value, original)
    assert value.dtype == np.float32
    assert hs.get(inspect_array.remote(ref))["sum"] == int(original.sum())


def test_structured_array_round_trips(runtime) -> None:
    records = np.zeros(20_000, dtype=[("id", "i8"), ("score", "f4")])
    records["id"] = np.arange(20_000)
    back = hs.get(hs.put(records))
    assert back.dtype == records.dtype
    np.testing.assert_array_equal(back["id"], records["id"])


LARGE_IN_BAND_VALUES = {
    "list": lambda: list(range(100_000)),
    "bytes": lambda: b"x" * 500_000,
    "str": lambda: "y" * 500_000,
    "strided_array": lambda: np.arange(LARGE, dtype=np.int64).reshape(-1, 4)[:, ::2],
}


def _assert_same(value, expected) -> None:
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(value, expected)
    else:
        assert value == expected


@pytest.mark.parametrize("make", LARGE_IN_BAND_VALUES.values(), ids=LARGE_IN_BAND_VALUES.keys())
def test_large_value_without_out_of_band_buffers_round_trips(runtime, make) -> None:
    # Above the inline threshold but pickled entirely in band: goes to shared memory
    # without any out-of-band buffer.
    expected = make()
    _assert_same(hs.get(hs.put(expected)), expected)


@pytest.mark.parametrize("make", LARGE_IN_BAND_VALUES.values(), ids=LARGE_IN_BAND_VALUES.keys())
def test_large_value_without_out_of_band_buffers_as_task_result(runtime, make) -> None:
    expected = make()
    _assert_same(hs.get(build_value.remote(make), timeout=30), expected)


def test_large_list_argument_passed_by_value(runtime) -> None:
    assert hs.get(length.remote(list(range(100_000))), timeout=30) == 100_000


@hs.remote
def describe_args(*args):
    return [a if isinstance(a, int) else len(a) for a in args]


def test_many_ref_arguments_mixed_with_large_values(runtime) -> None:
    # Past the inline limit, plain arguments move to the object store one by one while
    # the top-level refs keep their positions (a wide fan-in of refs plus big values).
    refs = [hs.put(i) for i in range(3000)]
    big = list(range(50_000))
    args = [*refs[:1500], big, *refs[1500:], big]
    assert hs.get(describe_args.remote(*args), timeout=60) == [
        *range(1500),
        50_000,
        *range(1500, 3000),
        50_000,
    ]


def test_arrow_table_round_trip(runtime) -> None:
    n = 50_000
    table = pa.table({"x": pa.array(np.arange(n)), "name": [f"row{i}" for i in range(n)]})
    ref = hs.put(table)
    back = hs.get(ref)
    assert back.equals(table)
    assert hs.get(table_stats.remote(ref)) == (n, ["x", "name"], [0, 1, 2])
    small = pa.table({"x": [1, 2, 3]})
    assert hs.get(hs.put(small)).equals(small)


# --- freeing --------------------------------------------------------------------------------


def test_dropping_the_last_ref_frees_the_segment(runtime, wait_for) -> None:
    before = set(_shm_files(runtime.session))
    ref = hs.put(np.zeros(LARGE, dtype=np.uint8))
    kind, path = runtime.manager.object_location(ref.id)
    assert kind == "SHM" and os.path.exists(path)
    assert path not in before
    object_id = ref.id
    del ref
    gc.collect()
    wait_for(
        lambda: runtime.manager.object_location(object_id) == ("MISSING", ""),
        what="the dropped object to leave the table",
    )
    wait_for(lambda: not os.path.exists(path), what="the segment file to be unlinked")


def test_memory_returns_to_baseline_after_many_large_puts(fresh_runtime, wait_for) -> None:
    runtime = fresh_runtime()
    manager = runtime.manager
    base_bytes = manager.object_stats()["shm_bytes"]
    base_files = len(_shm_files(runtime.session))
    base_mappings = len(runtime.client.mappings)
    payload = np.zeros(100 * MB, dtype=np.uint8)
    for i in range(50):
        payload[0] = i
        ref = hs.put(payload)
        assert int(hs.get(ref)[0]) == i
        del ref
    gc.collect()
    # The node manager's I/O loop reports the driver's dropped refs on its next tick.
    wait_for(
        lambda: manager.object_stats()["shm_bytes"] == base_bytes,
        what="shm_bytes to return to its baseline",
    )
    wait_for(
        lambda: len(_shm_files(runtime.session)) == base_files,
        what="the session's /dev/shm files to return to their baseline",
    )
    wait_for(
        lambda: len(runtime.client.mappings) == base_mappings,
        what="the driver to drop its mappings of freed objects",
    )
    assert manager.object_stats()["spill_count"] == 0


def test_ref_nested_in_a_put_value_keeps_the_inner_object_alive(runtime, wait_for) -> None:
    inner = hs.put(np.full(LARGE, 3, dtype=np.uint8))
    inner_id = inner.id
    outer = hs.put({"inner": inner})
    del inner
    gc.collect()
    hs.put(None)  # an API call: the driver reports the dropped ref
    got = hs.get(outer)["inner"]
    assert int(hs.get(got).sum()) == 3 * LARGE
    del got, outer
    gc.collect()
    hs.put(None)
    wait_for(
        lambda: runtime.manager.object_location(inner_id) == ("MISSING", ""),
        what="the inner object to be freed with its container",
    )


def test_refs_held_by_an_actor_keep_objects_alive(runtime, wait_for) -> None:
    keeper = Keeper.remote()
    ref = hs.put(np.ones(LARGE, dtype=np.int64))
    object_id = ref.id
    assert hs.get(keeper.keep.remote([ref])) == 1
    del ref
    gc.collect()
    runtime.client.tracker.drain()  # report the driver's release now (synchronous)
    # Nothing the driver holds refers to the object; only the actor's borrowed ref
    # keeps it. One more call makes sure the actor is done with the first one.
    hs.get(keeper.keep.remote([]))
    assert runtime.manager.object_location(object_id)[0] == "SHM"
    assert hs.get(keeper.total.remote()) == LARGE
    # Once the actor drops it too, the object is freed.
    hs.get(keeper.forget.remote())
    wait_for(
        lambda: runtime.manager.object_location(object_id) == ("MISSING", ""),
        what="the object to be freed after the actor dropped its ref",
    )


def test_ref_passed_to_a_pending_task_outlives_the_driver_ref(runtime, tmp_path) -> None:
    ref = hs.put(np.full(LARGE, 2, dtype=np.int64))
    result = inspect_array.remote(ref)
    del ref
    gc.collect()
    hs.put(None)
    assert hs.get(result)["sum"] == 2 * LARGE


# --- spilling and restore -------------------------------------------------------------------


def test_objects_beyond_the_limit_spill_and_read_back(fresh_runtime) -> None:
    runtime = fresh_runtime(object_store_memory=300 * MB)
    n = 100 * MB // 8
    refs = [hs.put(np.full(n, i, dtype=np.int64)) for i in range(5)]
    stats = runtime.manager.object_stats()
    assert stats["spill_count"] > 0
    assert stats["shm_bytes"] <= 300 * MB
    assert stats["spilled_bytes"] > 0
    values = [hs.get(ref) for ref in refs]
    # Every value stays right while the others are spilled and restored around it.
    for i, value in enumerate(values):
        assert value.shape == (n,)
        assert int(value[0]) == i and int(value[-1]) == i
        assert int(value.min()) == i == int(value.max())
    stats = runtime.manager.object_stats()
    assert stats["restore_count"] > 0
    assert stats["shm_bytes"] <= 300 * MB


def test_spilled_object_is_restored_on_read(runtime) -> None:
    original = np.arange(LARGE, dtype=np.int64)
    ref = hs.put(original)
    assert runtime.manager.spill_object(ref.id)
    kind, path = runtime.manager.object_location(ref.id)
    assert kind == "SPILLED" and os.path.exists(path)
    np.testing.assert_array_equal(hs.get(ref), original)
    assert runtime.manager.object_location(ref.id)[0] == "SHM"
    # A task reads it too.
    assert runtime.manager.spill_object(ref.id)
    assert hs.get(inspect_array.remote(ref))["sum"] == int(original.sum())


def test_lost_task_output_is_rebuilt_from_lineage(fresh_runtime, tmp_path) -> None:
    runtime = fresh_runtime()
    n = LARGE // 8 * 2
    ref = counted_array.remote(str(tmp_path), n)
    np.testing.assert_array_equal(hs.get(ref), np.arange(n))
    assert len(list(tmp_path.iterdir())) == 1
    assert runtime.manager.spill_object(ref.id)
    kind, path = runtime.manager.object_location(ref.id)
    assert kind == "SPILLED"
    os.unlink(path)
    np.testing.assert_array_equal(hs.get(ref, timeout=30), np.arange(n))
    assert len(list(tmp_path.iterdir())) == 2


def test_lost_argument_is_rebuilt_before_the_downstream_task_runs(fresh_runtime, tmp_path) -> None:
    runtime = fresh_runtime()
    n = LARGE // 8 * 2
    ref = counted_array.remote(str(tmp_path), n)
    hs.get(ref)
    assert runtime.manager.spill_object(ref.id)
    os.unlink(runtime.manager.object_location(ref.id)[1])
    assert hs.get(inspect_array.remote(ref), timeout=30)["sum"] == int(np.arange(n).sum())
    assert len(list(tmp_path.iterdir())) == 2


def test_lost_put_object_raises_object_lost(runtime) -> None:
    ref = hs.put(np.arange(LARGE, dtype=np.int64))
    assert runtime.manager.spill_object(ref.id)
    os.unlink(runtime.manager.object_location(ref.id)[1])
    with pytest.raises(ObjectLostError) as info:
        hs.get(ref, timeout=10)
    assert info.value.object_id == ref.hex()
    assert ref.hex() in str(info.value)


def test_task_taking_a_lost_put_object_fails_with_object_lost(fresh_runtime) -> None:
    runtime = fresh_runtime()
    ref = hs.put(np.arange(LARGE, dtype=np.int64))
    assert runtime.manager.spill_object(ref.id)
    os.unlink(runtime.manager.object_location(ref.id)[1])
    with pytest.raises(ObjectLostError):
        hs.get(inspect_array.remote(ref), timeout=10)
    # The node keeps working.
    assert hs.get(inspect_array.remote(np.ones(10, dtype=np.int64)), timeout=10)["sum"] == 10
