"""Nothing outlives a session: not after shutdown(), not after the driver is SIGKILLed."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil

import heliostat as hs
from heliostat.engine.shm import SHM_DIR

REPO_ROOT = Path(__file__).resolve().parents[3]


def _shm_files(session: str) -> list[str]:
    return glob.glob(os.path.join(str(SHM_DIR), f"heliostat-{session}-*"))


def _session_processes(session: str) -> list[tuple[int, str]]:
    """(pid, command line) of live, non-zombie processes whose command line names the session."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if session in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append((proc.info["pid"], cmdline))
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@hs.remote
def big(n):
    return np.ones(n, dtype=np.uint8)


@hs.remote
class Holder:
    def __init__(self, value) -> None:
        self.value = value

    def pid(self) -> int:
        return os.getpid()


def test_shutdown_leaves_no_files_or_processes(fresh_runtime) -> None:
    runtime = fresh_runtime(object_store_memory=64 << 20)
    session = runtime.session
    holder = Holder.remote(hs.put(np.zeros(300_000, dtype=np.uint8)))
    refs = [big.remote(30 << 20) for _ in range(3)]  # 90 MB > 64 MB: something spills
    hs.get(refs)
    hs.get(holder.pid.remote())
    assert _shm_files(session)
    assert runtime.manager.object_stats()["spill_count"] > 0
    assert os.path.isdir(runtime.session_dir)
    # The runtime's processes: its fork server and what it forked (not every child of
    # this test process: an earlier test may have left one, such as multiprocessing's
    # resource tracker, that lives as long as pytest).
    pool = psutil.Process(runtime.manager.pool_pid)
    children = [pool.pid, *(p.pid for p in pool.children(recursive=True))]
    assert len(children) >= 3  # fork server, task workers, actor
    assert len(_session_processes(session)) >= 3  # fork server, task workers, actor
    del refs, holder

    hs.shutdown()

    assert not hs.is_initialized()
    assert _shm_files(session) == []
    assert _alive(children) == []
    assert _session_processes(session) == []
    assert not os.path.exists(runtime.session_dir)


def test_init_again_after_shutdown_gets_a_new_session(fresh_runtime) -> None:
    first = fresh_runtime()
    assert hs.get(big.remote(10)).sum() == 10
    hs.shutdown()
    second = fresh_runtime()
    assert second.session != first.session
    assert hs.get(big.remote(10)).sum() == 10


def test_shutdown_twice_is_harmless(fresh_runtime) -> None:
    fresh_runtime()
    hs.shutdown()
    hs.shutdown()
    assert not hs.is_initialized()


DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import heliostat as hs

    rt = hs.init(num_cpus=2)

    @hs.remote
    def work(n):
        return np.ones(n, dtype=np.uint8)

    keep = [hs.put(np.zeros(1 << 20, dtype=np.uint8)), work.remote(1 << 20)]
    hs.get(keep)
    print(rt.session, rt.manager.pool_pid, rt.session_dir, flush=True)
    time.sleep(600)
    """
)


def test_driver_killed_with_sigkill_leaves_nothing_behind(wait_for) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the driver exited early (code {proc.poll()})"
        session, pool_pid, session_dir = line.split()
        assert _shm_files(session)
        assert psutil.pid_exists(int(pool_pid))
        workers = [p.pid for p in psutil.Process(int(pool_pid)).children()]
        assert workers

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

        def forkserver_gone() -> bool:
            return not [
                pid
                for pid, cmdline in _session_processes(session)
                if "heliostat.engine.forkserver" in cmdline
            ]

        wait_for(forkserver_gone, what="the session's fork server to exit")
        wait_for(lambda: _alive(workers) == [], what="the session's workers to exit")
        wait_for(
            lambda: _session_processes(session) == [], what="every process of the session to exit"
        )
        wait_for(
            lambda: _shm_files(session) == [], what="the session's /dev/shm files to be removed"
        )
        wait_for(
            lambda: not os.path.exists(session_dir), what="the session directory to be removed"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
