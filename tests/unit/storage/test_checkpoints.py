"""The checkpoint store: round trips, checksums, atomic writes, path layout."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from heliostat.exceptions import CorruptCheckpointError
from heliostat.storage import checkpoints
from heliostat.storage.checkpoints import (
    TMP_INFIX,
    CheckpointRef,
    CheckpointStore,
    checkpoint_path,
    default_storage_url,
    safe_segment,
)
from heliostat.storage.signing import Signer


@pytest.fixture
def memory_checkpoints() -> Iterator[CheckpointStore]:
    """A ``memory://`` store under a root of its own, emptied afterwards."""
    store = CheckpointStore(f"memory://ckpt-{uuid.uuid4().hex}")
    yield store
    if store.fs.exists(store.root):
        store.fs.rm(store.root, recursive=True)


@pytest.fixture
def file_checkpoints(tmp_path: Path) -> CheckpointStore:
    """A ``file://`` store in the test's temporary directory."""
    return CheckpointStore((tmp_path / "ckpt").as_uri())


@pytest.fixture(params=["memory", "file"])
def store(
    request: pytest.FixtureRequest,
    memory_checkpoints: CheckpointStore,
    file_checkpoints: CheckpointStore,
) -> CheckpointStore:
    return memory_checkpoints if request.param == "memory" else file_checkpoints


def _all_files(store: CheckpointStore) -> list[str]:
    if not store.fs.exists(store.root):
        return []
    return [str(p) for p in store.fs.find(store.root)]


def _raw(store: CheckpointStore, ref: CheckpointRef) -> bytes:
    with fsspec.open(ref.location, "rb") as f:
        data: bytes = f.read()
    return data


def _overwrite(store: CheckpointStore, ref: CheckpointRef, data: bytes) -> None:
    with fsspec.open(ref.location, "wb") as f:
        f.write(data)


# --- round trips ---


def test_arrow_table_round_trips_as_arrow_ipc(store: CheckpointStore) -> None:
    table = pa.table({"day": ["2026-11-21", "2026-11-22"], "rows": [3, 4]})
    ref = store.write("etl", "extract", 1, table)
    assert ref.format == "arrow"
    assert re.search(r"/etl/extract@1\.[0-9a-f]{32}\.arrows$", ref.location)
    back = store.read(ref)
    assert isinstance(back, pa.Table)
    assert back.equals(table)
    # Any Arrow reader can open it: it is a plain IPC stream.
    assert pa.ipc.open_stream(_raw(store, ref)).read_all().equals(table)


def test_pandas_dataframe_round_trips_as_parquet(store: CheckpointStore) -> None:
    import pandas as pd  # a dev dependency: missing, the test fails rather than skips

    df = pd.DataFrame(
        {"a": [1, 2, 3], "b": ["x", "y", None], "t": pd.to_datetime(["2026-01-01"] * 3, utc=True)},
        index=pd.Index([10, 20, 30], name="id"),
    )
    ref = store.write("etl", "transform", 2, df)
    assert ref.format == "parquet"
    assert re.search(r"/etl/transform@2\.[0-9a-f]{32}\.parquet$", ref.location)
    pd.testing.assert_frame_equal(store.read(ref), df)


def test_dataframe_that_parquet_cannot_keep_exact_goes_to_pickle(store: CheckpointStore) -> None:
    import pandas as pd  # a dev dependency: missing, the test fails rather than skips

    df = pd.DataFrame({0: [1, 2], 1: ["a", "b"]})  # non-string column names
    ref = store.write("etl", "t", 1, df)
    assert ref.format == "pickle"
    pd.testing.assert_frame_equal(store.read(ref), df)


@pytest.mark.parametrize(
    "value",
    [
        {"rows": 3, "day": "2026-11-21", "nested": [1, (2, 3)]},
        None,
        "text",
        np.arange(12, dtype=np.float32).reshape(3, 4),
    ],
    ids=["dict", "none", "str", "ndarray"],
)
def test_other_values_round_trip_with_pickle(store: CheckpointStore, value: Any) -> None:
    ref = store.write("wf", "step", 1, value)
    assert ref.format == "pickle"
    assert re.search(r"/wf/step@1\.[0-9a-f]{32}\.pkl$", ref.location)
    back = store.read(ref)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
        assert back.dtype == value.dtype
    else:
        assert back == value


def test_functions_pickle_by_value_with_cloudpickle(store: CheckpointStore) -> None:
    ref = store.write("wf", "step", 1, lambda x: x + 1)
    assert store.read(ref)(1) == 2


def test_ref_records_checksum_size_and_location(store: CheckpointStore) -> None:
    ref = store.write("wf", "step", 3, {"k": "v"})
    data = _raw(store, ref)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", ref.checksum)
    assert ref.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    assert ref.size == len(data)
    assert store.exists(ref.location)
    prefix = re.escape(f"{ref.store_url}/wf/step@3.")
    assert re.fullmatch(prefix + r"[0-9a-f]{32}\.pkl", ref.location)
    assert CheckpointStore(ref.store_url).read(ref) == {"k": "v"}


def test_read_by_location_and_checksum(store: CheckpointStore) -> None:
    ref = store.write("wf", "step", 1, [1, 2, 3])
    assert store.read(ref.location, ref.checksum) == [1, 2, 3]
    assert store.read(ref.location, ref.checksum, "pickle") == [1, 2, 3]
    with pytest.raises(ValueError, match="checksum"):
        store.read(ref.location)


def test_attempts_do_not_overwrite_each_other(store: CheckpointStore) -> None:
    first = store.write("wf", "step", 1, "one")
    second = store.write("wf", "step", 2, "two")
    assert first.location != second.location
    assert (store.read(first), store.read(second)) == ("one", "two")


def test_write_without_fsync_round_trips(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path.as_uri(), fsync=False)
    assert store.read(store.write("wf", "s", 1, {"a": 1})) == {"a": 1}


# --- corruption ---


def test_flipped_byte_raises_corrupt_checkpoint_naming_both_checksums(
    store: CheckpointStore,
) -> None:
    ref = store.write("wf", "step", 1, {"payload": list(range(100))})
    data = bytearray(_raw(store, ref))
    data[len(data) // 2] ^= 0x01
    _overwrite(store, ref, bytes(data))
    with pytest.raises(CorruptCheckpointError) as info:
        store.read(ref)
    err = info.value
    assert err.location == ref.location
    assert err.expected_checksum == ref.checksum
    assert err.actual_checksum.startswith("sha256:")
    assert err.actual_checksum != ref.checksum
    for part in (ref.location, ref.checksum, err.actual_checksum):
        assert part in str(err)


def test_missing_file_raises_corrupt_checkpoint(store: CheckpointStore) -> None:
    ref = store.write("wf", "step", 1, "value")
    fs, path = fsspec.core.url_to_fs(ref.location)
    fs.rm(path)
    assert not store.exists(ref.location)
    with pytest.raises(CorruptCheckpointError, match="missing") as info:
        store.read(ref)
    assert info.value.location == ref.location
    assert info.value.actual_checksum == ""


def test_bytes_that_match_the_checksum_but_do_not_decode_raise_corrupt(
    store: CheckpointStore,
) -> None:
    ref = store.write("wf", "step", 1, pa.table({"a": [1]}))
    garbage = b"not an arrow stream"
    _overwrite(store, ref, garbage)
    checksum = "sha256:" + hashlib.sha256(garbage).hexdigest()
    with pytest.raises(CorruptCheckpointError, match="cannot be decoded"):
        store.read(ref.location, checksum, "arrow")


def test_corrupt_checkpoint_error_survives_pickling() -> None:
    err = CorruptCheckpointError(
        "bad", location="file:///x", expected_checksum="sha256:a", actual_checksum="sha256:b"
    )
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.location, copy.expected_checksum, copy.actual_checksum, str(copy)) == (
        "file:///x",
        "sha256:a",
        "sha256:b",
        "bad",
    )


# --- atomicity ---


def test_no_temporary_files_are_left_after_writes(store: CheckpointStore) -> None:
    store.write("wf", "a", 1, {"x": 1})
    store.write("wf", "b", 1, pa.table({"x": [1]}))
    store.write("wf", "c", 1, np.zeros(1000))
    files = _all_files(store)
    assert len(files) == 3
    assert not [f for f in files if TMP_INFIX in f]


def test_a_write_that_fails_midway_leaves_no_file(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_encode(fmt: str, obj: Any, sink: Any) -> None:
        sink.write(b"half a checkpoint")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(checkpoints, "_encode", failing_encode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.write("wf", "step", 1, {"x": 1})
    assert _all_files(store) == []
    assert store.find("wf", "step", 1) is None


def test_an_unpicklable_value_raises_and_leaves_nothing(store: CheckpointStore) -> None:
    with pytest.raises(TypeError):
        store.write("wf", "step", 1, threading.Lock())
    assert _all_files(store) == []


def test_concurrent_writers_of_one_attempt_each_leave_their_whole_file(tmp_path: Path) -> None:
    # A file's name carries its bytes' tag, so writers of different bytes never share a
    # final name: each leaves its own complete file, and each ref reads back its value.
    store = CheckpointStore(tmp_path.as_uri(), fsync=False)
    refs: dict[bytes, CheckpointRef] = {}
    payloads = [bytes([i]) * 100_000 for i in range(8)]

    def write(p: bytes) -> None:
        refs[p] = store.write("wf", "step", 1, p)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_all_files(store)) == len(payloads)
    assert all(store.read(ref) == p for p, ref in refs.items())
    found = store.find("wf", "step", 1)
    assert found is not None and store.read(found) in payloads


def _checks(store: CheckpointStore, ref: CheckpointRef) -> bool:
    try:
        store.read(ref)
    except CorruptCheckpointError:
        return False
    return True


# --- layout and housekeeping ---


def test_safe_ids_are_used_as_they_are() -> None:
    for ident in ("etl-2026-11-21", "load", "step_3.v2"):
        assert safe_segment(ident) == ident
    assert checkpoint_path("/r/", "etl", "load", 2, "pickle", "ab" * 16) == (
        f"/r/etl/load@2.{'ab' * 16}.pkl"
    )


@pytest.mark.parametrize(
    "ident",
    [
        "a/b",
        "../etc",
        ".hidden",
        "..",
        "nightly@2026-11-21T00:00:00+00:00",
        "ünïcode",
        "x" * 300,
        "a b",
        "a*b?[c]",
        "",
    ],
)
def test_unsafe_ids_become_one_safe_readable_segment(ident: str) -> None:
    seg = safe_segment(ident)
    assert re.fullmatch(r"[A-Za-z0-9_.~-]{1,100}", seg)
    assert not seg.startswith(".")
    assert "~" in seg
    assert safe_segment(ident) == seg  # deterministic
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", ident)[:10].lstrip(".")
    assert seg.startswith(readable)


def test_distinct_ids_never_share_a_segment() -> None:
    ids = ["a/b", "a_b", "a:b", "a b", "A/B", "a/b~", "a_b~" + "0" * 16]
    segments = [safe_segment(i) for i in ids]
    assert len(set(segments)) == len(ids)


def test_path_layout_is_workflow_dir_then_task_at_attempt(
    file_checkpoints: CheckpointStore,
) -> None:
    ref = file_checkpoints.write("wf/1", "extract", 7, 1)
    rel = Path(ref.location[len("file://") :]).relative_to(file_checkpoints.root)
    assert rel.parts[0] == safe_segment("wf/1")
    assert re.fullmatch(r"extract@7\.[0-9a-f]{32}\.pkl", rel.parts[1])


def test_delete_workflow_removes_its_checkpoints_only(store: CheckpointStore) -> None:
    gone = store.write("old", "s", 1, 1)
    kept = store.write("new", "s", 1, 2)
    store.delete_workflow("old")
    assert not store.exists(gone.location)
    assert store.read(kept) == 2
    store.delete_workflow("old")  # idempotent
    store.delete_workflow("never-existed")


def test_find_adopts_a_checkpoint_written_before_a_crash(store: CheckpointStore) -> None:
    ref = store.write("wf", "s", 4, pa.table({"a": [1, 2]}))
    found = store.find("wf", "s", 4)
    assert found == ref
    assert store.find("wf", "s", 5) is None
    assert store.find("other", "s", 4) is None


def _plant(store: CheckpointStore, name: str, value: Any) -> str:
    """Put pickled ``value`` at ``wf/{name}`` in the store, as an intruder would."""
    path = f"{store.root}/wf/{name}"
    store.fs.makedirs(f"{store.root}/wf", exist_ok=True)
    store.fs.pipe_file(path, pickle.dumps(value))
    return path


def test_find_ignores_a_file_planted_without_the_key(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    # An intruder who can write the store but lacks the key: at the untagged name,
    # and under a made-up tag. Neither is adopted, so nothing unvouched is unpickled.
    _plant(store, "s@4.pkl", "evil")
    _plant(store, f"s@4.{'0' * 32}.pkl", "evil")
    with caplog.at_level("WARNING", logger="heliostat.storage"):
        assert store.find("wf", "s", 4) is None
    assert "does not match its bytes" in caplog.text


def test_find_ignores_a_file_written_with_another_key(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    other = CheckpointStore(store.url, signer=Signer(b"k" * 32))
    other.write("wf", "s", 4, "from another installation")
    with caplog.at_level("WARNING", logger="heliostat.storage"):
        assert store.find("wf", "s", 4) is None
    assert "tag does not match" in caplog.text
    assert other.find("wf", "s", 4) is not None  # its own key vouches for it


def test_find_ignores_a_genuine_file_whose_bytes_were_replaced(store: CheckpointStore) -> None:
    ref = store.write("wf", "s", 4, "genuine")
    path = store.fs._strip_protocol(ref.location)
    store.fs.pipe_file(path, pickle.dumps("swapped"))
    assert store.find("wf", "s", 4) is None


def test_file_tags_bind_workflow_step_and_attempt(store: CheckpointStore) -> None:
    # A genuine file copied to another attempt's (or step's) name is not adopted there.
    ref = store.write("wf", "s", 4, "genuine")
    name = ref.location.rsplit("/", 1)[1]
    data = store.fs.cat_file(store.fs._strip_protocol(ref.location))
    for moved in (name.replace("s@4.", "s@5.", 1), name.replace("s@4.", "t@4.", 1)):
        store.fs.pipe_file(f"{store.root}/wf/{moved}", data)
    assert store.find("wf", "s", 5) is None
    assert store.find("wf", "t", 4) is None
    assert store.find("wf", "s", 4) == ref


def test_memory_store_is_not_shared_across_processes(
    memory_checkpoints: CheckpointStore, file_checkpoints: CheckpointStore
) -> None:
    assert not memory_checkpoints.shared_across_processes
    assert file_checkpoints.shared_across_processes


def test_default_storage_url_follows_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HELIOSTAT_STORAGE", raising=False)
    monkeypatch.setenv("HELIOSTAT_HOME", str(tmp_path))
    assert default_storage_url() == (tmp_path / "checkpoints").as_uri()
    store = CheckpointStore()
    assert store.write("w", "t", 1, 1).location.startswith((tmp_path / "checkpoints").as_uri())
    monkeypatch.setenv("HELIOSTAT_STORAGE", "memory://elsewhere")
    assert default_storage_url() == "memory://elsewhere"


def test_importing_the_store_does_not_import_pandas() -> None:
    # (pyarrow itself imports pandas when it builds a table from Python objects.)
    code = (
        "import sys, heliostat.storage.checkpoints as c; "
        "s = c.CheckpointStore('memory://x'); s.read(s.write('w', 't', 1, {'a': [1]})); "
        "sys.exit(1 if 'pandas' in sys.modules else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert result.returncode == 0, result.stderr or "pandas was imported"


# --- inline checkpoints (kept in the SQL row) ---


@pytest.mark.parametrize("value", [7, {"rows": [1, 2, 3]}, np.arange(10)])
def test_small_values_come_back_inline_and_write_no_file(
    store: CheckpointStore, value: Any
) -> None:
    ref = store.write("wf", "s", 1, value, inline_limit=4096)

    assert ref.inline and ref.location == "inline:wf/s@1"
    assert ref.data is not None and ref.size == len(ref.data)
    assert ref.checksum == "sha256:" + hashlib.sha256(ref.data).hexdigest()
    assert _all_files(store) == []
    assert (
        np.array_equal(store.read(ref), value)
        if isinstance(value, np.ndarray)
        else (store.read(ref) == value)
    )


@pytest.mark.parametrize(
    "value", [list(range(5000)), np.zeros(5000)], ids=["python-objects", "numpy"]
)
def test_values_over_the_inline_limit_go_to_a_file(store: CheckpointStore, value: Any) -> None:
    ref = store.write("wf", "s", 1, value, inline_limit=1024)

    assert not ref.inline and ref.data is None
    assert len(_all_files(store)) == 1
    assert ref.checksum == "sha256:" + hashlib.sha256(_raw(store, ref)).hexdigest()
    back = store.read(ref)
    assert np.array_equal(back, value) if isinstance(value, np.ndarray) else back == value


def test_tables_are_never_inline(store: CheckpointStore) -> None:
    ref = store.write("wf", "s", 1, pa.table({"a": [1]}), inline_limit=1 << 20)
    assert ref.format == "arrow" and not ref.inline


def test_corrupt_inline_bytes_raise_corrupt_checkpoint(store: CheckpointStore) -> None:
    ref = store.write("wf", "s", 1, "hello", inline_limit=4096)
    assert ref.data is not None
    bad = CheckpointRef(
        location=ref.location,
        checksum=ref.checksum,
        format=ref.format,
        size=ref.size,
        data=ref.data[:-1] + b"\x00",
    )
    with pytest.raises(CorruptCheckpointError, match=r"inline:wf/s@1 is corrupt"):
        store.read(bad)
    with pytest.raises(ValueError, match="kept in SQL"):
        store.read(ref.location, checksum=ref.checksum)
    assert ref.without_data().data is None and ref.without_data() == ref
