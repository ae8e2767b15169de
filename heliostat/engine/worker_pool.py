"""Starting and stopping worker processes through the fork server.

:class:`ForkServerClient` owns the fork server process (see ``forkserver.py``): it
starts it without waiting for it (``init`` returns while the server still imports
numpy), asks it for workers, and reads its ``spawned`` / ``exited`` events from a pipe
the node manager's I/O loop watches.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from typing import Any

__all__ = ["ForkEvent", "ForkServerClient"]

# Imported by the fork server before it forks anything, so workers start warm.
PRELOAD = ["cloudpickle", "numpy", "heliostat.engine.worker"]

ForkEvent = tuple[str, int, int]  # ("spawned", index, pid) or ("exited", pid, code)


class ForkServerClient:
    """The node manager's handle on its fork server."""

    def __init__(self, config: dict[str, Any], env: dict[str, str]) -> None:
        self._config = dict(config)
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self.events_fd = -1
        self._pending = b""

    def start(self) -> None:
        """Start the fork server; returns at once (it imports in the background)."""
        events_r, events_w = os.pipe()
        os.set_blocking(events_r, False)
        config = dict(self._config, event_fd=events_w, preload=PRELOAD)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "heliostat.engine.forkserver", json.dumps(config)],
                stdin=subprocess.PIPE,
                pass_fds=(events_w,),
                env=self._env,
                close_fds=True,
            )
        finally:
            os.close(events_w)
        self.events_fd = events_r

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def spawn(self, index: int) -> None:
        """Ask for a new worker with this index (asynchronously)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ValueError):
            proc.stdin.write(f"spawn {index}\n".encode())
            proc.stdin.flush()

    def read_events(self) -> list[ForkEvent]:
        """Events available now (never blocks). An empty read at EOF returns []."""
        try:
            data = os.read(self.events_fd, 65536)
        except BlockingIOError:
            return []
        if not data:
            return []
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        events: list[ForkEvent] = []
        for line in lines:
            parts = line.split()
            if len(parts) == 3:
                events.append((parts[0].decode(), int(parts[1]), int(parts[2])))
        return events

    def stop(self, timeout: float = 5.0) -> None:
        """Close the fork server's stdin (it then kills its workers and cleans up)."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self.events_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.events_fd)
            self.events_fd = -1
