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
cluster's business (:mod:`heliostat.cluster.packages`). :func:`code_sources` checks the
code part of a ``runtime_env`` once, for every caller: ``init()`` on one node and
:func:`~heliostat.cluster.packages.publish` for a cluster. :func:`install_local` is the
one-node path: build and install into a cache, no head involved. This module does file
I/O only, and nothing that needs a runtime.
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
import types
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from heliostat.exceptions import PackageError
from heliostat.storage.home import make_private_dirs

__all__ = [
    "DEFAULT_EXCLUDES",
    "DEFAULT_SIZE_LIMIT",
    "CodeSources",
    "InstalledCode",
    "Package",
    "PackageCache",
    "PackageError",
    "PackageKind",
    "build_package",
    "build_sources",
    "code_sources",
    "install_local",
    "package_kind",
    "parse_package_uri",
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
    match = _URI.fullmatch(uri) if isinstance(uri, str) else None
    if match is None:
        raise PackageError(f"{uri!r} is not a heliostat package URI ({_SCHEME}KIND-SHA256.zip)")
    return PackageKind(match.group(1)), match.group(2)


def parse_package_uri(uri: str) -> tuple[PackageKind, str]:
    """A package URI's kind and SHA-256 (hex).

    Raises:
        PackageError: ``uri`` is not a heliostat package URI.
    """
    return _parse_uri(uri)


def package_kind(uri: str) -> PackageKind:
    """What a package URI holds (a working_dir or a py_module).

    Raises:
        PackageError: ``uri`` is not a heliostat package URI.
    """
    return _parse_uri(uri)[0]


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
        make_private_dirs(self.root)
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


# --- the code part of a runtime_env ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeSources:
    """The code a ``runtime_env`` ships, checked: absolute local paths, in order.

    Attributes:
        working_dir: the directory workers run in and import from, or None.
        py_modules: packages (directories) and single ``.py`` files to import.
        excludes: patterns left out of every archive, added to :data:`DEFAULT_EXCLUDES`.
    """

    working_dir: str | None = None
    py_modules: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether there is nothing to ship."""
        return self.working_dir is None and not self.py_modules


def _module_path(where: str, module: types.ModuleType) -> str:
    """The file or package directory of an imported module (Ray takes module objects)."""
    paths = list(getattr(module, "__path__", None) or ())
    if paths:
        if len(paths) != 1:
            raise ValueError(
                f"{where}: runtime_env['py_modules'] entry {module.__name__!r} is a namespace "
                f"package spread over {len(paths)} directories; give one directory's path."
            )
        return str(paths[0])
    file = getattr(module, "__file__", None)
    if not file or not str(file).endswith(".py"):
        raise ValueError(
            f"{where}: runtime_env['py_modules'] entry {module.__name__!r} has no .py source "
            "file (a built-in or compiled module); install it on every node instead."
        )
    return str(file)


def _local_path(where: str, key: str, value: Any) -> str:
    if isinstance(value, types.ModuleType) and key == "py_modules":
        value = _module_path(where, value)
    if not isinstance(value, (str, os.PathLike)):
        kinds = "paths or modules" if key == "py_modules" else "a path"
        raise TypeError(
            f"{where}: runtime_env[{key!r}] takes {kinds}, not {type(value).__name__} ({value!r})."
        )
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{where}: runtime_env[{key!r}] paths must be str, not bytes.")
    if "://" in path:
        raise ValueError(
            f"{where}: runtime_env[{key!r}] = {path!r}: remote URIs are not supported; give "
            "a local directory (heliostat ships it to the nodes itself)."
        )
    if not os.path.exists(path):
        raise ValueError(f"{where}: runtime_env[{key!r}] = {path!r} does not exist.")
    if key == "working_dir" and not os.path.isdir(path):
        raise ValueError(
            f"{where}: runtime_env['working_dir'] = {path!r} is not a directory (a zip "
            "archive as working_dir is not supported; give the directory)."
        )
    if key == "py_modules" and not os.path.isdir(path) and not path.endswith(".py"):
        raise ValueError(
            f"{where}: runtime_env['py_modules'] entry {path!r} is neither a package "
            "directory nor a .py file."
        )
    return os.path.abspath(path)


def code_sources(runtime_env: Mapping[str, Any] | None, *, where: str = "init()") -> CodeSources:
    """Check ``working_dir``, ``py_modules`` and ``excludes`` of a ``runtime_env``.

    Other keys are left to the caller. ``py_modules`` entries may be paths or imported
    module objects (as in Ray); relative paths are taken from the current directory.

    Args:
        runtime_env: the dict given to ``init()`` (None: nothing to ship).
        where: the call named in error messages.

    Raises:
        TypeError: a value of the wrong type (``py_modules`` or ``excludes`` not a list,
            an entry that is neither a path nor a module).
        ValueError: a path that does not exist or has the wrong shape, or a remote URI.
    """
    if runtime_env is None:
        return CodeSources()
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"{where}: runtime_env must be a dict, not {type(runtime_env).__name__}.")
    working_dir = runtime_env.get("working_dir")
    modules = runtime_env.get("py_modules")
    excludes = runtime_env.get("excludes")
    if modules is not None and not isinstance(modules, (list, tuple)):
        raise TypeError(
            f"{where}: runtime_env['py_modules'] must be a list, not {type(modules).__name__}."
        )
    if excludes is not None and (
        not isinstance(excludes, (list, tuple)) or not all(isinstance(e, str) for e in excludes)
    ):
        raise TypeError(f"{where}: runtime_env['excludes'] must be a list of str patterns.")
    return CodeSources(
        working_dir=None if working_dir is None else _local_path(where, "working_dir", working_dir),
        py_modules=tuple(dict.fromkeys(_local_path(where, "py_modules", m) for m in modules or ())),
        excludes=tuple(excludes or ()),
    )


def build_sources(
    sources: CodeSources, *, size_limit: int = DEFAULT_SIZE_LIMIT
) -> list[tuple[Package, bytes]]:
    """Build the archives of ``sources``: the working_dir's first, then each py_module.

    Raises:
        PackageError: a path cannot be packed, or holds more than ``size_limit`` bytes.
    """
    out = []
    if sources.working_dir is not None:
        out.append(
            build_package(
                sources.working_dir,
                PackageKind.WORKING_DIR,
                excludes=sources.excludes,
                size_limit=size_limit,
            )
        )
    for module in sources.py_modules:
        out.append(
            build_package(
                module, PackageKind.PY_MODULE, excludes=sources.excludes, size_limit=size_limit
            )
        )
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class InstalledCode:
    """Installed packages as a worker uses them.

    Attributes:
        import_paths: directories to put first on ``sys.path``, in order.
        working_dir: the directory a worker runs in (the working_dir's copy), or None.
    """

    import_paths: tuple[str, ...] = ()
    working_dir: str | None = None

    @classmethod
    def of(cls, uris: Iterable[str], paths: Iterable[str | os.PathLike[str]]) -> InstalledCode:
        """From package URIs and their installed directories (in the same order)."""
        working_dir = None
        import_paths = []
        for uri, path in zip(uris, paths, strict=True):
            import_paths.append(os.fspath(path))
            if package_kind(uri) is PackageKind.WORKING_DIR:
                working_dir = os.fspath(path)
        return cls(import_paths=tuple(dict.fromkeys(import_paths)), working_dir=working_dir)


def install_local(
    sources: CodeSources, cache: PackageCache, *, size_limit: int = DEFAULT_SIZE_LIMIT
) -> tuple[tuple[str, ...], InstalledCode]:
    """Build ``sources`` and install them into ``cache`` directly (one node, no head).

    Returns:
        The packages' URIs and the installed code.

    Raises:
        PackageError: as :func:`build_sources` and :meth:`PackageCache.install`.
    """
    uris, paths = [], []
    for package, data in build_sources(sources, size_limit=size_limit):
        uris.append(package.uri)
        paths.append(str(cache.install(package.uri, data)))
    return tuple(uris), InstalledCode.of(uris, paths)
