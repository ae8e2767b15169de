"""An object's bytes as files: served from a node's segment, pulled into a new one.

Both ends of a transfer (:mod:`heliostat.cluster.transfer`) deal in files under
``/dev/shm``: a node serves an object from the segment (or spill file) that holds it
(:func:`segment_object`), and a node that pulls one writes it into a new segment of its
own (:class:`SegmentSink`), which its readers then map zero-copy as if the object had
been made there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["SegmentSink", "SourceObject", "map_populated", "open_locked", "segment_object"]

# A pooled segment as ``(path, size) -> (descriptor, mapping or None) or None``: see
# ``SegmentSink`` (``heliostat.engine.shm.SegmentPool.take_mapped`` is one).
Reuse = Callable[[str, int], "tuple[int, mmap.mmap | None] | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceObject:
    """An object's bytes as its node stores them, ready to be served.

    ``file``, when given, is an open file whose whole content is ``data``: the direct
    data port then sends from it with ``sendfile`` (the kernel moves the pages; no copy
    in this process). ``release`` is called once every stream is done with the object
    (unpin, unmap, close).
    """

    data: memoryview
    is_error: bool = False
    file: BinaryIO | None = None
    release: Callable[[], None] | None = None


class SegmentSink:
    """Pulled objects into new files (shared-memory segments), one per object.

    ``path_for(object_id)`` names the file (``/dev/shm/heliostat-{session}-{id}``, as
    the node's own objects); the file is created exclusively and private (0600), and
    unlinked again on abort. ``commit`` returns the path. Pieces are written with
    ``pwrite``, which copies in the kernel without the GIL and fills tmpfs pages
    without a page fault each (twice as fast as writing through a fresh mapping).
    Thread-safe: pulls of different objects, and streams of one, run at once.

    ``reuse``, when given, is asked first for a file that already has pages (a freed
    segment kept by a :class:`heliostat.engine.shm.SegmentPool`), renamed to the path
    and cut to the size: filling existing tmpfs pages skips allocating and zeroing a
    page per 4 KiB. Its old bytes are overwritten before ``commit`` (a pull commits
    only once every byte arrived), so no reader sees them. Such a file is also offered
    as a :meth:`region`, so that a socket can fill its pages directly: through the
    mapping ``reuse`` handed out with it when there is one (its page tables filled
    ahead), else through a mapping of each region made then.
    """

    def __init__(self, path_for: Callable[[int], str], *, reuse: Reuse | None = None) -> None:
        self._path_for = path_for
        self._reuse = reuse
        self._open: dict[int, _Open] = {}
        self._lock = threading.Lock()

    def begin(self, object_id: int, size: int, is_error: bool) -> None:
        path = self._path_for(object_id)
        reused = self._reuse(path, size) if self._reuse is not None else None
        if reused is not None:
            fd, mapping = reused
            try:
                _allocate(fd, size)
            except BaseException:
                os.close(fd)
                if mapping is not None:
                    mapping.close()
                os.unlink(path)
                raise
            with self._lock:
                self._open[object_id] = _Open(path, fd, size, mapped=True, mapping=mapping)
            return
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        with self._lock:
            self._open[object_id] = _Open(path, fd, size, mapped=False)

    @contextlib.contextmanager
    def region(self, object_id: int, offset: int, length: int) -> Iterator[memoryview | None]:
        """``[offset, offset+length)`` of the object as a writable mapping whose pages
        are all there already, to receive into; None when ``write`` is the faster way.

        Only a reused file is mapped: its pages exist (:func:`_allocate` made sure), so
        the mapping is populated up front (``MAP_POPULATE``: about 0.1 s per GiB) and
        then filled at memory speed, where a fresh file's pages would each be
        allocated by a page fault (half the speed of ``pwrite``). The mapping is gone
        when the block ends.
        """
        entry = self._open[object_id]
        if not entry.mapped or length == 0:
            yield None
            return
        if offset < 0 or offset + length > entry.size:
            raise ValueError(
                f"[{offset}, {offset + length}) is outside the object's {entry.size} bytes"
            )
        if entry.mapping is not None:  # mapped ahead, whole
            with memoryview(entry.mapping) as whole, whole[offset : offset + length] as window:
                yield window
            return
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapping = map_populated(entry.fd, offset + length - start, offset=start)
        try:
            with memoryview(mapping) as view:
                with view[offset - start :] as window:
                    yield window
        finally:
            mapping.close()

    def write(self, object_id: int, offset: int, data: memoryview) -> None:
        fd = self._open[object_id].fd
        view = data
        while view.nbytes:  # pwrite may write less than asked
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def _close(self, object_id: int) -> str:
        with self._lock:
            entry = self._open.pop(object_id)
        os.close(entry.fd)
        if entry.mapping is not None:
            entry.mapping.close()
        return entry.path

    def commit(self, object_id: int) -> str:
        return self._close(object_id)

    def abort(self, object_id: int) -> None:
        path = self._close(object_id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# Linux maps the pages in the mmap call itself; elsewhere they come by page faults.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_MADV_POPULATE_WRITE = 23  # Linux 5.14 and later
_POPULATE_STEP = 32 << 20
_madvise: Callable[[int, int, int], int] | None = None
_madvise_works = sys.platform == "linux"


def _libc_madvise() -> Callable[[int, int, int], int]:
    global _madvise
    if _madvise is None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _madvise = fn
    return _madvise


def map_populated(fd: int, length: int, *, offset: int = 0) -> mmap.mmap:
    """A writable shared mapping of ``[offset, offset+length)`` of ``fd`` whose page
    tables are filled, *without holding the GIL* while the kernel fills them.

    ``mmap(..., MAP_POPULATE)`` fills them inside the call, and CPython holds the GIL
    for all of it: 0.1 to 0.35 s per GiB during which no other thread of the process
    runs (a node's scheduler, its peer streams, the other streams of the same pull).
    Here the mapping is made bare and then filled by ``madvise(MADV_POPULATE_WRITE)``
    called through ctypes, which lets go of the GIL for a foreign call. A kernel older
    than 5.14 lacks that advice: then ``MAP_POPULATE`` it is, as before.
    """
    global _madvise_works
    if _madvise_works:
        mapping = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, offset=offset)
        if length == 0:
            return mapping
        anchor = ctypes.c_char.from_buffer(mapping)
        address = ctypes.addressof(anchor)
        del anchor  # the buffer export ends here: the mapping can be closed later
        madvise = _libc_madvise()
        err = 0
        for start in range(0, length, _POPULATE_STEP):
            # A step at a time: the process's memory map lock is let go between steps,
            # so that another thread's mmap (an allocator's) does not wait for it all.
            if madvise(address + start, min(_POPULATE_STEP, length - start), _MADV_POPULATE_WRITE):
                err = ctypes.get_errno()
                break
        if not err:
            return mapping
        mapping.close()
        if err != errno.EINVAL:  # no memory, say: as an mmap of its own would fail
            raise OSError(err, f"populating a mapping of {length} bytes: {os.strerror(err)}")
        _madvise_works = False  # an older kernel: fall back for good
    return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | _POPULATE, offset=offset)


@dataclass(frozen=True, slots=True)
class _Open:
    """A pull's file while it is written."""

    path: str
    fd: int
    size: int
    mapped: bool  # offered as a region (its pages exist)
    mapping: mmap.mmap | None = None  # the whole file, mapped ahead (a warm pool's)


def _allocate(fd: int, size: int) -> None:
    """Give every page of the file's first ``size`` bytes memory now, if some lack it.

    A reused file may be smaller than the object (the pool's best fit) or have holes;
    writing through a mapping into a page tmpfs cannot find memory for kills the
    process with SIGBUS, where ``fallocate`` fails cleanly (ENOSPC) here, before any
    byte moves. A file with all its pages costs one ``fstat``.
    """
    if size and os.fstat(fd).st_blocks * 512 < size:
        os.posix_fallocate(fd, 0, size)


def open_locked(path: str, flags: int = os.O_RDONLY) -> int:
    """Open a segment (or spill file) and take a shared ``flock`` on it.

    The lock lasts as long as the open file does, including any mapping made from it,
    and keeps a segment pool (:class:`heliostat.engine.shm.SegmentPool`) from reusing
    the file meanwhile. A file renamed into the pool between the open and the lock is
    reported as gone.

    Raises:
        FileNotFoundError: the file is gone (freed, spilled or pooled).
    """
    fd = os.open(path, flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not _same_file(os.fstat(fd), path):
            raise FileNotFoundError(2, "segment freed while it was opened", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_file(st: os.stat_result, path: str) -> bool:
    try:
        at = os.stat(path)
    except FileNotFoundError:
        return False
    return (at.st_ino, at.st_dev) == (st.st_ino, st.st_dev)


def segment_object(path: str, *, is_error: bool = False) -> SourceObject:
    """Serve a segment (or spill file): mapped read-only, kept open for ``sendfile``,
    unmapped and closed when released.

    Raises:
        FileNotFoundError: the file is gone (the object was freed meanwhile).
    """
    file = os.fdopen(open_locked(path), "rb")
    try:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            file.close()
            return SourceObject(data=memoryview(b""), is_error=is_error)
        mapping = mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ)
    except BaseException:
        file.close()
        raise
    view = memoryview(mapping)

    def release() -> None:
        view.release()
        mapping.close()
        file.close()

    return SourceObject(data=view, is_error=is_error, file=file, release=release)
