"""The head's store of code packages: archives kept by their digest, checked on arrival.

A driver uploads each ``working_dir`` / ``py_modules`` archive once (it asks first);
every node downloads what it lacks. The head keeps the archives as files, one per
package, under ``$HELIOSTAT_HOME/cluster/packages/`` (directories ``0700``, files
``0600``), named like the URI: ``working_dir-<sha256>.zip``.

Receiving an upload:

1. The URI is parsed (kind and digest) and the declared size checked against the
   store's limit before a byte is written; a package already here is answered "already
   there" without reading the rest.
2. The chunks go into a private temporary file in the same directory, hashed and
   counted as they arrive; more bytes than declared, or than the limit, stop it.
3. At the end the size and the SHA-256 must be the URI's; then the file is flushed to
   disk and renamed to its final name. Two uploads of one package race harmlessly:
   they hold the same bytes, and the rename is atomic.
4. On any failure (a refusal, the client going away) the temporary file is removed.

A reader therefore only ever finds complete, verified archives under final names; a
crash leaves at most a ``.upload-*`` file, which the next store removes when it opens.
Nothing here unpacks an archive: nodes do that (:class:`~heliostat.storage.packages.PackageCache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Final

from heliostat.storage.home import PRIVATE_FILE_MODE, make_private_dirs
from heliostat.storage.packages import DEFAULT_SIZE_LIMIT, PackageError, parse_package_uri

__all__ = [
    "DEFAULT_PACKAGE_CHUNK",
    "MAX_PACKAGE_BYTES",
    "PackageStore",
    "PackageTooLarge",
]

log = logging.getLogger("heliostat.cluster")

MAX_PACKAGE_BYTES: Final = DEFAULT_SIZE_LIMIT + (28 << 20)
"""The largest archive a head accepts by default: a driver refuses to pack more than
``DEFAULT_SIZE_LIMIT`` bytes of files, and a zip of incompressible files is a little
larger than the files (headers, names)."""

DEFAULT_PACKAGE_CHUNK: Final = 1 << 20
"""Bytes of archive per message, both ways (gRPC's default message limit is 4 MiB)."""

_TEMP_PREFIX = ".upload-"


class PackageTooLarge(PackageError):
    """An archive larger than the store accepts."""


def _file_name(uri: str) -> str:
    kind, digest = parse_package_uri(uri)
    return f"{kind.value}-{digest}.zip"


class PackageStore:
    """Verified archives under ``root``; thread-safe (every write is its own file).

    Args:
        root: the directory (created ``0700`` on first upload).
        max_bytes: the largest archive accepted.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = MAX_PACKAGE_BYTES) -> None:
        self.root = Path(os.fspath(root))
        self.max_bytes = max_bytes
        if self.root.is_dir():  # uploads cut off by a crash of an earlier head
            for stale in self.root.glob(f"{_TEMP_PREFIX}*"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def path_of(self, uri: str) -> Path:
        """Where ``uri``'s archive is (or would be) kept.

        Raises:
            PackageError: ``uri`` is not a package URI.
        """
        return self.root / _file_name(uri)

    def size_of(self, uri: str) -> int | None:
        """The archive's size in bytes, or None when the store does not have it."""
        try:
            return self.path_of(uri).stat().st_size
        except FileNotFoundError:
            return None

    def receive(self, uri: str, total_size: int, chunks: Iterable[bytes]) -> bool:
        """Store the archive arriving as ``chunks``; see the module docstring.

        Returns:
            True when stored, False when the store had it already (``chunks`` unread).

        Raises:
            PackageTooLarge: ``total_size`` or the bytes sent exceed :attr:`max_bytes`.
            PackageError: a malformed URI, or bytes whose size or digest are not the
                ones declared.
        """
        _kind, digest = parse_package_uri(uri)
        final = self.path_of(uri)
        if final.exists():
            return False
        if total_size > self.max_bytes:
            raise PackageTooLarge(
                f"package {uri} is {total_size / 2**20:.1f} MiB, more than this head accepts "
                f"({self.max_bytes / 2**20:.0f} MiB)"
            )
        make_private_dirs(self.root)
        temp = self.root / f"{_TEMP_PREFIX}{digest[:12]}-{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # whatever the umask
            hasher = hashlib.sha256()
            received = 0
            for chunk in chunks:
                received += len(chunk)
                if received > total_size or received > self.max_bytes:
                    raise PackageTooLarge(
                        f"package {uri}: more bytes arrived than the {total_size} declared"
                        if received > total_size
                        else f"package {uri} is over this head's limit ({self.max_bytes} bytes)"
                    )
                hasher.update(chunk)
                view = memoryview(chunk)
                while view.nbytes:
                    view = view[os.write(fd, view) :]
            if received != total_size:
                raise PackageError(
                    f"package {uri}: {received} of the {total_size} declared bytes arrived"
                )
            actual = hasher.hexdigest()
            if actual != digest:
                raise PackageError(
                    f"package {uri} arrived with digest {actual}: the bytes are not the ones "
                    "its name promises (a corrupted upload, or a client that built it wrong)"
                )
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        os.close(fd)
        os.replace(temp, final)  # a concurrent upload of the same bytes may win: same file
        log.info("stored package %s (%d bytes)", uri, total_size)
        return True

    def read(
        self, uri: str, *, chunk_size: int = DEFAULT_PACKAGE_CHUNK
    ) -> tuple[int, Generator[bytes, None, None]] | None:
        """The archive's size and its bytes in chunks; None when the store lacks it.

        The file is opened before this returns, so a package present now is served
        whole even if its name is removed meanwhile. The chunks' generator closes the
        file when exhausted or closed.
        """
        try:
            file = open(self.path_of(uri), "rb")
        except FileNotFoundError:
            return None

        def chunks() -> Generator[bytes, None, None]:
            with file:
                while data := file.read(chunk_size):
                    yield data

        return os.fstat(file.fileno()).st_size, chunks()
