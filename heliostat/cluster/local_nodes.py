"""The node daemons running on this machine, for drivers that want to attach to one.

A driver that joins a cluster (``init(address=...)``) attaches, when it can, to a node
daemon of the same machine over that node's Unix socket (``engine/attach.py``), as a
Ray driver connects to its machine's raylet. To find one, every node daemon (and the
head's node) *publishes* a small JSON file here while it runs::

    {tmp}/heliostat-nodes-{uid}/{cluster_id}-{node_id}.json

with its node id, the cluster it belongs to, the address of its node service, the
path of its socket and its pid. The directory is private to the user (``0700``, owned
by them, not a symlink; anything else is not trusted and nothing is read from it), and
so is each file: a driver only ever attaches to nodes its own user started.

A file outlives a daemon killed with SIGKILL: readers skip entries whose process is
gone or whose socket no longer exists, and the next publisher removes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from heliostat._process import process_running

__all__ = [
    "LocalNode",
    "local_nodes",
    "local_nodes_dir",
    "publish_local_node",
    "withdraw_local_node",
]

log = logging.getLogger("heliostat.cluster")


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalNode:
    """A node daemon of this machine, as it published itself."""

    cluster_id: str
    node_id: str
    node_address: str  # host:port of its node service
    socket: str  # its node manager's Unix socket
    pid: int


def local_nodes_dir() -> Path:
    """This user's directory of published nodes, in the temp directory."""
    return Path(tempfile.gettempdir()) / f"heliostat-nodes-{os.getuid()}"


def _private_dir(create: bool) -> Path | None:
    """The directory, if it is a real directory of ours that nobody else can write."""
    path = local_nodes_dir()
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("%s is not a private directory of this user: not used", path)
        return None
    return path


def _alive(node: LocalNode) -> bool:
    return process_running(node.pid) and os.path.exists(node.socket)


def _read(path: Path) -> LocalNode | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        data: Any = json.loads(os.read(fd, 64 << 10))
        return LocalNode(**data)
    except (OSError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)


def publish_local_node(node: LocalNode) -> Path | None:
    """Publish a running node (and remove the files of nodes that are gone).

    Returns the file, to pass to :func:`withdraw_local_node` at shutdown; None when
    there is no private directory to publish in (drivers then join as nodes of their
    own, as they would on another machine).
    """
    directory = _private_dir(create=True)
    if directory is None:
        return None
    for stale in directory.glob("*.json"):
        found = _read(stale)
        if found is not None and not process_running(found.pid):
            with contextlib.suppress(OSError):
                stale.unlink()
    path = directory / f"{node.cluster_id}-{node.node_id}.json"
    tmp = directory / f".{path.name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(asdict(node)).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def withdraw_local_node(path: Path) -> None:
    """Remove a node's file (it is stopping)."""
    with contextlib.suppress(OSError):
        path.unlink()


def local_nodes(cluster_id: str) -> list[LocalNode]:
    """The live nodes of cluster ``cluster_id`` that this user runs on this machine."""
    directory = _private_dir(create=False)
    if directory is None:
        return []
    found = []
    for path in sorted(directory.glob(f"{cluster_id}-*.json")):
        node = _read(path)
        if node is not None and node.cluster_id == cluster_id and _alive(node):
            found.append(node)
    return found
