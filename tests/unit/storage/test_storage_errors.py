"""Storage errors in words: database errors a user must fix, transient connection
errors, bad checkpoint URLs. (Real full and read-only disks, real PostgreSQL
disconnects: ``tests/integration/storage/test_storage_failures.py``.)"""

from __future__ import annotations

import pickle
import sqlite3
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from heliostat.exceptions import StorageError
from heliostat.storage.checkpoints import CheckpointStore, validate_storage_url
from heliostat.storage.db import is_transient_db_error, make_engine, storage_error_from

SECRET_PARAM = "param-value-that-must-not-leak"


def _wrapped(orig: BaseException, *, invalidated: bool = False) -> sa.exc.DBAPIError:
    """``orig`` as SQLAlchemy wraps a driver error, with a statement and parameters."""
    return sa.exc.DBAPIError.instance(
        "INSERT INTO secrets VALUES (:v)",
        {"v": SECRET_PARAM},
        orig,
        psycopg.Error if isinstance(orig, psycopg.Error) else sqlite3.Error,
        connection_invalidated=invalidated,
    )


def _assert_plain(err: StorageError | None, *names: str) -> str:
    assert isinstance(err, StorageError)
    message = str(err)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert "INSERT" not in message and SECRET_PARAM not in message
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is StorageError and str(back) == message
    return message


# --- SQLite errors a user must fix ---


def test_sqlite_full_names_the_file_and_the_settings(tmp_path: Path) -> None:
    """A real "database or disk is full", from a page limit (a real full disk: the
    integration test)."""
    db = tmp_path / "meta.db"
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE blobs (data BLOB)"))
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA max_page_count = 20")
            conn.commit()
            with pytest.raises(sa.exc.OperationalError) as info:
                with conn.begin():
                    for _ in range(100):
                        conn.execute(
                            sa.text("INSERT INTO blobs VALUES (:v || randomblob(8000))"),
                            {"v": SECRET_PARAM},
                        )
    finally:
        engine.dispose()
    assert "database or disk is full" in str(info.value)
    message = _assert_plain(
        storage_error_from(info.value, url), str(db), "full", "HELIOSTAT_HOME", "HELIOSTAT_DB_URL"
    )
    assert storage_error_from(info.value.orig, url) is not None  # the bare driver error too
    assert "full" in message
    assert not is_transient_db_error(info.value)


def test_sqlite_read_only_database_says_so(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE t (a TEXT)")
    setup.close()
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            reader.execute("INSERT INTO t VALUES (?)", (SECRET_PARAM,))
    finally:
        reader.close()

    message = _assert_plain(
        storage_error_from(_wrapped(info.value), f"sqlite:///{db}"), str(db), "read-only"
    )
    assert "HELIOSTAT_DB_URL" in message
    assert not is_transient_db_error(info.value)


def test_sqlite_unable_to_open_names_the_path(tmp_path: Path) -> None:
    db = tmp_path / "missing-dir" / "meta.db"
    engine = sa.create_engine(f"sqlite:///{db}")  # not make_engine: it would make the dir
    try:
        with pytest.raises(sa.exc.OperationalError) as info:
            engine.connect()
    finally:
        engine.dispose()

    message = _assert_plain(storage_error_from(info.value, f"sqlite:///{db}"), str(db))
    assert "cannot be opened" in message


def test_sqlite_disk_io_error_is_recognised_by_its_message() -> None:
    err = storage_error_from(sqlite3.OperationalError("disk I/O error"), "sqlite:////d/m.db")
    assert "/d/m.db" in _assert_plain(err, "disk I/O error")


def test_other_errors_are_not_storage_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (a INTEGER PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        for statement, kind in [
            ("INSERT INTO t VALUES (1)", sa.exc.IntegrityError),
            ("INSERTT INTO t", sa.exc.OperationalError),
        ]:
            with pytest.raises(kind) as info, engine.begin() as conn:
                conn.execute(sa.text(statement))
            assert storage_error_from(info.value, url) is None
            assert not is_transient_db_error(info.value)
    finally:
        engine.dispose()
    assert storage_error_from(ValueError("database or disk is full"), url) is None


def test_make_engine_refuses_a_database_path_it_cannot_create(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(StorageError, match="HELIOSTAT_HOME") as info:
        make_engine(f"sqlite:///{tmp_path / 'file' / 'meta.db'}")
    assert str(tmp_path / "file" / "meta.db") in str(info.value)


# --- PostgreSQL errors a user must fix (real ones: the integration test) ---


def test_postgres_disk_full_hides_the_password_and_names_the_url_setting() -> None:
    url = "postgresql+psycopg://ann:hunter2@db.example:5432/lineage"
    err = storage_error_from(_wrapped(psycopg.errors.DiskFull("could not extend file")), url)

    message = _assert_plain(err, "db.example", "53100", "disk space", "HELIOSTAT_DB_URL")
    assert "hunter2" not in message and "***" in message
    assert "HELIOSTAT_HOME" not in message  # not an SQLite file: the home does not matter


def test_postgres_read_only_says_to_use_the_primary() -> None:
    orig = psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT")
    err = storage_error_from(orig, "postgresql+psycopg://u@standby/db")
    _assert_plain(err, "standby", "read-only", "25006", "primary", "HELIOSTAT_DB_URL")


# --- transient connection errors ---


@pytest.mark.parametrize(
    "orig",
    [
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CrashShutdown("crash"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
        psycopg.errors.ConnectionFailure("connection failure"),
        psycopg.OperationalError("consuming input failed: server closed the connection"),
        psycopg.OperationalError("the connection is closed"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_level_failures_are_transient(orig: BaseException) -> None:
    assert is_transient_db_error(orig)
    assert is_transient_db_error(_wrapped(orig))


@pytest.mark.parametrize(
    "orig",
    [
        psycopg.errors.DiskFull("no space"),
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.SyntaxError("syntax error"),
        psycopg.errors.ReadOnlySqlTransaction("read-only"),
        psycopg.OperationalError('connection failed: FATAL:  role "x" does not exist'),
        psycopg.OperationalError("connection failed: FATAL:  password authentication failed"),
        sqlite3.OperationalError("database is locked"),
        ValueError("not a database error"),
    ],
    ids=lambda e: f"{type(e).__name__}:{str(e)[:20]}",
)
def test_other_failures_are_not_transient(orig: BaseException) -> None:
    assert not is_transient_db_error(orig)
    assert not is_transient_db_error(_wrapped(orig))


def test_an_invalidated_connection_is_transient_whatever_the_driver_said() -> None:
    err = _wrapped(sqlite3.OperationalError("anything"), invalidated=True)
    assert is_transient_db_error(err)
    assert is_transient_db_error(sa.exc.DisconnectionError("pool gave up"))


# --- checkpoint storage URLs ---


@pytest.mark.parametrize(
    ("url", "package"),
    [
        ("s3://bucket/ckpt", "s3fs"),
        ("gs://bucket/ckpt", "gcsfs"),
        ("gcs://bucket/ckpt", "gcsfs"),
        ("az://container/ckpt", "adlfs"),
        ("abfs://container/ckpt", "adlfs"),
        ("simplecache::s3://bucket/ckpt", "s3fs"),
    ],
)
def test_a_url_whose_filesystem_is_not_installed_says_what_to_install(
    url: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the package unimportable even where it is installed.
    monkeypatch.setitem(sys.modules, package, None)
    for protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"):
        monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, protocol, raising=False)

    with pytest.raises(StorageError) as info:
        validate_storage_url(url, source="hs.init(storage=...)")
    message = str(info.value)
    assert url in message and "hs.init(storage=...)" in message
    assert f"pip install {package}" in message


def test_an_unknown_protocol_from_the_environment_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIOSTAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HELIOSTAT_STORAGE", "bogus://x")

    with pytest.raises(StorageError) as info:
        CheckpointStore()
    message = str(info.value)
    assert "'bogus://x'" in message and "'bogus'" in message
    assert "the environment variable HELIOSTAT_STORAGE" in message
    assert list(tmp_path.iterdir()) == []


def test_the_store_names_the_source_it_was_given() -> None:
    with pytest.raises(StorageError, match=r"from hs\.init\(storage=\.\.\.\)"):
        CheckpointStore("bogus://x", source="hs.init(storage=...)")
    with pytest.raises(StorageError, match="the URL given to CheckpointStore"):
        CheckpointStore("bogus://x")


def test_a_password_in_a_bad_url_is_not_shown() -> None:
    with pytest.raises(StorageError) as info:
        validate_storage_url("bogus://user:hunter2@host/x", source="test")
    assert "hunter2" not in str(info.value) and "user:***@host" in str(info.value)


@pytest.mark.parametrize("url", ["memory://ckpt", "file:///tmp/ckpt", "/tmp/ckpt", "ckpt"])
def test_urls_of_installed_filesystems_pass(url: str) -> None:
    validate_storage_url(url, source="test")


def test_an_empty_url_is_refused() -> None:
    with pytest.raises(StorageError, match="empty"):
        validate_storage_url(" ", source="the environment variable HELIOSTAT_STORAGE")
