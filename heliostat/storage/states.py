"""Lifecycle states of workflows and steps, and the one table of allowed edges for each.

The values of these enums are exactly what the SQL ``status`` columns store (the columns
carry CHECK constraints listing them), so renaming a member is a schema migration.

A lifecycle is changed only through :func:`check_transition` (the workflow state
machine, ``heliostat.workflows.machine``, calls it): any edge not in the table raises
:class:`~heliostat.exceptions.InvalidTransition`. Terminal states map to an empty set.

Workflows::

    PENDING ──> RUNNING ──> SUCCESSFUL                      (terminal)
       │           ├──────> CANCELED                        (terminal)
       └───────────┼──────> CANCELED
                   ├──────> FAILED ───────────┐
                   ├──────> RESUMABLE  ───────┤  resume: back to RUNNING
                   └──────> NEEDS_ATTENTION ──┘
    FAILED, RESUMABLE, NEEDS_ATTENTION ──> CANCELED          (given up on)

``RESUMABLE`` means the driver that ran the workflow died (its lease expired);
``NEEDS_ATTENTION`` means a non-idempotent step is in doubt and has no ``on_in_doubt``
hook, so a person must decide before the run goes on.

Steps::

    PENDING ──> RUNNING ──> SUCCESSFUL ──┐                   (output lost: back to
       │          │                      └──> PENDING / IN_DOUBT   PENDING or IN_DOUBT)
       │          ├───────> FAILED ──> PENDING              (resume retries a failed step)
       │          ├───────> PENDING                         (attempt failed and is retried,
       │          │                                          or was interrupted: re-run)
       │          └───────> IN_DOUBT ──> SUCCESSFUL / PENDING / FAILED
       └──> SKIPPED                                         (terminal: workflow canceled)

Every edge is one thing that really happened to the step: ``RUNNING -> PENDING`` is an
attempt that ended without a result (it raised and will be retried, or its driver or
worker went away and the step is idempotent); ``IN_DOUBT -> PENDING`` is a person or an
``on_in_doubt`` hook asking for a re-run. ``RUNNING -> RUNNING`` is not an edge: a new
attempt goes through ``PENDING``.

Attempts (one row of ``step_attempts`` each)::

    RUNNING ──> SUCCESSFUL | FAILED | INTERRUPTED           (all terminal)

``INTERRUPTED`` means the attempt's outcome is unknown or was cut short: its driver
died, lost its lease, or the workflow was canceled while it ran.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from heliostat.exceptions import InvalidTransition

__all__ = [
    "ATTEMPT_TRANSITIONS",
    "STEP_TRANSITIONS",
    "WORKFLOW_TRANSITIONS",
    "AttemptStatus",
    "StepStatus",
    "TransitionEntity",
    "WalKind",
    "WorkflowStatus",
    "check_transition",
    "reachable",
    "terminal_states",
]


class WorkflowStatus(StrEnum):
    """The state of one workflow run; see the module docstring for the edges."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    RESUMABLE = "RESUMABLE"
    CANCELED = "CANCELED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


class StepStatus(StrEnum):
    """The state of one step of a workflow; see the module docstring for the edges."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    IN_DOUBT = "IN_DOUBT"


class AttemptStatus(StrEnum):
    """The outcome of one attempt of a step; see the module docstring."""

    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"


class WalKind(StrEnum):
    """The kind of a write-ahead-log record.

    ``INTENT`` is committed before a step's attempt starts, ``COMMIT`` after its output
    is checkpointed, ``ABORT`` when the attempt is known to have ended without a result
    (it raised, or a person resolved an in-doubt step as failed).
    """

    INTENT = "INTENT"
    COMMIT = "COMMIT"
    ABORT = "ABORT"


class TransitionEntity(StrEnum):
    """What a row of the ``transitions`` lineage table is about."""

    WORKFLOW = "workflow"
    STEP = "step"


_W = WorkflowStatus
_S = StepStatus

WORKFLOW_TRANSITIONS: Mapping[WorkflowStatus, frozenset[WorkflowStatus]] = {
    _W.PENDING: frozenset({_W.RUNNING, _W.CANCELED}),
    _W.RUNNING: frozenset(
        {_W.SUCCESSFUL, _W.FAILED, _W.CANCELED, _W.NEEDS_ATTENTION, _W.RESUMABLE}
    ),
    _W.RESUMABLE: frozenset({_W.RUNNING, _W.CANCELED}),
    _W.FAILED: frozenset({_W.RUNNING, _W.CANCELED}),
    _W.NEEDS_ATTENTION: frozenset({_W.RUNNING, _W.CANCELED}),
    _W.SUCCESSFUL: frozenset(),
    _W.CANCELED: frozenset(),
}
"""Allowed workflow edges: ``WORKFLOW_TRANSITIONS[start]`` is the set of legal finishes."""

STEP_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    _S.PENDING: frozenset({_S.RUNNING, _S.SKIPPED}),
    # -> PENDING: the attempt failed and is retried, or was interrupted (idempotent step).
    # -> IN_DOUBT: a non-idempotent step's attempt was interrupted: did it act or not?
    _S.RUNNING: frozenset({_S.SUCCESSFUL, _S.FAILED, _S.IN_DOUBT, _S.PENDING}),
    # The on_in_doubt hook or a person gave the result (SUCCESSFUL), asked for a
    # re-run (PENDING), or declared the attempt failed / the hook raised (FAILED).
    _S.IN_DOUBT: frozenset({_S.SUCCESSFUL, _S.PENDING, _S.FAILED}),
    # -> PENDING: a resume retries it.
    _S.FAILED: frozenset({_S.PENDING}),
    # -> PENDING: its output is gone (corrupt checkpoint, or never checkpointed) and it
    # is needed again; -> IN_DOUBT: the same for a non-idempotent step.
    _S.SUCCESSFUL: frozenset({_S.PENDING, _S.IN_DOUBT}),
    _S.SKIPPED: frozenset(),
}
"""Allowed step edges: ``STEP_TRANSITIONS[start]`` is the set of legal finishes."""

_A = AttemptStatus

ATTEMPT_TRANSITIONS: Mapping[AttemptStatus, frozenset[AttemptStatus]] = {
    _A.RUNNING: frozenset({_A.SUCCESSFUL, _A.FAILED, _A.INTERRUPTED}),
    _A.SUCCESSFUL: frozenset(),
    _A.FAILED: frozenset(),
    _A.INTERRUPTED: frozenset(),
}
"""Allowed attempt edges: an attempt runs, then ends one way, once."""

_TABLES: dict[str, Mapping[StrEnum, frozenset[StrEnum]]] = {
    TransitionEntity.WORKFLOW.value: WORKFLOW_TRANSITIONS,  # type: ignore[dict-item]
    TransitionEntity.STEP.value: STEP_TRANSITIONS,  # type: ignore[dict-item]
    "attempt": ATTEMPT_TRANSITIONS,  # type: ignore[dict-item]
}

_E = TypeVar("_E", bound=StrEnum)


def check_transition(kind: str, ident: str, start: _E, finish: _E) -> _E:
    """Check that ``start -> finish`` is an allowed edge for this kind of entity.

    Args:
        kind: ``"workflow"``, ``"step"`` or ``"attempt"`` (a :class:`TransitionEntity`).
        ident: the entity's id, for the error message (``"etl"`` or ``"etl/load"``).
        start: the current state.
        finish: the requested state; must be of the same enum as ``start``.

    Returns:
        ``finish``, so a caller can write ``row.status = check_transition(...)``.

    Raises:
        InvalidTransition: the table has no such edge (also when the two states belong
            to different enums, or ``kind`` names no table).
    """
    table = _TABLES.get(str(kind))
    if table is None:
        raise InvalidTransition(kind, ident, str(start), str(finish))
    allowed = table.get(start)
    if allowed is None or finish not in allowed or type(finish) is not type(start):
        raise InvalidTransition(kind, ident, str(start), str(finish))
    return finish


def terminal_states(table: Mapping[_E, frozenset[_E]]) -> frozenset[_E]:
    """The states of ``table`` that have no way out."""
    return frozenset(state for state, exits in table.items() if not exits)


def reachable(table: Mapping[_E, frozenset[_E]], initial: _E) -> frozenset[_E]:
    """Every state reachable from ``initial`` through ``table`` (``initial`` included)."""
    seen = {initial}
    todo = deque([initial])
    while todo:
        for nxt in table[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)
