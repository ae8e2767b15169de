"""Lifecycle states of workflows and steps, and the one table of allowed edges for each.

The values of these enums are exactly what the SQL ``status`` columns store (the columns
carry CHECK constraints listing them), so renaming a member is a schema migration.

A lifecycle is changed only through :func:`check_transition` (the models' ``transition``
methods call it): any edge not in the table raises
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

    PENDING ──> RUNNING ──> SUCCESSFUL                      (terminal)
       │          ├───────> FAILED ──> RUNNING              (resume retries a failed step)
       │          ├───────> IN_DOUBT ──> SUCCESSFUL / RUNNING / FAILED
       │          └───────> PENDING                         (driver crashed; idempotent re-run)
       └──> SKIPPED                                         (terminal)

``RUNNING -> RUNNING`` is not an edge: a retry of a running step is a new *attempt*
(a row in ``step_attempts``), not a state change of the step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from heliostat.exceptions import InvalidTransition

__all__ = [
    "STEP_TRANSITIONS",
    "WORKFLOW_TRANSITIONS",
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
    # -> PENDING: the driver died mid-attempt and the step is idempotent, so it re-runs.
    _S.RUNNING: frozenset({_S.SUCCESSFUL, _S.FAILED, _S.IN_DOUBT, _S.PENDING}),
    # The on_in_doubt hook returned the result (SUCCESSFUL), asked for a re-run
    # (RUNNING), or a person / the hook declared the attempt failed (FAILED).
    _S.IN_DOUBT: frozenset({_S.SUCCESSFUL, _S.RUNNING, _S.FAILED}),
    _S.FAILED: frozenset({_S.RUNNING}),
    # -> PENDING: its checkpoint turned out corrupt on a later read; it re-runs (idempotent).
    # -> IN_DOUBT: the same for a non-idempotent step, which a person or hook resolves.
    _S.SUCCESSFUL: frozenset({_S.PENDING, _S.IN_DOUBT}),
    _S.SKIPPED: frozenset(),
}
"""Allowed step edges: ``STEP_TRANSITIONS[start]`` is the set of legal finishes."""

_TABLES: dict[TransitionEntity, Mapping[StrEnum, frozenset[StrEnum]]] = {
    TransitionEntity.WORKFLOW: WORKFLOW_TRANSITIONS,  # type: ignore[dict-item]
    TransitionEntity.STEP: STEP_TRANSITIONS,  # type: ignore[dict-item]
}

_E = TypeVar("_E", bound=StrEnum)


def check_transition(kind: str, ident: str, start: _E, finish: _E) -> _E:
    """Check that ``start -> finish`` is an allowed edge for this kind of entity.

    Args:
        kind: ``"workflow"`` or ``"step"`` (a :class:`TransitionEntity`).
        ident: the entity's id, for the error message (``"etl"`` or ``"etl/load"``).
        start: the current state.
        finish: the requested state; must be of the same enum as ``start``.

    Returns:
        ``finish``, so a caller can write ``row.status = check_transition(...)``.

    Raises:
        InvalidTransition: the table has no such edge (also when the two states belong
            to different enums, or ``kind`` names no table).
    """
    try:
        table = _TABLES[TransitionEntity(kind)]
    except ValueError:
        raise InvalidTransition(kind, ident, str(start), str(finish)) from None
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
