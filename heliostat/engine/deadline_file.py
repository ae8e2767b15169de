"""A deadline in a small file: one process publishes it, others on the machine read it.

The file holds one float, a ``time.monotonic()`` moment (``CLOCK_MONOTONIC``: one
clock for every process of a machine, immune to changes of the wall clock), rewritten
in place with one 8-byte ``pwrite`` so a reader never sees half of one. A file that is
gone, short or unreadable reads as 0: long past.

Durable workflows publish their lease deadline this way for the workers that run their
non-idempotent steps (``workflows/beacon.py``); a node that runs such a step for a
driver on another machine keeps a local copy up to date (``engine/beacon_mirror.py``).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading

__all__ = ["DeadlineFile", "read_deadline"]

_FORMAT = struct.Struct("<d")  # one float: the deadline, in time.monotonic() seconds


class DeadlineFile:
    """The publishing side: one file, rewritten in place with each new deadline.

    Args:
        path: where (its directory is created, private, if missing).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        self._closed = False

    def publish(self, deadline: float) -> None:
        """Publish ``deadline`` (``time.monotonic()`` seconds)."""
        with self._lock:
            if not self._closed:  # 8 bytes at offset 0: one write, never seen torn
                os.pwrite(self._fd, _FORMAT.pack(deadline), 0)

    def close(self) -> None:
        """Remove the file: readers see a deadline long past."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def read_deadline(path: str) -> float:
    """The deadline a file holds; 0 (long past) if it is gone or unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(_FORMAT.size)
    except OSError:
        return 0.0
    if len(data) != _FORMAT.size:
        return 0.0
    return float(_FORMAT.unpack(data)[0])
