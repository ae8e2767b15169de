"""Migrations: empty database to head on SQLite and PostgreSQL, with no drift.

PostgreSQL tests run in a schema of their own (``hs_test_<hex>``, dropped afterwards) of
the database at ``HELIOSTAT_TEST_PG_URL`` (default: the local ``test`` database). When
it is unreachable they skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from heliostat.exceptions import StorageError
from heliostat.storage import db
from heliostat.storage.models import metadata

TABLES = {
    "workflows",
    "steps",
    "step_attempts",
    "edges",
    "wal",
    "attempt_logs",
    "workflow_dags",
    "workflow_timers",
    "workflow_status_counts",
    "transitions",
    "schedules",
    "schedule_runs",
    "cluster_nodes",
    "cluster_actor_names",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """``factory()`` -> the URL of a new, empty database of the parametrized backend."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_schema_url")
    counter = iter(range(1_000))
    return lambda: f"sqlite:///{tmp_path / f'sub{next(counter)}' / 'meta.db'}"


@pytest.fixture
def engine(db_url_factory: Any) -> Iterator[Engine]:
    eng = db.make_engine(db_url_factory())
    yield eng
    eng.dispose()


def _table_names(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_empty_database_has_no_revision(engine: Engine) -> None:
    assert db.current_revision(engine) is None


def test_upgrade_empty_database_to_head(engine: Engine) -> None:
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert _table_names(engine) == TABLES | {"alembic_version"}


def test_0004_moves_live_leases_into_workflows_and_maps_attempt_states(engine: Engine) -> None:
    """Data written by 0003 survives 0004: leases, counters, attempts (and back)."""
    db.upgrade(engine, "0003")
    t = "'2026-11-30 10:00:00'"
    later = "'2026-11-30 10:00:06'"
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO workflows (workflow_id, status, name, created_at, updated_at, "
            f"metadata, resume_count) VALUES ('w', 'RUNNING', '', {t}, {t}, '{{}}', 0)",
            "INSERT INTO steps (workflow_id, task_id, function_name, status, attempts, "
            "max_retries, idempotent, checkpoint, metadata, position) VALUES "
            "('w', 'a', 'a', 'SUCCESSFUL', 1, 3, true, true, '{}', 0), "
            "('w', 'b', 'b', 'IN_DOUBT', 1, 3, false, true, '{}', 1)",
            "INSERT INTO step_attempts (workflow_id, task_id, attempt, status, started_at) "
            f"VALUES ('w', 'a', 1, 'SUCCESSFUL', {t}), ('w', 'b', 1, 'IN_DOUBT', {t})",
            "INSERT INTO leases (workflow_id, owner, host, pid, acquired_at, heartbeat_at, "
            f"expires_at) VALUES ('w', 'host:1:x', 'host', 1, {t}, {t}, {later})",
        ):
            conn.execute(sa.text(sql))
    db.upgrade(engine)
    with engine.connect() as conn:
        wf = conn.execute(
            sa.text(
                "SELECT lease_owner, lease_host, lease_pid, lease_generation, commit_seq, "
                "steps_total, steps_done FROM workflows"
            )
        ).one()
        assert tuple(wf) == ("host:1:x", "host", 1, 1, 0, 2, 1)
        attempts = conn.execute(
            sa.text(
                "SELECT task_id, status, queued_at IS NOT NULL FROM step_attempts ORDER BY task_id"
            )
        ).all()
        assert [tuple(r) for r in attempts] == [
            ("a", "SUCCESSFUL", True),
            ("b", "INTERRUPTED", True),
        ]
    assert "leases" not in _table_names(engine)
    db.downgrade(engine, "0003")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT owner FROM leases")).scalar_one() == "host:1:x"
        assert (
            conn.execute(
                sa.text("SELECT status FROM step_attempts WHERE task_id = 'b'")
            ).scalar_one()
            == "FAILED"
        )


def test_0005_adds_timers_and_step_exceptions_keeping_data(engine: Engine) -> None:
    """Rows written at 0004 survive 0005 and its downgrade; the new columns and table
    hold data, and a timer goes with its step."""
    db.upgrade(engine, "0004")
    t = "'2026-12-01 10:00:00'"
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO workflows (workflow_id, status, name, created_at, updated_at, "
            f"metadata, resume_count) VALUES ('w', 'FAILED', '', {t}, {t}, '{{}}', 0)",
            "INSERT INTO steps (workflow_id, task_id, function_name, status, attempts, "
            "max_retries, idempotent, checkpoint, metadata, position, error) VALUES "
            "('w', 'nap', 'sleep', 'RUNNING', 1, 3, true, true, '{}', 0, NULL), "
            "('w', 'b', 'b', 'FAILED', 1, 3, true, true, '{}', 1, 'ValueError: x')",
        ):
            conn.execute(sa.text(sql))
    db.upgrade(engine, "0005")
    assert db.current_revision(engine) == "0005"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE steps SET exception = :e, exception_signature = 'sig' WHERE task_id = 'b'"
            ),
            {"e": b"pickled"},
        )
        conn.execute(
            sa.text(
                "INSERT INTO workflow_timers (workflow_id, task_id, set_at, wake_at) "
                "VALUES ('w', 'nap', '2026-12-01 10:00:00', '2026-12-01 11:00:00')"
            )
        )
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT error, exception, exception_signature FROM steps WHERE task_id='b'")
        ).one()
        assert (row[0], bytes(row[1]), row[2]) == ("ValueError: x", b"pickled", "sig")
    with engine.begin() as conn:  # the timer goes with its step
        conn.execute(sa.text("DELETE FROM steps WHERE task_id = 'nap'"))
        assert conn.execute(sa.text("SELECT count(*) FROM workflow_timers")).scalar_one() == 0
    db.downgrade(engine, "0004")
    assert "workflow_timers" not in _table_names(engine)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("steps")}
    assert "exception" not in columns and "exception_signature" not in columns
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT error FROM steps")).scalar_one() == "ValueError: x"


def test_0006_backfills_the_counts_and_swaps_the_list_indexes(engine: Engine) -> None:
    db.upgrade(engine, "0005")
    t = "'2026-12-01 10:00:00'"
    with engine.begin() as conn:
        for i, status in enumerate(["FAILED", "FAILED", "SUCCESSFUL", "RUNNING", "FAILED"]):
            conn.execute(
                sa.text(
                    "INSERT INTO workflows (workflow_id, status, name, created_at, updated_at, "
                    f"metadata, resume_count) VALUES ('w{i}', '{status}', '', {t}, {t}, '{{}}', 0)"
                )
            )
    db.upgrade(engine)
    with engine.connect() as conn:
        sums = conn.execute(
            sa.text(
                "SELECT status, sum(runs), count(*) FROM workflow_status_counts GROUP BY status"
            )
        ).all()
    got = {str(s): (int(n), int(rows)) for s, n, rows in sums}
    assert len(got) == 7 and all(rows == 16 for _, rows in got.values())  # every row exists
    assert {s: n for s, (n, _) in got.items() if n} == {"FAILED": 3, "SUCCESSFUL": 1, "RUNNING": 1}
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("workflows")}
    assert {"ix_workflows_created_at_workflow_id", "ix_workflows_workflow_id"} <= names
    assert "ix_workflows_created_at" not in names
    db.downgrade(engine, "0005")
    assert "workflow_status_counts" not in _table_names(engine)
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("workflows")}
    assert {"ix_workflows_created_at", "ix_workflows_status_created_at"} <= names


def test_upgrade_accepts_a_url(db_url_factory: Any) -> None:
    url = db_url_factory()
    db.upgrade(url, "head")
    eng = db.make_engine(url)
    try:
        assert db.current_revision(eng) == db.head_revision()
    finally:
        eng.dispose()


def test_autogenerate_finds_no_difference_between_models_and_migrations(
    engine: Engine,
) -> None:
    db.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


def _constraints(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every named constraint and index of our tables, as the database reports them."""
    insp = sa.inspect(engine)
    out: dict[str, dict[str, Any]] = {}
    for table in sorted(TABLES):
        out[table] = {
            "pk": insp.get_pk_constraint(table)["name"],
            "fk": sorted(
                (fk["name"], tuple(fk["constrained_columns"]), fk["options"].get("ondelete"))
                for fk in insp.get_foreign_keys(table)
            ),
            "uq": sorted(uq["name"] for uq in insp.get_unique_constraints(table)),
            "ck": sorted((ck["name"], ck["sqltext"]) for ck in insp.get_check_constraints(table)),
            "ix": sorted(
                (ix["name"], tuple(ix["column_names"]))
                for ix in insp.get_indexes(table)
                if not str(ix["name"]).startswith("sqlite_autoindex")
            ),
        }
    return out


def test_migrated_constraints_equal_those_of_the_models(db_url_factory: Any) -> None:
    """Autogenerate ignores CHECK constraints and some names; compare them directly."""
    migrated = db.make_engine(db_url_factory())
    created = db.make_engine(db_url_factory())
    try:
        db.upgrade(migrated)
        metadata.create_all(created)
        got, want = _constraints(migrated), _constraints(created)
        assert got == want
        assert got["workflows"]["ck"][0][0] == "ck_workflows_status"
        assert (
            "ix_workflows_status_created_at_workflow_id",
            ("status", "created_at", "workflow_id"),
        ) in got["workflows"]["ix"]
        assert got["steps"]["pk"] == "pk_steps"
    finally:
        migrated.dispose()
        created.dispose()


def test_status_columns_reject_values_outside_the_enum(engine: Engine) -> None:
    db.ensure_schema(engine)
    insert = sa.text(
        "INSERT INTO workflows (workflow_id, status, name, created_at, updated_at, "
        "metadata, resume_count) VALUES (:id, :status, '', :t, :t, '{}', 0)"
    )
    t = "2026-11-21 00:00:00+00:00"
    with engine.begin() as conn:
        conn.execute(insert, {"id": "ok", "status": "RUNNING", "t": t})
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"id": "bad", "status": "EXPLODED", "t": t})


def test_ensure_schema_migrates_once_then_is_a_no_op(engine: Engine) -> None:
    assert db.ensure_schema(engine) == db.head_revision()
    assert db.ensure_schema(engine) == db.head_revision()
    assert db.current_revision(engine) == db.head_revision()


def test_ensure_schema_refuses_a_revision_it_does_not_know(engine: Engine) -> None:
    db.ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'fromthefuture'"))
    with pytest.raises(StorageError, match="fromthefuture"):
        db.ensure_schema(engine)


def _ensure_in_child(url: str, barrier: Any, results: Any) -> None:
    try:
        eng = db.make_engine(url)
        barrier.wait(timeout=60)
        results.put(("ok", db.ensure_schema(eng)))
        eng.dispose()
    except BaseException as exc:
        results.put(("error", repr(exc)))


def test_concurrent_ensure_schema_from_several_processes(db_url_factory: Any) -> None:
    url = db_url_factory()
    ctx = multiprocessing.get_context("spawn")
    n = 3
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == [("ok", db.head_revision())] * n
    eng = db.make_engine(url)
    try:
        assert db.current_revision(eng) == db.head_revision()
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        eng.dispose()


def test_sqlite_pragmas_are_in_effect(tmp_path: Path) -> None:
    eng = db.make_engine(f"sqlite:///{tmp_path / 'new' / 'dir' / 'meta.db'}")
    try:
        with eng.connect() as conn:

            def pragma(name: str) -> Any:
                return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

            assert pragma("journal_mode") == "wal"
            assert pragma("synchronous") == 2  # FULL
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == db.SQLITE_BUSY_TIMEOUT_MS
        assert (tmp_path / "new" / "dir" / "meta.db").exists()
    finally:
        eng.dispose()


def test_sqlite_transactions_take_the_write_lock_up_front(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    first, second = db.make_engine(url), db.make_engine(url)
    try:
        db.ensure_schema(first)
        with first.connect() as a, second.connect() as b:
            a.begin()
            # BEGIN IMMEDIATE: a second writer cannot even start; it waits (here: 0 s).
            raw = b.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA busy_timeout = 0")  # raw: no BEGIN of its own
            with pytest.raises(sa.exc.OperationalError, match="locked"):
                b.begin()
            a.rollback()
            # A read-only connection may ask for a deferred BEGIN.
            b.execution_options(**{db.SQLITE_BEGIN_OPTION: "DEFERRED"})
            a.begin()
            with b.begin():
                assert b.execute(sa.text("SELECT count(*) FROM workflows")).scalar() == 0
            a.rollback()
    finally:
        first.dispose()
        second.dispose()


def test_postgres_engine_pings_its_pool(pg_schema_url: Any) -> None:
    eng = db.make_engine(pg_schema_url())
    try:
        assert eng.pool._pre_ping
        with eng.connect() as conn:
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
        assert str(schema).startswith("hs_test_")
    finally:
        eng.dispose()


def test_default_db_url_follows_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HELIOSTAT_DB_URL", raising=False)
    monkeypatch.setenv("HELIOSTAT_HOME", str(tmp_path))
    assert db.default_db_url() == f"sqlite:///{tmp_path / 'heliostat.db'}"
    monkeypatch.delenv("HELIOSTAT_HOME")
    assert db.default_db_url() == f"sqlite:///{Path.home() / '.heliostat' / 'heliostat.db'}"
    url = "postgresql+psycopg://someone@db.example:5432/meta"
    monkeypatch.setenv("HELIOSTAT_DB_URL", url)
    assert db.default_db_url() == url


def test_invalid_url_raises_storage_error() -> None:
    with pytest.raises(StorageError, match="Invalid database URL"):
        db.make_engine("not a url")


def test_migrations_ship_inside_the_package() -> None:
    root = resources.files("heliostat.storage") / "migrations"
    assert (root / "env.py").is_file()
    assert (root / "script.py.mako").is_file()
    assert (root / "versions" / "0001_initial.py").is_file()


def test_schema_head_constant_is_the_newest_shipped_migration() -> None:
    """``SCHEMA_HEAD`` spares Alembic at start-up; a new migration must move it."""
    from alembic.script import ScriptDirectory

    with resources.as_file(resources.files("heliostat.storage") / "migrations") as path:
        assert ScriptDirectory(str(path)).get_current_head() == db.SCHEMA_HEAD


def test_opening_a_database_at_head_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    db.ensure_schema(url)  # migrated here, in this process
    code = (
        "import sys; from heliostat.storage import db; "
        f"assert db.ensure_schema({url!r}) == db.SCHEMA_HEAD; "
        "sys.exit(1 if 'alembic' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "alembic was imported"
