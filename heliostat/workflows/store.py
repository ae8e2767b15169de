"""The workflow executor's view of the SQL lineage: one transaction per batch.

:class:`WorkflowStore` turns the executor's :class:`Batch` of records (INTENTs,
COMMITs, failed attempts, status changes, steps added by continuations) into rows of
the lineage schema (``heliostat.storage.models``) in *one* transaction: this is the
group commit of DESIGN §9. It uses SQLAlchemy Core ``executemany`` statements, since
the ORM's unit of work costs far more per row than the fsync it shares.

Leases (DESIGN §4): a running workflow has one ``leases`` row (owner, host, pid,
heartbeat, expiry). A driver takes a workflow only when the row is absent, is its own,
has expired, or names a process on this host that no longer exists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import operator
import os
import socket
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from heliostat.exceptions import HeliostatInternalError, WorkflowLeaseError, WorkflowNotFoundError
from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.db import ensure_schema, make_engine, raw_transaction
from heliostat.storage.models import Edge, Lease, Step, StepAttempt, Transition, WalRecord, Workflow
from heliostat.storage.states import StepStatus, WalKind, WorkflowStatus, check_transition
from heliostat.workflows.compile import CompiledWorkflow

__all__ = [
    "Batch",
    "LeaseOwner",
    "StepRecord",
    "WorkflowRecord",
    "WorkflowStore",
]

_W: sa.Table = Workflow.__table__  # type: ignore[assignment]
_S: sa.Table = Step.__table__  # type: ignore[assignment]
_A: sa.Table = StepAttempt.__table__  # type: ignore[assignment]
_E: sa.Table = Edge.__table__  # type: ignore[assignment]
_WAL: sa.Table = WalRecord.__table__  # type: ignore[assignment]
_L: sa.Table = Lease.__table__  # type: ignore[assignment]
_T: sa.Table = Transition.__table__  # type: ignore[assignment]


def _key(table: sa.Table) -> Any:
    return (table.c.workflow_id == sa.bindparam("w")) & (table.c.task_id == sa.bindparam("t"))


# Statements of the group commit, built once (see WorkflowStore.apply).
_WAL_INSERT = _WAL.insert()
_STEP_INSERT = _S.insert()
_EDGE_INSERT = _E.insert()
_ATTEMPT_INSERT = _A.insert()
_TRANSITION_INSERT = _T.insert()
_STEP_COMMIT = (
    _S.update()
    .where(_key(_S))
    .values(
        status=sa.bindparam("st"),
        attempts=sa.bindparam("a"),
        output_location=sa.bindparam("loc"),
        output_checksum=sa.bindparam("sum"),
        output_format=sa.bindparam("fmt"),
        output_size=sa.bindparam("size"),
        output_inline=sa.bindparam("data"),
        finished_at=sa.bindparam("now"),
        error=sa.bindparam("err"),
    )
)
_STEP_FAIL = (
    _S.update()
    .where(_key(_S))
    .values(
        status=sa.bindparam("step_st"),
        error=sa.bindparam("err"),
        traceback=sa.bindparam("tb"),
        finished_at=sa.bindparam("now"),
    )
)
_STEP_STATUS_OF = sa.select(_S.c.status).where(_key(_S))
_STEP_STATUS = _S.update().where(_key(_S)).values(status=sa.bindparam("st"))
_STEP_INTENT = (
    _S.update()
    .where(_key(_S))
    .values(
        status=StepStatus.RUNNING,
        attempts=sa.bindparam("a"),
        started_at=sa.bindparam("now"),
        finished_at=None,
    )
)
_ATTEMPT_DONE = (
    _A.update()
    .where(_key(_A) & (_A.c.attempt == sa.bindparam("a")))
    .values(status=sa.bindparam("st"), finished_at=sa.bindparam("now"), error=sa.bindparam("err"))
)


class _Prepared:
    """One DML statement compiled once for a dialect and run on the DBAPI cursor.

    The group commit runs on every executor turn, a few statements each; going through
    ``Connection.execute`` costs about 0.1 ms per statement in SQLAlchemy's Python
    (parameter processing, result setup, events), which was most of a chain step's
    cost. Here the SQL text, the order of its parameters and each parameter's bind
    processor (the column type's conversion, e.g. ``UTCDateTime``) are worked out once;
    a row becomes a parameter tuple (or dict) by one ``itemgetter`` call plus the
    conversions, each distinct value converted once per batch.
    """

    __slots__ = ("_convert", "_fixed", "_get", "_names", "_positional", "sql")

    def __init__(self, stmt: Any, dialect: Any, keys: Iterable[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        self.sql: str = compiled.string
        self._positional: bool = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if self._positional else list(compiled.binds)
        given = set(keys or ())
        self._names = names
        self._convert: list[tuple[int, Any]] = []
        self._fixed: dict[str, Any] = {}
        for i, name in enumerate(names):
            bind = compiled.binds[name]
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self._convert.append((i, proc))
            if bind.required or name in given:
                continue  # each row gives it
            if bind.callable is not None:  # a Python-side default: give it in the rows
                raise HeliostatInternalError(f"{name!r} of {self.sql!r} needs a value per row")
            self._fixed[name] = bind.value  # a literal of .values(...)
        if not names:
            self._get: Callable[[dict[str, Any]], Any] = lambda row: ()
        elif len(names) == 1:
            only = names[0]
            self._get = lambda row: (row[only],)
        else:
            self._get = operator.itemgetter(*names)

    def params(self, rows: list[dict[str, Any]]) -> list[Any]:
        get, fixed, convert = self._get, self._fixed, self._convert
        # Rows share most values (the batch's one timestamp, the workflow id, states):
        # each distinct object is converted once. ``rows`` keeps them alive, so their
        # ids are not reused meanwhile.
        done: dict[tuple[int, int], Any] = {}
        out: list[Any] = []
        for row in rows:
            values = list(get({**fixed, **row} if fixed else row))
            for i, proc in convert:
                v = values[i]
                key = (i, id(v))
                if key in done:
                    values[i] = done[key]
                else:
                    values[i] = done[key] = proc(v)
            out.append(
                tuple(values) if self._positional else dict(zip(self._names, values, strict=True))
            )
        return out


def _wal_row(
    workflow_id: str,
    task_id: str,
    attempt: int,
    kind: WalKind,
    now: dt.datetime,
    ref: CheckpointRef | None,
) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "task_id": task_id,
        "attempt": attempt,
        "kind": kind,
        "idempotency_key": f"{workflow_id}:{task_id}",
        "created_at": now,
        "location": ref.location if ref else None,
        "checksum": ref.checksum if ref else None,
    }


def _ref_format(output_format: str | None) -> Any:
    if output_format in (None, "continuation"):
        return "pickle"
    return output_format


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseOwner:
    """Who runs a workflow: one per driver process."""

    owner: str
    host: str
    pid: int

    @staticmethod
    def this_process() -> LeaseOwner:
        return LeaseOwner(
            owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            host=socket.gethostname(),
            pid=os.getpid(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """A step as the log knows it."""

    task_id: str
    name: str
    status: StepStatus
    attempts: int
    idempotent: bool
    checkpoint: CheckpointRef | None
    output_format: str | None
    error: str | None
    traceback: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    position: int
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRecord:
    """A workflow as the log knows it (steps included when loaded with them)."""

    workflow_id: str
    status: WorkflowStatus
    dag: bytes | None
    metadata: dict[str, Any]
    output_task_id: str | None
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    resume_count: int
    lease_owner: str | None = None
    lease_host: str | None = None
    lease_pid: int | None = None
    lease_expires_at: dt.datetime | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """Records the executor produced since its last commit."""

    intents: list[tuple[str, int, str]] = field(default_factory=list)
    commits: list[tuple[str, int, CheckpointRef | None, str, str | None, StepStatus]] = field(
        default_factory=list
    )
    failures: list[tuple[str, int, str, str, bool]] = field(default_factory=list)
    statuses: list[tuple[str, StepStatus, str]] = field(default_factory=list)
    new_steps: list[CompiledWorkflow] = field(default_factory=list)

    def intent(self, task_id: str, attempt: int, key: str) -> None:
        self.intents.append((task_id, attempt, key))

    def commit(
        self,
        task_id: str,
        attempt: int,
        ref: CheckpointRef | None,
        cause: str,
        output_format: str | None = None,
        start: StepStatus = StepStatus.RUNNING,
    ) -> None:
        self.commits.append((task_id, attempt, ref, cause, output_format, start))

    def attempt_failed(
        self, task_id: str, attempt: int, exc: BaseException, *, final: bool
    ) -> None:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        tb = getattr(exc, "remote_traceback", "") or "".join(traceback.format_exception(exc))
        self.failures.append((task_id, attempt, text[:4000], tb, final))

    def step_status(self, task_id: str, status: StepStatus, cause: str) -> None:
        self.statuses.append((task_id, status, cause))

    def add_steps(self, compiled: CompiledWorkflow) -> None:
        self.new_steps.append(compiled)

    def __bool__(self) -> bool:
        return bool(
            self.intents or self.commits or self.failures or self.statuses or self.new_steps
        )


def _step_rows(workflow_id: str, compiled: CompiledWorkflow) -> tuple[list[dict[str, Any]], ...]:
    steps = []
    edges = []
    for task_id, spec in compiled.steps.items():
        opts = spec.options
        steps.append(
            {
                "workflow_id": workflow_id,
                "task_id": task_id,
                "function_name": spec.name,
                "status": StepStatus.PENDING,
                "attempts": 0,
                "max_retries": opts.max_retries,
                "idempotent": opts.idempotent,
                "checkpoint": opts.checkpoint,
                "idempotency_key": f"{workflow_id}:{task_id}",
                "metadata": dict(opts.metadata),
                "position": spec.position,
            }
        )
        for position, parent in enumerate(spec.parents):
            edges.append(
                {
                    "workflow_id": workflow_id,
                    "parent_task_id": parent,
                    "child_task_id": task_id,
                    "position": position,
                }
            )
    return steps, edges


class WorkflowStore:
    """SQL access for workflows: create, load, group-committed batches, leases."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._prepared: dict[tuple[int, tuple[str, ...]], _Prepared] = {}

    @classmethod
    def open(cls, url: str) -> WorkflowStore:
        """Connect to ``url`` and migrate the schema to head if needed."""
        engine = make_engine(url)
        ensure_schema(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- workflows ----------------------------------------------------------------

    def create(
        self,
        *,
        workflow_id: str,
        compiled: CompiledWorkflow,
        metadata: dict[str, Any],
        name: str,
        owner: LeaseOwner,
        lease_timeout: float,
    ) -> None:
        """Record a new workflow, its steps and edges, and take its lease: one transaction."""
        now = _now()
        steps, edges = _step_rows(workflow_id, compiled)
        with self.engine.begin() as conn:
            conn.execute(
                _W.insert().values(
                    workflow_id=workflow_id,
                    status=WorkflowStatus.RUNNING,
                    name=name,
                    created_at=now,
                    updated_at=now,
                    started_at=now,
                    metadata=metadata,
                    dag=compiled.to_bytes(),
                    output_task_id=compiled.output,
                    resume_count=0,
                )
            )
            # Thousands of rows for a big fan-out: the prepared path (see _Prepared).
            dbapi = conn.connection.dbapi_connection
            with contextlib.closing(dbapi.cursor()) as cursor:  # type: ignore[union-attr]
                self._run(cursor, _STEP_INSERT, steps)
                if edges:
                    self._run(cursor, _EDGE_INSERT, edges)
            conn.execute(
                _T.insert().values(
                    entity="workflow",
                    workflow_id=workflow_id,
                    start=None,
                    finish=WorkflowStatus.RUNNING,
                    cause="run()",
                    at=now,
                )
            )
            self._write_lease(conn, workflow_id, owner, lease_timeout, now, insert=True)

    def exists(self, workflow_id: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_W.c.workflow_id).where(_W.c.workflow_id == workflow_id))
            return row.first() is not None

    def load(self, workflow_id: str, *, with_steps: bool = True) -> WorkflowRecord:
        """The workflow's record.

        Raises:
            WorkflowNotFoundError: no such workflow.
        """
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_W, _L.c.owner, _L.c.host, _L.c.pid, _L.c.expires_at)
                .select_from(_W.outerjoin(_L, _L.c.workflow_id == _W.c.workflow_id))
                .where(_W.c.workflow_id == workflow_id)
            ).first()
            if row is None:
                raise WorkflowNotFoundError(
                    f"No workflow with id {workflow_id!r}.", workflow_id=workflow_id
                )
            steps = self._load_steps(conn, workflow_id) if with_steps else {}
        return self._record(row, steps)

    @staticmethod
    def _record(row: Any, steps: dict[str, StepRecord]) -> WorkflowRecord:
        m = row._mapping
        return WorkflowRecord(
            workflow_id=m["workflow_id"],
            status=WorkflowStatus(m["status"]),
            dag=m.get("dag"),
            metadata=m["metadata"] or {},
            output_task_id=m["output_task_id"],
            error=m["error"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            resume_count=m["resume_count"],
            lease_owner=m.get("owner"),
            lease_host=m.get("host"),
            lease_pid=m.get("pid"),
            lease_expires_at=m.get("expires_at"),
            steps=steps,
        )

    def _load_steps(self, conn: Connection, workflow_id: str) -> dict[str, StepRecord]:
        rows = conn.execute(sa.select(_S).where(_S.c.workflow_id == workflow_id)).all()
        out = {}
        for r in rows:
            m = r._mapping
            ref = None
            if m["output_location"]:
                ref = CheckpointRef(
                    location=m["output_location"],
                    checksum=m["output_checksum"] or "",
                    # A continuation's checkpoint is the pickled sub-DAG.
                    format=_ref_format(m["output_format"]),
                    size=m["output_size"] or 0,
                    data=m["output_inline"],
                )
            out[m["task_id"]] = StepRecord(
                task_id=m["task_id"],
                name=m["function_name"],
                status=StepStatus(m["status"]),
                attempts=m["attempts"],
                idempotent=m["idempotent"],
                checkpoint=ref,
                output_format=m["output_format"],
                error=m["error"],
                traceback=m["traceback"],
                started_at=m["started_at"],
                finished_at=m["finished_at"],
                position=m["position"],
                metadata=m["metadata"] or {},
            )
        return out

    def list_workflows(
        self,
        status_filter: Iterable[WorkflowStatus] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        search: str | None = None,
    ) -> list[WorkflowRecord]:
        # Every column but the pickled DAG, which a listing never needs (and which is
        # most of a row's bytes).
        columns = [c for c in _W.c if c.name != "dag"]
        query = (
            sa.select(*columns, _L.c.owner, _L.c.host, _L.c.pid, _L.c.expires_at)
            .select_from(_W.outerjoin(_L, _L.c.workflow_id == _W.c.workflow_id))
            .order_by(_W.c.created_at.desc(), _W.c.workflow_id)
        )
        if status_filter is not None:
            query = query.where(_W.c.status.in_([str(s) for s in status_filter]))
        if search:
            query = query.where(_W.c.workflow_id.contains(search, autoescape=True))
        if limit is not None:
            query = query.limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [self._record(row, {}) for row in conn.execute(query)]

    def delete(self, workflow_id: str) -> None:
        with self.engine.begin() as conn:
            for table in (_T, _WAL, _A, _E, _S, _L):
                conn.execute(table.delete().where(table.c.workflow_id == workflow_id))
            result = conn.execute(_W.delete().where(_W.c.workflow_id == workflow_id))
            if result.rowcount == 0:
                raise WorkflowNotFoundError(
                    f"No workflow with id {workflow_id!r}.", workflow_id=workflow_id
                )

    def set_status(
        self, workflow_id: str, status: WorkflowStatus, *, cause: str, error: str | None = None
    ) -> WorkflowStatus:
        """Move the workflow to ``status`` (checked against the state table)."""
        now = _now()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(_W.c.status).where(_W.c.workflow_id == workflow_id).with_for_update()
            ).first()
            if row is None:
                raise WorkflowNotFoundError(
                    f"No workflow with id {workflow_id!r}.", workflow_id=workflow_id
                )
            start = WorkflowStatus(row[0])
            if start is status:
                return start
            check_transition("workflow", workflow_id, start, status)
            values: dict[str, Any] = {"status": status, "updated_at": now}
            if error is not None or status is WorkflowStatus.SUCCESSFUL:
                values["error"] = error
            if status in (
                WorkflowStatus.SUCCESSFUL,
                WorkflowStatus.FAILED,
                WorkflowStatus.CANCELED,
                WorkflowStatus.NEEDS_ATTENTION,
            ):
                values["finished_at"] = now
            if status is WorkflowStatus.RUNNING:
                values["started_at"] = now
                values["finished_at"] = None
                values["resume_count"] = _W.c.resume_count + 1
            conn.execute(_W.update().where(_W.c.workflow_id == workflow_id).values(**values))
            conn.execute(
                _T.insert().values(
                    entity="workflow",
                    workflow_id=workflow_id,
                    start=start,
                    finish=status,
                    cause=cause,
                    at=now,
                )
            )
            if status is not WorkflowStatus.RUNNING:
                conn.execute(_L.delete().where(_L.c.workflow_id == workflow_id))
        return start

    def status(self, workflow_id: str) -> WorkflowStatus:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_W.c.status).where(_W.c.workflow_id == workflow_id)
            ).first()
        if row is None:
            raise WorkflowNotFoundError(
                f"No workflow with id {workflow_id!r}.", workflow_id=workflow_id
            )
        return WorkflowStatus(row[0])

    def is_cancelled(self, workflow_id: str) -> bool:
        return self.status(workflow_id) is WorkflowStatus.CANCELED

    # --- the group commit ------------------------------------------------------------

    def apply(self, workflow_id: str, batch: Batch) -> None:
        """Write every record of ``batch`` in one transaction (nothing if it is empty).

        The statements are built once at import (module constants) and compiled once
        per database (:class:`_Prepared`), so a batch costs parameter lists and one
        DBAPI ``executemany`` per statement, then one commit.
        """
        if not batch:
            return
        now = _now()
        w = workflow_id
        transitions: list[dict[str, Any]] = []

        def moved(task_id: str, start: StepStatus | None, finish: StepStatus, cause: str) -> None:
            transitions.append(
                {
                    "entity": "step",
                    "workflow_id": w,
                    "task_id": task_id,
                    "start": start,
                    "finish": finish,
                    "cause": cause,
                    "at": now,
                }
            )

        wal: list[dict[str, Any]] = []
        with raw_transaction(self.engine) as cursor:

            def run(stmt: Any, rows: list[dict[str, Any]]) -> None:
                self._run(cursor, stmt, rows)

            for compiled in batch.new_steps:
                steps, edges = _step_rows(w, compiled)
                run(_STEP_INSERT, steps)
                if edges:
                    run(_EDGE_INSERT, edges)
            if batch.statuses:
                current: dict[str, StepStatus] = {}
                for t, _s, _c in batch.statuses:
                    if t not in current:
                        run(_STEP_STATUS_OF, [{"w": w, "t": t}])
                        found = cursor.fetchone()
                        if found is not None:
                            current[t] = StepStatus(found[0])
                for t, status, cause in batch.statuses:
                    start = current.get(t)
                    if start is not None and start is not status:
                        check_transition("step", f"{w}/{t}", start, status)
                    moved(t, start, status, cause)
                    current[t] = status
                run(_STEP_STATUS, [{"w": w, "t": t, "st": st} for t, st, _c in batch.statuses])
            if batch.commits:
                rows = []
                for t, a, ref, cause, fmt, start in batch.commits:
                    wal.append(_wal_row(w, t, a, WalKind.COMMIT, now, ref))
                    rows.append(
                        {
                            "w": w,
                            "t": t,
                            "a": a,
                            "st": StepStatus.SUCCESSFUL,
                            "loc": ref.location if ref else None,
                            "sum": ref.checksum if ref else None,
                            "fmt": fmt or (ref.format if ref else None),
                            "size": ref.size if ref else None,
                            "data": ref.data if ref else None,
                            "now": now,
                            "err": None,
                        }
                    )
                    if start is not StepStatus.RUNNING or cause != "finished":
                        moved(t, start, StepStatus.SUCCESSFUL, cause)
                run(_STEP_COMMIT, rows)
                run(_ATTEMPT_DONE, rows)
            if batch.failures:
                rows = []
                for t, a, err, tb, final in batch.failures:
                    wal.append(_wal_row(w, t, a, WalKind.ABORT, now, None))
                    rows.append(
                        {
                            "w": w,
                            "t": t,
                            "a": a,
                            "st": StepStatus.FAILED,
                            "step_st": StepStatus.FAILED if final else StepStatus.PENDING,
                            "err": err,
                            "tb": tb,
                            "now": now,
                        }
                    )
                    moved(t, StepStatus.RUNNING, StepStatus.FAILED, "raised")
                    if not final:
                        moved(t, StepStatus.FAILED, StepStatus.RUNNING, "retry")
                        moved(t, StepStatus.RUNNING, StepStatus.PENDING, "retry queued")
                run(_STEP_FAIL, rows)
                run(_ATTEMPT_DONE, rows)
            if batch.intents:
                rows = []
                for t, a, key in batch.intents:
                    row = _wal_row(w, t, a, WalKind.INTENT, now, None)
                    row["idempotency_key"] = key
                    wal.append(row)
                    rows.append({"w": w, "t": t, "a": a, "now": now})
                run(_STEP_INTENT, rows)
                run(
                    _ATTEMPT_INSERT,
                    [
                        {
                            "workflow_id": w,
                            "task_id": r["t"],
                            "attempt": r["a"],
                            "status": StepStatus.RUNNING,
                            "started_at": now,
                        }
                        for r in rows
                    ],
                )
            if wal:
                run(_WAL_INSERT, wal)
            if transitions:
                run(_TRANSITION_INSERT, transitions)

    def _run(self, cursor: Any, stmt: Any, rows: list[dict[str, Any]]) -> None:
        prepared = self._prepare(stmt, rows[0])
        if len(rows) == 1:
            cursor.execute(prepared.sql, prepared.params(rows)[0])
        else:
            cursor.executemany(prepared.sql, prepared.params(rows))

    def _prepare(self, stmt: Any, row: dict[str, Any]) -> _Prepared:
        key = (id(stmt), tuple(row))
        prepared = self._prepared.get(key)
        if prepared is None:
            keys = row if isinstance(stmt, sa.Insert) else None  # an INSERT names its columns
            prepared = self._prepared[key] = _Prepared(stmt, self.engine.dialect, keys)
        return prepared

    # --- leases ---------------------------------------------------------------------

    @staticmethod
    def _write_lease(
        conn: Connection,
        workflow_id: str,
        owner: LeaseOwner,
        timeout: float,
        now: dt.datetime,
        *,
        insert: bool,
    ) -> None:
        values = {
            "owner": owner.owner,
            "host": owner.host,
            "pid": owner.pid,
            "acquired_at": now,
            "heartbeat_at": now,
            "expires_at": now + dt.timedelta(seconds=timeout),
        }
        if insert:
            conn.execute(_L.insert().values(workflow_id=workflow_id, **values))
        else:
            conn.execute(_L.update().where(_L.c.workflow_id == workflow_id).values(**values))

    @staticmethod
    def lease_is_live(
        owner: str | None, host: str | None, pid: int | None, expires_at: dt.datetime | None
    ) -> bool:
        """Whether a lease still protects its workflow."""
        if owner is None or expires_at is None:
            return False
        if host == socket.gethostname() and pid and not psutil.pid_exists(pid):
            return False  # its process is gone: no need to wait for the expiry
        return expires_at > _now()

    def acquire_lease(self, workflow_id: str, owner: LeaseOwner, timeout: float) -> None:
        """Take the workflow's lease, or raise if another live driver holds it.

        Raises:
            WorkflowLeaseError: the lease is held by a live driver.
            WorkflowNotFoundError: no such workflow.
        """
        now = _now()
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(_W.c.workflow_id).where(_W.c.workflow_id == workflow_id).with_for_update()
            ).first()
            if exists is None:
                raise WorkflowNotFoundError(
                    f"No workflow with id {workflow_id!r}.", workflow_id=workflow_id
                )
            row = conn.execute(sa.select(_L).where(_L.c.workflow_id == workflow_id)).first()
            if row is None:
                self._write_lease(conn, workflow_id, owner, timeout, now, insert=True)
                return
            m = row._mapping
            if m["owner"] != owner.owner and self.lease_is_live(
                m["owner"], m["host"], m["pid"], m["expires_at"]
            ):
                raise WorkflowLeaseError(
                    f"Workflow {workflow_id!r} is being run by another driver "
                    f"({m['owner']}, pid {m['pid']} on {m['host']}); its lease expires at "
                    f"{m['expires_at']:%Y-%m-%d %H:%M:%S} UTC unless renewed.",
                    workflow_id=workflow_id,
                )
            self._write_lease(conn, workflow_id, owner, timeout, now, insert=False)

    def renew_leases(self, owner: LeaseOwner, workflow_ids: list[str], timeout: float) -> None:
        if not workflow_ids:
            return
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                _L.update()
                .where(_L.c.workflow_id.in_(workflow_ids), _L.c.owner == owner.owner)
                .values(heartbeat_at=now, expires_at=now + dt.timedelta(seconds=timeout))
            )

    def release_lease(self, workflow_id: str, owner: LeaseOwner) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                _L.delete().where(_L.c.workflow_id == workflow_id, _L.c.owner == owner.owner)
            )
