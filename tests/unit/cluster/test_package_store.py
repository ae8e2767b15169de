"""The head's package store on its own: what it keeps, what it refuses, what it cleans."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.cluster.package_store import PackageStore, PackageTooLarge
from heliostat.storage.packages import PackageError


def _uri(data: bytes) -> str:
    return f"hspkg://py_module-{hashlib.sha256(data).hexdigest()}.zip"


def test_a_stored_package_is_read_back_in_chunks(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    data = os.urandom(10_000)
    assert store.size_of(_uri(data)) is None and store.read(_uri(data)) is None
    assert store.receive(_uri(data), len(data), [data[:3000], data[3000:]])
    assert store.size_of(_uri(data)) == len(data)
    found = store.read(_uri(data), chunk_size=4096)
    assert found is not None
    size, chunks = found
    pieces = list(chunks)
    assert size == len(data) and [len(p) for p in pieces] == [4096, 4096, 1808]
    assert b"".join(pieces) == data


def test_a_package_already_there_is_not_read_again(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    data = b"archive bytes"
    assert store.receive(_uri(data), len(data), [data])

    def must_not_be_read() -> Iterator[bytes]:
        raise AssertionError("the store read an upload it already had")
        yield b""  # pragma: no cover

    assert store.receive(_uri(data), len(data), must_not_be_read()) is False


def test_a_broken_upload_leaves_no_file(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    data = os.urandom(5000)

    def cut_off() -> Iterator[bytes]:
        yield data[:1000]
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        store.receive(_uri(data), len(data), cut_off())
    with pytest.raises(PackageError, match="1000 of the 5000"):
        store.receive(_uri(data), len(data), [data[:1000]])
    with pytest.raises(PackageTooLarge):
        store.receive(_uri(data), 10, [data])
    assert os.listdir(tmp_path / "store") == []


def test_uploads_left_by_a_crash_are_removed_when_a_store_opens(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / ".upload-0123456789ab-cafe").write_bytes(b"half")
    kept = root / f"py_module-{'3' * 64}.zip"
    kept.write_bytes(b"whole")
    PackageStore(root)
    assert os.listdir(root) == [kept.name]


def test_uris_that_are_not_package_names_are_refused(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "store")
    for uri in ("hspkg://py_module-../../x.zip", "file:///etc/passwd", ""):
        with pytest.raises(PackageError):
            store.size_of(uri)
