"""The workflow executor's SQL writes: runs created, taken over, moved, leases renewed.

:class:`WorkflowStore` (reads inherited from
:class:`~heliostat.workflows.lineage.LineageReader`, the group commit from
:class:`~heliostat.workflows.group_commit.GroupCommitter`) writes what the workflow
state machine and the pure transition rules decided, and decides nothing itself, with
one exception that must sit inside a transaction: whether the lease may be taken,
which it asks the pure :func:`~heliostat.workflows.lease.decide_takeover` under the row
lock. The statements are in :mod:`heliostat.workflows.statements`.

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
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heliostat._process import process_running
from heliostat.exceptions import (
    HeliostatInternalError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
)
from heliostat.storage.db import (
    ensure_schema,
    make_engine,
)
from heliostat.storage.models import (
    AttemptLog,
    Edge,
    Step,
    StepAttempt,
    Transition,
    WalRecord,
    Workflow,
    WorkflowDag,
)
from heliostat.storage.signing import Signer
from heliostat.storage.states import (
    WorkflowStatus,
    check_transition,
)
from heliostat.workflows.compile import CompiledWorkflow
from heliostat.workflows.events import (
    WorkflowMove,
)
from heliostat.workflows.group_commit import CommitResult, GroupCommitter
from heliostat.workflows.lease import (
    Lease,
    LeaseHolder,
    LeaseOwner,
    Refuse,
    decide_takeover,
)
from heliostat.workflows.lineage import (
    not_found,
)
from heliostat.workflows.statements import (
    COUNT_ADD,
    COUNT_MOVE,
    EDGE_INSERT,
    STEP_INSERT,
    check_counted,
    count_shard,
    step_rows,
)

__all__ = ["CommitResult", "WorkflowStore", "count_shard", "held_error"]


_W: sa.Table = Workflow.__table__  # type: ignore[assignment]
_S: sa.Table = Step.__table__  # type: ignore[assignment]
_A: sa.Table = StepAttempt.__table__  # type: ignore[assignment]
_E: sa.Table = Edge.__table__  # type: ignore[assignment]
_WAL: sa.Table = WalRecord.__table__  # type: ignore[assignment]
_T: sa.Table = Transition.__table__  # type: ignore[assignment]
_LOG: sa.Table = AttemptLog.__table__  # type: ignore[assignment]
_DAG: sa.Table = WorkflowDag.__table__  # type: ignore[assignment]


class WorkflowStore(GroupCommitter):
    """The lineage reads (:class:`~heliostat.workflows.lineage.LineageReader`) and the
    writes of workflow runs: create, take over, fenced group commits, leases.

    Args:
        engine: an engine from :func:`heliostat.storage.db.make_engine` (schema at head).
        signer: signs (and checks) the pickled data rows refer to.
        retry_for: seconds to retry a lost connection (None: ``retry_timeout()``).
    """

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
        steps, edges = step_rows(workflow_id, compiled)

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
                        self._prepared.run(cursor, STEP_INSERT, steps)
                        self._prepared.run(cursor, EDGE_INSERT, edges)
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
                decision = decide_takeover(holder, owner, now, timeout, pid_exists=process_running)
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
        result = conn.execute(COUNT_MOVE, {"sh": count_shard(workflow_id), "old": old, "new": new})
        check_counted(result.rowcount, 2, workflow_id)

    def _count_add(
        self, conn: Connection, workflow_id: str, status: WorkflowStatus, delta: int
    ) -> None:
        result = conn.execute(COUNT_ADD, {"st": status, "sh": count_shard(workflow_id), "d": delta})
        check_counted(result.rowcount, 1, workflow_id)

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
