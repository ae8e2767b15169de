"""map_populated: a writable shared mapping whose pages are mapped before it returns."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.cluster import segments
from heliostat.cluster.segments import map_populated

SIZE = 8 << 20


@pytest.fixture
def shm_file(tmp_path: Path) -> Iterator[int]:
    """A file of SIZE bytes on a tmpfs (``/dev/shm``: what segments live on)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    path = base / f"hs-test-populated-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        os.posix_fallocate(fd, 0, SIZE)
        yield fd
    finally:
        os.close(fd)
        path.unlink()


def _resident_kib(mapping: mmap.mmap) -> int:
    """The resident size of ``mapping`` in this process, from /proc/self/smaps."""
    anchor = ctypes.c_char.from_buffer(mapping)
    start = ctypes.addressof(anchor)
    del anchor
    found = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(x, 16) for x in head.split("-"))
                found = low <= start < high
            elif found and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("the mapping is not in /proc/self/smaps")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_every_page_is_mapped_before_it_returns_and_it_writes_through(shm_file: int) -> None:
    mapping = map_populated(shm_file, SIZE)
    try:
        assert _resident_kib(mapping) == SIZE >> 10
        mapping[SIZE - 1] = 7
        assert os.pread(shm_file, 1, SIZE - 1) == b"\x07"
    finally:
        mapping.close()


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_a_window_at_an_offset_maps_that_window_only(shm_file: int) -> None:
    offset = 2 * mmap.ALLOCATIONGRANULARITY
    mapping = map_populated(shm_file, SIZE - offset, offset=offset)
    try:
        assert len(mapping) == SIZE - offset
        assert _resident_kib(mapping) == (SIZE - offset) >> 10
        mapping[0] = 9
        assert os.pread(shm_file, 1, offset) == b"\x09"
    finally:
        mapping.close()


def test_a_kernel_without_the_advice_falls_back_to_map_populate(
    shm_file: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux before 5.14 answers EINVAL: the mapping is made with MAP_POPULATE instead,
    and the advice is not tried again."""
    calls: list[int] = []

    def refuse(address: int, length: int, advice: int) -> int:
        calls.append(advice)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(segments, "_madvise_works", True)
    monkeypatch.setattr(segments, "_libc_madvise", lambda: refuse)
    for _ in range(2):
        mapping = map_populated(shm_file, SIZE)
        mapping[0] = 1
        mapping.close()
    assert calls == [segments._MADV_POPULATE_WRITE]
    assert segments._madvise_works is False
