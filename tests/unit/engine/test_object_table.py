"""The object table on its own: counts, holds, pins, freeing, lineage, spill and restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from heliostat.engine.object_table import ObjectEntry, ObjectTable, ObjKind, keeps_lineage
from heliostat.engine.records import TaskKind, TaskSpec, WorkerRecord
from heliostat.scheduler import ResourceSet

SIZE = 1000


class Table:
    """An ObjectTable over temp dirs, recording every unmap it asks for."""

    def __init__(self, tmp_path: Path, limit: int = 10 * SIZE) -> None:
        self.shm_dir = tmp_path / "shm"
        self.shm_dir.mkdir()
        self.spill_dir = tmp_path / "spill"
        self.unmapped: list[int] = []
        self.table = ObjectTable(limit=limit, spill_dir=str(self.spill_dir), unmap=self._unmap)
        self.driver = WorkerRecord(0, pid=1)
        self.worker = WorkerRecord(1, pid=2)

    def _unmap(self, entry: ObjectEntry) -> None:
        self.unmapped.append(entry.id)

    def segment(self, object_id: int, size: int = SIZE) -> str:
        path = self.shm_dir / f"seg-{object_id}"
        path.write_bytes(bytes([object_id % 256]) * size)
        return str(path)

    def put_shm(self, object_id: int, holder: WorkerRecord | None = None, size: int = SIZE):
        entry = self.table.create(object_id, holder or self.driver, None)
        self.table.make_room(size)
        self.table.set_value(entry, ObjKind.SHM, self.segment(object_id, size), size, ())
        return entry

    def put_inline(self, object_id: int, holder: WorkerRecord | None = None, contained=()):
        entry = self.table.create(object_id, holder or self.driver, None)
        self.table.set_value(entry, ObjKind.INLINE, b"value", 5, tuple(contained))
        return entry


@pytest.fixture
def t(tmp_path: Path) -> Table:
    return Table(tmp_path)


def make_spec(arg_ids=(), return_ids=(100,), max_retries=3, kind=TaskKind.NORMAL) -> TaskSpec:
    return TaskSpec(
        task_id=99,
        kind=kind,
        name="step",
        fn_id=b"f",
        args_payload=b"",
        ref_positions=tuple(range(len(arg_ids))),
        arg_ids=tuple(arg_ids),
        contained=(),
        return_ids=tuple(return_ids),
        resources=ResourceSet(),
        max_retries=max_retries,
        retry_exceptions=False,
        owner=0,
    )


# --- counts, holds, pins --------------------------------------------------------------------


def test_create_holds_once_for_the_minting_process(t: Table) -> None:
    entry = t.table.create(1, t.worker, None)
    assert entry.count == 1
    assert entry.kind is ObjKind.PENDING
    assert entry.owner == t.worker.index
    assert t.worker.holds == {1: 1}
    assert t.table.entries[1] is entry


def test_holds_and_releases_are_counted_per_process(t: Table) -> None:
    entry = t.put_inline(1)
    assert t.table.hold(t.worker, 1)
    assert t.table.hold(t.worker, 1)
    assert entry.count == 3
    assert t.worker.holds == {1: 2}
    t.table.release(t.worker, 1)
    assert t.worker.holds == {1: 1}
    t.table.release(t.worker, 1)
    assert 1 not in t.worker.holds
    assert entry.count == 1
    assert t.table.entries[1] is entry


def test_release_without_a_hold_is_ignored(t: Table) -> None:
    entry = t.put_inline(1)
    t.table.release(t.worker, 1)
    t.table.release(t.worker, 1)
    assert entry.count == 1
    assert 1 in t.table.entries


def test_hold_of_a_missing_object_fails(t: Table) -> None:
    assert not t.table.hold(t.worker, 12345)
    assert t.worker.holds == {}


def test_object_is_freed_when_count_reaches_zero(t: Table) -> None:
    t.put_inline(1)
    t.table.pin(1)
    t.table.release(t.driver, 1)
    assert 1 in t.table.entries  # still pinned
    t.table.unpin(1)
    assert 1 not in t.table.entries
    assert t.driver.holds == {}


def test_release_all_drops_every_hold_of_a_process(t: Table) -> None:
    t.put_inline(1)
    t.put_inline(2)
    t.table.hold(t.worker, 1)
    t.table.hold(t.worker, 1)
    t.table.hold(t.worker, 2)
    t.table.release_all(t.worker)
    assert t.worker.holds == {}
    assert t.table.entries[1].count == 1
    assert t.table.entries[2].count == 1


def test_freeing_a_segment_unlinks_it_and_returns_its_memory(t: Table) -> None:
    entry = t.put_shm(1)
    path = Path(entry.path)
    assert path.exists()
    assert t.table.used == SIZE
    t.table.release(t.driver, 1)
    assert not path.exists()
    assert t.table.used == 0
    assert 1 not in t.table.entries
    assert t.unmapped == [1]  # the driver owned it and may have mapped it


def test_freeing_a_worker_owned_segment_unmaps_only_readers(t: Table) -> None:
    entry = t.put_shm(1, holder=t.worker)
    t.table.release(t.worker, 1)
    assert t.unmapped == []  # nobody was sent the path
    entry = t.put_shm(2, holder=t.worker)
    entry.mapped_by = {3}
    t.table.release(t.worker, 2)
    assert t.unmapped == [2]


def test_contained_refs_are_pinned_while_the_container_lives(t: Table) -> None:
    inner = t.put_inline(1)
    t.put_inline(2, contained=(1,))
    assert inner.count == 2
    t.table.release(t.driver, 1)
    assert 1 in t.table.entries
    t.table.release(t.driver, 2)
    assert 2 not in t.table.entries
    assert 1 not in t.table.entries


def test_pending_object_without_lineage_users_is_deleted_at_zero(t: Table) -> None:
    t.table.create(1, t.driver, None)
    t.table.release(t.driver, 1)
    assert 1 not in t.table.entries


def test_pending_object_with_waiters_is_kept_at_zero(t: Table) -> None:
    entry = t.table.create(1, t.driver, None)
    entry.waiters = ["someone"]
    t.table.release(t.driver, 1)
    assert t.table.entries[1] is entry


def test_discard_payload_unlinks_an_unwanted_segment(t: Table) -> None:
    path = t.segment(5)
    t.table.discard_payload(ObjKind.SHM, path)
    assert not Path(path).exists()
    t.table.discard_payload(ObjKind.INLINE, b"x")  # nothing to do


# --- lineage ---------------------------------------------------------------------------------


def test_keeps_lineage_only_for_retryable_normal_tasks() -> None:
    assert keeps_lineage(make_spec())
    assert keeps_lineage(make_spec(max_retries=-1))
    assert not keeps_lineage(make_spec(max_retries=0))
    assert not keeps_lineage(make_spec(kind=TaskKind.ACTOR_CALL))


def _downstream(t: Table, arg_id: int, out_id: int) -> TaskSpec:
    """A task taking ``arg_id`` whose return is ``out_id``, registered as the manager does."""
    spec = make_spec(arg_ids=(arg_id,), return_ids=(out_id,))
    t.table.create(out_id, t.driver, spec)
    t.table.entries[arg_id].lineage_refs += 1
    return spec


def test_lineage_keeps_an_argument_entry_after_its_value_is_freed(t: Table) -> None:
    arg = t.put_shm(1)
    _downstream(t, 1, 2)
    t.table.release(t.driver, 1)
    # The value is gone, the recipe stays.
    assert t.table.entries[1] is arg
    assert arg.kind is ObjKind.FREED
    assert arg.path == ""
    assert t.table.used == 0
    # The downstream object dies: nothing can need the argument any more.
    t.table.set_value(t.table.entries[2], ObjKind.INLINE, b"v", 1, ())
    t.table.release(t.driver, 2)
    assert 2 not in t.table.entries
    assert 1 not in t.table.entries


def test_lineage_release_walks_a_chain(t: Table) -> None:
    t.put_inline(1)
    _downstream(t, 1, 2)
    spec3 = _downstream(t, 2, 3)
    t.table.set_value(t.table.entries[2], ObjKind.INLINE, b"v", 1, ())
    t.table.set_value(t.table.entries[3], ObjKind.INLINE, b"v", 1, ())
    t.table.release(t.driver, 1)
    t.table.release(t.driver, 2)
    assert set(t.table.entries) == {1, 2, 3}
    assert t.table.entries[1].kind is ObjKind.FREED
    assert t.table.entries[2].kind is ObjKind.FREED
    t.table.release(t.driver, 3)
    assert t.table.entries == {}
    assert spec3.live_returns == 0


def test_lineage_of_a_task_with_two_returns_lives_until_both_die(t: Table) -> None:
    t.put_inline(1)
    spec = make_spec(arg_ids=(1,), return_ids=(2, 3))
    for rid in (2, 3):
        t.table.create(rid, t.driver, spec)
        t.table.set_value(t.table.entries[rid], ObjKind.INLINE, b"v", 1, ())
    t.table.entries[1].lineage_refs += 1
    t.table.release(t.driver, 1)
    t.table.release(t.driver, 2)
    assert 1 in t.table.entries
    t.table.release(t.driver, 3)
    assert t.table.entries == {}


def test_task_without_lineage_does_not_keep_its_arguments(t: Table) -> None:
    t.put_inline(1)
    spec = make_spec(arg_ids=(1,), return_ids=(2,), max_retries=0)
    t.table.create(2, t.driver, spec)
    t.table.release(t.driver, 1)
    assert 1 not in t.table.entries


# --- memory: spill and restore ---------------------------------------------------------------


def test_spill_moves_a_segment_to_the_spill_dir(t: Table) -> None:
    entry = t.put_shm(1)
    shm_path = entry.path
    t.table.spill(entry)
    assert entry.kind is ObjKind.SPILLED
    assert not Path(shm_path).exists()
    assert Path(entry.path).parent == t.spill_dir
    assert Path(entry.path).read_bytes() == bytes([1]) * SIZE
    assert t.table.used == 0
    assert t.table.spilled_bytes == SIZE
    assert t.table.spill_count == 1
    assert t.unmapped == [1]


def test_restore_brings_a_spilled_object_back(t: Table) -> None:
    entry = t.put_shm(1)
    t.table.spill(entry)
    spill_path = entry.path
    target = str(t.shm_dir / "restored-1")
    assert t.table.restore(entry, target)
    assert entry.kind is ObjKind.SHM
    assert entry.path == target
    assert Path(target).read_bytes() == bytes([1]) * SIZE
    assert not Path(spill_path).exists()
    assert t.table.used == SIZE
    assert t.table.spilled_bytes == 0
    assert t.table.restore_count == 1


def test_restore_of_a_missing_spill_file_reports_loss(t: Table) -> None:
    entry = t.put_shm(1)
    t.table.spill(entry)
    Path(entry.path).unlink()
    assert not t.table.restore(entry, str(t.shm_dir / "restored-1"))
    assert entry.kind is ObjKind.FREED
    assert t.table.spilled_bytes == 0
    assert t.table.used == 0


def test_going_over_the_limit_spills_least_recently_used(tmp_path: Path) -> None:
    t = Table(tmp_path, limit=3 * SIZE)
    first, second, third = t.put_shm(1), t.put_shm(2), t.put_shm(3)
    assert t.table.spill_count == 0
    t.table.touch(first)  # now 2 is the least recently used
    fourth = t.put_shm(4)
    assert second.kind is ObjKind.SPILLED
    assert {e.kind for e in (first, third, fourth)} == {ObjKind.SHM}
    assert t.table.used == 3 * SIZE
    assert t.table.stats() == {
        "objects": 4,
        "shm_bytes": 3 * SIZE,
        "shm_limit": 3 * SIZE,
        "spilled_bytes": SIZE,
        "spill_count": 1,
        "restore_count": 0,
    }


def test_restore_makes_room_by_spilling_others(tmp_path: Path) -> None:
    t = Table(tmp_path, limit=2 * SIZE)
    first, second = t.put_shm(1), t.put_shm(2)
    t.table.spill(first)
    third = t.put_shm(3)
    assert t.table.used == 2 * SIZE
    assert t.table.restore(first, str(t.shm_dir / "restored-1"))
    assert first.kind is ObjKind.SHM
    assert second.kind is ObjKind.SPILLED  # the least recently used went out
    assert third.kind is ObjKind.SHM
    assert t.table.used <= 2 * SIZE


def test_an_object_larger_than_the_limit_is_kept_alone(tmp_path: Path) -> None:
    t = Table(tmp_path, limit=SIZE)
    small = t.put_shm(1)
    big = t.put_shm(2, size=3 * SIZE)
    assert small.kind is ObjKind.SPILLED
    assert big.kind is ObjKind.SHM


def test_freeing_a_spilled_object_removes_its_file(t: Table) -> None:
    entry = t.put_shm(1)
    t.table.spill(entry)
    spill_path = Path(entry.path)
    t.table.release(t.driver, 1)
    assert not spill_path.exists()
    assert t.table.spilled_bytes == 0
    assert 1 not in t.table.entries


def test_mark_lost_returns_the_memory(t: Table) -> None:
    shm = t.put_shm(1)
    spilled = t.put_shm(2)
    t.table.spill(spilled)
    t.table.mark_lost(shm)
    t.table.mark_lost(spilled)
    assert shm.kind is spilled.kind is ObjKind.FREED
    assert t.table.used == 0
    assert t.table.spilled_bytes == 0
