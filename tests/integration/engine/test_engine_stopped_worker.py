"""Tasks sent ahead to a worker that stopped are taken back and run elsewhere, once.

The node manager sends short tasks ahead to busy workers and, when a CPU goes idle,
asks for them back with a REVOKE. A stopped worker (SIGSTOP, or stuck in native code)
never answers; after a short bound the manager runs the tasks it has not claimed on
other workers, and the stopped worker, once it wakes, must not run them too
(``engine/revokes.py`` states the handshake and why it holds).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

import heliostat as hs


@hs.remote
def hold(pid_file, gate, timeout=60.0):
    """Say which worker runs this, then wait (in Python) until the gate opens."""
    Path(pid_file).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} did not appear")
        time.sleep(0.005)
    return os.getpid()


@hs.remote
def short(task_no, log, seconds):
    time.sleep(seconds)
    with open(log, "a") as f:  # one small O_APPEND write per run: lines never mix
        f.write(f"{task_no} {os.getpid()}\n")
    return task_no


@hs.remote
def meet(directory, parties, timeout=30.0):
    """Return only once ``parties`` tasks run at the same time (one per worker)."""
    Path(directory, str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("the other party never came")
        time.sleep(0.005)
    return os.getpid()


def _runs(log: Path) -> list[tuple[int, int]]:
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]


def test_tasks_queued_behind_a_stopped_worker_run_elsewhere_exactly_once(
    fresh_runtime, tmp_path, wait_for, caplog
) -> None:
    fresh_runtime(num_cpus=2)
    hs.get([short.remote(-1 - i, str(tmp_path / "warmup.log"), 0) for i in range(4)])
    pid_file, gate, log = tmp_path / "pid", tmp_path / "gate", tmp_path / "runs.log"
    long = hold.remote(str(pid_file), str(gate))
    stopped = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="hold"))
    os.kill(stopped, signal.SIGSTOP)
    try:
        # The other worker takes the first; the next ones are sent ahead to both busy
        # workers, the stopped one first.
        n = 8
        with caplog.at_level(logging.WARNING, logger="heliostat.engine"):
            refs = [short.remote(i, str(log), 0.05) for i in range(n)]
            assert hs.get(refs, timeout=30) == list(range(n))
        runs = _runs(log)
        assert sorted(task_no for task_no, _pid in runs) == list(range(n))
        assert stopped not in {pid for _task_no, pid in runs}
        # It was the stopped worker's queue that was taken back, not ordinary stealing.
        assert any(f"worker pid {stopped} did not answer" in r.getMessage() for r in caplog.records)
    finally:
        os.kill(stopped, signal.SIGCONT)
    gate.touch()
    assert hs.get(long, timeout=30) == stopped
    # Both workers at once: the woken one reaches this task only after everything that
    # was in its queue before it, so a task it should not run would have run by now.
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    pids = hs.get([meet.remote(str(meeting), 2) for _ in range(2)], timeout=30)
    assert stopped in pids
    counts = Counter(task_no for task_no, _pid in _runs(log))
    assert counts == Counter(range(n)), "a task ran twice or not at all"
    assert stopped not in {pid for _task_no, pid in _runs(log)}


@hs.remote
def nested_short(task_no, log):
    return hs.get(short.remote(task_no, log, 0))


def test_workers_stopped_at_random_never_run_a_task_twice_or_lose_one(
    fresh_runtime, tmp_path
) -> None:
    rt = fresh_runtime(num_cpus=3)
    log = tmp_path / "runs.log"
    pool = psutil.Process(rt.manager.pool_pid)
    stop = threading.Event()
    rnd = random.Random(7)

    def chaos() -> None:  # fault injection: stop a worker for a while, again and again
        while not stop.is_set():
            workers = pool.children()
            if workers:
                pid = rnd.choice(workers).pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        time.sleep(rnd.choice([0.0005, 0.005, 0.05, 0.3]))
                    finally:
                        os.kill(pid, signal.SIGCONT)
            time.sleep(rnd.random() * 0.01)

    thread = threading.Thread(target=chaos)
    thread.start()
    n = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            refs = [short.remote(n + k, str(log), 0) for k in range(200)]
            refs += [nested_short.remote(n + 200 + k, str(log)) for k in range(5)]
            assert hs.get(refs, timeout=120) == list(range(n, n + 205))
            n += 205
    finally:
        stop.set()
        thread.join()
    counts = Counter(task_no for task_no, _pid in _runs(log))
    assert counts == Counter(range(n)), "a task ran twice or not at all"
