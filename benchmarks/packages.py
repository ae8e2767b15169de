"""Code packages: what shipping a working_dir costs, first time and cached.

Prints one JSON object. A head runs in this process (``HeadServer`` on a loopback
port, its store in a temporary directory); the client goes over real gRPC. The
working_dir is generated: ``--mib`` MiB (default 10) in files of 64 KiB to 1 MiB, half
Python-like text (compresses well) and half random bytes (does not compress).

Figures (each the median of ``--repeats`` runs, seconds):

* ``build_s``: packing the directory (reproducible zip + SHA-256), no network.
* ``publish_first_s``: :func:`heliostat.cluster.packages.publish` to a head that lacks
  the package (build, HasPackage, upload in 1 MiB chunks, digest check, fsync).
* ``publish_cached_s``: the same call again (build, HasPackage answers yes, no upload).
* ``fetch_first_s``: a node's :class:`PackageFetcher` downloading and installing it
  into an empty cache (download, digest check, unpack).
* ``fetch_cached_s``: the same URI again (found in the cache, nothing downloaded).
* ``init_local_s``: ``hs.init(runtime_env={"working_dir": ...})`` on one node,
  compared with ``init_plain_s`` (no runtime_env): the added cost is build + unpack.
* ``archive_mib``: the archive's size.

Usage: ``python benchmarks/packages.py [--mib 10] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import heliostat as hs
from heliostat.cluster import HeadClient, HeadServer, HeadService, PackageFetcher, publish
from heliostat.storage.packages import CodeSources, PackageCache, build_sources

TOKEN = "benchmark-token"


def _make_project(root: Path, mib: int) -> None:
    rng = os.urandom
    text = ("def step(x):\n    return x * 2  # a line of ordinary code\n" * 2000).encode()
    total, index = 0, 0
    while total < mib << 20:
        size = (64 << 10) * (1 + index % 16)
        if index % 2:
            data = rng(size)
        else:
            data = (text * (size // len(text) + 1))[:size]
        sub = root / f"pkg{index % 8}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{index}.{'bin' if index % 2 else 'py'}").write_bytes(data)
        total += size
        index += 1


def _median(
    run: Callable[[], None], repeats: int, before: Callable[[], None] | None = None
) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hs-bench-packages-"))
    server = None
    try:
        project = work / "project"
        _make_project(project, args.mib)
        sources = CodeSources(working_dir=str(project))
        [(package, _data)] = build_sources(sources)
        store = work / "head-store"
        server = HeadServer(
            HeadService(cluster_id="bench", version="bench", package_dir=store), token=TOKEN
        )
        out: dict[str, float | int] = {"mib": args.mib, "repeats": args.repeats}
        out["archive_mib"] = round(package.size / 2**20, 2)
        out["build_s"] = _median(lambda: build_sources(sources), args.repeats)
        with HeadClient(server.address, TOKEN) as client:
            out["publish_first_s"] = _median(
                lambda: publish(client, sources),
                args.repeats,
                before=lambda: shutil.rmtree(store, ignore_errors=True),
            )
            publish(client, sources)
            out["publish_cached_s"] = _median(lambda: publish(client, sources), args.repeats)
            cache_root = work / "node-cache"

            def fresh_cache() -> None:
                shutil.rmtree(cache_root, ignore_errors=True)

            out["fetch_first_s"] = _median(
                lambda: PackageFetcher(client, PackageCache(cache_root)).path(package.uri),
                args.repeats,
                before=fresh_cache,
            )
            fetcher = PackageFetcher(client, PackageCache(cache_root))
            fetcher.path(package.uri)
            out["fetch_cached_s"] = _median(lambda: fetcher.path(package.uri), args.repeats)

        def init_and_shutdown(runtime_env: dict[str, str] | None) -> Callable[[], None]:
            def run() -> None:
                hs.init(num_cpus=1, runtime_env=runtime_env)
                hs.shutdown()

            return run

        out["init_plain_s"] = _median(init_and_shutdown(None), args.repeats)
        out["init_local_s"] = _median(
            init_and_shutdown({"working_dir": str(project)}), args.repeats
        )
        print(json.dumps(out, indent=2))
    finally:
        if server is not None:
            server.stop(grace=0)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
