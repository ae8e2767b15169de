"""The node daemons of this machine, as drivers find them (files, no processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from heliostat.cluster.local_nodes import (
    LocalNode,
    local_nodes,
    local_nodes_dir,
    publish_local_node,
    withdraw_local_node,
)


@pytest.fixture
def tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _node(tmp: Path, node_id: str, *, cluster: str = "c1", pid: int | None = None) -> LocalNode:
    sock = tmp / f"{node_id}.sock"
    sock.touch()
    return LocalNode(
        cluster_id=cluster,
        node_id=node_id,
        node_address="127.0.0.1:1",
        socket=str(sock),
        pid=pid or os.getpid(),
    )


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_published_node_is_found_by_its_cluster_and_withdrawn(tmp_root: Path) -> None:
    a, b = _node(tmp_root, "aa"), _node(tmp_root, "bb", cluster="c2")
    path_a, path_b = publish_local_node(a), publish_local_node(b)
    assert path_a is not None and path_b is not None
    assert local_nodes("c1") == [a]
    assert local_nodes("c2") == [b]
    directory = local_nodes_dir()
    assert directory.parent == tmp_root
    assert oct(directory.stat().st_mode & 0o777) == oct(0o700)
    assert oct(path_a.stat().st_mode & 0o777) == oct(0o600)
    withdraw_local_node(path_a)
    assert local_nodes("c1") == []


def test_nodes_whose_process_or_socket_is_gone_are_skipped_then_swept(tmp_root: Path) -> None:
    gone = _node(tmp_root, "aa", pid=_dead_pid())
    publish_local_node(gone)
    no_socket = _node(tmp_root, "bb")
    os.unlink(no_socket.socket)
    publish_local_node(no_socket)
    assert local_nodes("c1") == []
    publish_local_node(_node(tmp_root, "cc"))  # publishing removes the dead process's file
    names = sorted(p.name for p in local_nodes_dir().glob("*.json"))
    assert names == ["c1-bb.json", "c1-cc.json"]


def test_a_directory_others_can_write_is_not_trusted(tmp_root: Path) -> None:
    publish_local_node(_node(tmp_root, "aa"))
    os.chmod(local_nodes_dir(), 0o777)
    assert local_nodes("c1") == []
    assert publish_local_node(_node(tmp_root, "bb")) is None


def test_a_symlink_in_place_of_the_directory_is_not_followed(tmp_root: Path) -> None:
    elsewhere = tmp_root / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    local_nodes_dir().symlink_to(elsewhere)
    assert publish_local_node(_node(tmp_root, "aa")) is None
    assert list(elsewhere.iterdir()) == []
    assert local_nodes("c1") == []
