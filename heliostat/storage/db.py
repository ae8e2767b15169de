"""Engines for the metadata database, and its schema migrations (Alembic, in the package).

The metadata database is SQLite by default (one file under ``HELIOSTAT_HOME``, no server)
and PostgreSQL for a cluster; the same models and the same migrations serve both.

SQLite engines are set up for a write-ahead log that must survive a power cut and for
several processes sharing one file (a driver, the scheduler, the UI):

* ``journal_mode=WAL``: readers do not block the writer nor the writer the readers.
* ``synchronous=FULL``: a COMMIT is on disk when it returns; a committed WAL record is
  never lost, which is the whole point of the write-ahead log.
* ``foreign_keys=ON``: SQLite ignores foreign keys (and ``ON DELETE CASCADE``) unless
  asked, per connection.
* ``busy_timeout``: wait for another writer rather than fail at once.
* Transactions start with ``BEGIN IMMEDIATE`` by default: a transaction that reads and
  then writes (take a lease, append after reading the WAL) would otherwise fail with
  ``SQLITE_BUSY`` *without waiting* when another process wrote in between. Taking the
  write lock up front makes it wait (busy timeout) instead. Our transactions are short,
  so serializing writers costs little; readers still run concurrently under WAL.
  Python's ``sqlite3`` would otherwise delay ``BEGIN`` to the first write; we turn its
  own transaction handling off and emit ``BEGIN`` ourselves (the recipe from the
  SQLAlchemy docs), which also makes DDL transactional, so a migration applies whole
  or not at all.

The SQLite file is private to the user: :func:`make_engine` creates it (``0600``, and
SQLite gives its ``-wal`` and ``-shm`` files the same mode) and its missing directories
(``0700``) before SQLite opens it.

Errors: :func:`storage_error_from` turns the failures a user must fix (disk full,
read-only, cannot open) into a :class:`~heliostat.exceptions.StorageError` naming the
database and the setting to change; :func:`is_transient_db_error` tells a lost or
refused connection, which a retry can survive, from everything else.

Migrations: the Alembic environment lives in ``heliostat/storage/migrations`` and is
found through :mod:`importlib.resources`, so it works from an installed wheel. A
developer adds a revision (one per schema change; never edit a merged one) with an
``alembic.ini`` holding ``script_location = heliostat/storage/migrations``, then::

    alembic -x url=sqlite:////tmp/dev.db upgrade head
    alembic -x url=sqlite:////tmp/dev.db revision --autogenerate --rev-id 0002 -m "..."

and reviews the draft by hand (``0001_initial.py`` shows the expected shape: explicit
constraint names, no imports from the models). :func:`ensure_schema` is what a process
calls at start-up; two processes calling it at once serialize on a lock (SQLite: the
database write lock, ``BEGIN EXCLUSIVE``; PostgreSQL: a transaction-scoped advisory
lock) and the second finds the schema already at head.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import weakref
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from heliostat.exceptions import StorageError
from heliostat.storage.home import HOME_ENV, create_private_file, default_home, make_private_dirs

__all__ = [
    "DB_FILENAME",
    "SQLITE_BEGIN_OPTION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "current_revision",
    "default_db_url",
    "default_home",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "is_transient_db_error",
    "make_engine",
    "raw_transaction",
    "storage_error_from",
    "upgrade",
]

DB_FILENAME = "heliostat.db"
"""Name of the SQLite file under ``HELIOSTAT_HOME``."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another writer before failing."""

SQLITE_BEGIN_OPTION = "heliostat_sqlite_begin"
"""Connection execution option overriding how one SQLite connection begins transactions:
``conn.execution_options(heliostat_sqlite_begin="DEFERRED")`` for a long read-only scan."""

_DB_URL_ENV: Final = "HELIOSTAT_DB_URL"

_SCHEMA_LOCK_KEY = zlib.crc32(b"heliostat.storage.schema")  # a stable pg advisory lock id

SqliteBegin = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"]


def default_db_url() -> str:
    """The metadata database URL: ``HELIOSTAT_DB_URL``, else SQLite under the home dir."""
    url = os.environ.get(_DB_URL_ENV)
    if url:
        return url
    return f"sqlite:///{default_home() / DB_FILENAME}"


def _enable_wal(cursor: Any) -> None:
    """Switch a SQLite database to WAL mode, tolerating a concurrent switch.

    Changing the journal mode needs an exclusive lock and SQLite does not apply the
    busy timeout to it: two processes opening a new database at once can get
    "database is locked" here. The mode is persistent, so a database already in WAL
    mode needs nothing; otherwise retry for up to the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)  # back off: another process holds the lock for a moment
            delay = min(delay * 2, 0.2)


def make_engine(url: str, *, sqlite_begin: SqliteBegin = "IMMEDIATE", echo: bool = False) -> Engine:
    """Create an engine for the metadata database, set up for durability.

    SQLite: creates the file's directory (``0700``) and the file itself (``0600``, so
    its ``-wal`` and ``-shm`` files are ``0600`` too) when they do not exist, and sets
    the pragmas the module docstring explains on every new connection. PostgreSQL (or
    anything else): a pool that checks connections before use (``pool_pre_ping``), so a
    restarted server is survived.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://...``). For a
            PostgreSQL schema other than ``public`` add
            ``?options=-csearch_path%3Dmyschema``.
        sqlite_begin: how SQLite transactions begin (see the module docstring).
        echo: log every statement (debugging).

    Returns:
        The engine (no connection is opened yet).

    Raises:
        StorageError: the URL cannot be parsed, or the SQLite file or its directory
            cannot be created (permissions, read-only or full disk).
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StorageError(f"Invalid database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True, echo=echo)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    if not in_memory and not database.startswith("file:"):
        _create_sqlite_file(Path(database).expanduser())
    engine = sa.create_engine(
        parsed,
        echo=echo,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )
    begin_sql = f"BEGIN {sqlite_begin}"

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Turn off pysqlite's own (late) BEGIN; the "begin" hook below emits ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION)
        conn.exec_driver_sql(f"BEGIN {mode}" if mode else begin_sql)

    _SQLITE_BEGIN_SQL[engine] = begin_sql
    return engine


_SQLITE_BEGIN_SQL: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def _create_sqlite_file(path: Path) -> None:
    """Create the database's directories (``0700``) and the file itself (``0600``).

    SQLite would create the file with ``0644 & ~umask``, readable by every local user;
    an empty file is a valid empty database, and SQLite gives the ``-wal`` and ``-shm``
    files it creates the mode of the database file. Existing files and directories
    keep their modes.
    """
    try:
        make_private_dirs(path.parent)
        create_private_file(path)
    except OSError as exc:
        raise StorageError(
            f"Cannot create the metadata database {path}: {_os_error_words(exc)}. "
            f"Set {HOME_ENV} to a directory you can write (the SQLite file lives "
            f"there), or {_DB_URL_ENV} to another database."
        ) from exc


@contextlib.contextmanager
def raw_transaction(engine: Engine) -> Iterator[Any]:
    """One transaction on a pooled DBAPI connection; yields its cursor.

    For hot paths that run pre-compiled statements (the workflow group commit):
    SQLAlchemy's ``Connection`` costs tens of microseconds per transaction and per
    statement in Python. Begins as :func:`make_engine`'s engines do (``BEGIN
    IMMEDIATE`` on SQLite; implicitly elsewhere), commits on success, rolls back on
    any exception, and always returns the connection to the pool.
    """
    raw = engine.raw_connection()
    try:
        with contextlib.closing(raw.cursor()) as cursor:
            begin = _SQLITE_BEGIN_SQL.get(engine)
            if begin is not None:
                cursor.execute(begin)
            try:
                yield cursor
            except BaseException:
                raw.rollback()
                raise
            raw.commit()
    finally:
        raw.close()


def _engine_of(engine_or_url: Engine | str) -> tuple[Engine, bool]:
    if isinstance(engine_or_url, Engine):
        return engine_or_url, False
    return make_engine(engine_or_url), True


@contextlib.contextmanager
def _alembic_config(connection: Connection) -> Iterator[Any]:
    """An Alembic config whose ``script_location`` is the packaged migrations directory."""
    from alembic.config import Config

    with resources.as_file(resources.files("heliostat.storage") / "migrations") as path:
        config = Config()
        config.set_main_option("script_location", str(path))
        # env.py runs on this connection instead of opening its own.
        config.attributes["connection"] = connection
        yield config


SCHEMA_HEAD: Final = "0008"
"""The newest migration revision this version of heliostat ships. A constant, so that
opening a database at head needs neither Alembic (about 0.12 s to import) nor a read
of the migration scripts; a test checks it against the scripts."""


def head_revision() -> str:
    """The newest migration revision this version of heliostat ships."""
    return SCHEMA_HEAD


def _known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    with resources.as_file(resources.files("heliostat.storage") / "migrations") as path:
        script = ScriptDirectory(str(path))
        return frozenset(rev.revision for rev in script.walk_revisions())


def _read_revision(conn: Connection) -> str | None:
    # What Alembic's MigrationContext.get_current_revision() reads, without Alembic.
    if not sa.inspect(conn).has_table(_VERSION_TABLE):
        return None
    rows = conn.execute(sa.text(f"SELECT version_num FROM {_VERSION_TABLE}")).all()
    if len(rows) > 1:
        raise StorageError(f"{_VERSION_TABLE} names {len(rows)} revisions; expected one")
    return str(rows[0][0]) if rows else None


_VERSION_TABLE: Final = "alembic_version"


def current_revision(engine: Engine | Connection) -> str | None:
    """The schema revision the database is at, or ``None`` for an empty database."""
    if isinstance(engine, Connection):
        return _read_revision(engine)
    with engine.connect() as conn:
        return _read_revision(conn)


def upgrade(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, in one transaction.

    Does not take the cross-process lock; use :func:`ensure_schema` at start-up.

    Args:
        engine_or_url: an engine from :func:`make_engine`, or a URL to make one from.
        revision: target revision id, or ``"head"``.
    """
    _migrate(engine_or_url, "upgrade", revision)


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Undo migrations down to ``revision``, in one transaction (no cross-process lock)."""
    _migrate(engine_or_url, "downgrade", revision)


def _migrate(engine_or_url: Engine | str, direction: str, revision: str) -> None:
    engine, owned = _engine_of(engine_or_url)
    try:
        with engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
            _upgrade_on(conn, revision, direction)
    finally:
        if owned:
            engine.dispose()


@contextlib.contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite: no foreign key actions while a migration runs (a no-op elsewhere).

    A batch migration rebuilds a table by copying it and dropping the old one; with
    foreign keys on, that DROP would cascade and delete every row referring to the
    table (a step's attempts, a workflow's steps). The pragma only takes effect outside
    a transaction, so this wraps the migration's transaction; afterwards
    ``foreign_key_check`` must find nothing.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
        problems = raw.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise StorageError(f"a migration left rows without their parents: {problems[:5]}")
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def _upgrade_on(conn: Connection, revision: str, direction: str = "upgrade") -> None:
    from alembic import command

    with _alembic_config(conn) as config:
        getattr(command, direction)(config, revision)


def ensure_schema(engine: Engine | str) -> str:
    """Bring the database schema to head if it is not there yet; safe to run concurrently.

    First a lock-free read of the revision: at head (the common case, one query), done.
    Otherwise, in one transaction:

    1. Take the schema lock (PostgreSQL: ``pg_advisory_xact_lock``; SQLite: the
       database write lock, taken by ``BEGIN EXCLUSIVE``). A second
       process waits here.
    2. Read the current revision again: another process may have migrated meanwhile.
    3. Otherwise apply the missing migrations, then commit, which releases the lock.
       A crash before the commit rolls everything back (DDL is transactional on both
       backends), so a half-migrated schema is never seen.

    Args:
        engine: an engine from :func:`make_engine` (or a URL to make one from); a
            SQLite engine made otherwise lacks the locking ``BEGIN`` and the pragmas.

    Returns:
        The revision the database is at afterwards (the head).

    Raises:
        StorageError: the database is at a revision this heliostat does not know
            (a newer heliostat migrated it); upgrade heliostat.
    """
    engine, owned = _engine_of(engine)
    head = head_revision()
    try:
        with engine.connect() as conn:
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})  # a reader
            with conn.begin():
                if _read_revision(conn) == head:
                    return head
        with engine.connect() as conn, _foreign_keys_off(conn):
            # SQLite: our "begin" hook reads this option and takes the write lock.
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "EXCLUSIVE"})
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
                current = _read_revision(conn)
                if current == head:
                    return head
                if current is not None and current not in _known_revisions():
                    raise StorageError(
                        f"The metadata database {engine.url.render_as_string()!r} is at "
                        f"schema revision {current!r}, which this heliostat does not know "
                        f"(it knows up to {head!r}); a newer heliostat migrated it. "
                        "Upgrade heliostat, or point HELIOSTAT_DB_URL at another database."
                    )
                _upgrade_on(conn, "head")
        return head
    finally:
        if owned:
            engine.dispose()


# --- Database errors, in words a user can act on. ---

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_PERM: Final = 3
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_MESSAGES: Final = (  # for errors that lack ``sqlite_errorcode``
    ("database or disk is full", _SQLITE_FULL),
    ("readonly database", _SQLITE_READONLY),
    ("unable to open database file", _SQLITE_CANTOPEN),
    ("disk i/o error", _SQLITE_IOERR),
)
_PG_DISK_FULL: Final = "53100"
_PG_READ_ONLY: Final = "25006"
_PG_TRANSIENT_STATES: Final = frozenset(
    {
        "57P01",  # admin_shutdown: the backend was terminated or the server stops
        "57P02",  # crash_shutdown: another backend crashed, the server restarts
        "57P03",  # cannot_connect_now: the server is starting up or in recovery
    }
)
_PG_TRANSIENT_CLASS: Final = "08"  # connection_exception, connection_failure, ...
_PG_PERMANENT_CONNECT_FAILURES: Final = (
    # A failed connect carries no SQLSTATE; these say that trying again cannot help.
    "does not exist",  # role or database
    "authentication failed",
    "no pg_hba.conf entry",
    "password",
    "permission denied",
    "invalid ",
)


def _driver_errors(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the DBAPI error SQLAlchemy wrapped in it, and their causes (a few deep)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        err = todo.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        if isinstance(err, sa.exc.StatementError):
            todo.append(err.orig)
        todo.append(err.__cause__)


def _sqlite_code(err: BaseException) -> int | None:
    if not isinstance(err, sqlite3.Error):
        return None
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(err).lower()
    for words, known in _SQLITE_MESSAGES:
        if words in text:
            return known
    return None


def _sqlstate(err: BaseException) -> str | None:
    # psycopg 3: ``sqlstate``; psycopg2: ``pgcode``. None when no server reply carried one.
    state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return state if isinstance(state, str) else None


def _is_pg_driver_error(err: BaseException) -> bool:
    return type(err).__module__.split(".", 1)[0] in ("psycopg", "psycopg2")


def _db_name(url: str | sa.URL) -> tuple[str, bool]:
    """How a message names the database (no password), and whether it is a SQLite file."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return "a database whose URL cannot be parsed", False
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            return "the in-memory SQLite database", True
        return str(Path(database).expanduser()), True
    return parsed.render_as_string(hide_password=True), False


def _os_error_words(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def storage_error_from(exc: BaseException, url: str | sa.URL) -> StorageError | None:
    """A :class:`StorageError` for a database error a user must fix, else ``None``.

    Recognises SQLite's "database or disk is full", "attempt to write a readonly
    database", "unable to open database file" and disk I/O errors, and PostgreSQL's
    disk full (SQLSTATE 53100) and read-only transaction (25006), whether raised by the
    driver or wrapped by SQLAlchemy. The message names the database (the SQLite file's
    path, or the URL without its password), says what went wrong, and names the
    setting to change; it never holds the SQL statement or its parameters. Raise the
    result ``from exc`` so the traceback keeps the driver's error.

    Args:
        exc: what a database call raised.
        url: the database's URL (as the engine was made from).

    Returns:
        The error to raise instead, or ``None`` when ``exc`` is none of the above (a
        constraint violation, a bug, a dropped connection: see
        :func:`is_transient_db_error`).
    """
    name, is_sqlite = _db_name(url)
    if is_sqlite:
        move = (
            f"set {HOME_ENV} to another directory (the default SQLite file lives there) "
            f"or {_DB_URL_ENV} to another database"
        )
    else:
        move = f"set {_DB_URL_ENV} to another database"
    for err in _driver_errors(exc):
        code = _sqlite_code(err)
        if code == _SQLITE_FULL:
            return StorageError(
                f"The metadata database {name} cannot grow: the disk it is on is full, "
                "or the database reached its size limit (SQLite: database or disk is "
                f"full). Free space there, or {move}."
            )
        if code == _SQLITE_READONLY:
            return StorageError(
                f"The metadata database {name} is read-only for this process (SQLite: "
                "attempt to write a readonly database): the file, its -wal/-shm files or "
                "its directory are not writable by this user, or the filesystem is "
                f"mounted read-only. Make them writable, or {move}."
            )
        if code in (_SQLITE_CANTOPEN, _SQLITE_PERM):
            return StorageError(
                f"The metadata database {name} cannot be opened (SQLite: unable to open "
                "database file): its directory is missing or not accessible to this "
                f"user, or the path is not a file. Fix the path or permissions, or {move}."
            )
        if code == _SQLITE_IOERR:
            return StorageError(
                f"The metadata database {name} hit a disk I/O error (SQLite: disk I/O "
                "error): the disk failed, filled up or went away (a network or removable "
                f"filesystem). Check that disk, or {move}."
            )
        state = _sqlstate(err)
        if state == _PG_DISK_FULL:
            return StorageError(
                f"The metadata database {name} is out of disk space on its server "
                f"(PostgreSQL SQLSTATE {state}, disk_full). Free space on the server, or "
                f"{move}."
            )
        if state == _PG_READ_ONLY:
            return StorageError(
                f"The metadata database {name} refused a write: it is read-only (PostgreSQL "
                f"SQLSTATE {state}, read_only_sql_transaction: a hot standby, or "
                "default_transaction_read_only is on). Point "
                f"{_DB_URL_ENV} at the primary server."
            )
    return None


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost or refused database connection that a retry can survive.

    True for: SQLAlchemy errors that invalidated their connection
    (``connection_invalidated``) and pool disconnects; PostgreSQL connection errors
    (SQLSTATE class 08), a terminated backend or a server shutting down, crashing or
    starting (57P01, 57P02, 57P03); a PostgreSQL driver's ``OperationalError`` that
    carries no SQLSTATE (connection refused, server closed the connection, network
    dropped), unless its message says retrying cannot help (unknown role or
    database, failed authentication); and Python's ``ConnectionError``.

    False for everything else: constraint violations, disk full, read-only, syntax
    and programming errors, SQLite errors (a locked SQLite database has already waited
    its busy timeout).

    Args:
        exc: what a database call raised (SQLAlchemy's wrapper or the driver's error).
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.DisconnectionError):
        return True
    for err in _driver_errors(exc):
        if isinstance(err, ConnectionError):
            return True
        state = _sqlstate(err)
        if state is not None:
            if state.startswith(_PG_TRANSIENT_CLASS) or state in _PG_TRANSIENT_STATES:
                return True
            continue
        if _is_pg_driver_error(err) and any(
            cls.__name__ == "OperationalError" for cls in type(err).__mro__
        ):
            text = str(err).lower()
            return not any(words in text for words in _PG_PERMANENT_CONNECT_FAILURES)
    return False
