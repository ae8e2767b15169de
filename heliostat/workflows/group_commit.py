"""The group commit: a batch of the workflow machine's records in one fenced transaction.

:class:`GroupCommitter` (reads inherited from
:class:`~heliostat.workflows.lineage.LineageReader`) writes what the workflow state
machine decided (:mod:`heliostat.workflows.machine` records) and decides nothing
itself. A group commit (:meth:`GroupCommitter.commit`), in one transaction:

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

Each step output a COMMIT names is signed here (``output_signature``: an HMAC over the
workflow and step ids, the output's location, checksum and format), and so is a failed
step's pickled exception.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Engine

from heliostat.exceptions import (
    HeliostatInternalError,
    WorkflowLeaseError,
)
from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.db import (
    raw_transaction,
)
from heliostat.storage.models import (
    LOG_LIMIT,
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
)
from heliostat.workflows.lineage import (
    LineageReader,
    exception_signed_parts,
    not_found,
)
from heliostat.workflows.statements import (
    ATTEMPT_END,
    ATTEMPT_INSERT,
    COUNT_MOVE,
    EDGE_INSERT,
    FENCE_ANY,
    FENCE_RUNNING,
    FENCE_STATE,
    FINISH,
    LOG_INSERT,
    RELEASE,
    STEP_INSERT,
    TIMER_INSERT,
    TRANSITION_INSERT,
    WAL_INSERT,
    attempt_end_row,
    check_counted,
    count_shard,
    error_columns,
    step_rows,
    step_update,
    wal_row,
)

__all__ = ["CommitResult", "GroupCommitter"]


class CommitResult:
    """What :meth:`WorkflowStore.commit` did."""

    COMMITTED = "committed"
    INTENTS_REFUSED = "intents refused"  # the workflow was canceled: nothing written


class GroupCommitter(LineageReader):
    """The lineage reads and the fenced group commit of workflow runs (see the module
    docstring); :class:`~heliostat.workflows.store.WorkflowStore` adds the rest.

    Args:
        engine: an engine from :func:`heliostat.storage.db.make_engine` (schema at head).
        signer: signs (and checks) the pickled data rows refer to.
        retry_for: seconds to retry a lost connection (None: ``retry_timeout()``).
    """

    def __init__(self, engine: Engine, *, signer: Signer, retry_for: float | None = None) -> None:
        super().__init__(engine, signer=signer, retry_for=retry_for)
        self._prepared = PreparedCache(engine.dialect)

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
                fence = FENCE_RUNNING if has_intents else FENCE_ANY
                if self._prepared.run(cursor, fence, [fence_row], memo) != 1:
                    self._prepared.run(cursor, FENCE_STATE, [{"w": wid}])
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
        run(cursor, FENCE_STATE, [{"w": wid}])
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
            run(cursor, RELEASE, [row])
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
        run(cursor, FINISH, [row])
        run(cursor, TRANSITION_INSERT, transitions)
        if status is not moves[0].start:
            moved = run(
                cursor,
                COUNT_MOVE,
                [{"sh": count_shard(wid), "old": moves[0].start, "new": status}],
            )
            check_counted(moved, 2, wid)

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
                rows, edges = step_rows(w, r.compiled)
                run(cursor, STEP_INSERT, rows)
                run(cursor, EDGE_INSERT, edges)
            elif isinstance(r, Intent):
                wal.append(wal_row(w, r.task_id, r.attempt, WalKind.INTENT, r.at, None, r.key))
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
                wal.append(wal_row(w, r.task_id, r.attempt, WalKind.COMMIT, r.at, ref, None))
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
                        attempt_end_row(w, r.task_id, r.attempt, AttemptStatus.SUCCESSFUL, r, None)
                    )
                    log_row(r.task_id, r.attempt, r.logs)
                if r.start is not StepStatus.RUNNING or r.cause != "finished":
                    moved(r.task_id, r.start, StepStatus.SUCCESSFUL, r.cause, r.at)
            elif isinstance(r, AttemptEnded):
                if r.status is AttemptStatus.FAILED or r.finish is StepStatus.PENDING:
                    wal.append(wal_row(w, r.task_id, r.attempt, WalKind.ABORT, r.at, None, None))
                attempts_end.append(attempt_end_row(w, r.task_id, r.attempt, r.status, r, r.error))
                log_row(r.task_id, r.attempt, r.logs)
                columns = {"v_status": r.finish}
                if r.error is not None:
                    columns.update(error_columns(r.error))
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
                    columns.update(error_columns(r.error))
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
        run(cursor, ATTEMPT_INSERT, attempts_new)
        run(cursor, ATTEMPT_END, attempts_end)
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for task_id, columns in steps.items():
            names = frozenset(columns)
            columns["w"] = w
            columns["t"] = task_id
            by_columns.setdefault(names, []).append(columns)
        for names, rows in by_columns.items():
            run(cursor, step_update(names), rows)
        run(cursor, WAL_INSERT, wal)
        run(cursor, TRANSITION_INSERT, transitions)
        run(cursor, LOG_INSERT, logs)
        run(cursor, TIMER_INSERT, timers)

    def _sign_output(
        self, workflow_id: str, task_id: str, ref: CheckpointRef, fmt: str | None
    ) -> str:
        return self.signer.sign(
            "step-output", workflow_id, task_id, ref.location, ref.checksum, fmt or ref.format
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
