"""The actor directory: creation, calls in order, restarts, names (no processes)."""

from __future__ import annotations

import pickle
import signal

from heliostat.engine.node_instructions import (
    ActorReady,
    CallActor,
    CreateActor,
    Exit,
    Kill,
    Spawn,
    WorkerLost,
)
from heliostat.engine.object_table import ObjKind
from heliostat.engine.records import ActorState, TaskKind
from heliostat.exceptions import ActorDiedError
from heliostat.scheduler import ResourceSet

NO_CPU = ResourceSet.from_request(0, None, default_cpus=0)


def _create(node, make_spec, make_options, **options):
    creation = make_spec(kind=TaskKind.ACTOR_CREATE, resources=NO_CPU)
    creation.actor_id = creation.task_id
    node.state.create_actor(node.state.driver, creation, make_options(**options))
    return node.state.actors.actors[creation.actor_id]


def _started(node, make_spec, make_options):
    """A new worker, and an actor created on it that is ready."""
    worker = node.add_worker()
    actor = _create(node, make_spec, make_options)
    node.state.actor_ready(ActorReady(worker=worker, actor_id=actor.actor_id, error=None))
    return worker, actor


def _call(node, make_spec, actor):
    spec = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=actor.actor_id, resources=NO_CPU)
    node.state.submit(node.state.driver, spec)
    return spec


def test_an_actor_gets_a_dedicated_worker_and_then_its_calls(
    make_node, make_spec, make_options
) -> None:
    node = make_node()
    worker = node.add_worker()
    actor = _create(node, make_spec, make_options)
    (create,) = node.sent(worker)
    assert isinstance(create, CreateActor) and create.actor is actor
    assert actor.state is ActorState.CREATING and actor.worker is worker
    first, second = _call(node, make_spec, actor), _call(node, make_spec, actor)
    assert node.sent(worker) == []  # not before the constructor returned
    node.state.actor_ready(ActorReady(worker=worker, actor_id=actor.actor_id, error=None))
    sent = node.sent(worker)
    assert [type(m) for m in sent] == [CallActor, CallActor]
    assert [m.spec for m in sent] == [first, second]


def test_without_an_idle_worker_an_actor_spawns_one(make_node, make_spec, make_options) -> None:
    node = make_node()
    node.effects()
    actor = _create(node, make_spec, make_options)
    (spawn,) = [e for e in node.effects() if isinstance(e, Spawn)]
    assert node.state.registry.workers[spawn.index].purpose is actor


def test_a_taken_name_is_refused(make_node, make_spec, make_options) -> None:
    node = make_node()
    _create(node, make_spec, make_options, name="c")
    creation = make_spec(kind=TaskKind.ACTOR_CREATE, resources=NO_CPU)
    refusal = node.state.actor_refusal(creation, make_options(name="c"))
    assert isinstance(refusal, ValueError) and "already exists" in str(refusal)


def test_a_dead_worker_restarts_the_actor_and_retries_its_call(
    make_node, make_spec, make_options
) -> None:
    node = make_node()
    worker = node.add_worker()
    actor = _create(node, make_spec, make_options, max_restarts=1, max_task_retries=1)
    node.state.actor_ready(ActorReady(worker=worker, actor_id=actor.actor_id, error=None))
    call = _call(node, make_spec, actor)
    node.reset()
    node.state.worker_lost(WorkerLost(worker=worker))
    assert actor.state is ActorState.CREATING and actor.restarts == 1
    assert list(actor.queue) == [call]  # sent again once the new worker is up
    (spawn,) = [e for e in node.effects() if isinstance(e, Spawn)]
    replacement = node.state.worker_registered(spawn.index, 4242)
    assert replacement is not None and actor.worker is replacement
    node.state.actor_ready(ActorReady(worker=replacement, actor_id=actor.actor_id, error=None))
    assert [m.spec for m in node.sent(replacement) if isinstance(m, CallActor)] == [call]


def test_calls_on_an_actor_out_of_restarts_fail(make_node, make_spec, make_options) -> None:
    node = make_node()
    worker, actor = _started(node, make_spec, make_options)
    call = _call(node, make_spec, actor)
    node.state.worker_lost(WorkerLost(worker=worker))
    assert actor.state is ActorState.DEAD
    entry = node.state.objects.entries[call.return_ids[0]]
    assert entry.kind is ObjKind.ERROR
    assert isinstance(pickle.loads(entry.payload), ActorDiedError)
    later = _call(node, make_spec, actor)
    entry = node.state.objects.entries[later.return_ids[0]]
    assert isinstance(pickle.loads(entry.payload), ActorDiedError)


def test_kill_signals_the_actor_s_worker(make_node, make_spec, make_options) -> None:
    node = make_node()
    worker = node.add_worker()
    actor = _create(node, make_spec, make_options)
    node.reset()
    answers: list[tuple[bool, object]] = []
    node.state.verbs["kill_actor"](
        node.state.driver, lambda ok, v: answers.append((ok, v)), actor.actor_id, True
    )
    assert answers == [(True, True)]
    assert node.effects() == [Kill(worker=worker, signal=signal.SIGKILL)]


def test_a_call_after_kill_fails_even_before_the_worker_is_seen_to_exit(
    make_node, make_spec, make_options
) -> None:
    node = make_node()
    worker, actor = _started(node, make_spec, make_options)
    before = _call(node, make_spec, actor)
    node.reset()
    node.state.verbs["kill_actor"](node.state.driver, lambda ok, v: None, actor.actor_id, True)
    assert actor.state is ActorState.DEAD  # the SIGKILL is on its way; its exit not seen
    after = _call(node, make_spec, actor)
    assert node.sent(worker) == []  # nothing more reaches the dying worker
    for spec in (before, after):
        entry = node.state.objects.entries[spec.return_ids[0]]
        assert entry.kind is ObjKind.ERROR
        assert "killed with kill()" in str(pickle.loads(entry.payload))
    node.state.worker_lost(WorkerLost(worker=worker))  # the exit, seen later: no restart
    assert actor.state is ActorState.DEAD and actor.restarts == 0
    assert node.state.node.available == node.state.node.total


def test_the_last_handle_going_retires_the_actor(make_node, make_spec, make_options) -> None:
    node = make_node()
    worker, actor = _started(node, make_spec, make_options)
    node.reset()
    node.state.verbs["release"](node.state.driver, None, [actor.actor_id])
    assert actor.state is ActorState.DEAD
    assert actor.actor_id not in node.state.actors.actors
    assert node.sent(worker) == [Exit()]


def test_a_handle_inside_a_value_keeps_the_actor_until_the_value_and_its_readers_let_go(
    make_node, make_spec, make_options
) -> None:
    node = make_node()
    _worker, actor = _started(node, make_spec, make_options)
    reader = node.add_worker()
    # put([handle]): the value holds the handle; the creator's own handle goes.
    box = 1 << 50
    node.state.objects.table.create(box, node.state.driver, None)
    node.state.objects.fulfill(box, int(ObjKind.INLINE), b"[h]", 3, (actor.actor_id,))
    node.state.verbs["release"](node.state.driver, None, [actor.actor_id])
    assert actor.state is ActorState.ALIVE
    # A reader of the value gets a hold on the handle inside, as on the object refs.
    entry = node.state.objects.entries[box]
    assert node.state.objects.value_for(reader, entry) is not None
    assert reader.holds[actor.actor_id] == 1
    node.state.verbs["release"](node.state.driver, None, [box])  # the value is freed
    assert box not in node.state.objects.entries and actor.state is ActorState.ALIVE
    node.state.verbs["release"](reader, None, [actor.actor_id])  # the reader's handle goes
    assert actor.state is ActorState.DEAD and actor.actor_id not in node.state.actors.actors
