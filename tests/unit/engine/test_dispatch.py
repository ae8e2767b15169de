"""Dispatch decisions of the node manager, driven as events in, instructions out.

No process runs here: workers are records the test registers by hand, and what the
manager would send is read back from the outbox (``node_instructions``).
"""

from __future__ import annotations

import pickle
import signal

from heliostat.engine.node_instructions import (
    Execute,
    Exit,
    Kill,
    Poke,
    Revoke,
    Spawn,
    TaskDone,
    TaskFailed,
    WorkerExited,
    WorkerLost,
)
from heliostat.engine.object_table import ObjKind
from heliostat.engine.records import TaskState, WorkerState
from heliostat.exceptions import (
    InfeasibleResourcesError,
    TaskCancelledError,
    WorkerCrashedError,
)
from heliostat.scheduler import ResourceSet

INLINE = int(ObjKind.INLINE)


def _done(worker, spec, value: bytes = b"v") -> TaskDone:
    return TaskDone(
        worker=worker,
        task_id=spec.task_id,
        results=[(spec.return_ids[0], INLINE, value, (), 0)],
        started=1.0,
        finished=2.0,
    )


def _error_in(node, spec) -> BaseException:
    entry = node.state.objects.entries[spec.return_ids[0]]
    assert entry.kind is ObjKind.ERROR
    return pickle.loads(entry.payload)


def test_a_ready_task_goes_to_the_idle_worker(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    spec = make_spec()
    node.state.submit(node.state.driver, spec)
    (message,) = node.sent(worker)
    assert isinstance(message, Execute)
    assert message.spec is spec and not message.ahead and message.fn_bytes is None
    assert spec.state is TaskState.RUNNING and spec.attempts == 1
    assert worker.state is WorkerState.BUSY and worker.task is spec


def test_function_code_is_sent_once_per_worker(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    node.state.verbs["register_function"](node.state.driver, None, b"fn", b"code")
    first, second = make_spec(), make_spec()
    node.state.submit(node.state.driver, first)
    node.state.submit(node.state.driver, second)
    messages = node.sent(worker)
    assert [m.fn_bytes for m in messages] == [b"code", None]


def test_short_tasks_are_sent_ahead_to_a_busy_worker(make_node, make_spec) -> None:
    node = make_node(max_workers=1)
    worker = node.add_worker()
    specs = [make_spec() for _ in range(4)]
    for spec in specs:
        node.state.submit(node.state.driver, spec)
    sent = node.sent(worker)
    assert [(m.spec, m.ahead) for m in sent] == [
        (specs[0], False),
        (specs[1], True),
        (specs[2], True),  # pipeline_depth 2: the fourth waits in the ready queue
    ]
    assert list(node.state.dispatch.ready[specs[3].resources]) == [specs[3]]
    # The first ends: the worker starts the next one sent ahead, and one more goes.
    node.state.task_done(_done(worker, specs[0]))
    assert worker.task is specs[1]
    assert [m.spec for m in node.sent(worker)] == [specs[3]]


def _ran(worker, spec, seconds: float) -> TaskDone:
    done = _done(worker, spec)
    return TaskDone(
        worker=done.worker,
        task_id=done.task_id,
        results=done.results,
        started=1.0,
        finished=1.0 + seconds,
    )


def test_how_many_go_ahead_follows_how_long_a_function_runs(make_node, make_spec) -> None:
    """About PIPELINE_S of work is sent ahead: many tiny calls, two long ones."""
    node = make_node(max_workers=1, pipeline_depth=32)
    worker = node.add_worker()
    tiny = [make_spec(fn_id=b"tiny") for _ in range(40)]
    for spec in tiny:
        node.state.submit(node.state.driver, spec)
    assert sum(m.ahead for m in node.sent(worker)) == 2  # not run yet: two go ahead
    node.state.task_done(_ran(worker, tiny[0], 50e-6))  # 50 us: 2 ms is 40 of them
    node.sent(worker)
    assert len(worker.queued) == 32  # the most sent ahead
    slow = [make_spec(fn_id=b"slow") for _ in range(6)]
    for spec in tiny[1:34]:
        node.state.task_done(_ran(worker, spec, 50e-6))
    for spec in slow:
        node.state.submit(node.state.driver, spec)
    node.state.task_done(_ran(worker, tiny[34], 50e-6))
    done_slow = slow[0]
    while worker.task is not done_slow:  # run the rest of the tiny ones
        node.state.task_done(_ran(worker, worker.task, 50e-6))
    node.state.task_done(_ran(worker, done_slow, 0.5))  # half a second a call
    node.sent(worker)
    assert len(worker.queued) == 2


def test_no_idle_worker_asks_for_one_within_max_workers(make_node, make_spec) -> None:
    node = make_node(num_cpus=2, max_workers=2)
    node.effects()
    node.state.submit(node.state.driver, make_spec())
    node.state.submit(node.state.driver, make_spec())
    spawns = [e for e in node.effects() if isinstance(e, Spawn)]
    assert len(spawns) == 2
    node.state.submit(node.state.driver, make_spec())
    assert not [e for e in node.effects() if isinstance(e, Spawn)]  # two are on their way


def test_an_idle_worker_steals_tasks_sent_ahead(make_node, make_spec) -> None:
    node = make_node(num_cpus=2)
    busy = node.add_worker()
    specs = [make_spec() for _ in range(3)]
    node.state.dispatch.node.try_acquire(ResourceSet.from_request(1, None, default_cpus=1))
    for spec in specs:
        node.state.submit(node.state.driver, spec)
    node.state.dispatch.node.release(ResourceSet.from_request(1, None, default_cpus=1))
    node.reset()
    assert len(busy.queued) == 2
    thief = node.add_worker()  # idle now, while ``busy`` holds two it has not started
    (revoke,) = node.sent(busy)
    assert isinstance(revoke, Revoke) and revoke.task_ids == [s.task_id for s in specs[1:]]
    assert Poke(worker=busy) in node.effects()
    # The worker hands both back: the first runs on the idle worker at once.
    node.state.verbs["returned"](busy, None, revoke.task_ids, revoke.revoke_id)
    assert not busy.revokes
    assert thief.task is specs[1]
    placed = [busy.task, thief.task, *busy.queued, *thief.queued]
    assert sorted(s.task_id for s in placed) == sorted(s.task_id for s in specs)


def test_a_retryable_failure_runs_again_until_retries_are_spent(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    spec = make_spec(max_retries=1)
    node.state.submit(node.state.driver, spec)
    failure = TaskFailed(
        worker=worker,
        task_id=spec.task_id,
        payload=pickle.dumps(RuntimeError("boom")),
        retryable=True,
        interrupted=False,
        started=1.0,
        finished=2.0,
    )
    node.state.task_failed(failure)
    assert spec.state is TaskState.RUNNING and spec.attempts == 2  # sent again
    node.state.task_failed(failure)
    assert spec.state is TaskState.FINISHED
    assert isinstance(_error_in(node, spec), RuntimeError)


def test_a_crashed_worker_s_task_is_retried_then_fails(make_node, make_spec) -> None:
    node = make_node()
    first = node.add_worker()
    spec = make_spec(max_retries=1)
    node.state.submit(node.state.driver, spec)
    node.state.worker_lost(WorkerLost(worker=first))
    assert first.state is WorkerState.DEAD
    second = node.add_worker()
    assert second.task is spec and spec.attempts == 2
    node.state.worker_exited(WorkerExited(pid=second.pid, code=-9))
    error = _error_in(node, spec)
    assert isinstance(error, WorkerCrashedError) and "SIGKILL" in str(error)


def test_an_infeasible_task_fails_at_once(make_node, make_spec) -> None:
    node = make_node(num_cpus=1)
    spec = make_spec(resources=ResourceSet.from_request(4, None, default_cpus=1))
    node.state.submit(node.state.driver, spec)
    assert isinstance(_error_in(node, spec), InfeasibleResourcesError)


def test_a_task_waits_for_its_argument(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    upstream, downstream = make_spec(), None
    node.state.submit(node.state.driver, upstream)
    downstream = make_spec(args=upstream.return_ids)
    node.state.submit(node.state.driver, downstream)
    assert downstream.state is TaskState.WAITING and downstream.pending_deps == 1
    node.reset()
    node.state.task_done(_done(worker, upstream, b"42"))
    (message,) = node.sent(worker)
    assert message.spec is downstream and message.resolved == [
        (upstream.return_ids[0], INLINE, b"42")
    ]


def test_an_upstream_error_fails_the_task_without_running_it(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    upstream = make_spec()
    node.state.submit(node.state.driver, upstream)
    downstream = make_spec(args=upstream.return_ids)
    node.state.submit(node.state.driver, downstream)
    node.reset()
    node.state.task_failed(
        TaskFailed(
            worker=worker,
            task_id=upstream.task_id,
            payload=pickle.dumps(ValueError("bad input")),
            retryable=False,
            interrupted=False,
            started=1.0,
            finished=2.0,
        )
    )
    assert not node.sent(worker)
    assert isinstance(_error_in(node, downstream), ValueError)


def test_a_lost_result_is_rebuilt_from_lineage(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    spec = make_spec(max_retries=1)
    node.state.submit(node.state.driver, spec)
    node.state.task_done(_done(worker, spec))
    node.reset()
    entry = node.state.objects.entries[spec.return_ids[0]]
    node.state.objects.table.mark_lost(entry)
    assert node.state.dispatch.reconstruct(entry)
    assert entry.kind is ObjKind.PENDING and spec.reconstructions == 1
    (message,) = node.sent(worker)
    assert message.spec is spec and spec.state is TaskState.RUNNING


def test_cancel_of_a_queued_task_stores_task_cancelled(make_node, make_spec) -> None:
    node = make_node(max_workers=0)
    spec = make_spec()
    node.state.submit(node.state.driver, spec)
    answers: list[tuple[bool, object]] = []
    node.state.verbs["cancel"](
        node.state.driver, lambda ok, v: answers.append((ok, v)), spec.return_ids[0], False
    )
    assert answers == [(True, True)]
    assert spec.state is TaskState.CANCELLED
    assert isinstance(_error_in(node, spec), TaskCancelledError)


def test_force_cancel_of_a_running_task_kills_its_worker(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    spec = make_spec()
    node.state.submit(node.state.driver, spec)
    node.reset()
    node.state.verbs["cancel"](node.state.driver, lambda ok, v: None, spec.return_ids[0], True)
    assert node.effects() == [Kill(worker=worker, signal=signal.SIGKILL)]
    node.state.worker_lost(WorkerLost(worker=worker))
    assert isinstance(_error_in(node, spec), TaskCancelledError)


def test_idle_workers_beyond_the_cpu_count_are_let_go(make_node, make_spec) -> None:
    node = make_node(num_cpus=1, idle_worker_timeout_s=5.0)
    first, second = node.add_worker(), node.add_worker()
    node.reset()
    registry = node.state.registry
    registry.trim_idle(first.idle_since + 1.0)
    assert not node.sent(first) and not node.sent(second)
    registry.trim_idle(first.idle_since + 6.0)
    assert node.sent(first) == [Exit()] and registry.idle == [second]


def test_events_in_one_batch_are_scheduled_once_at_its_end(make_node, make_spec) -> None:
    """The messages of one socket read, or one batch from a peer, cost one scheduling
    pass: nothing is dispatched until the batch ends, then the same as one by one."""
    node = make_node(max_workers=1)
    worker = node.add_worker()
    specs = [make_spec() for _ in range(4)]
    passes = 0
    schedule = node.state.dispatch.schedule

    def counted() -> None:
        nonlocal passes
        passes += 1
        schedule()

    node.state.dispatch.schedule = counted  # type: ignore[method-assign]
    with node.state.dispatch.batch():
        for spec in specs[:2]:
            node.state.submit(node.state.driver, spec)
        with node.state.dispatch.batch():  # a nested batch joins the outer one
            node.state.submit(node.state.driver, specs[2])
        assert node.sent(worker) == []  # nothing yet: the pass is due, not done
        assert all(s.state is TaskState.READY for s in specs[:3])
    assert [(m.spec, m.ahead) for m in node.sent(worker)] == [
        (specs[0], False),
        (specs[1], True),
        (specs[2], True),
    ]
    assert passes == 4  # three calls noted the pass as due; the batch's end ran it
    node.state.submit(node.state.driver, specs[3])  # outside a batch: at once
    assert list(node.state.dispatch.ready[specs[3].resources]) == [specs[3]]
    assert passes == 5


def test_a_failing_pass_at_a_batchs_end_is_logged_not_raised(make_node, make_spec, caplog) -> None:
    node = make_node()
    node.add_worker()
    dispatch = node.state.dispatch

    def broken() -> None:
        raise KeyError("a bug in a pass")

    with caplog.at_level("ERROR", logger="heliostat"), dispatch.batch():
        node.state.submit(node.state.driver, make_spec())
        dispatch.schedule = broken  # type: ignore[method-assign]
    assert "internal error in a scheduling pass" in caplog.text
