"""Shared-memory segments: one file under ``/dev/shm`` per large object.

Why one file per object rather than one big arena (Plasma's choice): the kernel does
the allocation, freeing is ``unlink`` (a reader that still maps the segment keeps its
pages until its views die, so freeing never pulls memory from under a live numpy
array), and a crashed process leaks nothing that a glob on the session prefix cannot
find. The cost is a page-table fill the first time a process maps a segment. Readers
map lazily: a read fault maps 16 pages at once (the kernel's fault-around), so touching
every page of a GiB costs about what ``MAP_POPULATE`` does (60 to 90 ms), while a task
that reads a slice or one byte of a big array pays for those pages only. Each process
keeps its mappings in a :class:`MappingCache` until the object is freed, so a worker
that reads the same array twice maps it once.

Segment names: ``/dev/shm/heliostat-{session}-{object id hex}``. Spilled objects are
plain files under the session's spill directory with the same layout.

Reusing freed segments (:class:`SegmentPool`): a new tmpfs file costs a page
allocation and zeroing for every 4 KiB written, which bounds how fast a pulled object
can land. A node in a cluster therefore keeps some freed segments (bounded bytes,
``heliostat-{session}-pool-{n}``) and hands one to the next pull that needs a segment
of about that size, with its pages already there. A freed segment may still be mapped
(a numpy array outlives its ref), so every process that maps a segment holds a shared
``flock`` on it for as long as the mapping lives (the kernel keeps the lock with the
mapping, even after the descriptor is closed), and the pool reuses a file only when it
can take the lock exclusively: a reader never sees its bytes change under it.

A pool made with ``warm=True`` also maps each pooled file writable, with its page
tables filled (``MAP_POPULATE``), on a thread of its own while the file waits in the
pool, and hands that mapping out with the file (:meth:`SegmentPool.take_mapped`): a
pull then receives straight into it without paying the page-table fill (about 0.1 s
per GiB) on its own time. A pooled file's mapping is closed when the file leaves the
pool in any other way (evicted, the pool closed), so the pool never holds on to the
memory of a file it unlinked. The page tables are filled with the GIL let go
(:func:`heliostat.cluster.segments.map_populated`), so the node's other threads run
meanwhile. The pool's own mapping takes no ``flock``: it never keeps a file from being
handed out.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import mmap
import os
import threading
from pathlib import Path

from heliostat.cluster.segments import map_populated, open_locked
from heliostat.engine.ids import format_id
from heliostat.engine.serialization import SerializedValue

__all__ = [
    "SHM_DIR",
    "MappingCache",
    "SegmentPool",
    "create_segment",
    "map_readonly",
    "segment_path",
    "session_glob",
    "unlink_quietly",
    "write_segment",
]

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")

log = logging.getLogger("heliostat.engine")


def segment_path(session: str, object_id: int) -> str:
    """Where the segment of ``object_id`` lives for this session."""
    return f"{SHM_DIR}/heliostat-{session}-{format_id(object_id)}"


def session_glob(session: str) -> str:
    """A glob matching every segment of a session (used by cleanup)."""
    return f"heliostat-{session}-*"


def create_segment(path: str, value: SerializedValue) -> mmap.mmap:
    """Write ``value`` into a new segment at ``path`` and return a read-only mapping
    of it (for the creator's own reads; pages fault in as they are read).

    The segment is created exclusively (an existing file is an error: ids are unique).
    """
    fd = _write(path, value)
    try:
        return mmap.mmap(fd, max(value.total_size, 1), prot=mmap.PROT_READ)
    except BaseException:
        unlink_quietly(path)
        raise
    finally:
        os.close(fd)


def write_segment(path: str, value: SerializedValue) -> None:
    """Write ``value`` into a new segment at ``path``, not mapping it here."""
    os.close(_write(path, value))


def _write(path: str, value: SerializedValue) -> int:
    """A new segment at ``path`` holding ``value``: its open descriptor, with a shared
    ``flock`` (kept by any mapping made from it: see :class:`SegmentPool`).

    Written with ``pwrite`` (:meth:`SerializedValue.write_to_file`), about three times
    faster for a fresh tmpfs file than copying through a new mapping, which takes a page
    fault for every 4 KiB.
    """
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.ftruncate(fd, max(value.total_size, 1))
        value.write_to_file(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    return fd


def map_readonly(path: str) -> mmap.mmap:
    """Map an existing segment (or spill file) read-only; pages map as they are read."""
    fd = open_locked(path)
    try:
        size = os.fstat(fd).st_size
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove a segment or spill file; a file already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class SegmentPool:
    """Freed segments kept, up to ``capacity`` bytes, to be reused as new segments.

    ``give`` renames a freed segment into the pool (or refuses: too small, too big, the
    pool closed). ``take`` hands out a pooled file under a new segment name, cut to the
    size asked, with the pages it already had; only a file that nothing maps any more
    (its exclusive ``flock`` can be taken) is handed out, and its old bytes stay only
    until the new owner overwrites them (a segment is read only once fully written).
    ``evict`` unlinks pooled files to give memory back (the object table counts pooled
    bytes against the store's limit and evicts them before it spills anything).

    Thread-safe. Files are named ``heliostat-{session}-pool-{n}``, so the session's
    cleanup (which removes ``heliostat-{session}-*``) removes them too; ``close``
    removes them at once.
    """

    # Smaller segments are cheap to make fresh; not worth a rename each.
    MIN_BYTES = 1 << 20

    def __init__(
        self,
        session: str,
        capacity: int,
        *,
        directory: str | Path = SHM_DIR,
        warm: bool = False,
    ) -> None:
        if not isinstance(warm, bool):
            raise TypeError(f"warm must be a bool, got {warm!r}")
        self.capacity = max(0, capacity)
        self._prefix = f"{directory}/heliostat-{session}-pool-"
        self._files: dict[str, int] = {}  # pooled path -> size, oldest first
        self._bytes = 0
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self.reused = 0  # files handed out again, ever
        self.reused_bytes = 0
        # Warm mappings (see the module docstring): pooled path -> populated mapping,
        # made by the warming thread from the paths queued for it.
        self._warm = warm
        self._mapped: dict[str, mmap.mmap] = {}
        self._to_warm: list[str] = []
        self._warming = threading.Condition(self._lock)
        self._warmer: threading.Thread | None = None
        self.warmed = 0  # pooled files mapped ahead, ever

    @property
    def bytes(self) -> int:
        """Bytes of the files in the pool (their sizes)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._files)

    def give(self, path: str, size: int) -> bool:
        """Keep the freed segment at ``path`` (``size`` bytes) for reuse.

        Returns False when the pool does not take it: the caller then unlinks it. Older
        pooled files are unlinked to make room for it.
        """
        if size < self.MIN_BYTES or size > self.capacity:
            return False
        victims: list[str] = []
        with self._lock:
            if self._closed:
                return False
            target = f"{self._prefix}{next(self._names)}"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return False
            while self._files and self._bytes + size > self.capacity:
                old = next(iter(self._files))
                self._bytes -= self._files.pop(old)
                victims.append(old)
            self._files[target] = size
            self._bytes += size
            if self._warm:
                self._to_warm.append(target)
                self._start_warmer()
                self._warming.notify()
        self._let_go(victims)
        return True

    def take(self, path: str, size: int) -> int | None:
        """A pooled file renamed to ``path`` and cut to ``size`` bytes, as an open
        read-write descriptor (the caller closes it); None if no pooled file fits
        (see :meth:`take_mapped`)."""
        taken = self.take_mapped(path, size)
        if taken is None:
            return None
        fd, mapping = taken
        if mapping is not None:
            mapping.close()
        return fd

    def take_mapped(self, path: str, size: int) -> tuple[int, mmap.mmap | None] | None:
        """A pooled file renamed to ``path`` and cut to ``size`` bytes: an open
        read-write descriptor and, from a warm pool, a writable mapping of at least
        ``size`` bytes with its page tables filled (None when it is not ready, or the
        file was smaller); the caller closes both. None if no pooled file fits.

        A fit is the smallest file of at least ``size`` bytes but not over twice that
        (a far bigger file is kept for a bigger object), else the biggest smaller one
        (its pages still serve the start). Files some process still maps are skipped.

        Raises:
            FileExistsError: ``path`` exists already (as ``O_EXCL`` would).
        """
        if size < self.MIN_BYTES:
            return None
        with self._lock:
            if self._closed or not self._files:
                return None
            bigger = sorted((s, p) for p, s in self._files.items() if size <= s <= 2 * size)
            smaller = sorted(((s, p) for p, s in self._files.items() if s < size), reverse=True)
            for pooled_size, pooled in bigger + smaller:
                fd = self._claim(pooled)
                if fd is None:
                    continue
                del self._files[pooled]
                self._bytes -= pooled_size
                mapping = self._mapped.pop(pooled, None)
                break
            else:
                return None
        try:
            try:
                os.link(pooled, path)
            finally:
                unlink_quietly(pooled)
            os.ftruncate(fd, size)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            if mapping is not None:
                mapping.close()
            raise
        if mapping is not None and len(mapping) < size:  # a smaller file: grown since
            mapping.close()
            mapping = None
        self.reused += 1
        self.reused_bytes += min(size, pooled_size)
        return fd, mapping

    def _claim(self, pooled: str) -> int | None:
        """Open a pooled file with an exclusive lock, or None (mapped, or gone)."""
        try:
            fd = os.open(pooled, os.O_RDWR)
        except FileNotFoundError:
            self._bytes -= self._files.pop(pooled)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def evict(self, nbytes: int) -> int:
        """Unlink pooled files (oldest first) until ``nbytes`` are freed, or the pool is
        empty; returns the bytes freed."""
        victims: list[str] = []
        freed = 0
        with self._lock:
            while self._files and freed < nbytes:
                old = next(iter(self._files))
                size = self._files.pop(old)
                self._bytes -= size
                freed += size
                victims.append(old)
        self._let_go(victims)
        if victims:
            log.debug("segment pool: evicted %d file(s), %d bytes", len(victims), freed)
        return freed

    def close(self) -> None:
        """Unlink every pooled file; the pool takes nothing more."""
        with self._lock:
            self._closed = True
            self._warming.notify_all()
            warmer = self._warmer
        if warmer is not None:
            warmer.join(timeout=5)
        self.evict(1 << 62)

    def _let_go(self, victims: list[str]) -> None:
        """Unlink files that left the pool, and close their warm mappings."""
        with self._lock:
            mappings = [m for v in victims if (m := self._mapped.pop(v, None)) is not None]
        for mapping in mappings:
            mapping.close()
        for victim in victims:
            unlink_quietly(victim)

    # --- warming (under self._lock where it says so) ---

    def _start_warmer(self) -> None:
        """Start the warming thread, once (under the lock)."""
        if self._warmer is None:
            self._warmer = threading.Thread(
                target=self._warm_loop, name="hs-pool-warm", daemon=True
            )
            self._warmer.start()

    def _warm_loop(self) -> None:
        while True:
            with self._lock:
                while not self._to_warm and not self._closed:
                    self._warming.wait()
                if self._closed:
                    return
                path = self._to_warm.pop(0)
                size = self._files.get(path)
            if size is not None:
                self._warm_one(path, size)

    def _warm_one(self, path: str, size: int) -> None:
        """Map one pooled file with its page tables filled, if it is still pooled."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return  # taken or evicted meanwhile
        try:
            if os.fstat(fd).st_size != size:
                return
            mapping = map_populated(fd, size)
        except OSError as exc:  # no address space, say: the pull maps it then
            log.debug("segment pool: could not map %s ahead: %s", path, exc)
            return
        finally:
            os.close(fd)
        with self._lock:
            if self._files.get(path) == size and not self._closed:
                self._mapped[path] = mapping
                self.warmed += 1
                return
        mapping.close()  # it left the pool while being mapped

    def stats(self) -> dict[str, int]:
        return {
            "pool_bytes": self._bytes,
            "pool_files": len(self._files),
            "pool_reused": self.reused,
            "pool_reused_bytes": self.reused_bytes,
            "pool_warmed": self.warmed,
        }


class MappingCache:
    """The segments this process has mapped, keyed by object id.

    A mapping stays cached until the node manager says the object was freed or
    spilled (``drop``). Dropping only forgets the mapping: values built on it keep it
    alive through their buffer references, and the kernel frees the pages when the
    last one dies.
    """

    def __init__(self) -> None:
        self._maps: dict[int, memoryview] = {}
        self._lock = threading.Lock()

    def get(self, object_id: int) -> memoryview | None:
        return self._maps.get(object_id)

    def open(self, object_id: int, path: str) -> memoryview:
        """Map ``path`` (read-only) and cache it under ``object_id``.

        Raises:
            FileNotFoundError: the segment is gone (freed, spilled or lost).
        """
        view = self._maps.get(object_id)
        if view is not None:
            return view
        view = memoryview(map_readonly(path))
        with self._lock:
            return self._maps.setdefault(object_id, view)

    def adopt(self, object_id: int, mapping: mmap.mmap) -> memoryview:
        """Cache a mapping this process created itself (a put), as a read-only view."""
        view = memoryview(mapping).toreadonly()
        with self._lock:
            self._maps[object_id] = view
        return view

    def drop(self, object_ids: list[int] | tuple[int, ...]) -> None:
        with self._lock:
            for object_id in object_ids:
                self._maps.pop(object_id, None)

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()

    def __len__(self) -> int:
        return len(self._maps)
