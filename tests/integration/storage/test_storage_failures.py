"""Real storage failures: a full disk, a read-only filesystem, a directory this user
may not write, a PostgreSQL backend killed under a connection.

The full and read-only disks are small tmpfs mounts (this needs root, or at least the
right to mount): skipped with the reason when mounting is not permitted, failed
instead under ``CI=true``. PostgreSQL tests use the server of ``pg_schema_url``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from heliostat.exceptions import StorageError
from heliostat.storage.checkpoints import TMP_INFIX, CheckpointStore
from heliostat.storage.db import is_transient_db_error, make_engine, storage_error_from

MIB = 1024 * 1024


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; this test must run under CI (run it as root)")
    pytest.skip(reason)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """``mount(size="1m", mode="0755")`` -> a fresh tmpfs, unmounted and removed after."""
    made: list[tuple[Path, Path]] = []

    def mount(size: str = "1m", mode: str = "0755") -> Path:
        base = Path(tempfile.mkdtemp(prefix="hs-tmpfs-"))
        point = base / "mnt"
        point.mkdir()
        try:
            result = _run(
                "mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(point)
            )
        except FileNotFoundError:
            result = subprocess.CompletedProcess([], 127, "", "no mount command")
        if result.returncode != 0:
            shutil.rmtree(base)
            _cannot(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        made.append((base, point))
        return point

    yield mount
    for base, point in made:
        if _run("umount", str(point)).returncode != 0:
            _run("umount", "-l", str(point))  # something still holds it open: detach
        shutil.rmtree(base, ignore_errors=True)


def _remount_read_only(point: Path) -> None:
    result = _run("mount", "-o", "remount,ro", str(point))
    if result.returncode != 0:
        _cannot(f"cannot remount {point} read-only: {result.stderr.strip()}")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- checkpoints ---


def test_a_checkpoint_on_a_full_disk_raises_storage_error_and_leaves_no_temp_file(
    tmpfs: Callable[..., Path],
) -> None:
    root = tmpfs(size="1m")
    store = CheckpointStore(root.as_uri(), source="hs.init(storage=...)")
    store.write("wf", "small", 1, "fits")

    with pytest.raises(StorageError) as info:
        store.write("wf", "big", 1, np.ones(2 * MIB, dtype=np.uint8))
    message = str(info.value)
    assert str(root / "wf" / "big@1.pkl") in message  # the name it was being written under
    assert "no space left on the device (ENOSPC)" in message
    assert "HELIOSTAT_STORAGE" in message and "hs.init(storage=...)" in message
    assert isinstance(info.value.__cause__, OSError)
    assert not any(TMP_INFIX in f for f in _files(root))
    assert [_untagged(f) for f in _files(root)] == ["wf/small@1.pkl"]
    # The space the temporary file took is free again.
    store.write("wf", "after", 1, np.ones(MIB // 2, dtype=np.uint8))


def test_a_checkpoint_on_a_read_only_filesystem_raises_storage_error(
    tmpfs: Callable[..., Path],
) -> None:
    root = tmpfs(size="1m")
    store = CheckpointStore(root.as_uri())
    store.write("wf", "before", 1, 1)  # the workflow's directory exists
    _remount_read_only(root)

    for task in ("after", "another-workflow"):
        workflow = "wf" if task == "after" else "wf2"  # file in old dir / new dir
        with pytest.raises(StorageError) as info:
            store.write(workflow, task, 1, 2)
        message = str(info.value)
        assert str(root / workflow / f"{task}@1.pkl") in message
        assert "read-only (EROFS)" in message and "HELIOSTAT_STORAGE" in message
    assert [_untagged(f) for f in _files(root)] == ["wf/before@1.pkl"]


def _untagged(name: str) -> str:
    """A checkpoint file's name without its signature tag (``s@1.<tag>.pkl`` -> ``s@1.pkl``)."""
    stripped, count = re.subn(r"@(\d+)\.[0-9a-f]{32}\.", r"@\1.", name)
    assert count == 1, f"{name!r} is not a tagged checkpoint name"
    return stripped


def _write_as_nobody(url: str, out: Any) -> None:
    """In a forked child: drop root, then try to write a checkpoint; report the error."""
    os.setgid(65534)
    os.setuid(65534)
    try:
        CheckpointStore(url, source="hs.init(storage=...)").write("wf", "t", 1, "v")
    except BaseException as exc:
        out.put(exc)  # pickled across the process boundary, as a worker's error is
    else:
        out.put(None)


@pytest.mark.parametrize("existing_root", [True, False], ids=["root-exists", "root-missing"])
def test_a_checkpoint_in_a_directory_the_user_may_not_write_raises_storage_error(
    existing_root: bool,
) -> None:
    if os.geteuid() != 0:
        _cannot("needs root to run the write as another, unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="hs-eacces-"))
    try:
        base.chmod(0o755)  # others may enter, not write
        root = base / "ckpt"
        if existing_root:
            root.mkdir(mode=0o755)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_write_as_nobody, args=(root.as_uri(), out))
        child.start()
        err = out.get(timeout=60)
        child.join(timeout=60)
    finally:
        shutil.rmtree(base)
    assert isinstance(err, StorageError), err
    message = str(err)
    assert "permission denied" in message and "(EACCES)" in message
    assert str(root) in message and "hs.init(storage=...)" in message


# --- SQLite ---


def test_sqlite_on_a_full_disk_gives_a_storage_error_naming_the_file(
    tmpfs: Callable[..., Path],
) -> None:
    db = tmpfs(size="1m") / "heliostat.db"
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE blobs (data BLOB)"))
        with pytest.raises(sa.exc.OperationalError) as info:
            for _ in range(100):  # 100 x 64 KiB: far over 1 MiB
                with engine.begin() as conn:
                    conn.execute(
                        sa.text("INSERT INTO blobs VALUES (:tag || randomblob(65536))"),
                        {"tag": "parameter"},
                    )
    finally:
        engine.dispose()
    err = storage_error_from(info.value, url)
    assert isinstance(err, StorageError), info.value
    message = str(err)
    assert str(db) in message and "full" in message
    assert "HELIOSTAT_HOME" in message and "HELIOSTAT_DB_URL" in message
    assert "INSERT" not in message and "parameter" not in message
    assert not is_transient_db_error(info.value)


# --- PostgreSQL ---


def _psycopg_url(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_terminated_backend_is_a_transient_error(pg_schema_url: Callable[[], str]) -> None:
    url = pg_schema_url()
    engine = make_engine(url)
    try:
        with engine.connect() as victim, engine.connect() as killer:
            pid = victim.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            gone = killer.execute(
                sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}
            ).scalar_one()
            assert gone  # waited (up to 10 s) until the backend exited
            with pytest.raises(sa.exc.DBAPIError) as info:
                victim.execute(sa.text("SELECT 1"))
        assert info.value.connection_invalidated
        assert is_transient_db_error(info.value)
        assert storage_error_from(info.value, url) is None
        with engine.connect() as conn:  # and a retry does survive it
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_terminated_backend_is_transient_for_the_bare_driver_too(
    pg_schema_url: Callable[[], str],
) -> None:
    url = _psycopg_url(pg_schema_url())
    with psycopg.connect(url, autocommit=True) as victim, psycopg.connect(url) as killer:
        pid = victim.info.backend_pid
        assert killer.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()
        errors = []
        for _ in range(2):  # first the server's FATAL, then "the connection is closed"
            with pytest.raises(psycopg.OperationalError) as info:
                victim.execute("SELECT 1")
            errors.append(info.value)
    assert all(is_transient_db_error(e) for e in errors), errors


def test_a_refused_connection_is_a_transient_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
    engine = make_engine(url)
    try:
        with pytest.raises(sa.exc.OperationalError) as info:
            engine.connect()
    finally:
        engine.dispose()
    assert is_transient_db_error(info.value)
    assert storage_error_from(info.value, url) is None
    with pytest.raises(psycopg.OperationalError) as bare:
        psycopg.connect(_psycopg_url(url), connect_timeout=5)
    assert is_transient_db_error(bare.value)


def test_an_unknown_database_is_not_transient(pg_schema_url: Callable[[], str]) -> None:
    url = sa.make_url(pg_schema_url()).set(database="heliostat_no_such_db")
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(sa.exc.OperationalError) as info:
            engine.connect()
    finally:
        engine.dispose()
    assert not is_transient_db_error(info.value)


def test_read_only_constraint_and_syntax_errors_are_not_transient(
    pg_schema_url: Callable[[], str],
) -> None:
    url = pg_schema_url()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        with engine.connect() as conn:
            conn.execute(sa.text("SET TRANSACTION READ ONLY"))
            with pytest.raises(sa.exc.DBAPIError) as read_only:
                conn.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": 424242})
        err = storage_error_from(read_only.value, url)
        assert isinstance(err, StorageError)
        message = str(err)
        assert "read-only" in message and "25006" in message and "HELIOSTAT_DB_URL" in message
        assert "INSERT" not in message and "424242" not in message
        assert not is_transient_db_error(read_only.value)

        for statement, kind in [
            ("INSERT INTO t VALUES (1)", sa.exc.IntegrityError),
            ("SELEC 1", sa.exc.ProgrammingError),
        ]:
            with pytest.raises(kind) as info, engine.begin() as conn:
                conn.execute(sa.text(statement))
            assert not is_transient_db_error(info.value)
            assert storage_error_from(info.value, url) is None
    finally:
        engine.dispose()
