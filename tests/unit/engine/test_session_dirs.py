"""Which directories count as heliostat sessions, and which the sweep may delete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heliostat.engine.runtime import (
    SESSION_MARKER,
    SessionDir,
    create_session_dir,
    is_stale,
    read_session_dir,
)

SESSION = "1a2b3c-abcdef"


def _dead(pid: int) -> bool:
    return False


def _alive(pid: int) -> bool:
    return True


def test_created_session_dir_is_private_and_marked(tmp_path: Path) -> None:
    path = create_session_dir(SESSION, parent=str(tmp_path))
    assert os.path.basename(path).startswith(f"heliostat-{SESSION}-")
    assert os.stat(path).st_mode & 0o777 == 0o700
    found = read_session_dir(path)
    assert found == SessionDir(path=path, session=SESSION, pid=0x1A2B3C, uid=os.getuid())


def test_directory_without_marker_is_not_a_session(tmp_path: Path) -> None:
    home = tmp_path / "heliostat-2026-11-21"
    home.mkdir()
    (home / "heliostat.db").write_text("user data")
    assert read_session_dir(str(home)) is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"something else\n1a2b3c-abcdef\n",
        b"heliostat session directory v1\n",
        b"heliostat session directory v1\n../../etc-abcdef\n",
        b"heliostat session directory v1\n1a2b3c-*\n",
        b"heliostat session directory v1\n999999-abcdef\n",  # not this directory's name
    ],
    ids=["empty", "wrong-magic", "no-session", "path-session", "glob-session", "other-name"],
)
def test_a_malformed_or_foreign_marker_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / f"heliostat-{SESSION}-x1"
    path.mkdir()
    (path / SESSION_MARKER).write_bytes(content)
    assert read_session_dir(str(path)) is None


def test_a_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    real = create_session_dir(SESSION, parent=str(tmp_path))
    link = tmp_path / f"heliostat-{SESSION}-link"
    link.symlink_to(real, target_is_directory=True)
    assert read_session_dir(str(link)) is None


def test_a_symlinked_marker_is_not_followed(tmp_path: Path) -> None:
    real = create_session_dir(SESSION, parent=str(tmp_path))
    other = tmp_path / f"heliostat-{SESSION}-y2"
    other.mkdir()
    (other / SESSION_MARKER).symlink_to(os.path.join(real, SESSION_MARKER))
    assert read_session_dir(str(other)) is None


def test_a_marker_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / f"heliostat-{SESSION}-z3"
    (path / SESSION_MARKER).mkdir(parents=True)
    assert read_session_dir(str(path)) is None


def _found(uid: int, pid: int = 0x1A2B3C) -> SessionDir:
    return SessionDir(path="/tmp/x", session=SESSION, pid=pid, uid=uid)


def test_stale_needs_our_uid_and_a_dead_driver() -> None:
    me = 1000
    assert is_stale(_found(uid=me), uid=me, own_pid=1, pid_alive=_dead)
    assert not is_stale(_found(uid=me), uid=me, own_pid=1, pid_alive=_alive)


def test_another_users_session_is_never_stale() -> None:
    assert not is_stale(_found(uid=0), uid=1000, own_pid=1, pid_alive=_dead)
    assert not is_stale(_found(uid=1001), uid=1000, own_pid=1, pid_alive=_dead)


def test_our_own_session_is_never_stale() -> None:
    assert not is_stale(_found(uid=1000, pid=42), uid=1000, own_pid=42, pid_alive=_dead)
