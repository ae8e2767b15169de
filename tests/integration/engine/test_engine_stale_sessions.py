"""Files left by a session whose driver and fork server died together are swept."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from heliostat.engine.runtime import sweep_stale_sessions
from heliostat.engine.shm import SHM_DIR


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_files_of_a_dead_driver_and_keeps_live_ones() -> None:
    dead = f"{_dead_pid():x}-abc123"
    live = f"{os.getpid():x}-def456"
    dead_dir = Path(tempfile.mkdtemp(prefix=f"heliostat-{dead}-"))
    live_dir = Path(tempfile.mkdtemp(prefix=f"heliostat-{live}-"))
    dead_segment = SHM_DIR / f"heliostat-{dead}-{1:020x}"
    live_segment = SHM_DIR / f"heliostat-{live}-{1:020x}"
    dead_segment.write_bytes(b"x")
    live_segment.write_bytes(b"x")
    try:
        removed = sweep_stale_sessions()
        assert dead in removed
        assert live not in removed
        assert not dead_dir.exists() and not dead_segment.exists()
        assert live_dir.exists() and live_segment.exists()
    finally:
        live_segment.unlink(missing_ok=True)
        dead_segment.unlink(missing_ok=True)
        for d in (dead_dir, live_dir):
            if d.exists():
                os.rmdir(d)
