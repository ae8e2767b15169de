"""The workflow executor's SQL writes: fenced group commits, leases, runs created.

:class:`WorkflowStore` (reads inherited from
:class:`~heliostat.workflows.lineage.LineageReader`) writes what the workflow state machine decided
(:mod:`heliostat.workflows.machine` records) and decides nothing itself, with one
exception that must sit inside a transaction: whether the lease may be taken, which it
asks the pure :func:`~heliostat.workflows.lease.decide_takeover` under the row lock.

A group commit (:meth:`WorkflowStore.commit`), in one transaction:

1. **Fence.** ``UPDATE workflows SET commit_seq = n, lease_expires_at = ..., ...
   WHERE workflow_id = w AND lease_generation = g AND commit_seq = n - 1`` (and, when
   the batch starts steps, ``AND status = 'RUNNING'``). One row: go on; the lease is
   renewed as a side effect. No row: read why. Another generation: the lease was taken
   over, raise :class:`~heliostat.exceptions.WorkflowLeaseError` (``fenced``), write
   nothing. ``commit_seq`` already ``n``: this is a retry of a commit whose first try
   did commit before its connection broke; done. Not RUNNING: the workflow was
   canceled, so the batch's INTENTs are refused (the caller drops them and commits
   the rest).
2. Insert the records as rows: WAL INTENT / COMMIT / ABORT, attempts, step rows,
   transitions, logs, with one ``executemany`` per statement on the DBAPI cursor
   (:class:`~heliostat.storage.prepared.PreparedCache`).
3. When the batch ends the run (``finish``): its status moves, and the counts per
   status (``workflow_status_counts``) move with it, in the same transaction.
4. Commit: one fsync for the whole batch.

Counts per status. Every change of a workflow's stored status made here (create,
take-over, cancel, the final group commit, delete) also updates its two rows of
``workflow_status_counts`` (one UPDATE, last in the transaction so that on PostgreSQL
the row locks are held only for the commit), so the UI reads the counts instead of
counting runs. Steps never touch it.

Every pickled value this store hands out is authenticated first: the stored DAG by its
signature in ``workflow_dags``, each step output by its ``output_signature`` (an HMAC over the
workflow and step ids, the output's location, checksum and format, with the
installation key; the checksum then vouches for the bytes). A row written without the
key raises :class:`~heliostat.exceptions.UnauthenticatedDataError` instead.

Connection failures (a PostgreSQL restart) are retried with backoff for up to
``retry_timeout`` seconds (``HELIOSTAT_DB_RETRY_TIMEOUT``, default 60); errors a user
must fix (a full disk, a read-only database) become a
:class:`~heliostat.exceptions.StorageError` that names the database and the setting.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from heliostat.exceptions import (
    HeliostatInternalError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
)
from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.db import (
    ensure_schema,
    make_engine,
    raw_transaction,
)
from heliostat.storage.models import (
    COUNT_SHARDS,
    LOG_LIMIT,
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
from heliostat.storage.prepared import PreparedCache
from heliostat.storage.signing import Signer
from heliostat.storage.states import (
    AttemptStatus,
    StepStatus,
    WalKind,
    WorkflowStatus,
    check_transition,
)
from heliostat.workflows.compile import CompiledWorkflow
from heliostat.workflows.events import (
    AttemptEnded,
    Commit,
    Intent,
    Record,
    StepLogs,
    StepMoved,
    StepsAdded,
    TimerSet,
    WorkflowMove,
)
from heliostat.workflows.lease import (
    Lease,
    LeaseHolder,
    LeaseOwner,
    Refuse,
    decide_takeover,
)
from heliostat.workflows.lineage import (
    LineageReader,
    exception_signed_parts,
    not_found,
)
from heliostat.workflows.step import ErrorInfo

__all__ = ["CommitResult", "WorkflowStore", "count_shard", "held_error"]

log = logging.getLogger("heliostat.workflows")

_W: sa.Table = Workflow.__table__  # type: ignore[assignment]
_S: sa.Table = Step.__table__  # type: ignore[assignment]
_A: sa.Table = StepAttempt.__table__  # type: ignore[assignment]
_E: sa.Table = Edge.__table__  # type: ignore[assignment]
_WAL: sa.Table = WalRecord.__table__  # type: ignore[assignment]
_T: sa.Table = Transition.__table__  # type: ignore[assignment]
_LOG: sa.Table = AttemptLog.__table__  # type: ignore[assignment]
_DAG: sa.Table = WorkflowDag.__table__  # type: ignore[assignment]
_TIMER: sa.Table = WorkflowTimer.__table__  # type: ignore[assignment]
_COUNT: sa.Table = WorkflowStatusCount.__table__  # type: ignore[assignment]


def _key(table: sa.Table) -> Any:
    return (table.c.workflow_id == sa.bindparam("w")) & (table.c.task_id == sa.bindparam("t"))


# Statements of the group commit, built once (PreparedCache keys on their identity).
_WAL_INSERT = _WAL.insert()
_STEP_INSERT = _S.insert()
_EDGE_INSERT = _E.insert()
_ATTEMPT_INSERT = _A.insert()
_TRANSITION_INSERT = _T.insert()
_LOG_INSERT = _LOG.insert()
_TIMER_INSERT = _TIMER.insert()
_ATTEMPT_END = (
    _A.update()
    .where(_key(_A) & (_A.c.attempt == sa.bindparam("a")))
    .values(
        status=sa.bindparam("st"),
        started_at=sa.func.coalesce(
            sa.bindparam("started", type_=_A.c.started_at.type), _A.c.started_at
        ),
        finished_at=sa.bindparam("finished"),
        worker=sa.bindparam("worker"),
        error=sa.bindparam("err"),
        error_type=sa.bindparam("etype"),
        traceback=sa.bindparam("tb"),
    )
)


def _fence(*, running: bool) -> Any:
    """The fencing UPDATE (see the module docstring); ``running``: refuse if canceled."""
    where = (
        (_W.c.workflow_id == sa.bindparam("w"))
        & (_W.c.lease_generation == sa.bindparam("g"))
        & (_W.c.commit_seq == sa.bindparam("prev"))
    )
    if running:
        where = where & (_W.c.status == WorkflowStatus.RUNNING)
    return (
        _W.update()
        .where(where)
        .values(
            commit_seq=sa.bindparam("seq"),
            updated_at=sa.bindparam("now"),
            lease_heartbeat_at=sa.bindparam("now"),
            lease_expires_at=sa.bindparam("exp"),
            steps_done=_W.c.steps_done + sa.bindparam("done"),
            steps_total=_W.c.steps_total + sa.bindparam("added"),
        )
    )


_FENCE_RUNNING = _fence(running=True)
_FENCE_ANY = _fence(running=False)
_FENCED_ROW = (_W.c.workflow_id == sa.bindparam("w")) & (_W.c.lease_generation == sa.bindparam("g"))
_RELEASE = (
    _W.update()
    .where(_FENCED_ROW)
    .values(
        updated_at=sa.bindparam("now"),
        lease_owner=sa.bindparam("owner"),
        lease_expires_at=sa.bindparam("exp"),
    )
)
_FINISH = _RELEASE.values(
    status=sa.bindparam("st"), finished_at=sa.bindparam("fin"), error=sa.bindparam("err")
)
_FENCE_STATE = sa.select(_W.c.lease_generation, _W.c.commit_seq, _W.c.status).where(
    _W.c.workflow_id == sa.bindparam("w")
)
# Counts per status: a run moving from "old" to "new" (both rows of its shard in one
# statement), and a run added (+1) or deleted (-1).
_COUNT_MOVE = (
    _COUNT.update()
    .where(
        (_COUNT.c.shard == sa.bindparam("sh"))
        & _COUNT.c.status.in_([sa.bindparam("old"), sa.bindparam("new")])
    )
    .values(
        runs=_COUNT.c.runs
        + sa.case(
            (_COUNT.c.status == sa.bindparam("new"), sa.literal_column("1")),
            else_=sa.literal_column("-1"),
        )
    )
)
_COUNT_ADD = (
    _COUNT.update()
    .where((_COUNT.c.status == sa.bindparam("st")) & (_COUNT.c.shard == sa.bindparam("sh")))
    .values(runs=_COUNT.c.runs + sa.bindparam("d", type_=sa.Integer()))
)


def count_shard(workflow_id: str) -> int:
    """The row of each status that counts this workflow (always the same one)."""
    return zlib.crc32(workflow_id.encode()) % COUNT_SHARDS


def _counted(rowcount: int, expected: int, workflow_id: str) -> None:
    if rowcount != expected:
        raise HeliostatInternalError(
            f"workflow {workflow_id!r}: {rowcount} rows of workflow_status_counts updated, "
            f"not {expected} (a schema not made by heliostat's migrations?)"
        )


# Step row updates, one statement per set of columns a batch changes (see _step_updates).
_STEP_UPDATES: dict[frozenset[str], Any] = {}


def _step_update(names: frozenset[str]) -> Any:
    """The UPDATE of a step row setting the columns whose bind names (``v_`` + column)
    are ``names``."""
    stmt = _STEP_UPDATES.get(names)
    if stmt is None:
        columns = sorted(n.removeprefix("v_") for n in names)
        stmt = _STEP_UPDATES[names] = (
            _S.update()
            .where(_key(_S))
            .values({c: sa.bindparam(f"v_{c}", type_=_S.c[c].type) for c in columns})
        )
    return stmt


def _error_columns(error: ErrorInfo) -> dict[str, Any]:
    return {
        "v_error": error.summary[:4000],
        "v_error_type": error.type_name,
        "v_traceback": error.traceback,
    }


class CommitResult:
    """What :meth:`WorkflowStore.commit` did."""

    COMMITTED = "committed"
    INTENTS_REFUSED = "intents refused"  # the workflow was canceled: nothing written


# --- the store ------------------------------------------------------------------------


class WorkflowStore(LineageReader):
    """The lineage reads (:class:`~heliostat.workflows.lineage.LineageReader`) and the
    writes of workflow runs: create, take over, fenced group commits, leases.

    Args:
        engine: an engine from :func:`heliostat.storage.db.make_engine` (schema at head).
        signer: signs (and checks) the pickled data rows refer to.
        retry_for: seconds to retry a lost connection (None: ``retry_timeout()``).
    """

    def __init__(self, engine: Engine, *, signer: Signer, retry_for: float | None = None) -> None:
        super().__init__(engine, signer=signer, retry_for=retry_for)
        self._prepared = PreparedCache(engine.dialect)

    @classmethod
    def open(cls, url: str, *, signer: Signer, retry_for: float | None = None) -> WorkflowStore:
        """Connect to ``url`` and migrate the schema to head if needed.

        A database that is down (restarting) is waited for, as long as a write would
        be (``retry_for``).

        Raises:
            StorageError: the database stays unreachable, or cannot be used as it is.
        """
        store = cls(make_engine(url), signer=signer, retry_for=retry_for)
        try:
            store._retrying("open the lineage database", lambda: ensure_schema(store.engine))
        except BaseException:
            store.close()
            raise
        return store

    def create(
        self,
        *,
        workflow_id: str,
        compiled: CompiledWorkflow,
        metadata: dict[str, Any],
        name: str,
        schedule: str | None,
        owner: LeaseOwner,
        timeout: float,
        now: dt.datetime,
    ) -> Lease | None:
        """Record a new workflow, its steps and edges, RUNNING under ``owner``'s lease.

        One transaction. Returns the lease, or ``None`` if a workflow with this id
        exists already (then nothing was written).
        """
        dag = compiled.to_bytes()
        signature = self.signer.sign("workflow-dag", workflow_id, dag)
        steps, edges = _step_rows(workflow_id, compiled)

        def write() -> Lease | None:
            try:
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
                            output_task_id=compiled.output,
                            resume_count=0,
                            schedule=schedule,
                            steps_total=len(steps),
                            steps_done=0,
                            lease_owner=owner.owner,
                            lease_host=owner.host,
                            lease_pid=owner.pid,
                            lease_acquired_at=now,
                            lease_heartbeat_at=now,
                            lease_expires_at=now + dt.timedelta(seconds=timeout),
                            lease_generation=1,
                            commit_seq=0,
                        )
                    )
                    conn.execute(
                        _DAG.insert().values(workflow_id=workflow_id, dag=dag, signature=signature)
                    )
                    dbapi = conn.connection.dbapi_connection
                    with contextlib.closing(dbapi.cursor()) as cursor:  # type: ignore[union-attr]
                        self._prepared.run(cursor, _STEP_INSERT, steps)
                        self._prepared.run(cursor, _EDGE_INSERT, edges)
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
                    self._count_add(conn, workflow_id, WorkflowStatus.RUNNING, 1)
            except sa.exc.IntegrityError:
                try:
                    existing = self.load(workflow_id, with_steps=False)
                except WorkflowNotFoundError:
                    raise  # another constraint: a bug in heliostat's rows
                if existing.lease.owner == owner.owner and existing.lease.generation == 1:
                    # Our own first try committed; only its acknowledgement was lost.
                    return Lease(
                        workflow_id=workflow_id, owner=owner, generation=1, timeout=timeout
                    )
                return None  # somebody else created it first
            return Lease(workflow_id=workflow_id, owner=owner, generation=1, timeout=timeout)

        return self._retrying("record a new workflow", write)

    def take_over(
        self,
        workflow_id: str,
        owner: LeaseOwner,
        *,
        timeout: float,
        now: dt.datetime,
        moves: Callable[[WorkflowStatus, bool], list[WorkflowMove]],
    ) -> tuple[Lease, int]:
        """Take the workflow's lease and move its status, in one transaction.

        ``moves(status, previous_live)`` decides the status transitions (pure; it may
        raise to refuse). Returns the lease and the run's current ``commit_seq``.

        Raises:
            WorkflowLeaseError: a live lease of another owner holds it (names the holder).
            WorkflowNotFoundError: no such workflow.
        """

        def write() -> tuple[Lease, int]:
            with self.engine.begin() as conn:
                query = sa.select(_W.c.status, _W.c.commit_seq, *self.LEASE_COLUMNS).where(
                    _W.c.workflow_id == workflow_id
                )
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update()
                row = conn.execute(query).first()
                if row is None:
                    raise not_found(workflow_id)
                m = row._mapping
                holder = self.holder_of(m)
                if holder.owner == owner.owner:
                    # A retry whose first try committed (its acknowledgement was lost):
                    # the lease and the status moves are already written.
                    mine = Lease(
                        workflow_id=workflow_id,
                        owner=owner,
                        generation=holder.generation,
                        timeout=timeout,
                    )
                    return mine, int(m["commit_seq"])
                decision = decide_takeover(
                    holder, owner, now, timeout, pid_exists=psutil.pid_exists
                )
                if isinstance(decision, Refuse):
                    raise held_error(workflow_id, decision.holder)
                status = WorkflowStatus(m["status"])
                steps = moves(status, decision.previous_live and holder.owner != owner.owner)
                values: dict[str, Any] = {
                    "lease_owner": owner.owner,
                    "lease_host": owner.host,
                    "lease_pid": owner.pid,
                    "lease_acquired_at": now,
                    "lease_heartbeat_at": now,
                    "lease_expires_at": decision.expires_at,
                    "lease_generation": decision.generation,
                    "updated_at": now,
                }
                values.update(self._move_values(workflow_id, status, steps, now, conn))
                conn.execute(_W.update().where(_W.c.workflow_id == workflow_id).values(**values))
                self._count_move(conn, workflow_id, status, values.get("status", status))
            lease = Lease(
                workflow_id=workflow_id,
                owner=owner,
                generation=decision.generation,
                timeout=timeout,
            )
            return lease, int(m["commit_seq"])

        return self._retrying("take the workflow's lease", write)

    @staticmethod
    def _move_values(
        workflow_id: str,
        status: WorkflowStatus,
        moves: list[WorkflowMove],
        now: dt.datetime,
        conn: Connection,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Columns for ``moves`` (checked against the table), transitions rows written."""
        values: dict[str, Any] = {}
        for move in moves:
            if move.start is not status:
                raise HeliostatInternalError(
                    f"workflow {workflow_id!r} is {status}, not {move.start} as planned"
                )
            check_transition("workflow", workflow_id, move.start, move.finish)
            conn.execute(
                _T.insert().values(
                    entity="workflow",
                    workflow_id=workflow_id,
                    start=move.start,
                    finish=move.finish,
                    cause=move.cause,
                    at=now,
                )
            )
            status = move.finish
            values["status"] = status
            if status is WorkflowStatus.RUNNING:
                values["started_at"] = now
                values["finished_at"] = None
                values["error"] = None
                values["resume_count"] = _W.c.resume_count + 1
            elif status is not WorkflowStatus.RESUMABLE:
                values["finished_at"] = now
        if error is not None:
            values["error"] = error
        return values

    def move(
        self,
        workflow_id: str,
        moves: Callable[[WorkflowStatus], list[WorkflowMove]],
        *,
        now: dt.datetime,
        error: str | None = None,
    ) -> WorkflowStatus:
        """Move a workflow's status outside of a run (cancel); returns the new status.

        ``moves(status)`` decides from the status read under the row lock.
        """

        def write() -> WorkflowStatus:
            with self.engine.begin() as conn:
                query = sa.select(_W.c.status).where(_W.c.workflow_id == workflow_id)
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update()
                row = conn.execute(query).first()
                if row is None:
                    raise not_found(workflow_id)
                status = WorkflowStatus(row[0])
                steps = moves(status)
                if not steps:
                    return status
                values = self._move_values(workflow_id, status, steps, now, conn, error)
                values["updated_at"] = now
                conn.execute(_W.update().where(_W.c.workflow_id == workflow_id).values(**values))
                self._count_move(conn, workflow_id, status, steps[-1].finish)
                return steps[-1].finish

        return self._retrying("change the workflow's status", write)

    def _count_move(
        self, conn: Connection, workflow_id: str, old: WorkflowStatus, new: WorkflowStatus
    ) -> None:
        """Move the run from ``old``'s count to ``new``'s (nothing if they are equal)."""
        if old is new:
            return
        result = conn.execute(_COUNT_MOVE, {"sh": count_shard(workflow_id), "old": old, "new": new})
        _counted(result.rowcount, 2, workflow_id)

    def _count_add(
        self, conn: Connection, workflow_id: str, status: WorkflowStatus, delta: int
    ) -> None:
        result = conn.execute(
            _COUNT_ADD, {"st": status, "sh": count_shard(workflow_id), "d": delta}
        )
        _counted(result.rowcount, 1, workflow_id)

    # --- leases --------------------------------------------------------------------------

    def renew_leases(self, leases: list[Lease], now: dt.datetime) -> list[str]:
        """Renew each lease, fenced; return the workflow ids whose lease was lost."""
        if not leases:
            return []
        lost: list[str] = []

        def write() -> None:
            lost.clear()
            with self.engine.begin() as conn:
                for lease in leases:
                    result = conn.execute(
                        _W.update()
                        .where(
                            (_W.c.workflow_id == lease.workflow_id)
                            & (_W.c.lease_generation == lease.generation)
                            & (_W.c.lease_owner == lease.owner.owner)
                        )
                        .values(
                            lease_heartbeat_at=now,
                            lease_expires_at=now + dt.timedelta(seconds=lease.timeout),
                        )
                    )
                    if result.rowcount == 0:
                        lost.append(lease.workflow_id)

        # A heartbeat is not retried here: the keeper's next beat is the retry.
        write()
        return lost

    # --- the group commit ----------------------------------------------------------------

    def commit(
        self,
        lease: Lease,
        seq: int,
        records: list[Record],
        *,
        now: dt.datetime,
        finish: list[WorkflowMove] | None = None,
        error: str | None = None,
        release: bool = False,
    ) -> str:
        """Write ``records`` as group commit number ``seq`` of the run holding ``lease``.

        With ``finish``, the workflow's final transitions go in the same transaction,
        and ``release`` clears the lease. A ``finish`` whose start is no longer the
        stored status (a concurrent cancel) is not written, the rest is.

        Returns:
            :attr:`CommitResult.COMMITTED`, or :attr:`CommitResult.INTENTS_REFUSED`
            when the batch starts steps but the workflow was canceled meanwhile (then
            nothing was written; drop the INTENTs and commit the rest).

        Raises:
            WorkflowLeaseError: the lease was taken over (``fenced``); nothing written.
            StorageError: the database cannot be written (see the module docstring).
        """
        has_intents = any(isinstance(r, Intent) for r in records)
        done = 0
        added = 0
        for r in records:
            if isinstance(r, Commit) and r.start is not StepStatus.SUCCESSFUL:
                done += 1
            elif isinstance(r, StepMoved) and r.start is StepStatus.SUCCESSFUL:
                done -= 1
            elif isinstance(r, StepsAdded):
                added += len(r.compiled.steps)
        wid = lease.workflow_id
        fence_row = {
            "w": wid,
            "g": lease.generation,
            "prev": seq - 1,
            "seq": seq,
            "now": now,
            "exp": now + dt.timedelta(seconds=lease.timeout),
            "done": done,
            "added": added,
        }

        def write() -> str:
            memo: dict[tuple[int, int], Any] = {}  # values converted once per batch
            with raw_transaction(self.engine) as cursor:
                fence = _FENCE_RUNNING if has_intents else _FENCE_ANY
                if self._prepared.run(cursor, fence, [fence_row], memo) != 1:
                    self._prepared.run(cursor, _FENCE_STATE, [{"w": wid}])
                    found = cursor.fetchone()
                    if found is None:
                        raise not_found(wid)
                    generation, committed_seq, status = found
                    if int(generation) != lease.generation:
                        raise _fenced_error(wid, lease)
                    if int(committed_seq) == seq:
                        return CommitResult.COMMITTED  # a retry: the first try committed
                    if has_intents and status != WorkflowStatus.RUNNING:
                        return CommitResult.INTENTS_REFUSED
                    raise HeliostatInternalError(
                        f"workflow {wid!r}: group commit {seq} found commit {committed_seq}"
                    )
                self._write_records(cursor, wid, records, memo)
                if finish or release:
                    self._finish(cursor, wid, finish or [], now, error, release, lease)
            return CommitResult.COMMITTED

        return self._retrying("write the workflow's lineage", write)

    def _finish(
        self,
        cursor: Any,
        wid: str,
        moves: list[WorkflowMove],
        now: dt.datetime,
        error: str | None,
        release: bool,
        lease: Lease,
    ) -> None:
        """The run's last transitions (unless a cancel got there first) and release."""
        run = self._prepared.run
        run(cursor, _FENCE_STATE, [{"w": wid}])
        found = cursor.fetchone()
        assert found is not None  # the fence matched it in this transaction
        status = WorkflowStatus(found[2])
        row: dict[str, Any] = {
            "w": wid,
            "g": lease.generation,
            "now": now,
            "owner": None if release else lease.owner.owner,
            "exp": None if release else now + dt.timedelta(seconds=lease.timeout),
        }
        if not moves or moves[0].start is not status:
            run(cursor, _RELEASE, [row])
            return
        transitions = []
        for move in moves:
            if move.start is not status:
                raise HeliostatInternalError(f"workflow {wid!r}: moves {moves} do not chain")
            check_transition("workflow", wid, move.start, move.finish)
            transitions.append(
                {
                    "entity": "workflow",
                    "workflow_id": wid,
                    "task_id": None,
                    "start": move.start,
                    "finish": move.finish,
                    "cause": move.cause,
                    "at": now,
                }
            )
            status = move.finish
        row["st"] = status
        row["fin"] = None if status is WorkflowStatus.RESUMABLE else now
        row["err"] = error
        run(cursor, _FINISH, [row])
        run(cursor, _TRANSITION_INSERT, transitions)
        if status is not moves[0].start:
            moved = run(
                cursor,
                _COUNT_MOVE,
                [{"sh": count_shard(wid), "old": moves[0].start, "new": status}],
            )
            _counted(moved, 2, wid)

    def _write_records(
        self,
        cursor: Any,
        w: str,
        records: Iterable[Record],
        memo: dict[tuple[int, int], Any],
    ) -> None:
        prepared = self._prepared

        def run(cursor: Any, stmt: Any, rows: list[dict[str, Any]]) -> int:
            return prepared.run(cursor, stmt, rows, memo)

        wal: list[dict[str, Any]] = []
        transitions: list[dict[str, Any]] = []
        attempts_new: list[dict[str, Any]] = []
        attempts_end: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        timers: list[dict[str, Any]] = []
        # task -> its row's new values, keyed by bind name ("v_" + column); later
        # records of a task win.
        steps: dict[str, dict[str, Any]] = {}

        def merge(task_id: str, columns: dict[str, Any]) -> None:
            earlier = steps.get(task_id)
            if earlier is None:
                steps[task_id] = columns
            else:
                earlier.update(columns)

        def moved(task_id: str, start: Any, finish: Any, cause: str, at: dt.datetime) -> None:
            transitions.append(
                {
                    "entity": "step",
                    "workflow_id": w,
                    "task_id": task_id,
                    "start": start,
                    "finish": finish,
                    "cause": cause,
                    "at": at,
                }
            )

        def log_row(task_id: str, attempt: int, got: StepLogs | None) -> None:
            if got is not None and (got.text or got.size):
                logs.append(
                    {
                        "workflow_id": w,
                        "task_id": task_id,
                        "attempt": attempt,
                        "text": got.text[-LOG_LIMIT:],
                        "size": got.size,
                        "truncated": got.truncated,
                    }
                )

        for r in records:
            if isinstance(r, StepsAdded):
                rows, edges = _step_rows(w, r.compiled)
                run(cursor, _STEP_INSERT, rows)
                run(cursor, _EDGE_INSERT, edges)
            elif isinstance(r, Intent):
                wal.append(_wal_row(w, r.task_id, r.attempt, WalKind.INTENT, r.at, None, r.key))
                attempts_new.append(
                    {
                        "workflow_id": w,
                        "task_id": r.task_id,
                        "attempt": r.attempt,
                        "status": AttemptStatus.RUNNING,
                        "queued_at": r.at,
                    }
                )
                merge(
                    r.task_id,
                    {
                        "v_status": StepStatus.RUNNING,
                        "v_attempts": r.attempt,
                        "v_queued_at": r.at,
                        "v_started_at": None,
                        "v_finished_at": None,
                    },
                )
            elif isinstance(r, Commit):
                ref = r.checkpoint
                wal.append(_wal_row(w, r.task_id, r.attempt, WalKind.COMMIT, r.at, ref, None))
                columns: dict[str, Any] = {
                    "v_status": StepStatus.SUCCESSFUL,
                    "v_output_location": ref.location if ref else None,
                    "v_output_checksum": ref.checksum if ref else None,
                    "v_output_format": r.output_format,
                    "v_output_size": ref.size if ref else None,
                    "v_output_inline": ref.data if ref else None,
                    "v_output_signature": (
                        self._sign_output(w, r.task_id, ref, r.output_format) if ref else None
                    ),
                    "v_finished_at": r.finished_at or r.at,
                    "v_error": None,
                    "v_error_type": None,
                    "v_traceback": None,
                }
                if r.started_at is not None:
                    columns["v_started_at"] = r.started_at
                merge(r.task_id, columns)
                if r.attempt_ended:
                    attempts_end.append(
                        _attempt_end(w, r.task_id, r.attempt, AttemptStatus.SUCCESSFUL, r, None)
                    )
                    log_row(r.task_id, r.attempt, r.logs)
                if r.start is not StepStatus.RUNNING or r.cause != "finished":
                    moved(r.task_id, r.start, StepStatus.SUCCESSFUL, r.cause, r.at)
            elif isinstance(r, AttemptEnded):
                if r.status is AttemptStatus.FAILED or r.finish is StepStatus.PENDING:
                    wal.append(_wal_row(w, r.task_id, r.attempt, WalKind.ABORT, r.at, None, None))
                attempts_end.append(_attempt_end(w, r.task_id, r.attempt, r.status, r, r.error))
                log_row(r.task_id, r.attempt, r.logs)
                columns = {"v_status": r.finish}
                if r.error is not None:
                    columns.update(_error_columns(r.error))
                if r.started_at is not None:
                    columns["v_started_at"] = r.started_at
                if r.finish is StepStatus.FAILED:
                    columns["v_finished_at"] = r.finished_at or r.at
                    if r.exception_data is not None:
                        columns["v_exception"] = r.exception_data
                        columns["v_exception_signature"] = self.signer.sign(
                            *exception_signed_parts(w, r.task_id, r.exception_data)
                        )
                merge(r.task_id, columns)
                moved(r.task_id, StepStatus.RUNNING, r.finish, r.cause, r.at)
            elif isinstance(r, StepMoved):
                columns = {"v_status": r.finish}
                if r.error is not None:
                    columns.update(_error_columns(r.error))
                if r.finish in (StepStatus.FAILED, StepStatus.SKIPPED):
                    columns["v_finished_at"] = r.at
                merge(r.task_id, columns)
                moved(r.task_id, r.start, r.finish, r.cause, r.at)
            elif isinstance(r, TimerSet):
                timers.append(
                    {
                        "workflow_id": w,
                        "task_id": r.task_id,
                        "set_at": r.set_at,
                        "wake_at": r.wake_at,
                    }
                )
            else:
                raise HeliostatInternalError(f"unknown workflow record {r!r}")
        run(cursor, _ATTEMPT_INSERT, attempts_new)
        run(cursor, _ATTEMPT_END, attempts_end)
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for task_id, columns in steps.items():
            names = frozenset(columns)
            columns["w"] = w
            columns["t"] = task_id
            by_columns.setdefault(names, []).append(columns)
        for names, rows in by_columns.items():
            run(cursor, _step_update(names), rows)
        run(cursor, _WAL_INSERT, wal)
        run(cursor, _TRANSITION_INSERT, transitions)
        run(cursor, _LOG_INSERT, logs)
        run(cursor, _TIMER_INSERT, timers)

    def _sign_output(
        self, workflow_id: str, task_id: str, ref: CheckpointRef, fmt: str | None
    ) -> str:
        return self.signer.sign(
            "step-output", workflow_id, task_id, ref.location, ref.checksum, fmt or ref.format
        )

    # --- reads ---------------------------------------------------------------------------

    def delete(self, workflow_id: str) -> None:
        """Delete a workflow's rows.

        Raises:
            WorkflowNotFoundError: no such workflow (a retry that finds the rows gone
                after a first try whose acknowledgement was lost does not raise).
        """
        tries = 0

        def write() -> None:
            nonlocal tries
            tries += 1
            with self.engine.begin() as conn:
                for table in (_T, _WAL, _LOG, _A, _E, _S, _DAG):
                    conn.execute(table.delete().where(table.c.workflow_id == workflow_id))
                gone = conn.execute(
                    _W.delete().where(_W.c.workflow_id == workflow_id).returning(_W.c.status)
                ).first()
                if gone is None:
                    if tries == 1:
                        raise not_found(workflow_id)
                    return
                self._count_add(conn, workflow_id, WorkflowStatus(gone[0]), -1)

        self._retrying("delete the workflow", write)


# --- helpers -------------------------------------------------------------------------------


def held_error(workflow_id: str, holder: LeaseHolder) -> WorkflowLeaseError:
    expires = (
        f"; its lease expires at {holder.expires_at:%Y-%m-%d %H:%M:%S} UTC unless renewed"
        if holder.expires_at
        else ""
    )
    return WorkflowLeaseError(
        f"Workflow {workflow_id!r} is being run by another driver ({holder.describe()})"
        f"{expires}. Two drivers never run one workflow at once; wait for it to finish, "
        f"or cancel it (heliostat workflow cancel {workflow_id}).",
        workflow_id=workflow_id,
        holder_host=holder.host or "",
        holder_pid=holder.pid or 0,
        holder_since=holder.acquired_at.isoformat() if holder.acquired_at else "",
    )


def _fenced_error(workflow_id: str, lease: Lease) -> WorkflowLeaseError:
    return WorkflowLeaseError(
        f"Workflow {workflow_id!r}: this driver lost its lease (generation "
        f"{lease.generation}) to another driver, which now runs the workflow; this run "
        "stopped without writing anything more. (Was this process paused or cut off "
        "from the database for longer than the lease timeout, "
        "HELIOSTAT_LEASE_TIMEOUT?)",
        workflow_id=workflow_id,
        fenced=True,
    )


def _attempt_end(
    w: str,
    task_id: str,
    attempt: int,
    status: AttemptStatus,
    r: Commit | AttemptEnded,
    error: Any,
) -> dict[str, Any]:
    return {
        "w": w,
        "t": task_id,
        "a": attempt,
        "st": status,
        "started": r.started_at,
        "finished": r.finished_at or r.at,
        "worker": r.worker,
        "err": error.summary[:4000]
        if error is not None
        else (r.cause if status is AttemptStatus.INTERRUPTED else None),
        "etype": error.type_name if error is not None else None,
        "tb": error.traceback if error is not None else None,
    }


def _wal_row(
    workflow_id: str,
    task_id: str,
    attempt: int,
    kind: WalKind,
    at: dt.datetime,
    ref: CheckpointRef | None,
    key: str | None,
) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "task_id": task_id,
        "attempt": attempt,
        "kind": kind,
        "idempotency_key": key or f"{workflow_id}:{task_id}",
        "created_at": at,
        "location": ref.location if ref else None,
        "checksum": ref.checksum if ref else None,
    }


def _step_rows(
    workflow_id: str, compiled: CompiledWorkflow
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
                # The options object (and so this dict) is shared by the steps of one
                # function: the batch's memo encodes it to JSON once (see Prepared).
                "metadata": opts.metadata,
                "position": spec.position,
                "code_hash": getattr(spec, "code_hash", "") or None,
                "input_hash": getattr(spec, "input_hash", "") or None,
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
