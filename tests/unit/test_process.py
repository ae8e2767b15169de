"""Process liveness as heliostat's checks mean it: a zombie has exited."""

from __future__ import annotations

import os
import subprocess
import sys

from heliostat._process import process_running


def test_this_process_runs() -> None:
    assert process_running(os.getpid())


def test_no_pid_of_ours_is_zero_or_negative() -> None:
    assert not process_running(0)
    assert not process_running(-1)


def test_an_exited_child_runs_neither_before_nor_after_it_is_reaped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # a zombie now
        assert not process_running(proc.pid)
    finally:
        proc.wait()
    assert not process_running(proc.pid)
