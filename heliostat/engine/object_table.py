"""The node manager's object table: values, reference counts, memory, spilling, lineage.

An :class:`ObjectEntry` is created when its id is minted (a task submitted, a value
put) and deleted when nothing can ever need it again. In between:

* ``count`` is the number of *holds* (processes with a live ref, counted once per
  process by the processes themselves; see ``object_ref.py``) plus *pins* (tasks in
  flight that take it as an argument, values that contain it). At zero the value is
  freed.
* ``lineage_refs`` counts the retained task specs (lineage) of other objects that take
  this one as an argument. While it is above zero the entry outlives its value, as a
  recipe: if a downstream object is lost, this one can be rebuilt first.

Memory: values larger than the inline threshold live in shared-memory segments, and
their sizes add up against ``limit``. Past the limit the least recently used segments
are *spilled*: copied to a file in the spill directory, then unlinked from shared
memory (processes still mapping them keep their pages until their views die). A read
of a spilled object restores it into shared memory first, spilling others if needed.
A spill file that has gone missing makes the object *lost*; the caller then rebuilds
it from lineage or reports :class:`~heliostat.exceptions.ObjectLostError`.

A node in a cluster sets ``pool`` (:class:`~heliostat.engine.shm.SegmentPool`): freed
segments then go there for pulls to reuse instead of being unlinked. Pooled bytes count
against ``limit`` like live ones, and are the first given back when room is needed.

In a cluster a value may live on another node (``REMOTE``): the entry then records
where (:class:`Location`) and takes no memory here until a reader here needs the bytes
and they are pulled (:meth:`ObjectTable.localize`). The node that keeps the value
alive for us is told when the entry is freed or lost (the ``on_remote_drop`` hook,
set by ``peers.py``).

The table does no locking: the node manager calls it under its own lock.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from heliostat.engine.ids import format_id
from heliostat.engine.records import TaskSpec, WorkerRecord
from heliostat.engine.shm import SegmentPool, unlink_quietly

__all__ = ["KIND_OF", "Location", "ObjKind", "ObjectEntry", "ObjectTable"]

log = logging.getLogger("heliostat.engine")


class ObjKind(enum.IntEnum):
    """Where an object's value is. Also the ``kind`` sent to readers."""

    PENDING = 0  # not produced yet (or being rebuilt)
    INLINE = 1  # bytes held in the table
    SHM = 2  # a shared-memory segment at ``path``
    SPILLED = 3  # a file at ``path`` in the spill directory
    ERROR = 4  # a pickled exception to raise at get
    FREED = 5  # value dropped; the entry stays only as lineage
    REMOTE = 6  # on another node (``ObjectEntry.remote``); never sent to a reader


@dataclass(frozen=True, slots=True)
class Location:
    """Where the bytes of a value made on another node are, and who keeps them for us.

    ``source`` is a node whose store holds the bytes: a reader here pulls them from
    there. ``keeper`` is the node that holds a hold on the value on our behalf until we
    send it ``ReleaseAt``: the node that sent us the value (``source`` itself, or a node
    that keeps ``source``'s copy alive in turn).
    """

    source: int
    keeper: int


KIND_OF: tuple[ObjKind, ...] = tuple(ObjKind)
"""``KIND_OF[k]`` is ``ObjKind(k)`` without the enum call (the result path reads one
per value). The kinds are numbered 0, 1, 2... in order."""
assert all(kind == i for i, kind in enumerate(KIND_OF))


class ObjectEntry:
    """One object. Invariant: ``count >= 0``; at zero the value has been freed."""

    __slots__ = (
        "id",
        "kind",
        "payload",
        "path",
        "size",
        "count",
        "lineage",
        "lineage_refs",
        "contained",
        "waiters",
        "owner",
        "mapped_by",
        "error_seen",
        "remote",
    )

    def __init__(self, object_id: int, owner: int, lineage: TaskSpec | None) -> None:
        self.id = object_id
        self.kind = ObjKind.PENDING
        self.payload: bytes | None = None
        self.path = ""
        self.size = 0
        self.count = 0
        self.lineage = lineage
        self.lineage_refs = 0
        self.contained: tuple[int, ...] = ()
        self.waiters: list[Any] | None = None
        self.owner = owner
        self.mapped_by: set[int] | None = None  # worker indexes that were sent the path
        self.error_seen = False  # an ERROR value was handed to a reader (get, a task)
        # Set while a keeper on another node holds the value for us: always when REMOTE,
        # and after a pull of a REMOTE value too (we may have told others where it is).
        self.remote: Location | None = None


class ObjectTable:
    """Objects by id, with memory accounting and spilling. Not thread-safe."""

    def __init__(
        self,
        *,
        limit: int,
        spill_dir: str,
        unmap: Callable[[ObjectEntry], None],
        on_unhandled_error: Callable[[ObjectEntry], None] | None = None,
        unpin_other: Callable[[int], None] | None = None,
    ) -> None:
        self.entries: dict[int, ObjectEntry] = {}
        self.limit = limit
        self.used = 0
        self.spill_dir = spill_dir
        self.spilled_bytes = 0
        self.spill_count = 0
        self.restore_count = 0
        self._lru: OrderedDict[int, ObjectEntry] = OrderedDict()
        self._unmap = unmap
        # Called when an ERROR value no reader ever saw is freed (Ray's "unhandled error").
        self._on_unhandled_error = on_unhandled_error
        # Called when an entry with a ``remote`` location is freed or lost: its keeper
        # may let go (``peers.Peers.let_go``, which clears ``entry.remote``).
        self.on_remote_drop: Callable[[ObjectEntry], None] | None = None
        # A freed value lets go of the ids inside it that are not objects (actors).
        self._unpin_other = unpin_other
        # Freed segments kept for reuse (a node in a cluster sets one: peers.py).
        self.pool: SegmentPool | None = None

    # --- creation and counting -------------------------------------------------------

    def create(self, object_id: int, holder: WorkerRecord, lineage: TaskSpec | None) -> ObjectEntry:
        """A new pending object, held once by ``holder`` (the process that minted it)."""
        entry = ObjectEntry(object_id, holder.index, lineage)
        entry.count = 1
        holds = holder.holds
        holds[object_id] = holds.get(object_id, 0) + 1
        self.entries[object_id] = entry
        return entry

    def hold(self, holder: WorkerRecord, object_id: int) -> bool:
        """Add a hold for ``holder``; False if the object no longer exists."""
        entry = self.entries.get(object_id)
        if entry is None:
            return False
        entry.count += 1
        holds = holder.holds
        holds[object_id] = holds.get(object_id, 0) + 1
        return True

    def release(self, holder: WorkerRecord, object_id: int) -> None:
        """Drop one hold of ``holder`` (ignored if it holds none)."""
        holds = holder.holds
        n = holds.get(object_id, 0)
        if n <= 0:
            return
        if n == 1:
            del holds[object_id]
        else:
            holds[object_id] = n - 1
        self.unpin(object_id)

    def release_all(self, holder: WorkerRecord) -> None:
        """Drop every hold of a process that died or disconnected."""
        holds, holder.holds = holder.holds, {}
        for object_id, n in holds.items():
            for _ in range(n):
                self.unpin(object_id)

    def pin(self, object_id: int) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.count += 1

    def unpin(self, object_id: int) -> None:
        entry = self.entries.get(object_id)
        if entry is None:
            return
        entry.count -= 1
        if entry.count <= 0:
            entry.count = 0
            self._drop_value(entry)

    # --- values ----------------------------------------------------------------------

    def set_value(
        self,
        entry: ObjectEntry,
        kind: ObjKind,
        payload: Any,
        size: int,
        contained: tuple[int, ...],
    ) -> None:
        """Store a produced value: inline bytes, a segment path, or an error payload."""
        for inner in contained:
            self.pin(inner)
        entry.contained = contained
        entry.kind = kind
        entry.size = size
        if kind is ObjKind.SHM:
            entry.path = payload
            entry.payload = None
            self.used += size
            self._lru[entry.id] = entry
            self.make_room(0, keep=entry.id)
        else:
            entry.payload = payload

    def localize(self, entry: ObjectEntry, path: str) -> None:
        """A REMOTE value was pulled into the segment at ``path``: it is local now.

        Its refs inside were pinned when it became REMOTE; the keeper keeps its hold.
        """
        entry.kind = ObjKind.SHM
        entry.path = path
        self.used += entry.size
        self._lru[entry.id] = entry
        self.make_room(0, keep=entry.id)

    def discard_payload(self, kind: ObjKind, payload: Any) -> None:
        """A value arrived for an object nobody references any more: drop it."""
        if kind is ObjKind.SHM:
            unlink_quietly(payload)

    def touch(self, entry: ObjectEntry) -> None:
        if entry.kind is ObjKind.SHM:
            lru = self._lru
            if entry.id in lru:
                lru.move_to_end(entry.id)

    def _drop_value(self, entry: ObjectEntry) -> None:
        """Free the value of an entry whose count reached zero."""
        kind = entry.kind
        if kind is ObjKind.PENDING:
            # Still being computed: nobody wants the result. Keep the entry as a
            # tombstone only if lineage needs it; the result is dropped on arrival.
            if entry.lineage_refs == 0 and not entry.waiters:
                self._delete(entry)
            return
        if kind is ObjKind.SHM:
            self.used -= entry.size
            self._lru.pop(entry.id, None)
            pool = self.pool
            if pool is None or not pool.give(entry.path, entry.size):
                unlink_quietly(entry.path)
            if entry.mapped_by or entry.owner == 0:
                self._unmap(entry)
        elif kind is ObjKind.SPILLED:
            self.spilled_bytes -= entry.size
            unlink_quietly(entry.path)
        elif kind is ObjKind.ERROR and not entry.error_seen:
            if self._on_unhandled_error is not None:
                self._on_unhandled_error(entry)
        if entry.remote is not None and self.on_remote_drop is not None:
            self.on_remote_drop(entry)
        entry.payload = None
        entry.path = ""
        entry.kind = ObjKind.FREED
        contained, entry.contained = entry.contained, ()
        entries = self.entries
        for inner in contained:
            if inner in entries:
                self.unpin(inner)
            elif self._unpin_other is not None:
                self._unpin_other(inner)
        if entry.lineage_refs == 0:
            self._delete(entry)

    def _delete(self, entry: ObjectEntry) -> None:
        """Forget an entry, and release the lineage it kept alive (iteratively)."""
        work = [entry]
        entries = self.entries
        while work:
            e = work.pop()
            if entries.get(e.id) is not e:
                continue
            del entries[e.id]
            spec = e.lineage
            if spec is None:
                continue
            spec.live_returns -= 1
            if spec.live_returns > 0 or not keeps_lineage(spec):
                continue
            for arg_id in spec.arg_ids:
                arg = entries.get(arg_id)
                if arg is None:
                    continue
                arg.lineage_refs -= 1
                if (
                    arg.lineage_refs <= 0
                    and arg.count <= 0
                    and arg.kind
                    in (
                        ObjKind.FREED,
                        ObjKind.PENDING,
                    )
                    and not arg.waiters
                ):
                    work.append(arg)

    # --- memory: spill and restore ---------------------------------------------------

    def make_room(self, incoming: int, *, keep: int = 0) -> None:
        """Give back pooled segments, then spill least recently used ones, until
        ``incoming`` more bytes fit."""
        pool = self.pool
        if pool is not None and pool.bytes:
            excess = self.used + pool.bytes + incoming - self.limit
            if excess > 0:
                pool.evict(excess)
        lru = self._lru
        while self.used + incoming > self.limit and lru:
            victim_id = next(iter(lru))
            if victim_id == keep:
                if len(lru) == 1:
                    return
                lru.move_to_end(victim_id)
                victim_id = next(iter(lru))
            self.spill(lru[victim_id])

    def spill(self, entry: ObjectEntry) -> None:
        """Move one segment to the spill directory."""
        os.makedirs(self.spill_dir, exist_ok=True)
        target = os.path.join(self.spill_dir, format_id(entry.id))
        shutil.copyfile(entry.path, target)
        unlink_quietly(entry.path)
        self._lru.pop(entry.id, None)
        self.used -= entry.size
        self.spilled_bytes += entry.size
        self.spill_count += 1
        old_path = entry.path
        entry.kind = ObjKind.SPILLED
        entry.path = target
        log.debug("spilled %s (%d bytes) from %s", format_id(entry.id), entry.size, old_path)
        self._unmap(entry)

    def restore(self, entry: ObjectEntry, shm_path: str) -> bool:
        """Bring a spilled object back into shared memory; False if its file is gone."""
        self.make_room(entry.size)
        try:
            shutil.copyfile(entry.path, shm_path)
        except FileNotFoundError:
            self.spilled_bytes -= entry.size
            entry.kind = ObjKind.FREED
            entry.path = ""
            return False
        unlink_quietly(entry.path)
        self.spilled_bytes -= entry.size
        self.restore_count += 1
        entry.kind = ObjKind.SHM
        entry.path = shm_path
        self.used += entry.size
        self._lru[entry.id] = entry
        return True

    def mark_lost(self, entry: ObjectEntry) -> None:
        """The value vanished (segment or spill file deleted under us)."""
        if entry.kind is ObjKind.SHM:
            self.used -= entry.size
            self._lru.pop(entry.id, None)
        elif entry.kind is ObjKind.SPILLED:
            self.spilled_bytes -= entry.size
        if entry.remote is not None and self.on_remote_drop is not None:
            self.on_remote_drop(entry)
        entry.kind = ObjKind.FREED
        entry.path = ""

    def stored(self) -> dict[int, int]:
        """The objects this node stores, in shared memory or spilled: id -> bytes."""
        found = {oid: entry.size for oid, entry in self._lru.items()}
        if self.spilled_bytes:  # rare: only then look through every entry
            for oid, entry in self.entries.items():
                if entry.kind is ObjKind.SPILLED:
                    found[oid] = entry.size
        return found

    def stats(self) -> dict[str, int]:
        return {
            "objects": len(self.entries),
            "shm_bytes": self.used,
            "shm_limit": self.limit,
            "spilled_bytes": self.spilled_bytes,
            "spill_count": self.spill_count,
            "restore_count": self.restore_count,
            **(self.pool.stats() if self.pool is not None else {}),
        }


def keeps_lineage(spec: TaskSpec) -> bool:
    """Whether a task's spec is retained so its returns can be rebuilt if lost."""
    return spec.max_retries != 0 and spec.kind == 0


def why_not_rebuilt(spec: TaskSpec | None) -> str:
    """Why a lost value whose lineage is ``spec`` cannot be rebuilt, for its error."""
    if spec is None:
        return (
            "it has no lineage (it was stored by put(), or yielded by an actor method, "
            'a num_returns="dynamic" generator or a generator task with max_retries=0)'
        )
    if spec.kind != 0:
        return (
            f"it was returned by the actor call {spec.name!r}, which is never re-run "
            "(the actor's state has moved on)"
        )
    if spec.max_retries == 0:
        return f"its task {spec.name!r} has max_retries=0"
    return (
        f"its task {spec.name!r} was re-run {spec.reconstructions} times already "
        f"(max_retries={spec.max_retries})"
    )
