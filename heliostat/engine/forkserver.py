"""The fork server: a small process that forks workers on request.

Started by the node manager as ``python -m heliostat.engine.forkserver CONFIG``. It
imports the heavy modules once (cloudpickle, numpy when installed, the worker code),
then forks a worker in about a millisecond whenever asked. Forking from here rather
than from the driver matters: the driver has threads (forking a threaded process can
copy a held lock into the child) and may hold gigabytes the workers must not inherit.

Protocol, one line per message:

* stdin (from the node manager): ``spawn INDEX``.
* the event pipe (to the node manager): ``spawned INDEX PID`` and ``exited PID CODE``
  (CODE is the exit code, or minus the signal number).

Fate sharing: when stdin reaches end of file (the node manager shut down, or its
process died, even by SIGKILL) the fork server kills every worker it forked, removes the
session's shared-memory segments, spill files and socket directory, and exits. Workers
also die with the fork server (``PR_SET_PDEATHSIG``), so nothing outlives the session.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import json
import os
import select
import shutil
import signal
import sys
from typing import Any

__all__ = ["main"]


def _preload(modules: list[str]) -> None:
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            pass


def _write_event(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, line.encode() + b"\n")


def _reap(children: set[int], event_fd: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _write_event(event_fd, f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def _cleanup(children: set[int], config: dict[str, Any]) -> None:
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    for path in glob.glob(config["shm_glob"]):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for directory in config["cleanup_dirs"]:
        shutil.rmtree(directory, ignore_errors=True)


def _spawn(index: int, config: dict[str, Any], wake_r: int, wake_w: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # Child: become a worker. Never return into the fork server's loop.
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (wake_r, wake_w, config["event_fd"]):
            with contextlib.suppress(OSError):
                os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        from heliostat.engine.worker import run_worker

        code = run_worker(config, index)
    except BaseException:  # the worker's last resort: report and leave
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def main(argv: list[str]) -> None:
    config = json.loads(argv[1])
    event_fd: int = config["event_fd"]
    _preload(config.get("preload", []))
    # What the workers inherit from here (the preloaded modules) lives as long as they
    # do: frozen, a worker's full collections never walk it (nor write to its pages,
    # which fork shares until written).
    gc.freeze()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle

    children: set[int] = set()
    pending = b""
    while True:
        try:
            ready, _, _ = select.select([0, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            _reap(children, event_fd)
        if 0 in ready:
            data = os.read(0, 65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                parts = line.split()
                if len(parts) == 2 and parts[0] == b"spawn":
                    index = int(parts[1])
                    pid = _spawn(index, config, wake_r, wake_w)
                    children.add(pid)
                    _write_event(event_fd, f"spawned {index} {pid}")
    _cleanup(children, config)


if __name__ == "__main__":
    main(sys.argv)
