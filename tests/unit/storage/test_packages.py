"""Code packages: reproducible archives, checked installs, safe races."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from heliostat.storage.packages import (
    Package,
    PackageCache,
    PackageError,
    PackageKind,
    build_package,
)


def _project(root: Path) -> Path:
    (root / "pipeline").mkdir(parents=True)
    (root / "pipeline" / "__init__.py").write_text("")
    (root / "pipeline" / "steps.py").write_text("def double(x):\n    return 2 * x\n")
    (root / "main.py").write_text("import pipeline\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "pipeline" / "__pycache__").mkdir()
    (root / "pipeline" / "__pycache__" / "steps.cpython-311.pyc").write_bytes(b"\0" * 10)
    return root


def _names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.namelist()


def test_same_files_give_the_same_uri_whatever_their_times(tmp_path: Path) -> None:
    root = _project(tmp_path / "a")
    first, data = build_package(root, PackageKind.WORKING_DIR)
    os.utime(root / "main.py", (1_000_000, 1_000_000))
    again, data_again = build_package(root, PackageKind.WORKING_DIR)
    assert again == first and data_again == data
    assert first.uri == f"hspkg://working_dir-{hashlib.sha256(data).hexdigest()}.zip"
    # A copy elsewhere (a second checkout) has the same name too.
    copy = _project(tmp_path / "b")
    assert build_package(copy, PackageKind.WORKING_DIR)[0].uri == first.uri
    (copy / "main.py").write_text("import pipeline  # changed\n")
    assert build_package(copy, PackageKind.WORKING_DIR)[0].uri != first.uri


def test_version_control_caches_and_excludes_stay_out(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "data").mkdir()
    (root / "data" / "big.csv").write_text("a,b\n")
    (root / "notes.csv").write_text("x\n")
    package, data = build_package(root, PackageKind.WORKING_DIR, excludes=["data/*.csv"])
    names = _names(data)
    assert sorted(names) == [
        "main.py",
        "notes.csv",
        "pipeline/__init__.py",
        "pipeline/steps.py",
        "run.sh",
    ]
    assert package.files == 5
    # A pattern without '/' matches any component.
    names = _names(build_package(root, PackageKind.WORKING_DIR, excludes=["*.csv"])[1])
    assert not any(n.endswith(".csv") for n in names)
    with pytest.raises(TypeError, match="list of patterns"):
        build_package(root, PackageKind.WORKING_DIR, excludes="*.csv")  # type: ignore[arg-type]


def test_too_big_names_the_largest_files(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "weights.bin").write_bytes(b"\1" * 300_000)
    with pytest.raises(PackageError, match=r"more than the .* limit; the largest: .*weights\.bin"):
        build_package(root, PackageKind.WORKING_DIR, size_limit=200_000)


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    root = _project(tmp_path)
    with pytest.raises(PackageError, match="is a file, not a directory"):
        build_package(root / "main.py", PackageKind.WORKING_DIR)
    with pytest.raises(PackageError, match="does not exist"):
        build_package(root / "missing", PackageKind.PY_MODULE)
    with pytest.raises(PackageError, match=r"neither a \.py file nor a package"):
        build_package(root / "run.sh", PackageKind.PY_MODULE)


def test_py_modules_keep_their_import_names(tmp_path: Path) -> None:
    root = _project(tmp_path / "src")
    package, data = build_package(root / "pipeline", PackageKind.PY_MODULE)
    assert sorted(_names(data)) == ["pipeline/__init__.py", "pipeline/steps.py"]
    single, data = build_package(root / "main.py", PackageKind.PY_MODULE)
    assert _names(data) == ["main.py"] and single.kind is PackageKind.PY_MODULE

    cache = PackageCache(tmp_path / "cache")
    where = cache.install(package.uri, build_package(root / "pipeline", PackageKind.PY_MODULE)[1])
    out = subprocess.run(
        [sys.executable, "-c", "from pipeline.steps import double; print(double(21))"],
        env={**os.environ, "PYTHONPATH": str(where)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"


def test_install_unpacks_once_keeps_modes_and_is_private(tmp_path: Path) -> None:
    package, data = build_package(_project(tmp_path / "p"), PackageKind.WORKING_DIR)
    cache = PackageCache(tmp_path / "cache")
    assert cache.path_for(package.uri) is None
    where = cache.install(package.uri, data)
    assert cache.path_for(package.uri) == where
    assert (where / "pipeline" / "steps.py").read_text().startswith("def double")
    assert os.access(where / "run.sh", os.X_OK) and not os.access(where / "main.py", os.X_OK)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    (where / "marker").write_text("")
    assert cache.install(package.uri, data) == where and (where / "marker").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [where.name]  # no staging left


def test_bytes_that_are_not_the_uri_are_refused(tmp_path: Path) -> None:
    package, data = build_package(_project(tmp_path / "p"), PackageKind.WORKING_DIR)
    cache = PackageCache(tmp_path / "cache")
    with pytest.raises(PackageError, match="refusing to install"):
        cache.install(package.uri, data + b"tampered")
    assert cache.path_for(package.uri) is None
    with pytest.raises(PackageError, match="not a heliostat package URI"):
        cache.install("hspkg://working_dir-1234.zip", data)
    with pytest.raises(PackageError, match="not a heliostat package URI"):
        cache.path_for("file:///etc/passwd")


def _archive(entries: dict[str, bytes], *, link: str | None = None) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (0o120777) << 16
            zf.writestr(info, "/etc/passwd")
    data = buffer.getvalue()
    return f"hspkg://working_dir-{hashlib.sha256(data).hexdigest()}.zip", data


@pytest.mark.parametrize("name", ["../escape.py", "/abs/escape.py", "ok/../../escape.py"])
def test_entries_outside_the_package_are_refused(tmp_path: Path, name: str) -> None:
    uri, data = _archive({"fine.py": b"", name: b"import os"})
    cache = PackageCache(tmp_path / "cache")
    with pytest.raises(PackageError, match="outside itself"):
        cache.install(uri, data)
    assert not (tmp_path / "escape.py").exists()
    assert cache.path_for(uri) is None
    assert list((tmp_path / "cache").iterdir()) == []  # the staging directory is gone


def test_links_and_non_archives_are_refused(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "cache")
    uri, data = _archive({"fine.py": b""}, link="passwd")
    with pytest.raises(PackageError, match="holds a link"):
        cache.install(uri, data)
    junk = b"not a zip"
    with pytest.raises(PackageError, match="not a zip archive"):
        cache.install(f"hspkg://py_module-{hashlib.sha256(junk).hexdigest()}.zip", junk)


def _install_in_child(root: str, uri: str, data: bytes, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    out.put(str(PackageCache(root).install(uri, data)))  # type: ignore[attr-defined]


def test_two_processes_installing_one_package_agree(tmp_path: Path) -> None:
    package, data = build_package(_project(tmp_path / "p"), PackageKind.WORKING_DIR)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    root = str(tmp_path / "cache")
    procs = [
        ctx.Process(target=_install_in_child, args=(root, package.uri, data, start, out))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    paths = {out.get(timeout=60) for _ in procs}
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert paths == {str(PackageCache(root).path_for(package.uri))}
    assert sorted(p.name for p in Path(root).iterdir()) == [Path(paths.pop()).name]


def test_package_identity_is_its_digest() -> None:
    digest = "ab" * 32
    package = Package(
        uri=f"hspkg://py_module-{digest}.zip", kind=PackageKind.PY_MODULE, size=1, files=1
    )
    assert package.digest == digest


def test_install_local_orders_the_working_dir_first_and_excludes_everywhere(
    tmp_path: Path,
) -> None:
    from heliostat.storage.packages import CodeSources, install_local

    root = _project(tmp_path / "project")
    (root / "results.csv").write_text("a\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "__init__.py").write_text("")
    (lib / "table.csv").write_text("b\n")
    sources = CodeSources(working_dir=str(root), py_modules=(str(lib),), excludes=("*.csv",))
    uris, code = install_local(sources, PackageCache(tmp_path / "cache"))
    assert [u.split("-")[0] for u in uris] == ["hspkg://working_dir", "hspkg://py_module"]
    copy, lib_parent = (Path(p) for p in code.import_paths)
    assert code.working_dir == str(copy)
    assert (copy / "main.py").exists() and not (copy / "results.csv").exists()
    assert (lib_parent / "lib" / "__init__.py").exists()
    assert not (lib_parent / "lib" / "table.csv").exists()
    # Installing the same sources again reuses the copies.
    assert install_local(sources, PackageCache(tmp_path / "cache")) == (uris, code)
