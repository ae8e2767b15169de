"""The cluster's files on this machine, under ``$HELIOSTAT_HOME/cluster/``.

=================  ==========================================================
``token``          the cluster token (a head creates it; mode ``0600``)
``head.pid``       the head daemon's pid, while it runs
``head.json``      where the head listens and how it was started (see below)
``head.log``       the head daemon's log
``node.pid``       a node daemon's pid, while it runs
``node.json``      the node's id and the head it joined
``node.log``       the node daemon's log
=================  ==========================================================

One home holds at most one head and one node daemon (a second ``heliostat start``
of the same kind is refused); machines that run several nodes, as the tests do, give
each its own ``HELIOSTAT_HOME``. Every file is created private (``0600``, in a
``0700`` directory). The ``.json`` files are written whole under a temporary name and
renamed, so a reader never sees half of one.

A pid file can outlive its process (a SIGKILL, a reboot) and the pid be reused:
:func:`running_daemon` trusts it only when the process with that pid was started no
later than the moment the file records, and is a heliostat command.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psutil

from heliostat.storage.home import PRIVATE_FILE_MODE, default_home, make_private_dirs

__all__ = [
    "DAEMON_KINDS",
    "TOKEN_FILE",
    "DaemonInfo",
    "DaemonKind",
    "cluster_dir",
    "log_path",
    "machine_id",
    "pid_path",
    "read_daemon_info",
    "remove_daemon_files",
    "running_daemon",
    "token_path",
    "write_daemon_info",
]

DaemonKind = Literal["head", "node"]
DAEMON_KINDS: Final[tuple[DaemonKind, ...]] = ("head", "node")
TOKEN_FILE: Final = "token"


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonInfo:
    """What a running daemon wrote about itself (``head.json`` / ``node.json``)."""

    kind: DaemonKind
    pid: int
    started_at: float  # Unix seconds, taken before the file was written
    address: str  # head: where it listens; node: the head it joined
    node_id: str = ""
    node_address: str = ""  # node: its advertised address
    ui_url: str = ""
    tls_cert: str = ""  # the certificate a client of this head trusts ("" : no TLS)
    log_file: str = ""


def machine_id() -> str:
    """Who this machine is: its hostname and, where the OS keeps one, its machine id.

    Two processes with the same answer share a filesystem root, so a SQLite file or a
    directory one of them names is the other's too (see ``docs/cluster.md``).
    """
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found = Path(path).read_text(encoding="ascii").strip()
            if found:
                return f"{socket.gethostname()}/{found}"
    return socket.gethostname()


def cluster_dir(home: Path | None = None) -> Path:
    return (home or default_home()) / "cluster"


def token_path(home: Path | None = None) -> Path:
    return cluster_dir(home) / TOKEN_FILE


def pid_path(kind: DaemonKind, home: Path | None = None) -> Path:
    return cluster_dir(home) / f"{kind}.pid"


def log_path(kind: DaemonKind, home: Path | None = None) -> Path:
    return cluster_dir(home) / f"{kind}.log"


def _info_path(kind: DaemonKind, home: Path | None = None) -> Path:
    return cluster_dir(home) / f"{kind}.json"


def _write_private(path: Path, text: str) -> None:
    make_private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_daemon_info(info: DaemonInfo, home: Path | None = None) -> None:
    """Write the pid file and the ``.json`` of a daemon that is up."""
    _write_private(_info_path(info.kind, home), json.dumps(asdict(info), indent=2) + "\n")
    _write_private(pid_path(info.kind, home), f"{info.pid}\n")


def read_daemon_info(kind: DaemonKind, home: Path | None = None) -> DaemonInfo | None:
    """The daemon's ``.json``, or ``None`` when there is none (or it cannot be read)."""
    try:
        data: Any = json.loads(_info_path(kind, home).read_text(encoding="utf-8"))
        return DaemonInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def _read_pid(kind: DaemonKind, home: Path | None) -> int | None:
    try:
        return int(pid_path(kind, home).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def running_daemon(kind: DaemonKind, home: Path | None = None) -> DaemonInfo | None:
    """The daemon of this kind started from this home, if it is still running.

    A pid file whose process is gone, or whose pid now belongs to another program
    (started after the daemon wrote the file, or not a heliostat command), is stale:
    this returns ``None`` and leaves the files for :func:`remove_daemon_files`.
    """
    pid = _read_pid(kind, home)
    if pid is None:
        return None
    info = read_daemon_info(kind, home)
    try:
        proc = psutil.Process(pid)
        created = proc.create_time()
        cmdline = " ".join(proc.cmdline())
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "heliostat" not in cmdline:
        return None
    if info is not None and info.pid == pid and created > info.started_at + 1.0:
        return None  # the pid was reused after the daemon wrote its file
    if info is None or info.pid != pid:
        info = DaemonInfo(kind=kind, pid=pid, started_at=created, address="")
    return info


def remove_daemon_files(
    kind: DaemonKind, home: Path | None = None, *, pid: int | None = None
) -> None:
    """Remove the pid file and ``.json`` of a daemon that stopped.

    With ``pid``, only when the pid file still names that process (a daemon cleaning up
    after itself must not remove the files of a newer one).
    """
    if pid is not None and _read_pid(kind, home) not in (pid, None):
        return
    for path in (pid_path(kind, home), _info_path(kind, home)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
