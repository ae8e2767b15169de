"""The SQL of the workflow store, built once: statements and the rows they take.

The group commit (:mod:`heliostat.workflows.group_commit`) and the run's other writes
(:mod:`heliostat.workflows.store`) run these statements through
:class:`~heliostat.storage.prepared.PreparedCache`, which keys on their identity: so
they are module constants, and the statements whose columns vary (a step row's update)
are cached here per set of columns. The helpers turn the machine's records into the
rows (dicts keyed by bind name) these statements take.

Counts per status: :data:`COUNT_MOVE` moves a run between the two rows of its shard
(:func:`count_shard`) of ``workflow_status_counts``, :data:`COUNT_ADD` adds or removes
one; :func:`check_counted` refuses a row count other than expected.
"""

from __future__ import annotations

import datetime as dt
import zlib
from typing import Any

import sqlalchemy as sa

from heliostat.exceptions import (
    HeliostatInternalError,
)
from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.models import (
    COUNT_SHARDS,
    AttemptLog,
    Edge,
    Step,
    StepAttempt,
    Transition,
    WalRecord,
    Workflow,
    WorkflowStatusCount,
    WorkflowTimer,
)
from heliostat.storage.states import (
    AttemptStatus,
    StepStatus,
    WalKind,
    WorkflowStatus,
)
from heliostat.workflows.compile import CompiledWorkflow
from heliostat.workflows.events import (
    AttemptEnded,
    Commit,
)
from heliostat.workflows.step import ErrorInfo

__all__ = [
    "ATTEMPT_END",
    "ATTEMPT_INSERT",
    "COUNT_ADD",
    "COUNT_MOVE",
    "EDGE_INSERT",
    "FENCE_ANY",
    "FENCE_RUNNING",
    "FENCE_STATE",
    "FINISH",
    "LOG_INSERT",
    "RELEASE",
    "STEP_INSERT",
    "TIMER_INSERT",
    "TRANSITION_INSERT",
    "WAL_INSERT",
    "attempt_end_row",
    "check_counted",
    "count_shard",
    "error_columns",
    "step_rows",
    "step_update",
    "wal_row",
]


_W: sa.Table = Workflow.__table__  # type: ignore[assignment]
_S: sa.Table = Step.__table__  # type: ignore[assignment]
_A: sa.Table = StepAttempt.__table__  # type: ignore[assignment]
_E: sa.Table = Edge.__table__  # type: ignore[assignment]
_WAL: sa.Table = WalRecord.__table__  # type: ignore[assignment]
_T: sa.Table = Transition.__table__  # type: ignore[assignment]
_LOG: sa.Table = AttemptLog.__table__  # type: ignore[assignment]
_TIMER: sa.Table = WorkflowTimer.__table__  # type: ignore[assignment]
_COUNT: sa.Table = WorkflowStatusCount.__table__  # type: ignore[assignment]


def _key(table: sa.Table) -> Any:
    return (table.c.workflow_id == sa.bindparam("w")) & (table.c.task_id == sa.bindparam("t"))


# Statements of the group commit, built once (PreparedCache keys on their identity).
WAL_INSERT = _WAL.insert()
STEP_INSERT = _S.insert()
EDGE_INSERT = _E.insert()
ATTEMPT_INSERT = _A.insert()
TRANSITION_INSERT = _T.insert()
LOG_INSERT = _LOG.insert()
TIMER_INSERT = _TIMER.insert()
ATTEMPT_END = (
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
    """The fencing UPDATE (see :mod:`heliostat.workflows.group_commit`); ``running``:
    refuse if canceled."""
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


FENCE_RUNNING = _fence(running=True)
FENCE_ANY = _fence(running=False)
_FENCED_ROW = (_W.c.workflow_id == sa.bindparam("w")) & (_W.c.lease_generation == sa.bindparam("g"))
RELEASE = (
    _W.update()
    .where(_FENCED_ROW)
    .values(
        updated_at=sa.bindparam("now"),
        lease_owner=sa.bindparam("owner"),
        lease_expires_at=sa.bindparam("exp"),
    )
)
FINISH = RELEASE.values(
    status=sa.bindparam("st"), finished_at=sa.bindparam("fin"), error=sa.bindparam("err")
)
FENCE_STATE = sa.select(_W.c.lease_generation, _W.c.commit_seq, _W.c.status).where(
    _W.c.workflow_id == sa.bindparam("w")
)
# Counts per status: a run moving from "old" to "new" (both rows of its shard in one
# statement), and a run added (+1) or deleted (-1).
COUNT_MOVE = (
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
COUNT_ADD = (
    _COUNT.update()
    .where((_COUNT.c.status == sa.bindparam("st")) & (_COUNT.c.shard == sa.bindparam("sh")))
    .values(runs=_COUNT.c.runs + sa.bindparam("d", type_=sa.Integer()))
)


def count_shard(workflow_id: str) -> int:
    """The row of each status that counts this workflow (always the same one)."""
    return zlib.crc32(workflow_id.encode()) % COUNT_SHARDS


def check_counted(rowcount: int, expected: int, workflow_id: str) -> None:
    if rowcount != expected:
        raise HeliostatInternalError(
            f"workflow {workflow_id!r}: {rowcount} rows of workflow_status_counts updated, "
            f"not {expected} (a schema not made by heliostat's migrations?)"
        )


# Step row updates, one statement per set of columns a batch changes (see _step_updates).
_STEP_UPDATES: dict[frozenset[str], Any] = {}


def step_update(names: frozenset[str]) -> Any:
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


def error_columns(error: ErrorInfo) -> dict[str, Any]:
    return {
        "v_error": error.summary[:4000],
        "v_error_type": error.type_name,
        "v_traceback": error.traceback,
    }


def attempt_end_row(
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


def wal_row(
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


def step_rows(
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
