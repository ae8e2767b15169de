"""Code packages through a real head in this process: publish, fetch, refusals."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from heliostat.cluster import HeadClient, HeadServer, HeadService, PackageFetcher, publish
from heliostat.cluster.auth import call_metadata
from heliostat.cluster.packages import node_cache
from heliostat.cluster.rpc import package_stub
from heliostat.cluster.v1 import control_pb2 as pb
from heliostat.exceptions import ClusterAuthError, ClusterError, RuntimeEnvSetupError
from heliostat.storage.packages import PackageCache, PackageKind, build_package

TOKEN = "t0ken-for-package-tests"


@pytest.fixture
def make_head(tmp_path: Path) -> Iterator[Callable[..., HeadServer]]:
    servers: list[HeadServer] = []

    def make(**options: Any) -> HeadServer:
        service = HeadService(
            cluster_id="c1", version="test", package_dir=tmp_path / "head" / "packages", **options
        )
        server = HeadServer(service, token=TOKEN)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def client(make_head: Callable[..., HeadServer]) -> Iterator[HeadClient]:
    with HeadClient(make_head().address, TOKEN) as connected:
        yield connected


class Counting:
    """A head client that counts the calls that move archives."""

    def __init__(self, inner: HeadClient) -> None:
        self.inner = inner
        self.uploads = 0
        self.downloads = 0
        self.release = threading.Event()
        self.release.set()
        self.downloading = threading.Event()

    def has_package(self, uri: str) -> bool:
        return self.inner.has_package(uri)

    def upload_package(self, uri: str, data: bytes) -> bool:
        self.uploads += 1
        return self.inner.upload_package(uri, data)

    def download_package(self, uri: str) -> bytes:
        self.downloads += 1
        self.downloading.set()
        assert self.release.wait(10), "the test never released the download"
        return self.inner.download_package(uri)


def _project(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "steps.py").write_text("def double(x):\n    return 2 * x\n")
    (root / "notes.txt").write_text("kept\n")
    return root


def _store_files(tmp_path: Path) -> list[str]:
    store = tmp_path / "head" / "packages"
    return sorted(os.listdir(store)) if store.exists() else []


def test_publish_uploads_what_the_head_lacks_and_nodes_install_it(
    tmp_path: Path, client: HeadClient
) -> None:
    project = _project(tmp_path / "project")
    module = tmp_path / "tools.py"
    module.write_text("X = 1\n")
    counting = Counting(client)
    uris = publish(counting, {"working_dir": str(project), "py_modules": [str(module)]})
    assert [u.split("-")[0] for u in uris] == ["hspkg://working_dir", "hspkg://py_module"]
    assert counting.uploads == 2 and all(client.has_package(u) for u in uris)
    # The head keeps them private: 0700 directory, 0600 files, named by digest.
    store = tmp_path / "head" / "packages"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for name in _store_files(tmp_path):
        assert stat.S_IMODE((store / name).stat().st_mode) == 0o600
    # Publishing the same code again uploads nothing and gives the same URIs.
    assert publish(counting, {"working_dir": str(project), "py_modules": [str(module)]}) == uris
    assert counting.uploads == 2

    fetcher = PackageFetcher(counting, node_cache(tmp_path / "node-home"))
    code = fetcher.fetch(uris)
    working_dir, module_dir = code.import_paths
    assert code.working_dir == working_dir
    assert working_dir.startswith(str(tmp_path / "node-home" / "packages"))
    assert (Path(working_dir) / "app" / "steps.py").read_text().startswith("def double")
    assert (Path(module_dir) / "tools.py").read_text() == "X = 1\n"
    # Already installed: no second download, even from a new fetcher on the node.
    again = PackageFetcher(counting, node_cache(tmp_path / "node-home"))
    assert again.paths(uris) == [working_dir, module_dir]
    assert counting.downloads == 2 and fetcher.downloads == 2 and again.downloads == 0


def test_an_upload_of_a_package_the_head_has_is_answered_already_there(
    client: HeadClient,
) -> None:
    data = os.urandom(3 << 20)
    uri = f"hspkg://working_dir-{hashlib.sha256(data).hexdigest()}.zip"
    assert not client.has_package(uri)
    assert client.upload_package(uri, data, chunk_size=256 << 10) is True
    assert client.upload_package(uri, data) is False
    assert client.download_package(uri) == data


def test_a_wrong_token_is_refused_for_every_package_call(
    tmp_path: Path, make_head: Callable[..., HeadServer]
) -> None:
    head = make_head()
    data = os.urandom(2 << 20)  # several chunks
    uri = f"hspkg://py_module-{hashlib.sha256(data).hexdigest()}.zip"
    with HeadClient(head.address, "not-the-token") as intruder:
        with pytest.raises(ClusterAuthError):
            intruder.has_package(uri)
        with pytest.raises(ClusterAuthError):
            intruder.upload_package(uri, data)
        with pytest.raises(ClusterAuthError):
            intruder.download_package(uri)
    assert _store_files(tmp_path) == []
    with HeadClient(head.address, TOKEN) as client:
        assert client.upload_package(uri, data)
    with HeadClient(head.address, "not-the-token") as intruder:
        with pytest.raises(ClusterAuthError):
            intruder.download_package(uri)


def test_bytes_that_do_not_hash_to_the_uri_are_refused_and_not_kept(
    tmp_path: Path, client: HeadClient
) -> None:
    data = os.urandom(2 << 20)
    wrong = f"hspkg://working_dir-{'0' * 64}.zip"
    with pytest.raises(ClusterError, match="arrived with digest") as caught:
        client.upload_package(wrong, data)
    assert "INVALID_ARGUMENT" in str(caught.value)
    assert not client.has_package(wrong)
    assert _store_files(tmp_path) == []  # no temporary file left either
    with pytest.raises(ClusterError, match="not a heliostat package URI"):
        client.upload_package("hspkg://../../etc/passwd", data)


def test_an_archive_over_the_heads_limit_is_refused(
    tmp_path: Path, make_head: Callable[..., HeadServer]
) -> None:
    head = make_head(max_package_bytes=1 << 20)
    data = os.urandom((1 << 20) + 1)
    uri = f"hspkg://working_dir-{hashlib.sha256(data).hexdigest()}.zip"
    with HeadClient(head.address, TOKEN) as client:
        with pytest.raises(ClusterError, match="more than this head accepts"):
            client.upload_package(uri, data)
    # A client that declares less than it sends is cut off too.
    channel = grpc.insecure_channel(head.address)
    try:
        stub = package_stub(channel)
        small = data[: 1 << 10]
        chunks = [
            pb.PackageChunk(uri=uri, total_size=len(small), data=small),
            pb.PackageChunk(data=small),
        ]
        with pytest.raises(grpc.RpcError) as caught:
            stub.UploadPackage(iter(chunks), metadata=call_metadata(TOKEN), timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more bytes arrived" in caught.value.details()
    finally:
        channel.close()
    assert _store_files(tmp_path) == []


def test_concurrent_fetches_of_one_package_download_it_once(
    tmp_path: Path, client: HeadClient
) -> None:
    [uri] = publish(client, {"working_dir": str(_project(tmp_path / "project"))})
    counting = Counting(client)
    counting.release.clear()  # the first download waits until every caller has asked
    fetcher = PackageFetcher(counting, PackageCache(tmp_path / "cache"))
    callers = 8
    with ThreadPoolExecutor(callers) as pool:
        first = pool.submit(fetcher.path, uri)
        assert counting.downloading.wait(10)
        rest = [pool.submit(fetcher.path, uri) for _ in range(callers - 1)]
        counting.release.set()
        paths = {f.result(timeout=30) for f in [first, *rest]}
    assert len(paths) == 1 and counting.downloads == 1 and fetcher.downloads == 1


def test_a_node_refuses_bytes_that_are_not_the_package(tmp_path: Path) -> None:
    class Lying:
        def download_package(self, uri: str) -> bytes:
            return b"PK\x05\x06" + b"\0" * 18  # an empty zip, not the one asked for

    cache = PackageCache(tmp_path / "cache")
    uri = f"hspkg://working_dir-{'1' * 64}.zip"
    with pytest.raises(RuntimeEnvSetupError, match="arrived with digest"):
        PackageFetcher(Lying(), cache).path(uri)
    assert cache.path_for(uri) is None


def test_a_package_the_head_lacks_fails_the_fetch_until_it_is_published(
    tmp_path: Path, client: HeadClient
) -> None:
    package, data = build_package(_project(tmp_path / "project"), PackageKind.WORKING_DIR)
    fetcher = PackageFetcher(client, PackageCache(tmp_path / "cache"))
    with pytest.raises(RuntimeEnvSetupError, match="no such package"):
        fetcher.path(package.uri)
    # The failure is not remembered: once the driver uploads it, the next call has it.
    assert client.upload_package(package.uri, data)
    assert (fetcher.path(package.uri) / "notes.txt").read_text() == "kept\n"
    assert fetcher.downloads == 1
