"""What heliostat creates is private to the user (0700 / 0600), whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from heliostat.storage.checkpoints import CheckpointStore
from heliostat.storage.db import DB_FILENAME, default_db_url, make_engine
from heliostat.storage.home import create_private_file, make_private_dirs
from heliostat.storage.signing import KEY_FILENAME, SECRET_KEY_ENV, default_signer


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a given process umask, restored afterwards."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``HELIOSTAT_HOME`` that heliostat will create, with default storage and DB."""
    path = tmp_path / "hs-home"
    monkeypatch.setenv("HELIOSTAT_HOME", str(path))
    for name in ("HELIOSTAT_DB_URL", "HELIOSTAT_STORAGE", SECRET_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    return path


def test_home_database_and_its_wal_files_are_private(home: Path, umask: int) -> None:
    engine = make_engine(default_db_url())
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (a INTEGER)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        db = home / DB_FILENAME
        wal = home / f"{DB_FILENAME}-wal"
        shm = home / f"{DB_FILENAME}-shm"
        with engine.connect() as conn:  # the -wal and -shm files exist while it is open
            assert conn.execute(sa.text("SELECT a FROM t")).scalar() == 1
            assert wal.exists() and shm.exists()
            assert _mode(home) == 0o700
            assert (_mode(db), _mode(wal), _mode(shm)) == (0o600, 0o600, 0o600)
    finally:
        engine.dispose()


def test_checkpoint_directories_and_files_are_private(home: Path, umask: int) -> None:
    store = CheckpointStore()
    ref = store.write("etl", "extract", 1, {"secret": "hunter2"})
    path = Path(store.path("etl", "extract", 1, ref.format, ref.checksum))

    assert _mode(home) == 0o700
    assert _mode(home / "checkpoints") == 0o700
    assert _mode(path.parent) == 0o700  # the workflow's directory
    assert _mode(path) == 0o600
    assert store.read(ref) == {"secret": "hunter2"}


def test_checkpoints_without_fsync_are_private_too(tmp_path: Path, umask: int) -> None:
    store = CheckpointStore((tmp_path / "ckpt").as_uri(), fsync=False)
    ref = store.write("wf", "t", 1, list(range(10)))

    assert _mode(Path(store.path("wf", "t", 1, ref.format, ref.checksum))) == 0o600
    assert _mode(tmp_path / "ckpt") == 0o700


def test_the_key_file_is_private(home: Path, umask: int) -> None:
    default_signer()
    assert (_mode(home), _mode(home / KEY_FILENAME)) == (0o700, 0o600)


def test_an_existing_storage_directory_keeps_its_mode_but_new_files_are_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    monkeypatch.setenv("HELIOSTAT_STORAGE", shared.as_uri())

    store = CheckpointStore()
    ref = store.write("wf", "t", 1, "value")
    path = Path(store.path("wf", "t", 1, ref.format, ref.checksum))

    assert _mode(shared) == 0o775  # not ours: left as the user made it
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o600


def test_an_existing_database_directory_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    parent = tmp_path / "dbdir"
    parent.mkdir()
    parent.chmod(0o755)
    engine = make_engine(f"sqlite:///{parent / 'meta.db'}")
    engine.dispose()

    assert _mode(parent) == 0o755
    assert _mode(parent / "meta.db") == 0o600


def test_an_existing_database_file_is_neither_truncated_nor_chmodded(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (a INTEGER)"))
    engine.dispose()
    db.chmod(0o640)

    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 0
    finally:
        engine.dispose()
    assert _mode(db) == 0o640


def test_private_dirs_survive_a_umask_that_removes_the_owners_bits(tmp_path: Path) -> None:
    previous = os.umask(0o277)
    try:
        made = make_private_dirs(tmp_path / "a" / "b")
        created = create_private_file(tmp_path / "a" / "b" / "f")
    finally:
        os.umask(previous)

    assert made == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert created
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(tmp_path / "a" / "b" / "f") == 0o600


def test_make_private_dirs_reports_what_was_missing_and_refuses_a_file_in_the_way(
    tmp_path: Path,
) -> None:
    assert make_private_dirs(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        make_private_dirs(tmp_path / "file" / "sub")


def test_create_private_file_never_truncates(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("keep")
    assert not create_private_file(path)
    assert path.read_text() == "keep"
