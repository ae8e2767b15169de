"""Work between nodes, decided without processes: two NodeStates wired by hand.

What one node's outbox holds for the other (``peers.py`` effects) is handed to the
other node's state as the I/O layer would, so the whole round trip (spill, forward,
run, report, pull, release) and every failure path are plain function calls.
"""

from __future__ import annotations

import dataclasses
import pickle
import signal

from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    ActorReady,
    Disconnect,
    Execute,
    Kill,
    TaskDone,
    WorkerExited,
    WorkerLost,
)
from heliostat.engine.object_table import ObjKind
from heliostat.engine.peers import (
    ForwardTask,
    PeerInfo,
    PullObject,
    PushValues,
    ReleaseAt,
    ReportTask,
    StreamItem,
    WireValue,
)
from heliostat.engine.records import PEER_INDEX_BASE, TaskState, spec_to_wire
from heliostat.engine.scheduling_strategies import NodeAffinitySchedulingStrategy
from heliostat.engine.spill_depth import SHORT_CALL_S
from heliostat.engine.streams import STREAMING
from heliostat.exceptions import (
    NodeDiedError,
    ObjectLostError,
    OwnerDiedError,
    TaskUnschedulableError,
)
from heliostat.scheduler import ResourceSet

INLINE, SHM = int(ObjKind.INLINE), int(ObjKind.SHM)
A, B, C = 1, 2, 3  # node indexes
TWO_CPUS = ResourceSet.from_dict({"CPU": 2})


def _peer(index: int, cpus: float = 2) -> PeerInfo:
    total = ResourceSet.from_dict({"CPU": cpus})
    return PeerInfo(index=index, address=f"127.0.0.{index}:1", total=total, available=total)


def _cluster(make_node, num_cpus: float = 0, peers=(B,)):
    """Node A (the driver's: ``num_cpus``) with peers, joined to a cluster."""
    node = make_node(num_cpus=num_cpus)
    peers_state = node.state.join_cluster(A, depth=2)
    peers_state.update([_peer(index) for index in peers])
    return node, peers_state


def _runner(make_node, num_cpus: float = 1, index: int = B):
    """Node ``index`` with one worker, running tasks for node A (the driver's, no CPUs)."""
    runner = make_node(num_cpus=num_cpus)
    peers_state = runner.state.join_cluster(index, depth=2)
    peers_state.update([_peer(A, cpus=0)])
    return runner, peers_state, runner.add_worker()


def _run_there(owner, runner, spec) -> None:
    """The owner submits ``spec``, which it forwards to ``runner``, which takes it."""
    owner.state.submit(owner.state.driver, spec)
    (forward,) = _forwards(owner)
    runner.state.peer_forward(A, spec_to_wire(forward.spec), None, [], [])


def _forwards(node) -> list[ForwardTask]:
    return [e for e in node.effects() if isinstance(e, ForwardTask)]


def _error(node, object_id: int) -> BaseException:
    entry = node.state.objects.entries[object_id]
    assert entry.kind is ObjKind.ERROR
    return pickle.loads(entry.payload)


def test_a_task_that_does_not_fit_here_spills_to_a_peer_up_to_its_depth(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node)  # no CPUs here: everything spills
    specs = [make_spec() for _ in range(6)]
    for spec in specs:
        node.state.submit(node.state.driver, spec)
    sent = _forwards(node)
    # Two CPUs on B, depth 2: four tasks in flight there, the rest wait here.
    assert [f.spec for f in sent] == specs[:4] and {f.node for f in sent} == {B}
    assert all(s.state is TaskState.RUNNING and s.remote_node == B for s in specs[:4])
    assert [s.state for s in specs[4:]] == [TaskState.READY, TaskState.READY]
    # One ends on B: its value comes back inline, and the next task goes out.
    peers.on_report(
        B,
        specs[0].task_id,
        "ok",
        1.0,
        2.0,
        [WireValue(specs[0].return_ids[0], INLINE, b"v", 1, ())],
        [],
    )
    entry = node.state.objects.entries[specs[0].return_ids[0]]
    assert entry.kind is ObjKind.INLINE and entry.payload == b"v"
    assert specs[0].state is TaskState.FINISHED
    assert [f.spec for f in _forwards(node)] == [specs[4]]


def test_the_least_loaded_peer_gets_the_next_task(make_node, make_spec) -> None:
    node, _ = _cluster(make_node, peers=(B, C))
    for _ in range(4):
        node.state.submit(node.state.driver, make_spec())
    counts = {}
    for forward in _forwards(node):
        counts[forward.node] = counts.get(forward.node, 0) + 1
    assert counts == {B: 2, C: 2}


def test_a_task_that_fits_here_stays_here(make_node, make_spec) -> None:
    node, _ = _cluster(make_node, num_cpus=1)
    worker = node.add_worker()
    spec = make_spec()
    node.state.submit(node.state.driver, spec)
    assert isinstance(node.sent(worker)[0], Execute)
    assert _forwards(node) == []


def test_spread_and_affinity_are_decided_when_the_task_is_ready(make_node, make_spec) -> None:
    node, _ = _cluster(make_node, num_cpus=2, peers=(B, C))
    node.add_worker()
    spread = [make_spec() for _ in range(3)]
    for spec in spread:
        spec.strategy = "SPREAD"
        node.state.submit(node.state.driver, spec)
    targets = {f.node for f in _forwards(node)}
    assert targets <= {B, C} and len(targets) == 2  # the third ran here
    pinned = make_spec()
    pinned.strategy = NodeAffinitySchedulingStrategy(f"{C:020x}", soft=False)
    node.state.submit(node.state.driver, pinned)
    assert [(f.node, f.spec) for f in _forwards(node)] == [(C, pinned)]
    nowhere = make_spec()
    nowhere.strategy = NodeAffinitySchedulingStrategy("ff" * 10, soft=False)
    node.state.submit(node.state.driver, nowhere)
    assert isinstance(_error(node, nowhere.return_ids[0]), TaskUnschedulableError)


def test_a_burst_of_spread_tasks_alternates_instead_of_piling_on_the_peer_that_looked_free(
    make_node, make_spec
) -> None:
    """The head's view of a peer is as old as its last heartbeat: the tasks sent there
    since count as taken, until they are reported (as Ray's raylet charges its view)."""
    node, peers = _cluster(make_node, num_cpus=1, peers=(B,))
    peers.update([_peer(B, cpus=1)])
    worker = node.add_worker()
    spread = [make_spec() for _ in range(10)]
    for spec in spread:
        spec.strategy = "SPREAD"
        node.state.submit(node.state.driver, spec)
    there = [f.spec for f in _forwards(node)]
    here = [s for s in spread if s not in there]
    assert worker.task in here
    assert abs(len(there) - len(here)) <= 2  # it was 9 on B and 1 here
    assert _free_cpus(peers) == 1 - len(there)
    # B reports one: that one no longer counts against it.
    rid = there[0].return_ids[0]
    peers.on_report(B, there[0].task_id, "ok", 1.0, 2.0, [WireValue(rid, INLINE, b"v", 1, ())], [])
    assert _free_cpus(peers) == 1 - (len(there) - 1)
    # A dead node's charge goes with it: back, it is charged only for what is sent now.
    peers.update([])
    assert B not in peers.inflight
    peers.update([_peer(B, cpus=1)])
    assert _free_cpus(peers) == 1 - len(peers.inflight.get(B, ()))


def _free_cpus(peers) -> float:
    (view,) = peers.views()
    return view.available.get("CPU")


def test_a_peer_with_room_gets_a_task_before_it_is_sent_ahead_here(make_node, make_spec) -> None:
    """A task sent ahead waits for the running one (maybe long: a function not seen
    yet); a peer with a free CPU starts it at once, so spilling comes first."""
    node, _ = _cluster(make_node, num_cpus=1, peers=(B,))
    worker = node.add_worker()
    specs = [make_spec(fn_id=b"unseen") for _ in range(5)]
    for spec in specs:
        node.state.submit(node.state.driver, spec)
    assert [f.spec for f in _forwards(node)] == specs[1:]  # two CPUs there, two deep
    assert worker.task is specs[0] and not worker.queued


def _ran_for(node, worker, spec, seconds: float) -> None:
    """``worker`` of ``node`` ends ``spec``, which ran ``seconds``."""
    node.state.task_done(
        dataclasses.replace(_ended(worker, spec), started=100.0, finished=100.0 + seconds)
    )


def test_calls_shorter_than_forwarding_them_stay_here_and_longer_ones_spill(
    make_node, make_spec
) -> None:
    """Forwarding a task costs this node manager more than running a short call here,
    so a call known to be short waits for the busy worker (sent ahead), while a
    long one, or one not seen yet, goes to the peer with room."""
    node, _ = _cluster(make_node, num_cpus=1, peers=(B,))
    worker = node.add_worker()
    first = make_spec(fn_id=b"short")
    node.state.submit(node.state.driver, first)
    _ran_for(node, worker, first, SHORT_CALL_S / 10)  # now known to be short
    running = make_spec(fn_id=b"short")
    node.state.submit(node.state.driver, running)
    assert worker.task is running
    ahead = [make_spec(fn_id=b"short") for _ in range(2)]  # the pipeline depth here
    for spec in ahead:
        node.state.submit(node.state.driver, spec)
    assert list(worker.queued) == ahead and _forwards(node) == []
    # A long call (one not seen yet, too) is worth a peer's CPU...
    long = make_spec(fn_id=b"long")
    node.state.submit(node.state.driver, long)
    assert [f.spec for f in _forwards(node)] == [long]
    # ... a short one waits here, though the peer has room.
    waits = make_spec(fn_id=b"short")
    node.state.submit(node.state.driver, waits)
    assert _forwards(node) == [] and waits.state is TaskState.READY
    _ran_for(node, worker, running, SHORT_CALL_S / 10)
    assert worker.task is ahead[0] and waits in worker.queued


def test_short_calls_spill_behind_a_long_call_or_when_sending_ahead_cannot_be(
    make_node, make_spec
) -> None:
    node, _ = _cluster(make_node, num_cpus=1, peers=(B,))
    worker = node.add_worker()
    first = make_spec(fn_id=b"short")
    node.state.submit(node.state.driver, first)
    _ran_for(node, worker, first, SHORT_CALL_S / 10)
    slow = make_spec(fn_id=b"slow")
    node.state.submit(node.state.driver, slow)  # the worker runs a call not seen yet
    assert worker.task is slow
    short = make_spec(fn_id=b"short")
    node.state.submit(node.state.driver, short)
    assert [f.spec for f in _forwards(node)] == [short]  # not queued behind it
    _ran_for(node, worker, slow, 0.0)
    again = make_spec(fn_id=b"short")
    node.state.submit(node.state.driver, again)  # runs here: the worker was free
    assert worker.task is again
    capped = make_spec(fn_id=b"short", max_calls=5)  # never sent ahead: a peer takes it
    node.state.submit(node.state.driver, capped)
    assert [f.spec for f in _forwards(node)] == [capped]


def test_a_task_pinned_to_this_busy_node_waits_for_it_and_is_never_spilled(
    make_node, make_spec
) -> None:
    """As Ray's node affinity: while the node is alive and can hold the task, the task
    runs there only, soft or not, even when peers have room now."""
    node, _ = _cluster(make_node, num_cpus=1, peers=(B,))
    worker = node.add_worker()
    busy = make_spec()
    node.state.submit(node.state.driver, busy)  # takes the only CPU here
    here = node.state.dispatch.local_view().node_id
    pinned = []
    for soft in (False, True):
        spec = make_spec()
        spec.strategy = NodeAffinitySchedulingStrategy(here, soft=soft)
        node.state.submit(node.state.driver, spec)
        pinned.append(spec)
    free = make_spec()
    node.state.submit(node.state.driver, free)
    sent = [f.spec for f in _forwards(node)]
    names = {id(busy): "busy", id(free): "free", id(pinned[0]): "hard", id(pinned[1]): "soft"}
    assert [names[id(x)] for x in sent] == ["free"]  # only the unpinned one spills
    # Both stay here: queued, or sent ahead to the busy worker (pipelining).
    assert all(s.remote_node == 0 and s.state is not TaskState.FINISHED for s in pinned)
    node.state.task_done(_ended(worker, busy))  # the CPU is free: the first runs here
    assert pinned[0].worker is worker and pinned[0].state is TaskState.RUNNING


def _ended(worker, spec) -> TaskDone:
    rid = spec.return_ids[0]
    return TaskDone(
        worker=worker,
        task_id=spec.task_id,
        results=[(rid, INLINE, b"N.", (), 2)],
        started=0,
        finished=0,
    )


def test_a_dead_nodes_tasks_are_retried_elsewhere_or_fail_naming_the_node(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    retried = make_spec(max_retries=1)
    spent = make_spec(max_retries=0)
    for spec in (retried, spent):
        spec.strategy = NodeAffinitySchedulingStrategy(f"{B:020x}", soft=True)
        node.state.submit(node.state.driver, spec)
    assert {f.node for f in _forwards(node)} == {B}
    peers.update([_peer(C)])  # the head no longer lists B as alive
    assert [(f.node, f.spec) for f in _forwards(node)] == [(C, retried)]
    assert retried.attempts == 2
    assert isinstance(_error(node, spent.return_ids[0]), NodeDiedError)
    # A late report from B (it was only cut off) is ignored: the task runs on C now.
    peers.on_report(B, retried.task_id, "ok", 1.0, 2.0, [], [])
    assert retried.state is TaskState.RUNNING and retried.remote_node == C


def _remote_result(node, peers, make_spec, *, max_retries: int = 0, size: int = 4096):
    """A task of node A that ran on B and reported a large result (left on B)."""
    spec = make_spec(max_retries=max_retries)
    spec.strategy = NodeAffinitySchedulingStrategy(f"{B:020x}", soft=True)
    node.state.submit(node.state.driver, spec)
    assert [f.node for f in _forwards(node)] == [B]
    rid = spec.return_ids[0]
    peers.on_report(B, spec.task_id, "ok", 1.0, 2.0, [WireValue(rid, SHM, None, size, ())], [])
    return spec, rid


def _ask(node, verb: str, *args) -> list:
    """Call a driver verb; the answers it got so far (it may answer later)."""
    answers: list = []
    node.state.verbs[verb](node.state.driver, lambda ok, value: answers.append(value), *args)
    return answers


def _of(effects, kind) -> list:
    return [e for e in effects if isinstance(e, kind)]


def test_a_large_result_stays_on_the_node_that_made_it_until_a_get_pulls_it(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node)
    spec, rid = _remote_result(node, peers, make_spec)
    entry = node.state.objects.entries[rid]
    # The owner only records where it lives: no pull, and B keeps it for us.
    assert entry.kind is ObjKind.REMOTE and entry.size == 4096
    assert spec.state is TaskState.FINISHED
    assert node.effects() == []
    assert node.state.objects.table.used == 0
    # A wait that does not fetch counts it ready where it is.
    assert _ask(node, "wait", 1, [rid], 1, False) == [[rid]]
    assert node.effects() == []
    # A wait that fetches, and a get, pull it once, from B.
    waited = _ask(node, "wait", 2, [rid], 1, True)
    got = _ask(node, "get", 3, [rid])
    assert waited == [] and got == []
    assert _of(node.effects(), PullObject) == [PullObject(node=B, object_id=rid, size=4096)]
    peers.pulled(rid, "/dev/shm/heliostat-x-1", 4096)
    assert waited == [[rid]] and got == [[(rid, SHM, "/dev/shm/heliostat-x-1")]]
    assert entry.kind is ObjKind.SHM and node.state.objects.table.used == 4096
    # B keeps its copy while ours lives (we may have told others to pull from it) ...
    assert _of(node.effects(), ReleaseAt) == []
    # ... and lets go of it with our last ref.
    assert peers.located == {B: {rid}}
    node.state.verbs["release"](node.state.driver, None, [rid])
    assert _of(node.effects(), ReleaseAt) == [ReleaseAt(node=B, object_ids=(rid,))]
    assert rid not in node.state.objects.entries
    assert peers.located == {}


def test_the_last_ref_to_a_remote_value_frees_it_where_it_lives_without_a_pull(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node)
    _spec, rid = _remote_result(node, peers, make_spec)
    node.state.verbs["release"](node.state.driver, None, [rid])
    assert node.effects() == [ReleaseAt(node=B, object_ids=(rid,))]
    assert rid not in node.state.objects.entries


def test_a_pulled_remote_value_spills_like_any_other_and_still_lets_its_holder_go(
    make_node, make_spec, tmp_path
) -> None:
    node, peers = _cluster(make_node)  # a 1 MiB store
    size = 600_000
    refs = [_remote_result(node, peers, make_spec, size=size)[1] for _ in range(2)]
    paths = []
    for i, rid in enumerate(refs):
        got = _ask(node, "get", i + 1, [rid])
        node.effects()
        path = tmp_path / f"segment-{i}"
        path.write_bytes(b"x" * size)
        paths.append(str(path))
        peers.pulled(rid, str(path), size)
        assert got == [[(rid, SHM, str(path))]]
    # Room for the second was made by spilling the first (the least recently used).
    first = node.state.objects.entries[refs[0]]
    assert first.kind is ObjKind.SPILLED and node.state.objects.table.used == size
    node.state.verbs["release"](node.state.driver, None, [refs[0]])
    assert _of(node.effects(), ReleaseAt) == [ReleaseAt(node=B, object_ids=(refs[0],))]
    assert node.state.objects.table.spilled_bytes == 0


def test_a_large_value_nested_in_a_small_result_stays_where_it_was_made(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node)
    spec = make_spec()
    node.state.submit(node.state.driver, spec)
    node.effects()
    rid = spec.return_ids[0]
    inner = (B << 64) | 7  # a ref B minted (a put in the task), large, inside the result
    peers.on_report(
        B,
        spec.task_id,
        "ok",
        1.0,
        2.0,
        [WireValue(rid, INLINE, b"[ref]", 5, (inner,)), WireValue(inner, SHM, None, 4096, ())],
        [],
    )
    assert node.effects() == []
    entries = node.state.objects.entries
    assert entries[rid].kind is ObjKind.INLINE
    assert entries[inner].kind is ObjKind.REMOTE and entries[inner].count == 1  # the list
    # A reader of the inner ref pulls it; dropping the list lets B free it.
    got = _ask(node, "get", 1, [inner])
    assert _of(node.effects(), PullObject) == [PullObject(node=B, object_id=inner, size=4096)]
    peers.pulled(inner, "/dev/shm/heliostat-x-7", 4096)
    assert got == [[(inner, SHM, "/dev/shm/heliostat-x-7")]]
    node.state.verbs["release"](node.state.driver, None, [rid])
    assert node.effects() == [ReleaseAt(node=B, object_ids=(inner,))]
    assert inner not in entries


def test_a_get_waiting_for_results_pulls_each_as_soon_as_it_is_reported(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node)
    specs = [make_spec() for _ in range(2)]
    for spec in specs:
        spec.strategy = NodeAffinitySchedulingStrategy(f"{B:020x}", soft=True)
        node.state.submit(node.state.driver, spec)
    node.effects()
    rids = [spec.return_ids[0] for spec in specs]
    got = _ask(node, "get", 1, rids)
    for spec, rid in zip(specs, rids, strict=True):
        value = WireValue(rid, SHM, None, 4096, ())
        peers.on_report(B, spec.task_id, "ok", 1.0, 2.0, [value], [])
        assert _of(node.effects(), PullObject) == [PullObject(node=B, object_id=rid, size=4096)]
    peers.pulled(rids[1], "/dev/shm/heliostat-x-2", 4096)
    assert got == []
    peers.pulled(rids[0], "/dev/shm/heliostat-x-1", 4096)
    assert got == [
        [(rids[0], SHM, "/dev/shm/heliostat-x-1"), (rids[1], SHM, "/dev/shm/heliostat-x-2")]
    ]


def test_a_nested_ref_made_later_elsewhere_is_pushed_as_its_location(make_node, make_spec) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    maker = make_spec()
    maker.strategy = NodeAffinitySchedulingStrategy(f"{B:020x}", soft=False)
    node.state.submit(node.state.driver, maker)
    node.effects()
    (inner,) = maker.return_ids
    reader = make_spec()
    reader.contained = (inner,)  # a list holding the ref, say
    reader.strategy = NodeAffinitySchedulingStrategy(f"{C:020x}", soft=False)
    node.state.submit(node.state.driver, reader)
    (forward,) = _forwards(node)
    assert forward.node == C and forward.pending == (inner,)
    peers.on_report(B, maker.task_id, "ok", 1.0, 2.0, [WireValue(inner, SHM, None, 4096, ())], [])
    # C is told where it lives; the owner pulls nothing.
    assert node.effects() == [
        PushValues(node=C, values=(WireValue(inner, SHM, None, 4096, (), B),))
    ]


def test_a_task_run_on_the_owners_node_pulls_its_remote_arguments_first(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node, num_cpus=1)
    _spec, rid = _remote_result(node, peers, make_spec)
    _spec2, rid2 = _remote_result(node, peers, make_spec, size=8192)
    worker = node.add_worker()
    reader = make_spec(args=(rid, rid2))
    node.state.submit(node.state.driver, reader)
    # Both arguments are pulled at once; the task waits for them.
    assert node.sent(worker) == []
    assert {(p.node, p.object_id) for p in _of(node.effects(), PullObject)} == {
        (B, rid),
        (B, rid2),
    }
    assert reader.state is TaskState.WAITING
    peers.pulled(rid, "/dev/shm/heliostat-x-1", 4096)
    assert node.sent(worker) == []
    peers.pulled(rid2, "/dev/shm/heliostat-x-2", 8192)
    (execute,) = node.sent(worker)
    assert execute.spec is reader
    assert execute.resolved == [
        (rid, SHM, "/dev/shm/heliostat-x-1"),
        (rid2, SHM, "/dev/shm/heliostat-x-2"),
    ]


def test_a_task_sent_to_a_third_node_pulls_its_argument_from_where_it_lives(
    make_node, make_spec
) -> None:
    owner, owner_peers = _cluster(make_node, peers=(B, C))
    _spec, rid = _remote_result(owner, owner_peers, make_spec)
    reader = make_spec(args=(rid,))
    reader.strategy = NodeAffinitySchedulingStrategy(f"{C:020x}", soft=False)
    owner.state.submit(owner.state.driver, reader)
    (forward,) = _forwards(owner)
    assert forward.node == C
    assert forward.values == (WireValue(rid, SHM, None, 4096, (), B),)  # at B
    # Node C pulls it from B (no hop through the owner) and lets the owner know once
    # it has its copy: the owner, not B, kept it for C.
    runner = make_node(num_cpus=1)
    runner_peers = runner.state.join_cluster(C, depth=2)
    runner_peers.update([_peer(A, cpus=0), _peer(B)])
    runner.add_worker()
    runner.state.peer_forward(A, spec_to_wire(forward.spec), None, list(forward.values), [])
    assert _of(runner.effects(), PullObject) == [PullObject(node=B, object_id=rid, size=4096)]
    runner_peers.pulled(rid, "/dev/shm/heliostat-c-1", 4096)
    assert _of(runner.effects(), ReleaseAt) == [ReleaseAt(node=A, object_ids=(rid,))]
    # The owner kept its entry (and B's copy) for C until then.
    assert owner.state.objects.entries[rid].count == 3  # the driver, the task, C
    owner_peers.on_release(C, [rid])
    assert owner.state.objects.entries[rid].count == 2
    assert owner.effects() == []


def test_a_task_sent_to_the_node_holding_its_argument_moves_no_bytes(make_node, make_spec) -> None:
    owner, owner_peers = _cluster(make_node)
    runner, runner_peers, worker = _runner(make_node)
    # B ran a task of A's and keeps its large result for A.
    maker = make_spec()
    _run_there(owner, runner, maker)
    (execute,) = runner.sent(worker)
    rid = maker.return_ids[0]
    runner.state.task_done(
        TaskDone(
            worker=worker,
            task_id=maker.task_id,
            results=[(rid, SHM, "/dev/shm/heliostat-b-1", (), 4096)],
            started=1.0,
            finished=2.0,
        )
    )
    (report,) = _of(runner.effects(), ReportTask)
    assert report.values == (WireValue(rid, SHM, None, 4096, ()),)
    assert runner.state.objects.entries[rid].kind is ObjKind.SHM  # kept for A
    owner_peers.on_report(B, maker.task_id, "ok", 1.0, 2.0, list(report.values), [])
    assert owner.effects() == []
    # A task reading it goes to B (A has no CPUs), which uses its own copy.
    reader = make_spec(args=(rid,))
    owner.state.submit(owner.state.driver, reader)
    (forward,) = _forwards(owner)
    assert forward.values == (WireValue(rid, SHM, None, 4096, (), B),)
    runner.state.peer_forward(A, spec_to_wire(forward.spec), None, list(forward.values), [])
    (execute,) = runner.sent(worker)
    assert execute.resolved == [(rid, SHM, "/dev/shm/heliostat-b-1")]
    # No pull; the owner's extra hold for B is given back at once.
    assert runner.effects() == [ReleaseAt(node=A, object_ids=(rid,))]
    # The owner drops its ref once the reader is done: B frees its copy.
    owner_peers.on_release(B, [rid])
    owner.state.verbs["release"](owner.state.driver, None, [rid])
    runner.state.task_done(
        TaskDone(worker=worker, task_id=reader.task_id, results=[], started=2.0, finished=3.0)
    )
    (report,) = _of(runner.effects(), ReportTask)
    owner_peers.on_report(B, reader.task_id, "ok", 2.0, 3.0, [], [])
    (release,) = _of(owner.effects(), ReleaseAt)
    assert release == ReleaseAt(node=B, object_ids=(rid,))
    runner_peers.on_release(A, list(release.object_ids))
    assert rid not in runner.state.objects.entries


def test_a_remote_value_whose_node_dies_is_rebuilt_when_it_is_needed(make_node, make_spec) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    spec, rid = _remote_result(node, peers, make_spec, max_retries=2)
    peers.update([_peer(C)])  # B dies: nothing is redone until someone reads the value
    assert node.state.objects.entries[rid].kind is ObjKind.FREED
    assert peers.located == {}
    assert node.effects() == []
    got = _ask(node, "get", 1, [rid])
    (forward,) = _forwards(node)
    assert forward.spec is spec and forward.node == C  # re-run for its value
    peers.on_report(C, spec.task_id, "ok", 1.0, 2.0, [WireValue(rid, SHM, None, 4096, ())], [])
    assert _of(node.effects(), PullObject) == [PullObject(node=C, object_id=rid, size=4096)]
    peers.pulled(rid, "/dev/shm/heliostat-x-1", 4096)
    assert got == [[(rid, SHM, "/dev/shm/heliostat-x-1")]]


def test_a_failed_pull_rebuilds_the_value_from_lineage(make_node, make_spec) -> None:
    node, peers = _cluster(make_node)
    spec, rid = _remote_result(node, peers, make_spec, max_retries=2)
    _ask(node, "get", 1, [rid])
    node.effects()
    peers.pull_failed(rid, "B lost it")
    effects = node.effects()
    assert _of(effects, ReleaseAt) == [ReleaseAt(node=B, object_ids=(rid,))]
    assert [f.spec for f in _of(effects, ForwardTask)] == [spec]  # re-run for its value


def test_a_task_whose_node_could_not_fetch_its_argument_runs_again_after_a_rebuild(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    maker, rid = _remote_result(node, peers, make_spec, max_retries=2)
    reader = make_spec(args=(rid,), max_retries=1)
    reader.strategy = NodeAffinitySchedulingStrategy(f"{C:020x}", soft=True)
    node.state.submit(node.state.driver, reader)
    assert [f.spec for f in _forwards(node)] == [reader]
    # B lost the value (or died) before C pulled it: C reports the task failed so.
    lost = ObjectLostError("gone", object_id=format_id(rid))
    (ret,) = reader.return_ids
    error = WireValue(ret, int(ObjKind.ERROR), pickle.dumps(lost), 0, ())
    peers.on_report(C, reader.task_id, "error", 1.0, 2.0, [error], [])
    effects = node.effects()
    # The owner takes the value for lost, rebuilds it, and runs the reader again.
    assert ReleaseAt(node=B, object_ids=(rid,)) in effects
    forwards = {f.spec.task_id: f for f in _of(effects, ForwardTask)}
    assert set(forwards) == {maker.task_id, reader.task_id}
    assert forwards[reader.task_id].pending == (rid,)  # its value follows when rebuilt
    assert reader.state is TaskState.RUNNING and reader.attempts == 2
    assert node.state.objects.entries[ret].kind is ObjKind.PENDING


def test_a_value_rebuilt_while_an_old_pull_of_it_runs_waits_for_that_pull(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node)
    spec, rid = _remote_result(node, peers, make_spec, max_retries=2)
    entry = node.state.objects.entries[rid]
    entry.lineage_refs += 1  # a downstream task's lineage keeps it as a recipe
    _ask(node, "wait", 1, [rid], 1, True)  # pulls it (then forgotten: a timeout)
    node.state.verbs["forget"](node.state.driver, None, 1)
    node.state.verbs["release"](node.state.driver, None, [rid])
    assert entry.kind is ObjKind.FREED
    assert _of(node.effects(), ReleaseAt) == [ReleaseAt(node=B, object_ids=(rid,))]
    # Rebuilt, and reported again before the first pull ended: the value has a new
    # location, and no second pull starts while the first one writes its segment.
    got = _ask(node, "get", 2, [rid])
    assert [f.spec for f in _forwards(node)] == [spec]
    peers.on_report(B, spec.task_id, "ok", 1.0, 2.0, [WireValue(rid, SHM, None, 4096, ())], [])
    assert entry.kind is ObjKind.REMOTE
    assert _of(node.effects(), PullObject) == []
    # The first pull fails (B had let go of that copy): the new location is pulled.
    peers.pull_failed(rid, "not found")
    assert entry.kind is ObjKind.REMOTE
    assert _of(node.effects(), PullObject) == [PullObject(node=B, object_id=rid, size=4096)]
    peers.pulled(rid, "/dev/shm/heliostat-x-1", 4096)
    assert got == [[(rid, SHM, "/dev/shm/heliostat-x-1")]]


def test_a_remote_value_that_cannot_be_rebuilt_raises_object_lost(make_node, make_spec) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    _spec, rid = _remote_result(node, peers, make_spec, max_retries=0)
    peers.update([_peer(C)])
    got = _ask(node, "get", 1, [rid])
    ((_oid, kind, payload),) = got[0]
    assert kind == int(ObjKind.ERROR)
    assert isinstance(pickle.loads(payload), ObjectLostError)


def test_what_a_node_kept_for_an_owner_that_died_is_freed(make_node, make_spec) -> None:
    owner, _owner_peers = _cluster(make_node)
    runner, runner_peers, worker = _runner(make_node)
    maker = make_spec()
    _run_there(owner, runner, maker)
    rid = maker.return_ids[0]
    runner.state.task_done(
        TaskDone(
            worker=worker,
            task_id=maker.task_id,
            results=[(rid, SHM, "/dev/shm/heliostat-b-1", (), 4096)],
            started=1.0,
            finished=2.0,
        )
    )
    assert runner.state.objects.entries[rid].kind is ObjKind.SHM
    runner_peers.update([])  # A dies
    assert rid not in runner.state.objects.entries
    assert runner.state.objects.table.used == 0


def test_a_forwarded_task_runs_on_the_peer_and_reports_back(make_node, make_spec) -> None:
    owner, owner_peers = _cluster(make_node)
    runner, _runner_peers, worker = _runner(make_node, num_cpus=2)
    arg = owner.state.objects.table.create(7 << 70, owner.state.driver, None)
    owner.state.objects.fulfill(arg.id, INLINE, b"x", 1, ())
    spec = make_spec(args=(arg.id,))
    owner.state.tasks.functions[spec.fn_id] = b"code"
    owner.state.submit(owner.state.driver, spec)
    (forward,) = _forwards(owner)
    assert forward.fn_bytes == b"code"
    assert forward.values == (WireValue(arg.id, INLINE, b"x", 1, ()),)
    # What the I/O layer does on the runner's side: the spec travels as its wire tuple.
    runner.state.peer_forward(
        A, spec_to_wire(forward.spec), forward.fn_bytes, list(forward.values), []
    )
    (execute,) = runner.sent(worker)
    remote_spec = execute.spec
    assert remote_spec.owner == PEER_INDEX_BASE + A and execute.fn_bytes == b"code"
    rid = remote_spec.return_ids[0]
    runner.state.task_done(
        TaskDone(
            worker=worker,
            task_id=remote_spec.task_id,
            results=[(rid, INLINE, b"42", (), 2)],
            started=1.0,
            finished=2.0,
        )
    )
    (report,) = [e for e in runner.effects() if isinstance(e, ReportTask)]
    assert report.node == A and report.values == (WireValue(rid, INLINE, b"42", 2, ()),)
    # The runner keeps nothing for the owner: copies of arguments and results are gone.
    assert rid not in runner.state.objects.entries and arg.id not in runner.state.objects.entries
    owner_peers.on_report(B, report.task_id, report.outcome, 1.0, 2.0, list(report.values), [])
    assert owner.state.objects.entries[rid].payload == b"42"


def _streaming(make_spec, **kwargs):
    spec = make_spec(**kwargs)
    spec.generator = STREAMING
    return spec


def test_a_forwarded_generator_sends_each_new_item_to_its_caller_and_keeps_none(
    make_node, make_spec
) -> None:
    owner, _owner_peers = _cluster(make_node)
    runner, runner_peers, worker = _runner(make_node)
    _run_there(owner, runner, _streaming(make_spec))
    (execute,) = runner.sent(worker)
    stream_id = execute.spec.return_ids[0]
    item = runner.state.verbs["gen_item"]
    small, large = (B << 64) | 1, (B << 64) | 2
    item(worker, None, stream_id, 0, small, INLINE, b"a", (), 1)
    item(worker, None, stream_id, 1, large, SHM, "/dev/shm/heliostat-b-2", (), 4096)
    item(worker, None, stream_id, 0, (B << 64) | 3, INLINE, b"a", (), 1)  # a replay here
    sent = _of(runner.effects(), StreamItem)
    assert [(s.node, s.stream_id, s.index) for s in sent] == [(A, stream_id, 0), (A, stream_id, 1)]
    assert sent[0].values == (WireValue(small, INLINE, b"a", 1, ()),)
    assert sent[1].values == (WireValue(large, SHM, None, 4096, ()),)
    entries = runner.state.objects.entries
    assert small not in entries and entries[large].kind is ObjKind.SHM  # kept until pulled
    runner.state.task_done(
        TaskDone(
            worker=worker,
            task_id=execute.spec.task_id,
            results=[(stream_id, INLINE, b"None", (), 4)],
            started=1.0,
            finished=2.0,
        )
    )
    assert stream_id not in runner.state.objects.streams  # nothing waits for it here
    runner_peers.on_release(A, [large])  # the caller pulled it
    assert large not in entries


def test_items_of_a_generator_running_on_a_peer_reach_the_caller_once_and_in_order(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node)
    spec = _streaming(make_spec, max_retries=1)
    node.state.submit(node.state.driver, spec)
    assert [f.node for f in _forwards(node)] == [B]
    stream_id = spec.return_ids[0]
    asked = _ask(node, "gen_next", stream_id, 0)
    assert asked == []  # nothing yet: the caller waits
    first = (B << 64) | 1
    peers.on_stream_item(B, stream_id, 0, [WireValue(first, INLINE, b"a", 1, ())], [])
    assert asked == [first] and node.state.objects.entries[first].payload == b"a"
    second = (B << 64) | 2
    peers.on_stream_item(B, stream_id, 1, [WireValue(second, SHM, None, 4096, ())], [])
    assert node.state.objects.entries[second].kind is ObjKind.REMOTE  # read when asked
    node.effects()
    # A retry elsewhere replays the generator: what the caller has is not added again,
    # and the node that made the replayed copy may drop it.
    replay = (C << 64) | 2
    peers.on_stream_item(C, stream_id, 1, [WireValue(replay, SHM, None, 4096, ())], [])
    assert replay not in node.state.objects.entries
    assert _of(node.effects(), ReleaseAt) == [ReleaseAt(node=C, object_ids=(replay,))]
    # It fails after two items: its error is the third, then the stream ends.
    failure = pickle.dumps(ValueError("broke"))
    peers.on_report(
        B,
        spec.task_id,
        "error",
        1.0,
        2.0,
        [WireValue(stream_id, int(ObjKind.ERROR), failure, 0, ())],
        [],
    )
    (error_item,) = _ask(node, "gen_next", stream_id, 2)
    assert node.state.objects.entries[error_item].payload == failure
    assert _ask(node, "gen_next", stream_id, 3) == [0]


def test_refs_inside_a_dropped_item_are_let_go_when_they_come(make_node, make_spec) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    spec = _streaming(make_spec)
    node.state.submit(node.state.driver, spec)
    stream_id = spec.return_ids[0]
    peers.on_stream_item(B, stream_id, 0, [WireValue((B << 64) | 1, INLINE, b"a", 1, ())], [])
    # C replays item 0 (a retry there): a list holding a ref still being made on C.
    inner, replay = (C << 64) | 9, (C << 64) | 1
    peers.on_stream_item(C, stream_id, 0, [WireValue(replay, INLINE, b"[r]", 3, (inner,))], [inner])
    node.effects()
    peers.on_values(C, [WireValue(inner, SHM, None, 4096, ())])  # C pushes it when ready
    assert inner not in node.state.objects.entries
    assert _of(node.effects(), ReleaseAt) == [ReleaseAt(node=C, object_ids=(inner,))]
    assert C not in peers.unwanted


def test_a_large_item_whose_node_dies_is_lost_not_rebuilt(make_node, make_spec) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    spec = _streaming(make_spec)
    spec.strategy = NodeAffinitySchedulingStrategy(f"{B:020x}", soft=False)
    node.state.submit(node.state.driver, spec)
    item = (B << 64) | 1
    peers.on_stream_item(B, spec.return_ids[0], 0, [WireValue(item, SHM, None, 4096, ())], [])
    peers.update([_peer(C)])  # B dies with the item's only copy
    ((_oid, kind, payload),) = _ask(node, "get", 1, [item])[0]
    assert kind == int(ObjKind.ERROR) and isinstance(pickle.loads(payload), ObjectLostError)


def test_a_large_item_whose_node_dies_is_rebuilt_by_running_the_generator_again(
    make_node, make_spec
) -> None:
    node, peers = _cluster(make_node, peers=(B, C))
    spec = _streaming(make_spec, max_retries=1)
    spec.strategy = NodeAffinitySchedulingStrategy(f"{B:020x}", soft=True)
    node.state.submit(node.state.driver, spec)
    assert [f.node for f in _forwards(node)] == [B]
    stream_id = spec.return_ids[0]
    small, large = (B << 64) | 1, (B << 64) | 2
    peers.on_stream_item(B, stream_id, 0, [WireValue(small, INLINE, b"a", 1, ())], [])
    peers.on_stream_item(B, stream_id, 1, [WireValue(large, SHM, None, 4096, ())], [])
    done = [WireValue(stream_id, INLINE, b"N.", 2, ())]
    peers.on_report(B, spec.task_id, "ok", 1.0, 2.0, done, [])
    node.effects()
    peers.update([_peer(C)])  # B dies with the large item's only copy
    got = _ask(node, "get", 1, [large])
    assert got == []  # it waits for the rebuild
    (rerun,) = _forwards(node)
    # The re-run goes to C and yields each item it yielded before under the same id.
    assert rerun.node == C and spec_to_wire(rerun.spec)[-1] == (small, large)
    # Item 0 is still here: its replay is dropped. Item 1 fills the lost entry.
    peers.on_stream_item(C, stream_id, 0, [WireValue(small, INLINE, b"a", 1, ())], [])
    peers.on_stream_item(C, stream_id, 1, [WireValue(large, SHM, None, 4096, ())], [])
    entry = node.state.objects.entries[large]
    assert entry.kind is ObjKind.REMOTE and entry.remote.source == C
    assert [(p.node, p.object_id) for p in _of(node.effects(), PullObject)] == [(C, large)]
    peers.on_report(C, spec.task_id, "ok", 1.0, 2.0, done, [])
    assert spec.state is TaskState.FINISHED and spec.reconstructions == 1


def test_values_promised_by_a_node_that_dies_fail_with_owner_died(make_node, make_spec) -> None:
    node, peers = _cluster(make_node)
    spec = make_spec()
    node.state.submit(node.state.driver, spec)
    node.effects()
    inner = (B << 64) | 99  # a ref minted on B, inside the result, not ready yet
    rid = spec.return_ids[0]
    peers.on_report(
        B, spec.task_id, "ok", 1.0, 2.0, [WireValue(rid, INLINE, b"[ref]", 5, (inner,))], [inner]
    )
    assert node.state.objects.entries[inner].kind is ObjKind.PENDING
    peers.update([])
    assert isinstance(_error(node, inner), OwnerDiedError)


def test_an_actor_that_does_not_fit_here_lives_on_a_peer_and_restarts_elsewhere(
    make_node, make_spec, make_options
) -> None:
    from heliostat.engine.records import ActorState, TaskKind
    from heliostat.exceptions import ActorDiedError

    node, peers = _cluster(make_node, peers=(B, C))
    one_cpu = ResourceSet.from_dict({"CPU": 1})
    creation = make_spec(kind=TaskKind.ACTOR_CREATE, resources=one_cpu)
    creation.actor_id = creation.task_id
    options = make_options(name="counter", max_restarts=1, methods={"incr": 1}, max_task_retries=1)
    node.state.create_actor(node.state.driver, creation, options)
    actor = node.state.actors.actors[creation.actor_id]
    (create,) = _forwards(node)
    first = create.node
    assert create.spec is creation and create.actor_options.name == ""  # names stay here
    assert actor.state is ActorState.CREATING and actor.remote_node == first
    # Calls wait for the constructor, then follow the actor to its node, in order.
    calls = [make_spec(kind=TaskKind.ACTOR_CALL, actor_id=actor.actor_id) for _ in range(2)]
    for call in calls:
        node.state.submit(node.state.driver, call)
    assert _forwards(node) == []
    peers.on_actor_started(first, actor.actor_id, None)
    assert [(f.node, f.spec) for f in _forwards(node)] == [(first, calls[0]), (first, calls[1])]
    peers.on_report(
        first,
        calls[0].task_id,
        "ok",
        1.0,
        2.0,
        [WireValue(calls[0].return_ids[0], INLINE, b"1", 1, ())],
        [],
    )
    assert calls[0].task_id not in actor.inflight
    # Its node dies: the call in flight goes with the actor to its restart elsewhere.
    other = C if first == B else B
    peers.update([_peer(other)])
    (recreate,) = _forwards(node)
    assert recreate.node == other and actor.remote_node == other and actor.restarts == 1
    peers.on_actor_started(other, actor.actor_id, None)
    assert [(f.node, f.spec) for f in _forwards(node)] == [(other, calls[1])]
    # Its process dies on that node (restarts spent now): the owner declares it dead.
    peers.on_actor_started(other, actor.actor_id, None, died="killed by SIGKILL")
    assert actor.state is ActorState.DEAD and "SIGKILL" in actor.death_cause
    assert isinstance(_error(node, calls[1].return_ids[0]), ActorDiedError)
    # Later calls fail at once.
    late = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=actor.actor_id)
    node.state.submit(node.state.driver, late)
    assert isinstance(_error(node, late.return_ids[0]), ActorDiedError)


def test_actors_a_dead_owner_placed_here_go_with_it(make_node, make_spec, make_options) -> None:
    """Fate sharing across nodes: the owner's node leaves, its actors here end and
    give their CPU back (else tasks sent here later would wait behind them forever)."""
    from heliostat.engine.records import ActorState, TaskKind

    runner, peers, worker = _runner(make_node)
    creation = make_spec(kind=TaskKind.ACTOR_CREATE, resources=ResourceSet.from_dict({"CPU": 1}))
    creation.actor_id = creation.task_id
    options = make_options(methods={"incr": 1})
    runner.state.peer_forward(A, spec_to_wire(creation), b"code", [], [], actor_options=options)
    actor = runner.state.actors.actors[creation.actor_id]
    assert runner.sent(worker) and runner.state.node.available.get("CPU") == 0
    peers.update([])  # A left the cluster
    assert actor.state is ActorState.DEAD and "left the cluster" in actor.death_cause
    assert runner.state.node.available.get("CPU") == 1
    kills = [e for e in runner.effects() if isinstance(e, Kill)]
    assert [k.worker for k in kills] == [worker]  # at once, even in the middle of a call
    runner.state.worker_exited(WorkerExited(pid=worker.pid, code=-9))
    assert runner.effects() == [Disconnect(worker=worker)]  # nothing for the gone owner
    assert creation.actor_id not in runner.state.actors.actors


# --- named actors across the cluster: names at the head, borrowed handles, hand-over --


def _options(name: str = "counter", *, detached: bool = False, restarts: int = 0):
    from heliostat.engine.records import ActorOptions

    return ActorOptions(
        name=name,
        namespace="ns",
        class_name="Counter",
        max_restarts=restarts,
        max_concurrency=1,
        detached=detached,
        methods={"incr": 1},
        max_task_retries=0,
    )


def _creation(make_spec, cpus: float = 1):
    from heliostat.engine.records import TaskKind

    spec = make_spec(kind=TaskKind.ACTOR_CREATE, resources=ResourceSet.from_dict({"CPU": cpus}))
    spec.actor_id = spec.task_id
    return spec


def _asks(node, kind):
    return [e for e in node.effects() if isinstance(e, kind)]


def _named(name: str, actor_id: int, owner: int):
    from heliostat.cluster.names import NamedActor

    return NamedActor(
        namespace="ns",
        name=name,
        actor_id=actor_id,
        owner=f"{owner:020x}",
        class_name="Counter",
        methods={"incr": 1},
    )


def test_a_named_actor_is_created_once_the_head_gave_it_its_name(make_node, make_spec) -> None:
    from heliostat.engine.node_instructions import ClaimName

    node, _ = _cluster(make_node, num_cpus=1)
    replies: list = []
    first = _creation(make_spec)
    node.state.create_actor(node.state.driver, first, _options(), lambda *r: replies.append(r))
    (claim,) = _asks(node, ClaimName)
    assert (claim.namespace, claim.name, claim.actor_id) == ("ns", "counter", first.actor_id)
    assert replies == [] and first.actor_id not in node.state.actors.actors
    # Meanwhile the name counts as taken here.
    other = _creation(make_spec)
    node.state.create_actor(node.state.driver, other, _options(), lambda *r: replies.append(r))
    assert replies[0][0] is False and "already exists" in str(replies[0][1])
    node.state.actors.head_answer(claim.req, True, None)  # claimed
    assert replies[1] == (True, None) and first.actor_id in node.state.actors.actors
    # Another node holds the name: refused with the same error as a local clash.
    third = _creation(make_spec)
    node.state.create_actor(
        node.state.driver, third, _options("elsewhere"), lambda *r: replies.append(r)
    )
    (claim,) = _asks(node, ClaimName)
    node.state.actors.head_answer(claim.req, True, _named("elsewhere", 99, C))
    ok, error = replies[2]
    assert not ok and isinstance(error, ValueError) and "'elsewhere' already exists" in str(error)
    assert third.actor_id not in node.state.actors.actors


def test_a_dead_named_actor_gives_its_name_back(make_node, make_spec) -> None:
    from heliostat.engine.node_instructions import ReleaseName

    node, _ = _cluster(make_node, num_cpus=1)
    creation = _creation(make_spec)
    node.state.create_actor(node.state.driver, creation, _options())
    node.effects()
    node.state._v_kill_actor(node.state.driver, None, creation.actor_id, True)
    assert _asks(node, ReleaseName) == [
        ReleaseName(namespace="ns", name="counter", actor_id=creation.actor_id)
    ]


def test_get_actor_asks_the_head_and_a_borrowers_calls_go_to_the_owner(
    make_node, make_spec
) -> None:
    from heliostat.engine.node_instructions import ActorControl, LookupName
    from heliostat.engine.records import TaskKind
    from heliostat.exceptions import ActorDiedError

    node, peers = _cluster(make_node, peers=(B, C))
    replies: list = []
    node.state._v_get_actor(node.state.driver, lambda *r: replies.append(r), "nobody", "elsewhere")
    (lookup,) = _asks(node, LookupName)
    node.state.actors.head_answer(lookup.req, True, None)
    ok, error = replies.pop()
    assert not ok and "'nobody'" in str(error) and "'elsewhere'" in str(error)
    actor_id = 5 << 64
    node.state._v_get_actor(node.state.driver, lambda *r: replies.append(r), "counter", "ns")
    (lookup,) = _asks(node, LookupName)
    node.state.actors.head_answer(lookup.req, True, _named("counter", actor_id, B))
    assert replies.pop() == (True, (actor_id, "Counter", {"incr": 1}))
    # Its calls go to the owner at once, in order; the owner reports each one.
    calls = [make_spec(kind=TaskKind.ACTOR_CALL, actor_id=actor_id) for _ in range(2)]
    for call in calls:
        node.state.submit(node.state.driver, call)
    assert [(f.node, f.spec) for f in _forwards(node)] == [(B, calls[0]), (B, calls[1])]
    rid = calls[0].return_ids[0]
    peers.on_report(B, calls[0].task_id, "ok", 1.0, 2.0, [WireValue(rid, INLINE, b"1", 1, ())], [])
    assert node.state.objects.entries[rid].payload == b"1"
    # kill() from here asks the owner.
    assert node.state.actors.kill_borrowed(node.state.actors.borrowed[actor_id], True)
    assert _asks(node, ActorControl) == [
        ActorControl(node=B, actor_id=actor_id, kill=True, no_restart=True)
    ]
    # The owner's node dies: the call in flight and later ones fail, naming why.
    peers.update([_peer(C)])
    error = _error(node, calls[1].return_ids[0])
    assert isinstance(error, ActorDiedError) and f"owner's node {B:020x}" in str(error)
    late = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=actor_id)
    node.state.submit(node.state.driver, late)
    assert isinstance(_error(node, late.return_ids[0]), ActorDiedError)


def test_the_owner_queues_a_borrowers_calls_and_obeys_its_kill(make_node, make_spec) -> None:
    from heliostat.engine.node_instructions import ActorReady, CallActor
    from heliostat.engine.records import ActorState, TaskKind

    owner = make_node(num_cpus=1)
    owner_peers = owner.state.join_cluster(B, depth=2)
    owner_peers.update([_peer(A, cpus=0)])
    worker = owner.add_worker()
    creation = _creation(make_spec)
    owner.state.create_actor(owner.state.driver, creation, _options())
    owner.sent(worker)  # its constructor
    owner.state.actor_ready(ActorReady(worker=worker, actor_id=creation.actor_id, error=None))
    call = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    owner.state.peer_forward(A, spec_to_wire(call), None, [], [])
    (sent,) = owner.sent(worker)
    assert isinstance(sent, CallActor) and sent.spec.task_id == call.task_id
    remote = sent.spec
    rid = remote.return_ids[0]
    owner.state.task_done(
        TaskDone(
            worker=worker,
            task_id=remote.task_id,
            results=[(rid, INLINE, b"7", (), 1)],
            started=1.0,
            finished=2.0,
        )
    )
    (report,) = [e for e in owner.effects() if isinstance(e, ReportTask)]
    assert report.node == A and report.values[0].payload == b"7"
    owner_peers.on_actor_control(A, creation.actor_id, True, True)
    actor = owner.state.actors.actors[creation.actor_id]
    assert [e.worker for e in owner.effects() if isinstance(e, Kill)] == [worker]
    owner.state.worker_exited(WorkerExited(pid=worker.pid, code=-9))
    assert actor.state is ActorState.DEAD and "kill()" in actor.death_cause


def test_a_drivers_detached_actor_is_handed_over_to_the_node_that_hosts_it(
    make_node, make_spec
) -> None:
    from heliostat.engine.node_instructions import ClaimName
    from heliostat.engine.records import ActorState, TaskKind

    driver, driver_peers = _cluster(make_node, peers=(B,))
    driver_peers.driver_node = True
    creation = _creation(make_spec, cpus=0)  # would fit on the driver's node: not detached
    driver.state.create_actor(driver.state.driver, creation, _options("keep", detached=True))
    early = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=creation.actor_id)
    (forward,) = _forwards(driver)
    assert forward.node == B and forward.actor_options.handover
    assert forward.actor_options.name == "keep" and forward.actor_options.detached
    # The driver's node keeps no record: it borrows the actor from B like anyone else.
    assert creation.actor_id not in driver.state.actors.actors
    assert driver.state.actors.borrowed[creation.actor_id].owner == B
    driver.state.submit(driver.state.driver, early)
    assert [(f.node, f.spec) for f in _forwards(driver)] == [(B, early)]
    # On B: created as B's own actor, its name claimed again for B.
    host = make_node(num_cpus=1)
    host_peers = host.state.join_cluster(B, depth=2)
    host_peers.update([_peer(A, cpus=0)])
    worker = host.add_worker()
    host.state.peer_forward(
        A, spec_to_wire(forward.spec), b"code", [], [], actor_options=forward.actor_options
    )
    actor = host.state.actors.actors[creation.actor_id]
    assert actor.creation.owner == host.state.driver.index and actor.state is ActorState.CREATING
    assert host.sent(worker)
    (claim,) = [e for e in host.effects() if isinstance(e, ClaimName)]
    assert (claim.name, claim.actor_id, claim.detached) == ("keep", creation.actor_id, True)
    host.state.actors.head_answer(claim.req, True, None)
    # The driver leaves: the actor stays (it is B's).
    host_peers.update([])
    assert actor.state is ActorState.CREATING
    assert not [e for e in host.effects() if isinstance(e, Kill)]


def test_who_can_hold_a_shape_follows_the_peers_that_come_and_go(make_node) -> None:
    _node, peers = _cluster(make_node)  # peer B: two CPUs
    eight = ResourceSet.from_dict({"CPU": 8})
    one = ResourceSet.from_dict({"CPU": 1})
    assert not peers.feasible_somewhere(eight) and peers.spill_target(one) == B
    peers.update([_peer(B), _peer(C, cpus=8)])  # a bigger node joins
    assert peers.feasible_somewhere(eight) and peers.spill_target(eight) == C
    peers.update([_peer(B, cpus=8)])  # C leaves; B comes back bigger
    assert peers.feasible_somewhere(eight) and peers.spill_target(eight) == B
    peers.update([])
    assert not peers.feasible_somewhere(one) and peers.spill_target(one) is None


# --- handles to unnamed actors between nodes: owners named, borrowers counted ---------


def _owner_with_actor(make_node, make_spec):
    """Node A (no CPUs, so tasks spill to B and C) owning an unnamed, 0-CPU actor."""
    from heliostat.engine.records import TaskKind

    owner, owner_peers = _cluster(make_node, peers=(B, C))
    worker = owner.add_worker()
    creation = _creation(make_spec, cpus=0)
    owner.state.create_actor(owner.state.driver, creation, _options(""))
    owner.sent(worker)
    actor = owner.state.actors.actors[creation.actor_id]
    task = make_spec(resources=ResourceSet.from_dict({"CPU": 1}))
    task.contained = (actor.actor_id,)  # the handle is inside its arguments
    assert task.kind is TaskKind.NORMAL
    return owner, owner_peers, actor, task


def _borrower(make_node, index: int):
    node = make_node(num_cpus=2)
    peers = node.state.join_cluster(index, depth=2)
    peers.update([_peer(i) for i in (A, B, C) if i != index])
    return node, peers


def test_a_handle_sent_to_a_node_names_its_owner_and_keeps_the_actor_until_given_back(
    make_node, make_spec
) -> None:
    from heliostat.engine.node_instructions import ActorBorrow, ActorRefs
    from heliostat.engine.records import ActorState

    owner, _, actor, task = _owner_with_actor(make_node, make_spec)
    owner.state.submit(owner.state.driver, task)
    effects = owner.effects()
    refs = next(i for i, e in enumerate(effects) if isinstance(e, ActorRefs))
    forward = next(i for i, e in enumerate(effects) if isinstance(e, ForwardTask))
    index = effects[forward].node
    # Who owns it goes first, on the same ordered stream as the task.
    assert refs < forward and effects[refs] == ActorRefs(node=index, refs=((actor.actor_id, A),))
    assert owner.state.actors.lent[actor.actor_id] == {index: 1}
    # The driver lets go of its handle: the borrowing node keeps the actor alive.
    owner.state.actors.release(owner.state.driver, actor.actor_id)
    assert actor.state is not ActorState.DEAD
    # On the borrower: a record counted like an actor of its own.
    runner, _ = _borrower(make_node, index)
    worker = runner.add_worker()
    runner.state.actors.borrow_refs([(actor.actor_id, A)])
    runner.state.peer_forward(A, spec_to_wire(task), b"code", [], [])
    borrowed = runner.state.actors.borrowed[actor.actor_id]
    assert borrowed.owner == A and borrowed.received == 1 and borrowed.holds == 2  # task, worker
    (execute,) = runner.sent(worker)
    # The task's calls go to the owner.
    from heliostat.engine.records import TaskKind

    call = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=actor.actor_id)
    runner.state.submit(worker, call)
    assert [(f.node, f.spec) for f in _forwards(runner)] == [(A, call)]
    # The task ends and the worker drops its handle: the record stays while the call is out.
    runner.state.task_done(
        TaskDone(
            worker=worker,
            task_id=execute.spec.task_id,
            results=[(execute.spec.return_ids[0], INLINE, b"1", (), 1)],
            started=1.0,
            finished=2.0,
        )
    )
    runner.state._v_release(worker, None, [actor.actor_id])
    assert actor.actor_id in runner.state.actors.borrowed
    runner.effects()
    runner.state.peers.on_report(A, call.task_id, "ok", 1.0, 2.0, [], [])
    # Its last call is back: the record goes, and the owner is given its count back.
    assert actor.actor_id not in runner.state.actors.borrowed
    (give_back,) = [e for e in runner.effects() if isinstance(e, ActorBorrow)]
    assert give_back == ActorBorrow(node=A, actor_id=actor.actor_id, borrower=index, delta=-1)
    # The owner hears of its task (which pinned the handle too), then of the give-back.
    owner.state.peers.on_report(index, task.task_id, "ok", 1.0, 2.0, [], [])
    assert actor.state is not ActorState.DEAD
    owner.state.actors.on_borrow(actor.actor_id, index, -1)
    assert actor.state is ActorState.DEAD and actor.actor_id not in owner.state.actors.lent


def test_a_borrower_passing_a_handle_on_counts_the_new_borrower_at_the_owner(
    make_node, make_spec
) -> None:
    from heliostat.engine.node_instructions import ActorBorrow, ActorRefs
    from heliostat.engine.records import ActorState

    owner, _, actor, _ = _owner_with_actor(make_node, make_spec)
    middle, _ = _borrower(make_node, B)
    middle.state.actors.borrow_refs([(actor.actor_id, A)])
    middle.state.actors.lend(C, [actor.actor_id, 12345])  # 12345: not an actor
    assert middle.effects() == [
        ActorBorrow(node=A, actor_id=actor.actor_id, borrower=C, delta=1),
        ActorRefs(node=C, refs=((actor.actor_id, A),)),
    ]
    # Sent back to its owner: nothing to count.
    middle.state.actors.lend(A, [actor.actor_id])
    assert middle.effects() == []
    # At the owner, C's give-back may overtake B's +1 for C (two streams): the count
    # dips below zero, while B's own count keeps the actor.
    actors = owner.state.actors
    actors.on_borrow(actor.actor_id, B, 1)
    owner.state.actors.release(owner.state.driver, actor.actor_id)
    actors.on_borrow(actor.actor_id, C, -1)
    assert actor.state is not ActorState.DEAD and actors.lent[actor.actor_id] == {B: 1, C: -1}
    actors.on_borrow(actor.actor_id, C, 1)
    actors.on_borrow(actor.actor_id, B, -1)
    assert actor.state is ActorState.DEAD


def test_a_borrowers_node_that_dies_drops_its_borrow(make_node, make_spec) -> None:
    from heliostat.engine.records import ActorState

    owner, owner_peers, actor, task = _owner_with_actor(make_node, make_spec)
    owner.state.submit(owner.state.driver, task)
    index = _forwards(owner)[0].node
    owner.state.actors.release(owner.state.driver, actor.actor_id)
    assert actor.state is not ActorState.DEAD
    owner_peers.update([_peer(i) for i in (B, C) if i != index])  # the borrower died
    assert actor.state is ActorState.DEAD and actor.actor_id not in owner.state.actors.lent


def test_a_call_through_a_borrowed_handle_is_cancelled_by_the_owner(make_node, make_spec) -> None:
    from heliostat.engine.node_instructions import CancelRemote
    from heliostat.engine.records import TaskKind, TaskState
    from heliostat.exceptions import TaskCancelledError

    owner, _, actor, _ = _owner_with_actor(make_node, make_spec)  # its constructor runs
    borrower, borrower_peers = _borrower(make_node, B)
    borrower.state.actors.borrow_refs([(actor.actor_id, A)])
    borrowed = borrower.state.actors.borrowed[actor.actor_id]
    borrower.state.actors.hold(borrower.state.driver, borrowed)
    call = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=actor.actor_id)
    borrower.state.submit(borrower.state.driver, call)
    (forward,) = _forwards(borrower)
    replies: list = []
    borrower.state._v_cancel(
        borrower.state.driver, lambda *r: replies.append(r), call.return_ids[0], False
    )
    assert replies == [(True, True)]
    assert borrower.effects() == [CancelRemote(node=A, task_id=call.task_id, force=False)]
    # The owner has it queued (the actor is not started yet): cancelled there, reported.
    owner.state.peer_forward(B, spec_to_wire(forward.spec), None, [], [])
    assert call.task_id in {s.task_id for s in actor.queue}
    owner.state.peer_cancel(B, call.task_id, False)
    (report,) = [e for e in owner.effects() if isinstance(e, ReportTask)]
    assert report.node == B and report.outcome == "cancelled"
    borrower_peers.on_report(
        B if False else A, report.task_id, report.outcome, 1.0, 2.0, list(report.values), []
    )
    assert call.state is TaskState.FINISHED
    assert isinstance(_error(borrower, call.return_ids[0]), TaskCancelledError)


def test_a_node_back_from_being_cut_off_claims_its_actors_names_again(make_node, make_spec) -> None:
    from heliostat.engine.node_instructions import ClaimName
    from heliostat.engine.records import ActorState

    node, _ = _cluster(make_node, num_cpus=2)
    actors = node.state.actors
    created = []
    for name in ("kept", "taken"):
        creation = _creation(make_spec)
        node.state.create_actor(node.state.driver, creation, _options(name), lambda *r: None)
        (claim,) = _asks(node, ClaimName)
        actors.head_answer(claim.req, True, None)
        created.append(creation.actor_id)
    node.reset()
    actors.reclaim_names()  # registered with the head again
    claims = {c.name: c for c in _asks(node, ClaimName)}
    assert {(n, c.actor_id) for n, c in claims.items()} == {
        ("kept", created[0]),
        ("taken", created[1]),
    }
    actors.head_answer(claims["kept"].req, True, None)
    actors.head_answer(claims["taken"].req, True, _named("taken", 99, C))  # taken meanwhile
    assert actors.lookup("kept", "ns").actor_id == created[0]
    assert actors.lookup("taken", "ns") is None  # that name is the other actor's now
    assert actors.actors[created[1]].state is not ActorState.DEAD  # it lives on without it


def test_a_borrowed_record_is_kept_by_a_value_made_elsewhere_with_a_handle_inside(
    make_node, make_spec
) -> None:
    node, peers = _borrower(make_node, B)
    actors = node.state.actors
    actor_id = 5 << 64
    actors.borrow_refs([(actor_id, A)])
    borrowed = actors.borrowed[actor_id]
    actors.hold(node.state.driver, borrowed)  # a handle it had already
    big = 9 << 60
    peers.on_values(A, [WireValue(big, SHM, None, 1 << 20, (actor_id,))])
    entry = node.state.objects.entries[big]
    assert entry.kind is ObjKind.REMOTE  # it stays where it was made until read
    assert actor_id not in node.state.objects.entries  # a handle, not an object
    node.state._v_release(node.state.driver, None, [actor_id])  # that handle goes
    assert actors.borrowed.get(actor_id) is borrowed  # kept: the value holds it
    assert borrowed.holds == 1


def test_get_actor_of_a_peers_actor_that_lives_here_counts_the_handle_on_it(
    make_node, make_spec
) -> None:
    """A process of the node an actor lives on (owned by another node) looks it up by
    name: its handle is counted on the hosted record, so letting it go leaves the
    actor alone (it once retired the actor: the release found the hosted record while
    the hold had gone to a borrowed one)."""
    from heliostat.engine.node_instructions import LookupName
    from heliostat.engine.records import ActorState

    runner, _peers, worker = _runner(make_node)
    creation = _creation(make_spec)
    options = _options("")  # a hosted record carries no name: the owner keeps it
    runner.state.peer_forward(A, spec_to_wire(creation), b"code", [], [], actor_options=options)
    actor = runner.state.actors.actors[creation.actor_id]
    runner.state.actor_ready(ActorReady(worker=worker, actor_id=actor.actor_id, error=None))
    caller = runner.state.driver_attached(4242)
    replies: list = []
    runner.state._v_get_actor(caller, lambda *r: replies.append(r), "counter", "ns")
    (lookup,) = _asks(runner, LookupName)
    runner.state.actors.head_answer(lookup.req, True, _named("counter", actor.actor_id, A))
    assert replies == [(True, (actor.actor_id, "Counter", {"incr": 1}))]
    assert actor.actor_id not in runner.state.actors.borrowed
    runner.state.verbs["release"](caller, None, [actor.actor_id])
    assert actor.state is ActorState.ALIVE
    runner.state.worker_lost(WorkerLost(worker=caller))  # and when it goes
    assert actor.state is ActorState.ALIVE


def test_kill_of_a_peers_actor_that_lives_here_asks_its_owner(make_node, make_spec) -> None:
    """The owner records why its actor died (and frees its name), so a kill() from a
    process of the node the actor lives on goes to the owner, as a borrower's does."""
    from heliostat.engine.node_instructions import ActorControl

    runner, _peers, worker = _runner(make_node)
    creation = _creation(make_spec)
    options = _options("")
    runner.state.peer_forward(A, spec_to_wire(creation), b"code", [], [], actor_options=options)
    actor = runner.state.actors.actors[creation.actor_id]
    runner.state.actor_ready(ActorReady(worker=worker, actor_id=actor.actor_id, error=None))
    runner.effects()
    caller = runner.state.driver_attached(4242)
    replies: list = []
    runner.state._v_kill_actor(caller, lambda *r: replies.append(r), actor.actor_id, True)
    assert replies == [(True, True)]
    # The owner is told first (the same stream then carries the actor's death), and the
    # worker is killed here at once, so calls sent from here after the kill fail.
    effects = runner.effects()
    control = ActorControl(node=A, actor_id=actor.actor_id, kill=True, no_restart=True)
    kill = Kill(worker=worker, signal=signal.SIGKILL)
    assert control in effects and kill in effects
    assert effects.index(control) < effects.index(kill)
    assert actor.max_restarts == actor.restarts  # not restarted here either
