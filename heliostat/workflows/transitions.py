"""A workflow run's own transitions outside the step machine: resume, reconcile, cancel.

Each function takes the status read under the workflow row's lock and returns the
moves to write (checked against
:data:`~heliostat.storage.states.WORKFLOW_TRANSITIONS` here, and applied by the
store in the same transaction), so who may move a workflow where is decided in this
one module, without I/O. The step machine (:mod:`heliostat.workflows.machine`) decides
how a run ends (:func:`outcome_moves` turns that into the last move).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from heliostat.exceptions import WorkflowCancelledError
from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.states import StepStatus, WorkflowStatus, check_transition
from heliostat.workflows.events import Commit, Outcome, Record, StepMoved, WorkflowMove

__all__ = [
    "AlreadySucceeded",
    "cancel_moves",
    "outcome_moves",
    "reconcile_moves",
    "resolve_records",
    "resume_moves",
]

_W = WorkflowStatus


def _checked(workflow_id: str, moves: list[WorkflowMove]) -> list[WorkflowMove]:
    for move in moves:
        check_transition("workflow", workflow_id, move.start, move.finish)
    return moves


def outcome_moves(outcome: Outcome) -> list[WorkflowMove]:
    """A run's last transition: RUNNING -> how it ended (none if the lease was lost)."""
    if outcome.status is None:
        return []
    return [WorkflowMove(start=_W.RUNNING, finish=outcome.status, cause=outcome.cause)]


def resume_moves(
    workflow_id: str, cause: str
) -> Callable[[WorkflowStatus, bool], list[WorkflowMove]]:
    """The moves of a driver taking a workflow over to run it (run, resume, recovery).

    A workflow still RUNNING whose holder is gone goes through RESUMABLE, which is what
    it was since its driver died. The returned function raises
    :class:`~heliostat.exceptions.WorkflowCancelledError` for a canceled workflow and
    :class:`_AlreadySucceeded` for one that succeeded meanwhile.
    """

    def moves(status: WorkflowStatus, previous_live: bool) -> list[WorkflowMove]:
        if status is _W.CANCELED:
            raise WorkflowCancelledError(
                f"Workflow {workflow_id!r} was cancelled; it cannot be resumed.",
                workflow_id=workflow_id,
            )
        if status is _W.SUCCESSFUL:
            raise AlreadySucceeded(workflow_id)
        out = []
        if status is _W.RUNNING:
            out.append(
                WorkflowMove(
                    start=_W.RUNNING,
                    finish=_W.RESUMABLE,
                    cause="its driver is gone (lease expired or process exited)",
                )
            )
            status = _W.RESUMABLE
        out.append(WorkflowMove(start=status, finish=_W.RUNNING, cause=cause))
        return _checked(workflow_id, out)

    return moves


def reconcile_moves(workflow_id: str) -> Callable[[WorkflowStatus, bool], list[WorkflowMove]]:
    """The moves of marking a run whose driver died: RUNNING -> RESUMABLE, else none."""

    def moves(status: WorkflowStatus, previous_live: bool) -> list[WorkflowMove]:
        if status is _W.RUNNING:
            return _checked(
                workflow_id,
                [
                    WorkflowMove(
                        start=_W.RUNNING,
                        finish=_W.RESUMABLE,
                        cause="its driver is gone (lease expired or process exited)",
                    )
                ],
            )
        return []

    return moves


def cancel_moves(workflow_id: str) -> Callable[[WorkflowStatus], list[WorkflowMove]]:
    """The move of ``cancel()``: any unfinished status -> CANCELED (finished: none)."""

    def moves(status: WorkflowStatus) -> list[WorkflowMove]:
        if status in (_W.SUCCESSFUL, _W.CANCELED):
            return []
        return _checked(
            workflow_id, [WorkflowMove(start=status, finish=_W.CANCELED, cause="cancel()")]
        )

    return moves


class AlreadySucceeded(Exception):
    """Internal: the workflow a driver meant to take over succeeded meanwhile."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)
        self.workflow_id = workflow_id


def resolve_records(
    workflow_id: str,
    task_id: str,
    status: StepStatus,
    attempt: int,
    *,
    checkpoint: CheckpointRef | None,
    rerun: bool,
    at: dt.datetime,
) -> list[Record]:
    """What settling an in-doubt step by hand writes (``workflow.resolve``).

    Raises:
        InvalidTransition: the step is not IN_DOUBT.
    """
    ident = f"{workflow_id}/{task_id}"
    if rerun:
        check_transition("step", ident, status, StepStatus.PENDING)
        return [
            StepMoved(
                task_id=task_id,
                start=status,
                finish=StepStatus.PENDING,
                cause="resolve(rerun=True)",
                at=at,
            )
        ]
    check_transition("step", ident, status, StepStatus.SUCCESSFUL)
    return [
        Commit(
            task_id=task_id,
            attempt=max(attempt, 1),
            start=status,
            checkpoint=checkpoint,
            output_format=checkpoint.format if checkpoint else None,
            cause="resolve(result=...)",
            at=at,
            attempt_ended=False,
        )
    ]
