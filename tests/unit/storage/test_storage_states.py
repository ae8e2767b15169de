"""The workflow and step transition tables: walked, not just spot-checked."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Mapping
from enum import StrEnum

import pytest

from heliostat.exceptions import InvalidTransition
from heliostat.storage.states import (
    ATTEMPT_TRANSITIONS,
    STEP_TRANSITIONS,
    WORKFLOW_TRANSITIONS,
    AttemptStatus,
    StepStatus,
    TransitionEntity,
    WalKind,
    WorkflowStatus,
    check_transition,
    reachable,
    terminal_states,
)

Table = Mapping[StrEnum, frozenset[StrEnum]]
TABLES: list[tuple[str, type[StrEnum], Table, StrEnum]] = [
    ("workflow", WorkflowStatus, WORKFLOW_TRANSITIONS, WorkflowStatus.PENDING),  # type: ignore[list-item]
    ("step", StepStatus, STEP_TRANSITIONS, StepStatus.PENDING),  # type: ignore[list-item]
]
IDS = [t[0] for t in TABLES]


def _edges(table: Mapping[StrEnum, frozenset[StrEnum]]) -> set[tuple[StrEnum, StrEnum]]:
    return {(a, b) for a, exits in table.items() for b in exits}


@pytest.mark.parametrize(("kind", "enum", "table", "initial"), TABLES, ids=IDS)
def test_table_has_a_row_for_every_state(
    kind: str, enum: type[StrEnum], table: Table, initial: StrEnum
) -> None:
    assert set(table) == set(enum)
    for exits in table.values():
        assert isinstance(exits, frozenset)
        assert exits <= set(enum)


@pytest.mark.parametrize(("kind", "enum", "table", "initial"), TABLES, ids=IDS)
def test_every_state_is_reachable_from_the_initial_state(
    kind: str, enum: type[StrEnum], table: Table, initial: StrEnum
) -> None:
    assert reachable(table, initial) == set(enum)


@pytest.mark.parametrize(("kind", "enum", "table", "initial"), TABLES, ids=IDS)
def test_every_state_can_reach_a_terminal_state(
    kind: str, enum: type[StrEnum], table: Table, initial: StrEnum
) -> None:
    terminals = terminal_states(table)
    for state in enum:
        assert reachable(table, state) & terminals, f"{state} can never finish"


def test_terminal_states_are_the_documented_ones() -> None:
    assert terminal_states(WORKFLOW_TRANSITIONS) == {
        WorkflowStatus.SUCCESSFUL,
        WorkflowStatus.CANCELED,
    }
    # A SUCCESSFUL step leaves its state only when its checkpoint proves corrupt.
    assert terminal_states(STEP_TRANSITIONS) == {StepStatus.SKIPPED}
    assert STEP_TRANSITIONS[StepStatus.SUCCESSFUL] == {StepStatus.PENDING, StepStatus.IN_DOUBT}


@pytest.mark.parametrize(("kind", "enum", "table", "initial"), TABLES, ids=IDS)
def test_terminal_states_have_no_exits(
    kind: str, enum: type[StrEnum], table: Table, initial: StrEnum
) -> None:
    for state in terminal_states(table):
        for finish in enum:
            with pytest.raises(InvalidTransition):
                check_transition(kind, "x", state, finish)


@pytest.mark.parametrize(("kind", "enum", "table", "initial"), TABLES, ids=IDS)
def test_allowed_edges_pass_and_every_other_edge_raises(
    kind: str, enum: type[StrEnum], table: Table, initial: StrEnum
) -> None:
    allowed = _edges(table)
    for start, finish in itertools.product(enum, enum):
        if (start, finish) in allowed:
            assert check_transition(kind, "x", start, finish) is finish
        else:
            with pytest.raises(InvalidTransition) as info:
                check_transition(kind, "x", start, finish)
            assert (info.value.start, info.value.finish) == (str(start), str(finish))


@pytest.mark.parametrize(
    ("start", "finish"),
    [
        (WorkflowStatus.RUNNING, WorkflowStatus.RUNNING),
        (WorkflowStatus.FAILED, WorkflowStatus.RESUMABLE),
        (WorkflowStatus.PENDING, WorkflowStatus.RESUMABLE),
    ],
)
def test_resume_edges_of_a_workflow(start: WorkflowStatus, finish: WorkflowStatus) -> None:
    with pytest.raises(InvalidTransition):
        check_transition("workflow", "etl", start, finish)
    for resumable in (
        WorkflowStatus.RESUMABLE,
        WorkflowStatus.FAILED,
        WorkflowStatus.NEEDS_ATTENTION,
    ):
        check_transition("workflow", "etl", resumable, WorkflowStatus.RUNNING)


def test_in_doubt_step_resolves_three_ways_and_never_silently_reruns() -> None:
    # Settled with a result, sent back to wait for a re-run (a real edge, no detour
    # through RUNNING), or declared failed; never straight back to RUNNING.
    assert STEP_TRANSITIONS[StepStatus.IN_DOUBT] == {
        StepStatus.SUCCESSFUL,
        StepStatus.PENDING,
        StepStatus.FAILED,
    }
    with pytest.raises(InvalidTransition):
        check_transition("step", "etl/charge", StepStatus.IN_DOUBT, StepStatus.RUNNING)


def test_attempts_end_once() -> None:
    assert terminal_states(ATTEMPT_TRANSITIONS) == {
        AttemptStatus.SUCCESSFUL,
        AttemptStatus.FAILED,
        AttemptStatus.INTERRUPTED,
    }
    assert reachable(ATTEMPT_TRANSITIONS, AttemptStatus.RUNNING) == set(AttemptStatus)
    with pytest.raises(InvalidTransition):
        check_transition("attempt", "etl/x@1", AttemptStatus.FAILED, AttemptStatus.RUNNING)


def test_forbidden_edge_raises_with_a_message_naming_the_entity() -> None:
    with pytest.raises(InvalidTransition, match=r"workflow 'etl' cannot go from SUCCESSFUL"):
        check_transition("workflow", "etl", WorkflowStatus.SUCCESSFUL, WorkflowStatus.RUNNING)


def test_states_of_another_enum_are_refused() -> None:
    with pytest.raises(InvalidTransition):
        check_transition("step", "etl/x", StepStatus.PENDING, WorkflowStatus.RUNNING)
    with pytest.raises(InvalidTransition):
        check_transition("nonsense", "x", StepStatus.PENDING, StepStatus.RUNNING)


def test_invalid_transition_survives_pickling() -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition("step", "etl/load", StepStatus.SKIPPED, StepStatus.RUNNING)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.kind, copy.ident, copy.start, copy.finish) == (
        "step",
        "etl/load",
        "SKIPPED",
        "RUNNING",
    )


@pytest.mark.parametrize("enum", [WorkflowStatus, StepStatus, WalKind, TransitionEntity])
def test_enum_values_are_what_sql_stores(enum: type[StrEnum]) -> None:
    for member in enum:
        assert member == member.value
        assert len(member.value) <= 16  # the VARCHAR length of state columns
