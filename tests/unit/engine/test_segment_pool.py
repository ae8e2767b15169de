"""The segment pool: freed segments reused by pulls, bounded, never while still mapped."""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.cluster import segments
from heliostat.cluster.segments import SegmentSink, segment_object
from heliostat.engine.object_table import ObjectTable, ObjKind
from heliostat.engine.records import WorkerRecord
from heliostat.engine.shm import SHM_DIR, SegmentPool, map_readonly, session_glob
from tests.waiting import poll_for

MB = 1 << 20
SESSION = "pooltest"


@pytest.fixture
def shm() -> Iterator[Path]:
    """A private directory on the shared-memory filesystem (tmpfs where there is one)."""
    path = Path(tempfile.mkdtemp(prefix="hs-pool-test-", dir=str(SHM_DIR)))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def segment(directory: Path, name: str, size: int, fill: int) -> str:
    path = directory / name
    path.write_bytes(bytes([fill]) * size)
    return str(path)


def pooled(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "-pool-" in p.name)


def test_a_freed_segment_is_handed_out_again_under_the_new_name(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm)
    old = segment(shm, "old", 4 * MB, 7)
    ino = os.stat(old).st_ino
    assert pool.give(old, 4 * MB)
    assert not os.path.exists(old)
    assert pool.bytes == 4 * MB and len(pool) == 1
    # Pool files carry the session's prefix, so the session's cleanup removes them.
    assert all(fnmatch.fnmatch(name, session_glob(SESSION)) for name in pooled(shm))

    new = str(shm / "new")
    fd = pool.take(new, 3 * MB)
    assert fd is not None
    try:
        st = os.fstat(fd)
        assert st.st_ino == ino  # the same file, pages and all
        assert st.st_size == 3 * MB  # cut to the size asked
        assert os.stat(new).st_ino == ino
    finally:
        os.close(fd)
    assert pooled(shm) == [] and pool.bytes == 0
    assert pool.stats()["pool_reused"] == 1
    assert pool.stats()["pool_reused_bytes"] == 3 * MB


def test_the_best_fit_is_taken_and_a_far_bigger_file_is_kept(shm: Path) -> None:
    pool = SegmentPool(SESSION, 256 * MB, directory=shm)
    for name, size in (("a", 2 * MB), ("b", 8 * MB), ("c", 64 * MB)):
        assert pool.give(segment(shm, name, size, 1), size)
    fd = pool.take(str(shm / "x"), 6 * MB)  # b: the smallest of at least 6 MiB
    assert fd is not None
    os.close(fd)
    assert pool.bytes == 66 * MB
    # 3 MiB: c is over twice as big (kept for a big object), a is smaller but serves.
    fd = pool.take(str(shm / "y"), 3 * MB)
    assert fd is not None
    assert os.fstat(fd).st_size == 3 * MB
    os.close(fd)
    assert pool.bytes == 64 * MB
    assert pool.take(str(shm / "z"), 16 * MB) is None


def test_the_pool_stays_within_its_capacity(shm: Path) -> None:
    pool = SegmentPool(SESSION, 10 * MB, directory=shm)
    assert pool.give(segment(shm, "a", 4 * MB, 1), 4 * MB)
    assert pool.give(segment(shm, "b", 4 * MB, 2), 4 * MB)
    assert pool.give(segment(shm, "c", 4 * MB, 3), 4 * MB)  # the oldest (a) goes
    assert pool.bytes == 8 * MB and len(pooled(shm)) == 2
    big = segment(shm, "big", 11 * MB, 4)
    assert not pool.give(big, 11 * MB)  # over the capacity: refused, left to the caller
    assert os.path.exists(big)
    small = segment(shm, "small", 4096, 5)
    assert not pool.give(small, 4096)  # too small to be worth keeping
    assert pool.take(str(shm / "tiny"), 4096) is None
    assert pool.evict(1) == 4 * MB and pool.bytes == 4 * MB
    assert len(pooled(shm)) == 1


def test_a_file_still_mapped_is_not_reused_until_unmapped(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm)
    path = segment(shm, "obj", 2 * MB, 9)
    mapping = map_readonly(path)  # a reader's numpy array outliving its ref
    view = memoryview(mapping)
    assert pool.give(path, 2 * MB)
    assert pool.take(str(shm / "new"), 2 * MB) is None
    assert len(pool) == 1
    assert view[0] == 9 and view[-1] == 9  # the reader still sees its bytes
    view.release()
    mapping.close()
    fd = pool.take(str(shm / "new"), 2 * MB)
    assert fd is not None
    os.close(fd)


def test_a_served_object_is_not_reused_while_being_sent(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm)
    path = segment(shm, "obj", 2 * MB, 3)
    source = segment_object(path)  # the transfer service serving it
    assert pool.give(path, 2 * MB)
    assert pool.take(str(shm / "new"), 2 * MB) is None
    assert bytes(source.data[-4:]) == b"\x03" * 4
    assert source.release is not None
    source.release()
    fd = pool.take(str(shm / "new"), 2 * MB)
    assert fd is not None
    os.close(fd)


def test_a_segment_pooled_while_being_opened_reads_as_gone(
    shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a reader's open and its lock, the file is pooled and reused: the reader
    must not map the new object's bytes under the old name."""
    pool = SegmentPool(SESSION, 64 * MB, directory=shm)
    path = segment(shm, "obj", 2 * MB, 3)
    real_flock = segments.fcntl.flock
    raced = []

    def flock_after_reuse(fd: int, op: int) -> None:
        if not raced:
            raced.append(True)
            assert pool.give(path, 2 * MB)
            taken = pool.take(str(shm / "other"), 2 * MB)
            assert taken is not None
            os.close(taken)
        real_flock(fd, op)

    monkeypatch.setattr(segments.fcntl, "flock", flock_after_reuse)
    with pytest.raises(FileNotFoundError):
        map_readonly(path)
    assert raced


def test_a_reused_file_never_shows_its_old_bytes(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm)
    sink = SegmentSink(lambda oid: str(shm / f"obj-{oid}"), reuse=pool.take_mapped)
    for oid, (size, fill) in enumerate([(4 * MB, 0xAA), (3 * MB + 5, 0x11), (5 * MB, 0x22)]):
        sink.begin(oid, size, False)
        piece = bytes([fill]) * MB
        for offset in range(0, size, MB):
            sink.write(oid, offset, memoryview(piece)[: min(MB, size - offset)])
        path = sink.commit(oid)
        data = Path(path).read_bytes()
        assert data == bytes([fill]) * size
        assert pool.give(path, size)
    assert pool.reused == 2


def test_an_aborted_pull_into_a_reused_file_leaves_nothing(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm)
    assert pool.give(segment(shm, "old", 2 * MB, 1), 2 * MB)
    sink = SegmentSink(lambda oid: str(shm / f"obj-{oid}"), reuse=pool.take_mapped)
    sink.begin(1, 2 * MB, False)
    sink.abort(1)
    assert sorted(p.name for p in shm.iterdir()) == []


def test_close_removes_every_pooled_file_and_takes_no_more(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm)
    for i in range(3):
        assert pool.give(segment(shm, f"s{i}", 2 * MB, i), 2 * MB)
    pool.close()
    assert pooled(shm) == [] and pool.bytes == 0
    late = segment(shm, "late", 2 * MB, 1)
    assert not pool.give(late, 2 * MB)
    assert pool.take(str(shm / "new"), 2 * MB) is None


def test_concurrent_gives_and_takes_never_share_a_file(shm: Path) -> None:
    pool = SegmentPool(SESSION, 24 * MB, directory=shm)
    errors: list[BaseException] = []
    taken_inodes: list[int] = []
    lock = threading.Lock()

    def churn(worker: int) -> None:
        try:
            for i in range(40):
                name = str(shm / f"w{worker}-{i}")
                size = (1 + (i + worker) % 4) * MB
                fd = pool.take(name, size)
                if fd is None:
                    fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                    os.ftruncate(fd, size)
                os.pwrite(fd, bytes([worker]) * size, 0)
                ino = os.fstat(fd).st_ino
                os.close(fd)
                assert Path(name).read_bytes() == bytes([worker]) * size
                with lock:
                    taken_inodes.append(ino)
                if not pool.give(name, size):
                    os.unlink(name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert pool.reused > 0
    on_disk = sum(p.stat().st_size for p in shm.iterdir() if "-pool-" in p.name)
    assert pool.bytes == on_disk <= 24 * MB
    assert not [p for p in shm.iterdir() if "-pool-" not in p.name]  # nothing leaked
    pool.close()
    assert list(shm.iterdir()) == []


def test_the_object_table_pools_freed_segments_and_counts_them(shm: Path) -> None:
    table = ObjectTable(limit=16 * MB, spill_dir=str(shm / "spill"), unmap=lambda e: None)
    pool = SegmentPool(SESSION, 8 * MB, directory=shm)
    table.pool = pool
    driver = WorkerRecord(0, pid=1)

    def put(oid: int, size: int) -> str:
        entry = table.create(oid, driver, None)
        table.make_room(size)
        path = segment(shm, f"obj-{oid}", size, oid)
        table.set_value(entry, ObjKind.SHM, path, size, ())
        return path

    first = put(1, 6 * MB)
    table.release(driver, 1)  # freed: into the pool, not unlinked
    assert not os.path.exists(first)
    assert table.stats()["pool_bytes"] == 6 * MB and table.stats()["shm_bytes"] == 0
    put(2, 6 * MB)
    put(3, 6 * MB)
    # 12 MiB live + 6 pooled > 16: the pool gives its file back before anything spills.
    assert pool.bytes == 0 and table.spill_count == 0
    put(4, 6 * MB)  # now a live segment has to spill
    assert table.spill_count == 1
    table.pool = None
    table.release(driver, 2)
    table.release(driver, 3)
    table.release(driver, 4)
    assert pooled(shm) == []
    assert [p.name for p in shm.iterdir() if p.name.startswith("obj-")] == []


def test_a_warm_pool_maps_a_pooled_file_ahead_and_hands_the_mapping_out(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm, warm=True)
    try:
        assert pool.give(segment(shm, "old", 4 * MB, 0xAB), 4 * MB)
        poll_for(lambda: pool.warmed == 1, what="the pooled file mapped ahead")
        taken = pool.take_mapped(str(shm / "new"), 3 * MB)
        assert taken is not None
        fd, mapping = taken
        try:
            assert mapping is not None and len(mapping) >= 3 * MB
            mapping[: 3 * MB] = b"\x5a" * (3 * MB)  # the socket's writes, as it were
        finally:
            os.close(fd)
            assert mapping is not None
            mapping.close()
        assert (shm / "new").read_bytes() == b"\x5a" * (3 * MB)  # cut to the size asked
    finally:
        pool.close()


def test_a_warm_mapping_is_closed_when_its_file_leaves_the_pool(shm: Path) -> None:
    """Evicted (or the pool closed): the pool must not keep an unlinked file's memory
    alive through its own mapping."""
    pool = SegmentPool(SESSION, 64 * MB, directory=shm, warm=True)
    try:
        assert pool.give(segment(shm, "a", 2 * MB, 1), 2 * MB)
        assert pool.give(segment(shm, "b", 2 * MB, 2), 2 * MB)
        poll_for(lambda: pool.warmed == 2, what="both pooled files mapped ahead")
        mappings = list(pool._mapped.values())
        assert pool.evict(2 * MB) == 2 * MB  # the oldest goes
        assert sum(m.closed for m in mappings) == 1 and len(pool._mapped) == 1
    finally:
        pool.close()
    assert all(m.closed for m in mappings) and pool._mapped == {}
    assert pooled(shm) == []
    assert pool._warmer is not None and not pool._warmer.is_alive()


def test_a_file_smaller_than_asked_comes_without_a_mapping(shm: Path) -> None:
    pool = SegmentPool(SESSION, 64 * MB, directory=shm, warm=True)
    try:
        assert pool.give(segment(shm, "small", 2 * MB, 3), 2 * MB)
        poll_for(lambda: pool.warmed == 1, what="the pooled file mapped ahead")
        taken = pool.take_mapped(str(shm / "big"), 3 * MB)  # the biggest smaller one
        assert taken is not None
        fd, mapping = taken
        os.close(fd)
        assert mapping is None  # its tail is not mapped: the sink maps what it needs
        assert os.path.getsize(shm / "big") == 3 * MB
    finally:
        pool.close()


def test_warm_must_be_a_bool(shm: Path) -> None:
    with pytest.raises(TypeError, match="warm must be a bool"):
        SegmentPool(SESSION, MB, directory=shm, warm="yes")  # type: ignore[arg-type]
