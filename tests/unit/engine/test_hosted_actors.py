"""Another node's actor living on this node, as its restarts move it: decided without
processes (``hosted_actors.py``). Node A owns the actor; node C (with one worker)
holds handles to it and, at times, hosts it."""

from __future__ import annotations

import pickle

from heliostat.engine.node_instructions import (
    ActorBorrow,
    ActorReady,
    ActorStarted,
    CallActor,
    TaskDone,
    WorkerExited,
)
from heliostat.engine.object_table import ObjKind
from heliostat.engine.peers import ForwardTask, ReleaseAt, ReportTask, WireValue
from heliostat.engine.records import ActorState, TaskKind, TaskState, spec_to_wire
from heliostat.exceptions import ActorDiedError
from tests.unit.engine.test_peers import SHM, A, C, _creation, _options, _runner

INLINE = int(ObjKind.INLINE)


def _hosting_node(make_node, make_spec):
    """Node C, whose driver holds a handle to A's actor (not created here yet)."""
    node, peers, worker = _runner(make_node, index=C)
    creation = _creation(make_spec)
    node.state.actors.borrow_refs([(creation.actor_id, A)])  # a handle arrives
    node.state.actors.hold(node.state.driver, node.state.actors.borrowed[creation.actor_id])
    return node, peers, worker, creation


def _host(node, worker, creation) -> None:
    """A (re)starts its actor on C; its constructor runs."""
    options = _options("", restarts=0)
    node.state.peer_forward(A, spec_to_wire(creation), b"code", [], [], actor_options=options)
    node.sent(worker)
    node.state.actor_ready(ActorReady(worker=worker, actor_id=creation.actor_id, error=None))


def _done(worker, spec, payload: bytes = b"7") -> TaskDone:
    return TaskDone(
        worker=worker,
        task_id=spec.task_id,
        results=[(spec.return_ids[0], INLINE, payload, (), len(payload))],
        started=1.0,
        finished=2.0,
    )


def test_a_call_the_owner_sends_back_here_runs_once_and_its_result_stays_its_callers(
    make_node, make_spec
) -> None:
    """The call went to the owner while the actor lived elsewhere; the owner restarted
    the actor here and sent the call back. It once ran as the owner's task, under the
    same ids: its result went to the owner's stand-in and the caller's hold on it (and
    its get) was lost."""
    node, _peers, worker, creation = _hosting_node(make_node, make_spec)
    actors = node.state.actors
    call = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    node.state.submit(node.state.driver, call)
    (forward,) = [e for e in node.effects() if isinstance(e, ForwardTask)]
    assert forward.node == A and forward.spec is call
    rid = call.return_ids[0]
    answers: list = []
    node.state.verbs["get"](node.state.driver, lambda ok, value: answers.append(value), 1, [rid])
    _host(node, worker, creation)
    actor = actors.actors[creation.actor_id]
    # The driver's handle is counted on the hosted record; the borrowed one waits for
    # its call at the owner only.
    assert actor.holds == 2 and actors.borrowed[creation.actor_id].holds == 0
    node.effects()
    # A call made now goes through the owner too, behind the one still out there.
    behind = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    node.state.submit(node.state.driver, behind)
    assert [(e.node, e.spec) for e in node.effects() if isinstance(e, ForwardTask)] == [(A, behind)]
    assert node.sent(worker) == []
    node.state.peer_forward(A, spec_to_wire(call), None, [], [])
    (sent,) = node.sent(worker)
    assert isinstance(sent, CallActor) and sent.spec is call  # the caller's own task
    node.state.task_done(_done(worker, call))
    node.state.peer_forward(A, spec_to_wire(behind), None, [], [])
    assert [m.spec for m in node.sent(worker)] == [behind]
    assert creation.actor_id not in actors.borrowed  # nothing of it is out at A now
    node.state.task_done(_done(worker, behind, b"8"))
    entry = node.state.objects.entries[rid]
    assert entry.kind is ObjKind.INLINE and entry.payload == b"7"
    assert entry.count == 1 and node.state.driver.holds[rid] == 1  # the caller's, only
    assert answers == [[(rid, INLINE, b"7")]]
    report, _behind = [e for e in node.effects() if isinstance(e, ReportTask)]
    assert report.node == A and report.task_id == call.task_id
    assert [v.payload for v in report.values] == [b"7"]
    # A relays the result back to its caller (us): already here, it changes nothing.
    node.state.peers.on_report(A, call.task_id, "ok", 1.0, 2.0, list(report.values), [])
    assert node.state.objects.entries[rid] is entry and entry.count == 1
    assert call.state is TaskState.FINISHED
    # Later calls go straight to the actor here.
    later = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    node.state.submit(node.state.driver, later)
    assert [m.spec for m in node.sent(worker)] == [later]
    # The driver's handle goes: A gets back the transfer it counted for C.
    node.state.task_done(_done(worker, later))
    node.effects()
    node.state.verbs["release"](node.state.driver, None, [creation.actor_id])
    gives = [e for e in node.effects() if isinstance(e, ActorBorrow)]
    assert gives == [ActorBorrow(node=A, actor_id=creation.actor_id, borrower=C, delta=-1)]
    assert actor.state is ActorState.ALIVE  # A's own hold keeps it


def test_a_large_result_of_a_call_that_came_home_is_held_for_the_owner_until_it_lets_go(
    make_node, make_spec
) -> None:
    node, _peers, worker, creation = _hosting_node(make_node, make_spec)
    call = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    node.state.submit(node.state.driver, call)
    _host(node, worker, creation)
    node.state.peer_forward(A, spec_to_wire(call), None, [], [])
    node.sent(worker)
    rid = call.return_ids[0]
    node.state.task_done(
        TaskDone(
            worker=worker,
            task_id=call.task_id,
            results=[(rid, SHM, "/dev/shm/heliostat-x-1", (), 4096)],
            started=1.0,
            finished=2.0,
        )
    )
    entry = node.state.objects.entries[rid]
    standin = node.state.peers.procs[A]
    (report,) = [e for e in node.effects() if isinstance(e, ReportTask)]
    assert report.values[0].kind == SHM  # A is told where it is, and may pull it
    assert entry.count == 2 and standin.holds[rid] == 1
    # A relays it to us, its caller; we tell A it need not keep it; A lets go here.
    node.state.peers.on_report(A, call.task_id, "ok", 1.0, 2.0, list(report.values), [])
    assert ReleaseAt(node=A, object_ids=(rid,)) in node.effects()
    node.state.peers.on_release(A, [rid])
    assert entry.count == 1 and rid not in standin.holds and entry.kind is ObjKind.SHM


def test_callers_here_follow_the_actor_to_its_owner_when_it_dies_here(make_node, make_spec) -> None:
    """The actor dies on the node that hosts it: its owner restarts it (maybe
    elsewhere). This node's callers once kept the dead hosted record and saw
    ActorDiedError for good."""
    node, _peers, worker, creation = _hosting_node(make_node, make_spec)
    actors = node.state.actors
    _host(node, worker, creation)
    actor = actors.actors[creation.actor_id]
    actor.max_task_retries = 1  # as the owner said in its options
    retried = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    second = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    for spec in (retried, second):
        node.state.submit(node.state.driver, spec)
    assert [m.spec for m in node.sent(worker)] == [retried, second]  # sent ahead
    node.effects()
    node.state.worker_exited(WorkerExited(pid=worker.pid, code=-9))
    effects = node.effects()
    died = [i for i, e in enumerate(effects) if isinstance(e, ActorStarted) and e.died]
    sent = [(i, e.spec) for i, e in enumerate(effects) if isinstance(e, ForwardTask)]
    # The owner hears of the death first, then gets our calls, in their order.
    assert died and [spec for _, spec in sent] == [retried, second]
    assert all(e.node == A for e in effects if isinstance(e, ForwardTask))
    assert died[0] < sent[0][0]
    assert creation.actor_id not in actors.actors
    borrowed = actors.borrowed[creation.actor_id]
    assert borrowed.owner == A and borrowed.holds == 1 and borrowed.received == 1
    # A later call goes to the owner too; the owner fails it (it did not restart).
    late = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    node.state.submit(node.state.driver, late)
    assert [e.spec for e in node.effects() if isinstance(e, ForwardTask)] == [late]
    error = pickle.dumps(ActorDiedError("The actor Counter died."))
    rid = late.return_ids[0]
    node.state.peers.on_report(
        A, late.task_id, "error", 1.0, 2.0, [WireValue(rid, int(ObjKind.ERROR), error, 0, ())], []
    )
    assert node.state.objects.entries[rid].kind is ObjKind.ERROR
    # The owner restarts it here again: the handle counts on the hosted record.
    for spec in (retried, second):
        node.state.peers.on_report(A, spec.task_id, "ok", 1.0, 2.0, [], [])
    worker2 = node.add_worker()
    _host(node, worker2, creation)
    assert actors.actors[creation.actor_id].holds == 2
    assert creation.actor_id not in actors.borrowed


def test_a_call_made_here_without_retries_fails_when_the_actor_dies_here(
    make_node, make_spec
) -> None:
    node, _peers, worker, creation = _hosting_node(make_node, make_spec)
    _host(node, worker, creation)
    running = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    node.state.submit(node.state.driver, running)
    node.effects()
    node.state.worker_exited(WorkerExited(pid=worker.pid, code=-9))
    entry = node.state.objects.entries[running.return_ids[0]]
    assert entry.kind is ObjKind.ERROR
    assert isinstance(pickle.loads(entry.payload), ActorDiedError)
    assert not [e for e in node.effects() if isinstance(e, ForwardTask)]


def test_the_owners_kill_meant_for_the_actor_that_died_here_is_not_sent_back(
    make_node, make_spec
) -> None:
    from heliostat.engine.node_instructions import ActorControl

    node, peers, worker, creation = _hosting_node(make_node, make_spec)
    _host(node, worker, creation)
    node.state.worker_exited(WorkerExited(pid=worker.pid, code=-9))
    node.effects()
    peers.on_actor_control(A, creation.actor_id, True, False)
    assert not [e for e in node.effects() if isinstance(e, ActorControl)]


def test_a_call_sent_back_after_the_actor_died_here_is_left_to_the_owner(
    make_node, make_spec
) -> None:
    """The owner sent our call back here just as the actor died here; told of the
    death first, it takes the call back and reports it later, so it is not run or
    failed here."""
    node, _peers, worker, creation = _hosting_node(make_node, make_spec)
    call = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    node.state.submit(node.state.driver, call)
    _host(node, worker, creation)
    node.state.worker_exited(WorkerExited(pid=worker.pid, code=-9))
    node.effects()
    node.state.peer_forward(A, spec_to_wire(call), None, [], [])
    assert call.state is TaskState.RUNNING and call.remote_node == A  # out at the owner
    assert not node.effects()
    rid = call.return_ids[0]
    node.state.peers.on_report(
        A, call.task_id, "ok", 1.0, 2.0, [WireValue(rid, INLINE, b"8", 1, ())], []
    )
    assert node.state.objects.entries[rid].payload == b"8"
    borrowed = node.state.actors.borrowed[creation.actor_id]  # the driver's handle
    assert borrowed.holds == 1 and not borrowed.inflight
