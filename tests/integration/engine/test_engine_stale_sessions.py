"""The sweep at ``init()`` removes what dead sessions left, and nothing else.

Each test points the temp dir at a fresh short directory of its own (a Unix socket
path must stay short), so the sweep sees only what the test put there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from heliostat.engine.runtime import SESSION_MARKER, create_session_dir, sweep_stale_sessions
from heliostat.engine.shm import SHM_DIR

REPO_ROOT = Path(__file__).resolve().parents[3]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def temp_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A private temp dir that ``tempfile`` (and so the sweep) uses for this test."""
    # pytest picks its own base temp dir from tempfile on first use: fix it first, or
    # a later test's tmp_path would land in this directory after it is removed.
    tmp_path_factory.getbasetemp()
    root = Path(tempfile.mkdtemp(prefix="hs-sweep-"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def segments() -> Iterator[list[Path]]:
    """Shared-memory files a test makes; removed after it."""
    made: list[Path] = []
    yield made
    for path in made:
        path.unlink(missing_ok=True)


def _segment(made: list[Path], session: str) -> Path:
    path = SHM_DIR / f"heliostat-{session}-{1:020x}"
    path.write_bytes(b"x")
    made.append(path)
    return path


def test_sweep_removes_files_of_a_dead_driver_and_keeps_live_ones(temp_root, segments) -> None:
    dead = f"{_dead_pid():x}-abc123"
    live = f"{os.getpid():x}-def456"
    dead_dir = Path(create_session_dir(dead))
    live_dir = Path(create_session_dir(live))
    dead_segment = _segment(segments, dead)
    live_segment = _segment(segments, live)

    removed = sweep_stale_sessions()

    assert removed == [dead]
    assert not dead_dir.exists() and not dead_segment.exists()
    assert live_dir.exists() and live_segment.exists()


def test_init_keeps_user_directories_that_only_look_like_sessions(
    temp_root, segments, fresh_runtime
) -> None:
    # A user's HELIOSTAT_HOME: its first dash-field parses as a hex pid (0x2026).
    home = temp_root / "heliostat-2026-11-21"
    (home / "checkpoints").mkdir(parents=True)
    (home / "heliostat.db").write_text("the user's database")
    (home / "checkpoints" / "step-1.pkl").write_bytes(b"checkpoint")
    # Named exactly like a session of a dead driver, but heliostat did not make it.
    lookalike_session = f"{_dead_pid():x}-abcdef"
    lookalike = temp_root / f"heliostat-{lookalike_session}-x"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("keep me")
    lookalike_segment = _segment(segments, lookalike_session)
    odd = temp_root / "heliostat-dead-beef-x"
    odd.mkdir()
    (odd / "data").write_text("keep me too")

    rt = fresh_runtime(num_cpus=1)

    assert Path(rt.session_dir).parent == temp_root  # the sweep looked in temp_root
    assert (home / "heliostat.db").read_text() == "the user's database"
    assert (home / "checkpoints" / "step-1.pkl").read_bytes() == b"checkpoint"
    assert (lookalike / "notes.txt").read_text() == "keep me"
    assert lookalike_segment.exists()
    assert (odd / "data").read_text() == "keep me too"


def test_sweep_never_follows_or_deletes_through_a_symlink(temp_root, tmp_path) -> None:
    dead = f"{_dead_pid():x}-abc123"
    # A marked session of a dead driver, but outside the temp dir: only the link to it
    # is where the sweep looks.
    target = Path(create_session_dir(dead, parent=str(tmp_path)))
    (target / "precious").write_text("not the sweep's")
    link = temp_root / f"heliostat-{dead}-link"
    link.symlink_to(target, target_is_directory=True)
    # A real stale session whose contents link out of it.
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    stale = Path(create_session_dir(dead))
    (stale / "escape").symlink_to(outside)
    (stale / "escape-dir").symlink_to(tmp_path, target_is_directory=True)

    assert sweep_stale_sessions() == [dead]

    assert not stale.exists()
    assert link.is_symlink()
    assert (target / "precious").read_text() == "not the sweep's"
    assert (target / SESSION_MARKER).exists()
    assert outside.read_text() == "outside"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_sweep_keeps_a_stale_session_of_another_user(temp_root, segments) -> None:
    other_uid = 54321
    dead = f"{_dead_pid():x}-abc123"
    theirs = Path(create_session_dir(dead))
    os.chown(theirs, other_uid, other_uid)
    segment = _segment(segments, dead)

    assert sweep_stale_sessions() == []
    assert (theirs / SESSION_MARKER).exists()
    assert segment.exists()


DRIVER = textwrap.dedent(
    """
    import os, time
    import numpy as np
    import heliostat as hs

    rt = hs.init(num_cpus=1)
    keep = hs.put(np.zeros(1 << 20, dtype=np.uint8))  # one shared-memory segment
    print(rt.session, rt.manager.pool_pid, rt.session_dir, flush=True)
    time.sleep(600)
    """
)


def _gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _session_segments(session: str) -> list[Path]:
    return sorted(SHM_DIR.glob(f"heliostat-{session}-*"))


def test_init_sweeps_a_session_whose_driver_and_fork_server_were_killed(
    temp_root, fresh_runtime, wait_for
) -> None:
    env = dict(os.environ, TMPDIR=str(temp_root))
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    session = ""
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the driver exited early (code {proc.poll()})"
        session, pool_pid, session_dir = line.split()
        assert Path(session_dir).parent == temp_root
        workers = psutil.Process(int(pool_pid)).children()
        # The fork server first, so nothing is left to clean up after the driver.
        os.kill(int(pool_pid), signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(
            lambda: _gone(workers),
            what="the session's workers to die with their fork server",
        )
        assert Path(session_dir, SESSION_MARKER).exists()  # left behind: stale
        assert _session_segments(session)

        fresh_runtime(num_cpus=1)  # init() sweeps

        assert not os.path.exists(session_dir)
        assert _session_segments(session) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for path in _session_segments(session) if session else []:
            path.unlink(missing_ok=True)


def test_sweep_takes_a_zombie_driver_for_dead(temp_root, segments) -> None:
    """A daemon killed with SIGKILL stays a zombie until its parent (often an init that
    reaps only now and then) collects it; a restart meanwhile must still sweep its
    session, probe file included, instead of taking it for alive."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Wait for it to exit without reaping it (WNOWAIT): it stays a zombie.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
        assert psutil.pid_exists(proc.pid)  # what the sweep used to ask
        zombie = f"{proc.pid:x}-a0b1c2"
        zombie_dir = Path(create_session_dir(zombie))
        probe = SHM_DIR / f"heliostat-{zombie}-probe"
        probe.write_bytes(b"nonce")
        segments.append(probe)
        assert sweep_stale_sessions() == [zombie]
        assert not zombie_dir.exists() and not probe.exists()
    finally:
        proc.wait()
