"""The state tables of tasks, workers and actors, walked without processes."""

from __future__ import annotations

import enum
import pickle
from collections import deque

import pytest

from heliostat.engine.records import (
    ACTOR_TRANSITIONS,
    TASK_TRANSITIONS,
    WORKER_TRANSITIONS,
    ActorRecord,
    ActorState,
    TaskKind,
    TaskSpec,
    TaskState,
    WorkerRecord,
    WorkerState,
    spec_from_wire,
    spec_to_wire,
    transition,
)
from heliostat.exceptions import InvalidTransition
from heliostat.scheduler import ResourceSet


def make_spec(**overrides) -> TaskSpec:
    fields = dict(
        task_id=0x10,
        kind=TaskKind.NORMAL,
        name="load",
        fn_id=b"fn",
        args_payload=b"",
        ref_positions=(),
        arg_ids=(),
        contained=(),
        return_ids=(0x11,),
        resources=ResourceSet.from_request(1, None, default_cpus=1),
        max_retries=3,
        retry_exceptions=False,
        owner=0,
    )
    fields.update(overrides)
    return TaskSpec(**fields)


def make_actor() -> ActorRecord:
    creation = make_spec(kind=TaskKind.ACTOR_CREATE, name="Counter.__init__", return_ids=())
    return ActorRecord(
        actor_id=0x20,
        name="c",
        namespace="default",
        class_name="Counter",
        creation=creation,
        max_restarts=1,
        max_concurrency=1,
        detached=False,
    )


# (state enum, its table, a factory of a record in the initial state, initial, terminals)
MACHINES = {
    "task": (TaskState, TASK_TRANSITIONS, make_spec, TaskState.WAITING, {TaskState.CANCELLED}),
    "worker": (
        WorkerState,
        WORKER_TRANSITIONS,
        lambda: WorkerRecord(1, pid=123),
        WorkerState.STARTING,
        {WorkerState.DEAD},
    ),
    "actor": (ActorState, ACTOR_TRANSITIONS, make_actor, ActorState.PENDING, {ActorState.DEAD}),
}
machine = pytest.mark.parametrize("name", list(MACHINES))


def _reachable(table: dict, start: enum.Enum) -> set:
    seen = {start}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        for nxt in table[state]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@machine
def test_table_covers_every_state(name) -> None:
    states, table, _factory, _initial, _terminals = MACHINES[name]
    assert set(table) == set(states)
    for exits in table.values():
        assert set(exits) <= set(states)


@machine
def test_new_record_starts_in_the_initial_state(name) -> None:
    _states, _table, factory, initial, _terminals = MACHINES[name]
    assert factory().state is initial


@machine
def test_every_state_is_reachable_from_the_initial_state(name) -> None:
    states, table, _factory, initial, _terminals = MACHINES[name]
    assert _reachable(table, initial) == set(states)


@machine
def test_terminal_states_have_no_exits(name) -> None:
    _states, table, _factory, _initial, terminals = MACHINES[name]
    assert {s for s, exits in table.items() if not exits} == terminals
    for terminal in terminals:
        assert table[terminal] == frozenset()


@machine
def test_every_state_can_reach_a_terminal_state(name) -> None:
    states, table, _factory, _initial, terminals = MACHINES[name]
    for state in states:
        assert _reachable(table, state) & terminals, f"{state} can never end"


@machine
def test_no_state_transitions_to_itself(name) -> None:
    _states, table, _factory, _initial, _terminals = MACHINES[name]
    for state, exits in table.items():
        assert state not in exits


def _drive_to(record, table: dict, target) -> None:
    """Walk ``record`` from its current state to ``target`` along allowed edges."""
    path = {record.state: [record.state]}
    todo = deque([record.state])
    while todo:
        state = todo.popleft()
        for nxt in table[state]:
            if nxt not in path:
                path[nxt] = [*path[state], nxt]
                todo.append(nxt)
    for step in path[target][1:]:
        transition(record, step)
    assert record.state is target


@machine
def test_every_allowed_edge_is_taken(name) -> None:
    _states, table, factory, _initial, _terminals = MACHINES[name]
    for start, exits in table.items():
        for finish in exits:
            record = factory()
            _drive_to(record, table, start)
            transition(record, finish)
            assert record.state is finish


@machine
def test_every_forbidden_edge_raises_and_keeps_the_state(name) -> None:
    states, table, factory, _initial, _terminals = MACHINES[name]
    for start in states:
        for finish in set(states) - set(table[start]):
            record = factory()
            _drive_to(record, table, start)
            with pytest.raises(InvalidTransition) as info:
                transition(record, finish)
            assert record.state is start
            err = info.value
            assert (err.start, err.finish) == (str(start), str(finish))
            assert err.kind == type(record).__name__
            assert err.ident == record.label()


def test_task_edges_that_matter() -> None:
    # Retry: a running task goes back to the queue.
    assert TaskState.READY in TASK_TRANSITIONS[TaskState.RUNNING]
    # Lineage reconstruction: a finished task runs again.
    assert TaskState.WAITING in TASK_TRANSITIONS[TaskState.FINISHED]
    # A finished task is never cancelled after the fact.
    assert TaskState.CANCELLED not in TASK_TRANSITIONS[TaskState.FINISHED]
    # An actor worker never returns to the pool.
    assert WORKER_TRANSITIONS[WorkerState.ACTOR] == frozenset({WorkerState.DEAD})
    # A restarting actor is created again.
    assert ActorState.CREATING in ACTOR_TRANSITIONS[ActorState.RESTARTING]


def test_invalid_transition_message_and_pickling() -> None:
    spec = make_spec()
    with pytest.raises(InvalidTransition) as info:
        transition(spec, TaskState.RUNNING)
    err = info.value
    assert "load#10" in str(err)
    assert "WAITING" in str(err) and "RUNNING" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert (back.kind, back.ident, back.start, back.finish) == (
        err.kind,
        err.ident,
        err.start,
        err.finish,
    )


# --- records --------------------------------------------------------------------------------


def test_spec_wire_round_trip() -> None:
    spec = make_spec(
        args_payload=b"payload",
        ref_positions=(0, "key"),
        arg_ids=(1, 2),
        contained=(3,),
        return_ids=(4, 5),
        retry_exceptions=True,
        submitted_at=12.5,
    )
    back = spec_from_wire(pickle.loads(pickle.dumps(spec_to_wire(spec))), owner=9)
    for field in (
        "task_id",
        "kind",
        "name",
        "fn_id",
        "args_payload",
        "ref_positions",
        "arg_ids",
        "contained",
        "return_ids",
        "resources",
        "max_retries",
        "retry_exceptions",
        "actor_id",
        "method",
        "submitted_at",
    ):
        assert getattr(back, field) == getattr(spec, field), field
    assert back.owner == 9
    assert back.state is TaskState.WAITING
    assert back.attempts == 0
    assert back.live_returns == 2


def test_record_labels_name_the_entity() -> None:
    assert make_spec().label() == "load#10"
    assert WorkerRecord(3, pid=77).label() == "worker 3 (pid 77)"
    assert make_actor().label() == "Counter(c)"
