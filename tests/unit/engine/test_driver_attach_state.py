"""A driver attached to a node of its machine, as the node's pure state sees it."""

from __future__ import annotations

import signal

import pytest

from heliostat.engine.attach import attach_enabled, choose_local_node
from heliostat.engine.node_instructions import (
    Disconnect,
    Execute,
    Kill,
    TaskDone,
    WorkerLost,
)
from heliostat.engine.object_table import ObjKind
from heliostat.engine.records import ActorState, TaskKind, WorkerState
from heliostat.scheduler import ResourceSet

NO_CPU = ResourceSet.from_request(0, None, default_cpus=0)
INLINE = int(ObjKind.INLINE)


def test_an_attached_driver_gets_an_index_of_its_own_and_is_never_given_a_task(
    make_node, make_spec
) -> None:
    node = make_node(num_cpus=1)
    worker = node.add_worker()
    driver = node.state.driver_attached(4242)
    assert driver.state is WorkerState.DRIVER
    assert driver.index not in (0, worker.index)
    assert node.state.registry.workers[driver.index] is driver
    assert node.state.registry.live_task_workers() == 1  # the worker only
    specs = [make_spec() for _ in range(3)]
    for spec in specs:
        spec.owner = driver.index
        node.state.submit(driver, spec)
    sent = node.sent(worker)
    assert [m.spec for m in sent if isinstance(m, Execute)] == specs[: len(sent)]
    assert sent  # the worker got work
    assert not [m for m in node.sent(driver) if isinstance(m, Execute)]


def test_a_driver_that_leaves_releases_its_refs_and_takes_its_actors_along(
    make_node, make_spec, make_options
) -> None:
    node = make_node(num_cpus=1, max_workers=4)
    state = node.state
    driver = state.driver_attached(4242)
    # A value it put, and the result of a task it submitted: both held by it alone.
    state.verbs["put"](driver, None, 77, INLINE, b"x", 0, ())
    worker = node.add_worker()
    spec = make_spec()
    spec.owner = driver.index
    state.submit(driver, spec)
    state.task_done(
        TaskDone(
            worker=worker,
            task_id=spec.task_id,
            results=[(spec.return_ids[0], INLINE, b"r", (), 0)],
            started=0.0,
            finished=0.0,
        )
    )
    put, result = state.objects.entries[77], state.objects.entries[spec.return_ids[0]]
    assert put.kind is ObjKind.INLINE and result.kind is ObjKind.INLINE
    # Two actors it created: one detached, one not; each gets a worker of its own.
    actors = {}
    for detached in (False, True):
        creation = make_spec(kind=TaskKind.ACTOR_CREATE, resources=NO_CPU)
        creation.actor_id = creation.task_id
        creation.owner = driver.index
        state.create_actor(driver, creation, make_options(detached=detached))
        actors[detached] = state.actors.actors[creation.actor_id]
    for _ in range(2):
        node.add_worker()
    owned, detached_actor = actors[False], actors[True]
    owned_worker = owned.worker
    assert owned_worker is not None and owned.state is not ActorState.DEAD
    node.reset()

    state.worker_lost(WorkerLost(worker=driver))

    assert driver.state is WorkerState.DEAD
    assert driver.index not in state.registry.workers
    assert put.kind is not ObjKind.INLINE and result.kind is not ObjKind.INLINE  # freed
    assert owned.state is ActorState.DEAD
    effects = node.effects()
    assert Disconnect(worker=driver) in effects
    assert Kill(worker=owned_worker, signal=signal.SIGKILL) in effects
    assert detached_actor.state is not ActorState.DEAD  # it outlives its driver
    assert detached_actor.creation.owner == state.driver.index  # as the node's own


def test_attaching_is_on_unless_heliostat_attach_says_0(monkeypatch) -> None:
    monkeypatch.delenv("HELIOSTAT_ATTACH", raising=False)
    assert attach_enabled()
    monkeypatch.setenv("HELIOSTAT_ATTACH", "0")
    assert not attach_enabled()
    monkeypatch.setenv("HELIOSTAT_ATTACH", "yes")
    with pytest.raises(ValueError, match="HELIOSTAT_ATTACH must be 0 or 1"):
        attach_enabled()


class _Node:
    def __init__(self, node_id: str, node_address: str) -> None:
        self.node_id = node_id
        self.node_address = node_address


def test_the_node_with_this_machines_address_is_preferred() -> None:
    head, other = _Node("a", "127.0.0.1:4000"), _Node("b", "127.0.0.2:4001")
    assert choose_local_node([head, other], "127.0.0.2") is other
    assert choose_local_node([head, other], "10.0.0.9") is head  # none matches: the first
    assert choose_local_node([], "127.0.0.1") is None
    v6 = _Node("c", "[::1]:4002")
    assert choose_local_node([head, v6], "::1") is v6
