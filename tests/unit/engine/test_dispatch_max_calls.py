"""``max_calls``: a worker runs at most N calls of a function, then exits (pure decisions).

Ray's rule: once a worker has run a function's ``max_calls`` calls it exits and a new
worker takes its place. Here the manager tells it to exit (``Exit``) once the last
allowed call ends, sends it nothing more meanwhile, and starts a replacement when the
exit is seen.
"""

from __future__ import annotations

from heliostat.engine.node_instructions import (
    Execute,
    Exit,
    Spawn,
    TaskDone,
    TaskFailed,
    WorkerExited,
)
from heliostat.engine.object_table import ObjKind
from heliostat.engine.records import TaskState, WorkerState

INLINE = int(ObjKind.INLINE)


def _done(worker, spec) -> TaskDone:
    return TaskDone(
        worker=worker,
        task_id=spec.task_id,
        results=[(spec.return_ids[0], INLINE, b"v", (), 0)],
        started=1.0,
        finished=2.0,
    )


def test_worker_exits_after_its_last_allowed_call(make_node, make_spec) -> None:
    node = make_node(max_workers=1)
    worker = node.add_worker()
    first, second = make_spec(max_calls=2), make_spec(max_calls=2)
    node.state.submit(node.state.driver, first)
    node.state.task_done(_done(worker, first))
    assert worker.state is WorkerState.IDLE  # one call left
    node.state.submit(node.state.driver, second)
    node.reset()
    node.state.task_done(_done(worker, second))
    assert node.sent(worker) == [Exit()]
    assert worker.state is WorkerState.RETIRING
    assert worker not in node.state.registry.idle
    assert worker.index not in node.state.registry.busy


def test_a_waiting_task_gets_a_fresh_worker_once_the_spent_one_exits(make_node, make_spec) -> None:
    node = make_node(max_workers=1)
    worker = node.add_worker()
    first, second = make_spec(max_calls=1), make_spec(max_calls=1)
    node.state.submit(node.state.driver, first)
    node.state.submit(node.state.driver, second)  # waits: no worker free, none may start
    node.reset()
    node.state.task_done(_done(worker, first))
    assert node.sent(worker) == [Exit()]  # the second is not sent to the spent worker
    assert not [e for e in node.effects() if isinstance(e, Spawn)]  # max_workers=1
    assert second.state is TaskState.READY
    node.state.worker_exited(WorkerExited(pid=worker.pid, code=0))
    assert worker.state is WorkerState.DEAD
    assert [e for e in node.effects() if isinstance(e, Spawn)]
    fresh = node.add_worker()
    (message,) = node.sent(fresh)
    assert isinstance(message, Execute) and message.spec is second


def test_max_calls_tasks_are_not_sent_ahead(make_node, make_spec) -> None:
    node = make_node(max_workers=1)
    worker = node.add_worker()
    plain = make_spec(fn_id=b"plain")
    limited = [make_spec(fn_id=b"gpu", max_calls=3) for _ in range(2)]
    node.state.submit(node.state.driver, plain)
    for spec in limited:
        node.state.submit(node.state.driver, spec)
    assert [m.spec for m in node.sent(worker)] == [plain]
    node.state.task_done(_done(worker, plain))
    assert [(m.spec, m.ahead) for m in node.sent(worker)] == [(limited[0], False)]


def test_nothing_is_sent_ahead_to_a_worker_that_will_exit(make_node, make_spec) -> None:
    node = make_node(max_workers=1)
    worker = node.add_worker()
    last = make_spec(fn_id=b"gpu", max_calls=1)
    node.state.submit(node.state.driver, last)
    others = [make_spec(fn_id=b"plain") for _ in range(2)]
    for spec in others:
        node.state.submit(node.state.driver, spec)
    assert [m.spec for m in node.sent(worker)] == [last]  # none sent ahead behind it
    node.state.task_done(_done(worker, last))
    assert node.sent(worker) == [Exit()]
    assert all(spec.state is TaskState.READY for spec in others)


def test_calls_of_other_functions_do_not_count(make_node, make_spec) -> None:
    node = make_node(max_workers=1, pipeline_depth=0)
    worker = node.add_worker()
    limited = make_spec(fn_id=b"gpu", max_calls=2)
    node.state.submit(node.state.driver, limited)
    node.state.task_done(_done(worker, limited))
    for _ in range(3):
        plain = make_spec(fn_id=b"plain")
        node.state.submit(node.state.driver, plain)
        node.state.task_done(_done(worker, plain))
    assert worker.state is WorkerState.IDLE and worker.calls == {b"gpu": 1}


def test_a_failed_call_counts_too(make_node, make_spec) -> None:
    node = make_node(max_workers=1)
    worker = node.add_worker()
    spec = make_spec(max_calls=1)
    node.state.submit(node.state.driver, spec)
    node.reset()
    node.state.task_failed(
        TaskFailed(
            worker=worker,
            task_id=spec.task_id,
            payload=b"",
            retryable=False,
            interrupted=False,
            started=1.0,
            finished=2.0,
        )
    )
    assert node.sent(worker) == [Exit()]
