"""Where heliostat keeps its state on this machine, and how it keeps it private.

``HELIOSTAT_HOME`` (default ``~/.heliostat``) holds the SQLite metadata database, the
default checkpoint directory and the installation's secret key. Step outputs can hold
anything a user computes, credentials included, so what heliostat creates there is
private to the user who runs it, whatever the process umask:

* directories heliostat creates: mode ``0700`` (:func:`make_private_dirs`);
* files heliostat creates: mode ``0600`` (:func:`create_private_file`, and the
  checkpoint writer, which opens its temporary files with ``0600`` itself).

Directories that already exist are left as they are, even when they are more open:
a user who points ``HELIOSTAT_STORAGE`` at a directory shared on purpose keeps its
mode, and heliostat never changes permissions it did not set. The files written inside
are still ``0600``.

Why not ``os.umask(0o077)`` around our writes: the umask is process-wide, so setting it
from one thread changes the modes of files created meanwhile by every other thread of
the user's program. Passing the mode to ``open``/``mkdir`` is local and costs nothing.

This module imports nothing heavy: a worker that only writes checkpoints imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = [
    "HOME_ENV",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private_file",
    "default_home",
    "make_private_dirs",
]

HOME_ENV: Final = "HELIOSTAT_HOME"
"""The environment variable naming heliostat's state directory."""

PRIVATE_DIR_MODE: Final = 0o700
"""Mode of every directory heliostat creates."""

PRIVATE_FILE_MODE: Final = 0o600
"""Mode of every file heliostat creates."""


def default_home() -> Path:
    """``HELIOSTAT_HOME``, else ``~/.heliostat`` (not created here)."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".heliostat"


def make_private_dirs(path: str | os.PathLike[str]) -> list[str]:
    """``mkdir -p path``, each directory it creates getting mode ``0700``.

    Directories that exist already are not touched (not even their mode). Safe against
    a concurrent creator: a directory made by another process in between counts as
    existing, and is left with whatever mode that process gave it.

    Args:
        path: the directory to ensure.

    Returns:
        The directories that did not exist when called (made by this call or by a
        concurrent one), outermost first: a caller that must make the new entries
        durable fsyncs each one's parent.

    Raises:
        OSError: a component cannot be created (permissions, read-only filesystem,
            a file in the way); the caller turns it into a message for its setting.
    """
    missing: list[str] = []
    cur = os.path.abspath(os.fspath(path))
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    missing.reverse()
    for directory in missing:
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # another process made it first: its mode is its business
        # mkdir's mode is masked by the umask; a umask that removes the owner's own
        # bits (0o277) would leave a directory we cannot use. One chmod per new
        # directory, never on the per-file path.
        os.chmod(directory, PRIVATE_DIR_MODE)
    return missing


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode ``0600`` unless it exists; never truncates.

    Used for files another library then opens and fills (the SQLite database: SQLite
    gives its ``-wal`` and ``-shm`` files the mode of the database file, so they come
    out ``0600`` too).

    Args:
        path: the file; its directory must exist.

    Returns:
        Whether this call created it (``False``: it existed, its mode untouched).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have removed owner bits
    finally:
        os.close(fd)
    return True
