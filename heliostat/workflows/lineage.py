"""The lineage a workflow run leaves in SQL, read back: runs, steps, attempts, logs, WAL.

:class:`LineageReader` holds the reads that the API, the CLI and (later) the UI share
(the records it returns are in :mod:`heliostat.workflows.lineage_records`);
:class:`~heliostat.workflows.store.WorkflowStore` adds the writes. Reads take no write
lock on SQLite (they begin DEFERRED), never load a DAG or steps a listing does not
need, and authenticate what could be unpickled: a step's output record is checked
against its ``output_signature`` when it is read, and the DAG against its
signature (table ``workflow_dags``) by :meth:`LineageReader.load_dag`, before anything is decoded.

Connection failures are retried for ``retry_for`` seconds (see :meth:`_retrying`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from heliostat._process import process_running
from heliostat.exceptions import (
    HeliostatInternalError,
    StorageError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
)
from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.db import SQLITE_BEGIN_OPTION, is_transient_db_error, storage_error_from
from heliostat.storage.models import (
    AttemptLog,
    Edge,
    Step,
    StepAttempt,
    Transition,
    WalRecord,
    Workflow,
    WorkflowDag,
    WorkflowStatusCount,
    WorkflowTimer,
)
from heliostat.storage.signing import Signer
from heliostat.storage.states import AttemptStatus, StepStatus, WalKind, WorkflowStatus
from heliostat.workflows.compile import CompiledWorkflow
from heliostat.workflows.lease import LeaseHolder, holder_is_live, lease_gone, lease_timeout
from heliostat.workflows.lineage_records import (
    AttemptRecord,
    LogPage,
    StepRecord,
    WalEntry,
    WorkflowRecord,
)
from heliostat.workflows.step import StepLogs

__all__ = [
    "DEFAULT_RETRY_TIMEOUT",
    "AttemptRecord",
    "LineageReader",
    "LogPage",
    "StepRecord",
    "WalEntry",
    "WorkflowRecord",
    "driver_gone",
    "exception_signed_parts",
    "merge_pages",
    "not_found",
    "retry_timeout",
]

log = logging.getLogger("heliostat.workflows")

DEFAULT_RETRY_TIMEOUT = 60.0
"""Seconds a lineage read or write keeps retrying a lost database connection."""

_W: sa.Table = Workflow.__table__  # type: ignore[assignment]
_S: sa.Table = Step.__table__  # type: ignore[assignment]
_A: sa.Table = StepAttempt.__table__  # type: ignore[assignment]
_WAL: sa.Table = WalRecord.__table__  # type: ignore[assignment]
_T: sa.Table = Transition.__table__  # type: ignore[assignment]
_LOG: sa.Table = AttemptLog.__table__  # type: ignore[assignment]
_DAG: sa.Table = WorkflowDag.__table__  # type: ignore[assignment]
_TIMER: sa.Table = WorkflowTimer.__table__  # type: ignore[assignment]
_E: sa.Table = Edge.__table__  # type: ignore[assignment]
_COUNT: sa.Table = WorkflowStatusCount.__table__  # type: ignore[assignment]

_R = TypeVar("_R")


def driver_gone(
    holder: LeaseHolder, now: dt.datetime | None = None, *, retry_for: float | None = None
) -> bool:
    """Whether ``holder``'s driver has surely stopped running its workflow.

    Stricter than an expired lease, for those who act on a run they were not asked to
    take (a status read marking it RESUMABLE, the scheduler's recovery, ``resume_all``):
    a driver that rides out a database outage, as ``HELIOSTAT_DB_RETRY_TIMEOUT`` lets
    it, renews its lapsed lease once the database is back and must not be fenced
    meanwhile. Gone: nobody holds the lease, its process on this host has exited, or it
    lapsed longer ago than a driver keeps retrying (``retry_for``, default
    :func:`retry_timeout`) plus a lease timeout.
    """
    retry = retry_timeout() if retry_for is None else retry_for
    return lease_gone(
        holder,
        now or dt.datetime.now(dt.UTC),
        grace=dt.timedelta(seconds=retry + _lease_timeout_or_default()),
        this_host=socket.gethostname(),
        pid_exists=process_running,
    )


def _lease_timeout_or_default() -> float:
    try:
        return lease_timeout()
    except ValueError:  # a bad setting is reported by whoever takes a lease
        return 0.0


def retry_timeout() -> float:
    """``HELIOSTAT_DB_RETRY_TIMEOUT`` seconds, else :data:`DEFAULT_RETRY_TIMEOUT`."""
    raw = os.environ.get("HELIOSTAT_DB_RETRY_TIMEOUT")
    if raw is None:
        return DEFAULT_RETRY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"HELIOSTAT_DB_RETRY_TIMEOUT must be seconds >= 0, not {raw!r}.")
    return value


class LineageReader:
    """Reads of the lineage database (see the module docstring).

    Args:
        engine: an engine from :func:`heliostat.storage.db.make_engine` (schema at head).
        signer: checks the signatures of the pickled data rows refer to.
        retry_for: seconds to retry a lost connection (None: :func:`retry_timeout`).
    """

    LEASE_COLUMNS = (
        _W.c.lease_owner,
        _W.c.lease_host,
        _W.c.lease_pid,
        _W.c.lease_acquired_at,
        _W.c.lease_heartbeat_at,
        _W.c.lease_expires_at,
        _W.c.lease_generation,
    )
    """The lease columns, for queries of other stores (the schedule store's)."""

    def __init__(self, engine: Engine, *, signer: Signer, retry_for: float | None = None) -> None:
        self.engine = engine
        self.signer = signer
        self.retry_for = retry_timeout() if retry_for is None else retry_for
        self.where = _describe_db(engine)

    def close(self) -> None:
        self.engine.dispose()

    def _retrying(self, what: str, fn: Callable[[], _R]) -> _R:
        """Run ``fn`` (one transaction), retrying lost connections for ``retry_for`` s.

        Raises:
            StorageError: a problem the user must fix (disk full, read-only database),
                or the database stayed unreachable past the retry bound.
        """
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        warned = False
        while True:
            try:
                return fn()
            except (WorkflowLeaseError, WorkflowNotFoundError, HeliostatInternalError):
                raise
            except Exception as exc:
                error = storage_error_from(exc, self.engine.url)
                if error is not None:
                    raise error from exc
                if not is_transient_db_error(exc):
                    if isinstance(exc, sa.exc.DBAPIError):
                        raise StorageError(
                            f"The lineage database {self.where} failed to {what}: "
                            f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0]}"
                        ) from exc
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"The lineage database {self.where} was unreachable for "
                        f"{self.retry_for:g} s while trying to {what} "
                        f"({type(exc).__name__}). The workflow was left as it was and can "
                        "be resumed once the database is back (raise "
                        "HELIOSTAT_DB_RETRY_TIMEOUT to wait longer)."
                    ) from exc
                if not warned:
                    log.warning(
                        "lineage database %s unreachable (%s); retrying for up to %g s",
                        self.where,
                        type(exc).__name__,
                        self.retry_for,
                    )
                    warned = True
                time.sleep(delay)  # backing off from a database that is down
                delay = min(delay * 2, 2.0)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reading: on SQLite it begins DEFERRED, taking no write lock
        (the engine's transactions otherwise begin IMMEDIATE)."""
        with self.engine.connect() as conn:
            yield conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})

    # --- creating and taking workflows ------------------------------------------------

    @staticmethod
    def holder_of(m: Mapping[str, Any] | sa.RowMapping) -> LeaseHolder:
        """The lease columns of a row (selected with :attr:`LEASE_COLUMNS`)."""
        return LeaseHolder(
            owner=m["lease_owner"],
            host=m["lease_host"],
            pid=m["lease_pid"],
            acquired_at=m["lease_acquired_at"],
            heartbeat_at=m["lease_heartbeat_at"],
            expires_at=m["lease_expires_at"],
            generation=int(m["lease_generation"] or 0),
        )

    @staticmethod
    def lease_is_live(holder: LeaseHolder, now: dt.datetime | None = None) -> bool:
        """Whether ``holder`` protects its workflow now (real time unless given)."""
        return holder_is_live(
            holder,
            now or dt.datetime.now(dt.UTC),
            this_host=socket.gethostname(),
            pid_exists=process_running,
        )

    def holder_is_gone(self, holder: LeaseHolder, now: dt.datetime | None = None) -> bool:
        """Whether ``holder``'s driver has surely stopped (see :func:`driver_gone`)."""
        return driver_gone(holder, now, retry_for=self.retry_for)

    def exists(self, workflow_id: str) -> bool:
        with self._read() as conn:
            row = conn.execute(sa.select(_W.c.workflow_id).where(_W.c.workflow_id == workflow_id))
            return row.first() is not None

    def load(self, workflow_id: str, *, with_steps: bool = True) -> WorkflowRecord:
        """The workflow's record (its steps too, unless ``with_steps=False``).

        Raises:
            WorkflowNotFoundError: no such workflow.
            UnauthenticatedDataError: a step output's row is not signed with this
                installation's key.
        """

        def read() -> WorkflowRecord:
            with self._read() as conn:
                row = conn.execute(sa.select(_W).where(_W.c.workflow_id == workflow_id)).first()
                if row is None:
                    raise not_found(workflow_id)
                steps = self._load_steps(conn, workflow_id) if with_steps else {}
            return self._record(row._mapping, steps)

        return self._retrying("read the workflow", read)

    def load_dag(self, record: WorkflowRecord) -> CompiledWorkflow:
        """The run's stored DAG, authenticated before it is unpickled.

        Raises:
            UnauthenticatedDataError: its signature is missing or wrong.
        """
        wid = record.workflow_id

        def read() -> tuple[bytes, str] | None:
            with self._read() as conn:
                row = conn.execute(
                    sa.select(_DAG.c.dag, _DAG.c.signature).where(_DAG.c.workflow_id == wid)
                ).first()
            return (bytes(row[0]), str(row[1])) if row is not None else None

        found = self._retrying("read the workflow's DAG", read)
        if found is None:
            raise HeliostatInternalError(f"workflow {wid!r} has no stored DAG")
        dag, signature = found
        self.signer.check(
            signature or None,
            "workflow-dag",
            wid,
            dag,
            what=f"the compiled DAG of workflow {wid!r}",
            origin=f"the lineage database {self.where}",
        )
        return CompiledWorkflow.from_bytes(dag)

    def timers(self, workflow_id: str) -> dict[str, dt.datetime]:
        """The wake-up time of each ``workflow.sleep`` step of the run that has started."""

        def read() -> dict[str, dt.datetime]:
            with self._read() as conn:
                rows = conn.execute(
                    sa.select(_TIMER.c.task_id, _TIMER.c.wake_at).where(
                        _TIMER.c.workflow_id == workflow_id
                    )
                ).all()
            return {str(r[0]): r[1] for r in rows}

        return self._retrying("read the workflow's timers", read)

    def step_exception(self, workflow_id: str, task_id: str) -> bytes | None:
        """The pickled exception that failed step ``task_id``, authenticated; ``None``
        when none was stored (the step did not fail, or its error could not be pickled).

        Raises:
            UnauthenticatedDataError: the bytes are not signed with this installation's key.
        """

        def read() -> tuple[bytes, str | None] | None:
            with self._read() as conn:
                row = conn.execute(
                    sa.select(_S.c.exception, _S.c.exception_signature).where(
                        (_S.c.workflow_id == workflow_id) & (_S.c.task_id == task_id)
                    )
                ).first()
            if row is None or row[0] is None:
                return None
            return bytes(row[0]), row[1]

        found = self._retrying("read the step's exception", read)
        if found is None:
            return None
        data, signature = found
        self.signer.check(
            signature,
            *exception_signed_parts(workflow_id, task_id, data),
            what=f"the exception of step {task_id!r} of workflow {workflow_id!r}",
            origin=f"the lineage database {self.where}",
        )
        return data

    def _record(
        self, m: Mapping[str, Any] | sa.RowMapping, steps: dict[str, StepRecord]
    ) -> WorkflowRecord:
        return WorkflowRecord(
            workflow_id=m["workflow_id"],
            status=WorkflowStatus(m["status"]),
            name=m["name"],
            metadata=m["metadata"] or {},
            output_task_id=m["output_task_id"],
            error=m["error"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            resume_count=m["resume_count"],
            schedule=m["schedule"],
            steps_total=m["steps_total"],
            steps_done=m["steps_done"],
            lease=self.holder_of(m),
            commit_seq=int(m["commit_seq"]),
            steps=steps,
        )

    def _load_steps(self, conn: Connection, workflow_id: str) -> dict[str, StepRecord]:
        rows = conn.execute(sa.select(_S).where(_S.c.workflow_id == workflow_id)).all()
        out = {}
        for r in rows:
            m = r._mapping
            ref = None
            if m["output_location"]:
                fmt = m["output_format"]
                ref = CheckpointRef(
                    location=m["output_location"],
                    checksum=m["output_checksum"] or "",
                    # A continuation's checkpoint is the pickled sub-DAG.
                    format="pickle" if fmt in (None, "continuation") else fmt,
                    size=m["output_size"] or 0,
                    data=m["output_inline"],
                )
                self.signer.check(
                    m["output_signature"],
                    "step-output",
                    workflow_id,
                    m["task_id"],
                    ref.location,
                    ref.checksum,
                    fmt or ref.format,
                    what=f"the output record of step {m['task_id']!r} of workflow {workflow_id!r}",
                    origin=f"the lineage database {self.where}",
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
                error_type=m["error_type"],
                traceback=m["traceback"],
                queued_at=m["queued_at"],
                started_at=m["started_at"],
                finished_at=m["finished_at"],
                position=m["position"],
                metadata=m["metadata"] or {},
                idempotency_key=m["idempotency_key"],
                code_hash=m["code_hash"],
                input_hash=m["input_hash"],
            )
        return out

    def _id_contains(self, text: str) -> Any:
        """Ids that contain ``text``: case-sensitive on both databases (``LIKE`` is not:
        SQLite folds ASCII case, PostgreSQL does not), with no wildcard to escape."""
        needle = sa.bindparam("id_text", text, type_=sa.String())
        if self.engine.dialect.name == "sqlite":
            return sa.func.instr(_W.c.workflow_id, needle) > 0
        return sa.func.strpos(_W.c.workflow_id, needle) > 0

    def list_workflows(
        self,
        status_filter: Iterable[WorkflowStatus] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        search: str | None = None,
    ) -> list[WorkflowRecord]:
        """Workflows newest first, without their DAGs or steps; ``search`` keeps the ids
        that contain it (case-sensitive, as :meth:`list_page`)."""
        # The UI's page order (ties on time: the greater id first), so both list alike.
        query = sa.select(_W).order_by(_W.c.created_at.desc(), _W.c.workflow_id.desc())
        if status_filter is not None:
            query = query.where(_W.c.status.in_([str(s) for s in status_filter]))
        if search:
            query = query.where(self._id_contains(search))
        if limit is not None:
            query = query.limit(limit).offset(offset)

        def read() -> list[WorkflowRecord]:
            with self._read() as conn:
                return [self._record(row._mapping, {}) for row in conn.execute(query)]

        return self._retrying("list workflows", read)

    def list_page(
        self,
        status_filter: Iterable[WorkflowStatus] | None = None,
        *,
        limit: int,
        search: str | None = None,
        after: tuple[dt.datetime, str] | None = None,
        newest_first: bool = True,
    ) -> list[WorkflowRecord]:
        """One page of workflows ordered by creation (start) time, then id: keyset paging.

        ``after`` is the ``(created_at, workflow_id)`` of the last row of the previous
        page; the page holds the rows after it in the chosen order. ``search`` keeps the
        ids that contain it anywhere (case-sensitive; ``%`` and ``_`` are plain text).

        Every query is one range of an index whose key is the page's order
        (``(created_at, workflow_id)``, ``(status, created_at, workflow_id)``), read
        from the cursor for ``limit`` rows, so the thousandth page costs what the first
        does. Several statuses: one such query per status, merged here (an ``IN`` list
        would make the database sort every matching row). A search tests each entry of
        that range as it is read, and stops once the page is full: a common text fills a
        page after a few entries; a rare one reads the whole range, which stays an index
        walk with no sort (tens of milliseconds at 100,000 runs on either database). No
        B-tree index answers "contains", and a trigram index would need PostgreSQL's
        ``pg_trgm`` extension, which a heliostat database cannot count on.
        """
        statuses = sorted({str(s) for s in status_filter}) if status_filter is not None else None
        key = sa.tuple_(_W.c.created_at, _W.c.workflow_id)
        if newest_first:
            order = (_W.c.created_at.desc(), _W.c.workflow_id.desc())
        else:
            order = (_W.c.created_at.asc(), _W.c.workflow_id.asc())
        base = sa.select(_W).order_by(*order).limit(limit)
        if search:
            base = base.where(self._id_contains(search))
        if after is not None:
            at, wid = after
            bound = sa.tuple_(
                sa.bindparam("after_at", at, type_=_W.c.created_at.type),
                sa.bindparam("after_id", wid, type_=_W.c.workflow_id.type),
            )
            base = base.where(key < bound if newest_first else key > bound)
        queries = (
            [base]
            if statuses is None
            else [base.where(_W.c.status == sa.bindparam("st", s)) for s in statuses]
        )

        def read() -> list[WorkflowRecord]:
            with self._read() as conn:
                pages = [[self._record(r._mapping, {}) for r in conn.execute(q)] for q in queries]
            return merge_pages(pages, limit=limit, newest_first=newest_first)

        return self._retrying("list workflows", read)

    def status_counts(self) -> dict[WorkflowStatus, int]:
        """How many workflows are in each stored status (statuses with none left out).

        Read from ``workflow_status_counts``, which the store keeps current in the
        transaction of every status change: 112 small rows, whatever the number of runs.
        """
        query = sa.select(_COUNT.c.status, sa.func.sum(_COUNT.c.runs)).group_by(_COUNT.c.status)

        def read() -> dict[WorkflowStatus, int]:
            with self._read() as conn:
                return {WorkflowStatus(s): int(n) for s, n in conn.execute(query) if n}

        return self._retrying("count workflows", read)

    def recent_runs(self, limit: int) -> list[tuple[dt.datetime, WorkflowStatus]]:
        """``(created_at, status)`` of the newest ``limit`` workflows, newest first."""
        query = (
            sa.select(_W.c.created_at, _W.c.status).order_by(_W.c.created_at.desc()).limit(limit)
        )

        def read() -> list[tuple[dt.datetime, WorkflowStatus]]:
            with self._read() as conn:
                return [(at, WorkflowStatus(s)) for at, s in conn.execute(query)]

        return self._retrying("list recent workflows", read)

    def edges(self, workflow_id: str) -> list[tuple[str, str]]:
        """``(parent task id, child task id)`` of the workflow's data dependencies."""
        query = (
            sa.select(_E.c.parent_task_id, _E.c.child_task_id)
            .where(_E.c.workflow_id == workflow_id)
            .distinct()
        )

        def read() -> list[tuple[str, str]]:
            with self._read() as conn:
                return [(p, c) for p, c in conn.execute(query)]

        return self._retrying("read the workflow's edges", read)

    def status(self, workflow_id: str) -> WorkflowStatus:
        def read() -> WorkflowStatus:
            with self._read() as conn:
                row = conn.execute(
                    sa.select(_W.c.status).where(_W.c.workflow_id == workflow_id)
                ).first()
            if row is None:
                raise not_found(workflow_id)
            return WorkflowStatus(row[0])

        return self._retrying("read the workflow's status", read)

    def attempts(self, workflow_id: str, task_id: str | None = None) -> list[AttemptRecord]:
        """Attempts of a workflow's steps (of one step), in the order they were made."""
        query = sa.select(_A).where(_A.c.workflow_id == workflow_id).order_by(_A.c.id)
        if task_id is not None:
            query = query.where(_A.c.task_id == task_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            AttemptRecord(
                task_id=m["task_id"],
                attempt=m["attempt"],
                status=AttemptStatus(m["status"]),
                queued_at=m["queued_at"],
                started_at=m["started_at"],
                finished_at=m["finished_at"],
                error=m["error"],
                error_type=m["error_type"],
                traceback=m["traceback"],
                worker=m["worker"],
            )
            for m in (r._mapping for r in rows)
        ]

    def logs(self, workflow_id: str, task_id: str | None = None) -> list[tuple[str, int, StepLogs]]:
        """``(task id, attempt, logs)`` of what the steps printed, in step order."""
        query = (
            sa.select(_LOG, _S.c.position)
            .select_from(
                _LOG.join(
                    _S, (_S.c.workflow_id == _LOG.c.workflow_id) & (_S.c.task_id == _LOG.c.task_id)
                )
            )
            .where(_LOG.c.workflow_id == workflow_id)
            .order_by(_S.c.position, _LOG.c.attempt)
        )
        if task_id is not None:
            query = query.where(_LOG.c.task_id == task_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            (
                m["task_id"],
                m["attempt"],
                StepLogs(text=m["text"], size=m["size"], truncated=m["truncated"]),
            )
            for m in (r._mapping for r in rows)
        ]

    def log_pages(
        self,
        workflow_id: str,
        task_id: str,
        *,
        limit: int,
        attempt: int | None = None,
        offset: int | None = None,
    ) -> list[LogPage]:
        """A window of each attempt's stored output (of attempt ``attempt`` only, if
        given), oldest attempt first: ``limit`` characters from ``offset``, or the last
        ``limit`` when ``offset`` is ``None``. Only the window leaves the database
        (``substr`` in SQL), never the whole megabyte."""
        text_len = sa.func.length(_LOG.c.text)
        if offset is None:
            start: Any = sa.case((text_len > limit, text_len - limit + 1), else_=1)
        else:
            start = sa.literal(offset + 1, sa.Integer())
        query = (
            sa.select(
                _LOG.c.attempt,
                text_len,
                start,
                sa.func.substr(_LOG.c.text, start, limit),
                _LOG.c.size,
                _LOG.c.truncated,
            )
            .where((_LOG.c.workflow_id == workflow_id) & (_LOG.c.task_id == task_id))
            .order_by(_LOG.c.attempt)
        )
        if attempt is not None:
            query = query.where(_LOG.c.attempt == attempt)

        def read() -> list[LogPage]:
            with self._read() as conn:
                rows = conn.execute(query).all()
            return [
                LogPage(
                    attempt=int(a),
                    text=text or "",
                    offset=min(int(first) - 1, int(length or 0)),
                    length=int(length or 0),
                    size=int(size),
                    truncated=bool(cut),
                )
                for a, length, first, text, size, cut in rows
            ]

        return self._retrying("read the step's logs", read)

    def wal(self, workflow_id: str, task_id: str | None = None) -> list[WalEntry]:
        """The WAL records of a workflow (of one step), oldest first."""
        query = sa.select(_WAL).where(_WAL.c.workflow_id == workflow_id).order_by(_WAL.c.id)
        if task_id is not None:
            query = query.where(_WAL.c.task_id == task_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            WalEntry(
                task_id=m["task_id"],
                attempt=m["attempt"],
                kind=WalKind(m["kind"]),
                idempotency_key=m["idempotency_key"],
                created_at=m["created_at"],
                location=m["location"],
                checksum=m["checksum"],
            )
            for m in (r._mapping for r in rows)
        ]

    def transitions(
        self, workflow_id: str, task_id: str | None = None
    ) -> list[tuple[str | None, str | None, str, str, dt.datetime]]:
        """``(task id or None, start, finish, cause, at)`` rows, oldest first."""
        query = sa.select(_T).where(_T.c.workflow_id == workflow_id).order_by(_T.c.id)
        if task_id is not None:
            query = query.where(_T.c.task_id == task_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            (m["task_id"], m["start"], m["finish"], m["cause"], m["at"])
            for m in (r._mapping for r in rows)
        ]


def merge_pages(
    pages: list[list[WorkflowRecord]], *, limit: int, newest_first: bool
) -> list[WorkflowRecord]:
    """The first ``limit`` rows of pages (each already in order) in page order."""
    if len(pages) == 1:
        return pages[0][:limit]
    rows = [r for page in pages for r in page]
    rows.sort(key=lambda r: (r.created_at, r.workflow_id), reverse=newest_first)
    return rows[:limit]


def _describe_db(engine: Engine) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return str(url.database or ":memory:")
    return url.render_as_string(hide_password=True)


def exception_signed_parts(workflow_id: str, task_id: str, data: bytes) -> tuple[bytes | str, ...]:
    """What the signature of a step's stored exception covers (writer and reader agree)."""
    return ("step-exception", workflow_id, task_id, data)


def not_found(workflow_id: str) -> WorkflowNotFoundError:
    return WorkflowNotFoundError(f"No workflow with id {workflow_id!r}.", workflow_id=workflow_id)
