"""Code packages: a ``working_dir`` or ``py_modules`` entry as a content-addressed archive.

A driver on one machine runs tasks on others, and those need the user's own modules.
``runtime_env={"working_dir": ".", "py_modules": [...]}`` (Ray's names) says which; this
module turns each into a zip archive named by the SHA-256 of its bytes and installs an
archive into a per-node cache, so that:

* **the same code gives the same name**: entries are sorted and carry a fixed time and
  normalised modes, so rebuilding an unchanged directory (a fresh checkout, touched
  files) gives the same URI and nodes reuse what they have;
* **a node never runs bytes it did not ask for**: :meth:`PackageCache.install` checks
  the archive against the digest in its URI, and refuses entries that would land
  outside the package's directory ("zip slip") or that are links;
* **installs race safely**: two processes installing one package on one node extract
  into private temporary directories and rename; the first rename wins and the other
  uses it.

Archives are built and installed here; how they travel (through the head) is the
cluster's business. This module does file I/O only, and nothing that needs a runtime.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

__all__ = [
    "DEFAULT_EXCLUDES",
    "DEFAULT_SIZE_LIMIT",
    "Package",
    "PackageCache",
    "PackageError",
    "PackageKind",
    "build_package",
]

# Ray's own limit for a working_dir upload is of this order; code that is bigger is
# almost always data or a virtualenv swept up by accident.
DEFAULT_SIZE_LIMIT = 100 * 2**20

# Never worth shipping: version control, caches and virtual environments.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "*.pyc",
    ".venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
)

_SCHEME = "hspkg://"
_URI = re.compile(r"hspkg://(working_dir|py_module)-([0-9a-f]{64})\.zip")
# Zip timestamps cannot be before 1980; any fixed time makes the archive reproducible.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o644
_EXEC_MODE = 0o755


class PackageError(ValueError):
    """A package cannot be built or installed (named path, size, digest or entry)."""


class PackageKind(StrEnum):
    """What the archive holds: a whole working directory, or one module or package."""

    WORKING_DIR = "working_dir"
    PY_MODULE = "py_module"


@dataclass(frozen=True, slots=True, kw_only=True)
class Package:
    """A built archive's identity: ``uri`` names its bytes (kind and SHA-256)."""

    uri: str
    kind: PackageKind
    size: int
    files: int

    @property
    def digest(self) -> str:
        return _parse_uri(self.uri)[1]


def _parse_uri(uri: str) -> tuple[PackageKind, str]:
    match = _URI.fullmatch(uri)
    if match is None:
        raise PackageError(f"{uri!r} is not a heliostat package URI ({_SCHEME}KIND-SHA256.zip)")
    return PackageKind(match.group(1)), match.group(2)


def _excluded(relative: PurePosixPath, patterns: tuple[str, ...]) -> bool:
    """Whether a path (relative, '/'-separated) matches an exclude pattern.

    A pattern without '/' matches any single path component (``__pycache__``,
    ``*.csv``); one with '/' matches the whole relative path (``data/*.parquet``).
    """
    text = relative.as_posix()
    for pattern in patterns:
        if "/" in pattern.strip("/"):
            if fnmatch.fnmatchcase(text, pattern.strip("/")):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern.strip("/")) for part in relative.parts):
            return True
    return False


def _walk(root: Path, patterns: tuple[str, ...]) -> Iterator[tuple[Path, PurePosixPath]]:
    """Regular files under ``root`` (sorted, excludes pruned), with their archive names."""
    for current, dirs, files in os.walk(root):
        here = Path(current)
        rel_here = PurePosixPath(here.relative_to(root).as_posix())
        dirs[:] = sorted(d for d in dirs if not _excluded(rel_here / d, patterns))
        for name in sorted(files):
            rel = rel_here / name
            if _excluded(rel, patterns):
                continue
            path = here / name
            if not path.is_file():  # sockets, fifos, dangling links
                continue
            yield path, rel


def _entries(path: Path, kind: PackageKind, patterns: tuple[str, ...]) -> list[tuple[Path, str]]:
    if path.is_file():
        if kind is PackageKind.WORKING_DIR:
            raise PackageError(f"working_dir {str(path)!r} is a file, not a directory")
        if path.suffix != ".py":
            raise PackageError(
                f"py_modules entry {str(path)!r} is neither a .py file nor a package"
            )
        return [(path, path.name)]
    if not path.is_dir():
        raise PackageError(f"{kind.value} {str(path)!r} does not exist")
    # A py_modules package keeps its own name inside the archive, so that the
    # directory put on sys.path makes ``import package`` work.
    prefix = PurePosixPath(path.name) if kind is PackageKind.PY_MODULE else PurePosixPath()
    return [(file, (prefix / rel).as_posix()) for file, rel in _walk(path, patterns)]


def build_package(
    path: str | os.PathLike[str],
    kind: PackageKind,
    *,
    excludes: Iterable[str] = (),
    size_limit: int = DEFAULT_SIZE_LIMIT,
) -> tuple[Package, bytes]:
    """Pack ``path`` into a reproducible zip archive; returns its identity and bytes.

    Args:
        path: a directory (``working_dir``, or a package for ``py_modules``) or a single
            ``.py`` file (``py_modules``).
        kind: what the archive is for (decides its layout).
        excludes: more patterns to leave out, added to :data:`DEFAULT_EXCLUDES` (a
            pattern without '/' matches any path component, one with '/' the path).
        size_limit: the most bytes of files the archive may hold.

    Raises:
        PackageError: the path does not exist or has the wrong shape, or its files
            exceed ``size_limit`` (the message names the largest files).
    """
    if isinstance(excludes, str):
        raise TypeError("excludes must be a list of patterns, not one string")
    root = Path(os.fspath(path)).absolute()
    patterns = (*DEFAULT_EXCLUDES, *excludes)
    entries = _entries(root, kind, patterns)
    sizes = [(file.stat().st_size, name) for file, name in entries]
    total = sum(size for size, _ in sizes)
    if total > size_limit:
        biggest = ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for size, name in sorted(sizes)[-3:])
        raise PackageError(
            f"{kind.value} {str(root)!r} holds {total / 2**20:.1f} MiB of files, more than the "
            f"{size_limit / 2**20:.0f} MiB limit; the largest: {biggest}. Leave data out "
            "with runtime_env['excludes'] and read it from shared storage instead."
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for file, name in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            executable = file.stat().st_mode & stat.S_IXUSR
            info.external_attr = (stat.S_IFREG | (_EXEC_MODE if executable else _FILE_MODE)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, file.read_bytes())
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    package = Package(
        uri=f"{_SCHEME}{kind.value}-{digest}.zip", kind=kind, size=len(data), files=len(entries)
    )
    return package, data


class PackageCache:
    """Installed packages of one node, one directory each under ``root``.

    ``root`` is created private (0700): the code in it runs as the user.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.fspath(root))

    def path_for(self, uri: str) -> Path | None:
        """Where ``uri`` is installed, or None when it is not (yet) here."""
        kind, digest = _parse_uri(uri)
        target = self.root / f"{kind.value}-{digest}"
        return target if target.is_dir() else None

    def install(self, uri: str, data: bytes) -> Path:
        """Check ``data`` against ``uri`` and unpack it; returns the package's directory.

        The directory is what goes on a worker's ``sys.path`` (and, for a working_dir,
        is its current directory). Installing a package that is already here returns
        the existing directory without unpacking again.

        Raises:
            PackageError: the bytes do not hash to the URI's digest, are not a zip
                archive, or hold an entry that is absolute, climbs out with '..', or is
                a link.
        """
        kind, digest = _parse_uri(uri)
        existing = self.path_for(uri)
        if existing is not None:
            return existing
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise PackageError(
                f"package {uri} arrived with digest {actual}: refusing to install bytes that "
                "are not the ones asked for"
            )
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.root / f"{kind.value}-{digest}"
        staging = Path(tempfile.mkdtemp(prefix=f".{kind.value}-{digest[:12]}-", dir=self.root))
        try:
            _extract(data, staging, uri)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # not a lost race: a real failure
                    raise
                # Another process installed it first: theirs is the same bytes.
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target


def _extract(data: bytes, into: Path, uri: str) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise PackageError(f"package {uri} is not a zip archive: {exc}") from exc
    with archive:
        for info in archive.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise PackageError(
                    f"package {uri} holds an entry outside itself: {info.filename!r}"
                )
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise PackageError(f"package {uri} holds a link: {info.filename!r}")
            if info.is_dir():
                (into / name).mkdir(parents=True, exist_ok=True)
                continue
            dest = into / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(dest, _EXEC_MODE if mode & stat.S_IXUSR else _FILE_MODE)
