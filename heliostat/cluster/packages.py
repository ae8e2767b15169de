"""Code on other machines: a driver publishes its packages, each node fetches them once.

``hs.init(address=..., runtime_env={"working_dir": ".", "py_modules": [...]})`` must
make the user's own modules importable on every node. Two calls do it, one per side:

* the driver: :func:`publish` builds each package (a reproducible zip named by its
  SHA-256, :mod:`heliostat.storage.packages`), asks the head whether it has it, uploads
  the ones it lacks, and returns the URIs in order. They go with the job's tasks.
* a node: :class:`PackageFetcher` turns those URIs into directories for the workers'
  ``sys.path`` (and the working_dir's copy as their current directory), downloading from
  the head only what the node's cache lacks. The cache checks every archive against its
  digest before unpacking, so a node runs only the bytes the driver published.

Why through the head rather than from the driver to each node: nodes already trust and
reach the head, a driver may be a laptop behind NAT that goes away while its job runs,
and a second driver with the same code finds it there already. Why a URI per package
and not per job: unchanged code keeps its name, so a re-run uploads and downloads
nothing, and two jobs sharing a library share its copy.

When a driver's later edits reach the workers: never within a job. The packages are
built once, when the job starts; what is on disk after that is not seen until the next
``init()``. Functions and classes defined in the driver's ``__main__`` travel by value
with each task, as always, and need none of this.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, Protocol

from heliostat.exceptions import ClusterError, RuntimeEnvSetupError
from heliostat.storage.home import default_home
from heliostat.storage.packages import (
    DEFAULT_SIZE_LIMIT,
    CodeSources,
    InstalledCode,
    PackageCache,
    PackageError,
    build_sources,
    code_sources,
)

__all__ = [
    "NODE_CACHE_DIR",
    "PackageFetcher",
    "PackageSource",
    "PackageUploader",
    "node_cache",
    "publish",
]

log = logging.getLogger("heliostat.cluster")

NODE_CACHE_DIR: Final = "packages"
"""A node's installed packages: ``$HELIOSTAT_HOME/packages/<kind>-<sha256>/``."""


class PackageUploader(Protocol):
    """The head as a driver sees it (:class:`~heliostat.cluster.client.HeadClient`)."""

    def has_package(self, uri: str) -> bool: ...
    def upload_package(self, uri: str, data: bytes) -> bool: ...


class PackageSource(Protocol):
    """The head as a node sees it (:class:`~heliostat.cluster.client.HeadClient`)."""

    def download_package(self, uri: str) -> bytes: ...


def node_cache(home: str | os.PathLike[str] | None = None) -> PackageCache:
    """The package cache of the node whose state is in ``home`` (default: ``HELIOSTAT_HOME``)."""
    root = Path(os.fspath(home)) if home is not None else default_home()
    return PackageCache(root / NODE_CACHE_DIR)


def publish(
    client: PackageUploader,
    runtime_env: CodeSources | Mapping[str, Any] | None,
    *,
    size_limit: int = DEFAULT_SIZE_LIMIT,
) -> tuple[str, ...]:
    """Build the packages of a ``runtime_env`` and upload those the head lacks.

    Args:
        client: a connection to the head.
        runtime_env: the checked code part (:func:`~heliostat.storage.packages.code_sources`),
            or the ``runtime_env`` dict itself (only ``working_dir``, ``py_modules`` and
            ``excludes`` are read).
        size_limit: the most bytes of files one package may hold.

    Returns:
        The packages' URIs: the working_dir's first, then the py_modules in order.
        Empty when there is nothing to ship.

    Raises:
        TypeError, ValueError: a ``runtime_env`` that :func:`code_sources` refuses.
        PackageError: a path cannot be packed, or is over ``size_limit``.
        ClusterError: the head is unreachable, refuses the token, or refuses a package.
    """
    sources = (
        runtime_env
        if isinstance(runtime_env, CodeSources)
        else code_sources(runtime_env, where="publish()")
    )
    started = time.perf_counter()
    uris: list[str] = []
    uploaded = 0
    for package, data in build_sources(sources, size_limit=size_limit):
        if not client.has_package(package.uri):
            # A concurrent driver may upload it between the question and the upload;
            # the head then answers "already there" and keeps its copy.
            uploaded += client.upload_package(package.uri, data)
        uris.append(package.uri)
    if uris:
        log.info(
            "published %d package(s) in %.2f s, %d uploaded, the rest already on the head",
            len(uris),
            time.perf_counter() - started,
            uploaded,
        )
    return tuple(uris)


class PackageFetcher:
    """A node's way from package URIs to installed directories; thread-safe.

    Each URI is downloaded at most once per node at a time: concurrent callers asking
    for one missing package wait for the first one's download. Packages already in the
    cache (installed by this process, another one, or an earlier run) are not
    downloaded at all. A failed download is not remembered: the next call tries again.

    Args:
        client: a connection to the head.
        cache: the node's cache (:func:`node_cache`).
    """

    def __init__(self, client: PackageSource, cache: PackageCache) -> None:
        self._client = client
        self.cache = cache
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[Path]] = {}
        self.downloads = 0  # archives this fetcher downloaded (for tests and stats)

    def path(self, uri: str) -> Path:
        """The installed directory of ``uri``, downloaded and installed if need be.

        Raises:
            RuntimeEnvSetupError: the package cannot be had from the head or cannot be
                installed here (the cause is chained).
        """
        found = self.cache.path_for(uri)
        if found is not None:
            return found
        with self._lock:
            future = self._in_flight.get(uri)
            owner = future is None
            if future is None:
                future = self._in_flight[uri] = Future()
        if owner:
            try:
                future.set_result(self._install(uri))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._lock:
                    del self._in_flight[uri]
        return future.result()

    def _install(self, uri: str) -> Path:
        found = self.cache.path_for(uri)  # a caller that finished just before us
        if found is not None:
            return found
        started = time.perf_counter()
        try:
            data = self._client.download_package(uri)
            with self._lock:
                self.downloads += 1
            path = self.cache.install(uri, data)
        except (ClusterError, PackageError) as exc:
            raise RuntimeEnvSetupError(
                f"package {uri} could not be installed in {self.cache.root}: {exc}"
            ) from exc
        log.info(
            "installed package %s (%d bytes) in %.2f s",
            uri,
            len(data),
            time.perf_counter() - started,
        )
        return path

    def paths(self, uris: Iterable[str]) -> list[str]:
        """The import paths of ``uris``, in order (see :meth:`path`)."""
        return [str(self.path(uri)) for uri in uris]

    def fetch(self, uris: Iterable[str]) -> InstalledCode:
        """``uris`` installed, as a worker uses them: import paths and working directory."""
        uris = list(uris)
        return InstalledCode.of(uris, self.paths(uris))
