"""Shared-memory segments: one file under ``/dev/shm`` per large object.

Why one file per object rather than one big arena (Plasma's choice): the kernel does
the allocation, freeing is ``unlink`` (a reader that still maps the segment keeps its
pages until its views die, so freeing never pulls memory from under a live numpy
array), and a crashed process leaks nothing that a glob on the session prefix cannot
find. The cost is a page-table fill the first time a process maps a segment; readers
map with ``MAP_POPULATE`` so that cost is paid in one bulk call, and each process keeps
its mappings in a :class:`MappingCache` until the object is freed, so a worker that
reads the same array twice maps it once.

Segment names: ``/dev/shm/heliostat-{session}-{object id hex}``. Spilled objects are
plain files under the session's spill directory with the same layout.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

from heliostat.engine.ids import format_id
from heliostat.engine.serialization import SerializedValue

__all__ = [
    "SHM_DIR",
    "MappingCache",
    "create_segment",
    "map_readonly",
    "segment_path",
    "session_glob",
    "unlink_quietly",
]

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def segment_path(session: str, object_id: int) -> str:
    """Where the segment of ``object_id`` lives for this session."""
    return f"{SHM_DIR}/heliostat-{session}-{format_id(object_id)}"


def session_glob(session: str) -> str:
    """A glob matching every segment of a session (used by cleanup)."""
    return f"heliostat-{session}-*"


def create_segment(path: str, value: SerializedValue) -> mmap.mmap:
    """Write ``value`` into a new segment at ``path`` and return a mapping of it.

    The segment is created exclusively (an existing file is an error: ids are unique)
    and written through a shared mapping, which the caller may keep as its read view.
    """
    size = value.total_size
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(size, 1))
        mapping = mmap.mmap(fd, max(size, 1))
    finally:
        os.close(fd)
    try:
        value.write_into(memoryview(mapping))
    except BaseException:
        mapping.close()
        unlink_quietly(path)
        raise
    return mapping


def map_readonly(path: str) -> mmap.mmap:
    """Map an existing segment (or spill file) read-only, with its pages populated."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove a segment or spill file; a file already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
