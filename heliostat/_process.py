"""Whether a process still runs, as heliostat's liveness checks mean it.

``psutil.pid_exists`` answers True for a zombie: a process that has exited but whose
parent has not reaped it yet. A daemon's parent may be an init that reaps only now and
then, and a driver killed under a test runner stays a zombie until the runner waits
for it, so a check that trusts ``pid_exists`` would keep a dead driver's lease, files
or beacon alive. Every liveness check in heliostat goes through :func:`process_running`.
"""

from __future__ import annotations

import psutil

__all__ = ["process_running"]


def process_running(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (a zombie has; pid 0 and
    negative pids name no process of ours)."""
    if pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process: it exists, and is not ours to judge
