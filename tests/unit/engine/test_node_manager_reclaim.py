"""The manager's half of the revoke handshake, driven by hand (no processes).

A node manager of one CPU gets one fake worker over a socket pair; the test writes
what the worker would send, and calls the deadline check with a chosen ``now``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heliostat.engine.node_manager import NodeConfig, NodeManager
from heliostat.engine.protocol import BlockingChannel, Op, PeerConnection, encode_frame
from heliostat.engine.records import TaskKind, TaskSpec, TaskState, WorkerRecord
from heliostat.scheduler import ResourceSet

ONE_CPU = ResourceSet.from_request(1, None, default_cpus=1)


class _FakeWorker:
    """The worker's end of its socket: the test sends and reads in its place."""

    def __init__(self, record: WorkerRecord, sock: socket.socket) -> None:
        self.record = record
        self.sock = sock
        self.chan = BlockingChannel(sock)

    def write(self, *messages: tuple[Any, ...]) -> None:
        """Put messages in the manager's socket without the manager reading them."""
        self.sock.sendall(encode_frame(list(messages)))

    def received(self) -> list[tuple[Any, ...]]:
        self.sock.settimeout(5)
        return self.chan.recv()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[NodeManager, _FakeWorker]]:
    config = NodeConfig(
        session="0-000000",
        session_dir=str(tmp_path),
        socket_path=str(tmp_path / "node.sock"),
        spill_dir=str(tmp_path / "spill"),
        num_cpus=1,
        object_store_memory=1 << 20,
        max_workers=1,
        revoke_timeout_s=0.2,
    )
    manager = NodeManager(
        config, driver_unmap=lambda ids: None, driver_drain=lambda: None, log_sink=print
    )
    ours, theirs = socket.socketpair()
    with manager._lock:
        record = manager.state.registry.spawn(None)
        manager.state.out.effects.clear()  # the fork server is not started: no process
        manager.loop.register(PeerConnection(ours), record.index, 0)  # pid 0: no signals
    yield manager, _FakeWorker(record, theirs)
    manager.stop()
    theirs.close()


def _spec(task_id: int) -> TaskSpec:
    return TaskSpec(
        task_id=task_id,
        kind=TaskKind.NORMAL,
        name=f"t{task_id}",
        fn_id=b"fn",
        args_payload=b"",
        ref_positions=(),
        arg_ids=(),
        contained=(),
        return_ids=(task_id << 8,),
        resources=ONE_CPU,
        max_retries=0,
        retry_exceptions=False,
        owner=0,
    )


def _busy_with_two_queued(manager: NodeManager, worker: _FakeWorker) -> list[TaskSpec]:
    specs = [_spec(1), _spec(2), _spec(3)]
    for spec in specs:
        manager.submit(manager.driver, spec)
    record = worker.record
    assert record.task is specs[0] and list(record.queued) == specs[1:]
    sent = worker.received()
    assert [(m[0], m[1], m[10]) for m in sent] == [  # m[10]: the ``ahead`` flag
        (Op.EXECUTE, 1, False),
        (Op.EXECUTE, 2, True),
        (Op.EXECUTE, 3, True),
    ]
    with manager._lock:
        manager.state.dispatch.revokes.ask_queued(record)
        manager.loop.flush()
    (revoke,) = worker.received()
    assert revoke[:2] == (Op.REVOKE, [2, 3])
    return specs


def _ready(manager: NodeManager) -> list[int]:
    return [s.task_id for s in manager.state.dispatch.ready.get(ONE_CPU, ())]


def _placed(manager: NodeManager, worker: _FakeWorker) -> list[int]:
    """Every task id where the manager keeps it: ready, running, sent ahead."""
    record = worker.record
    running = [record.task.task_id] if record.task is not None else []
    return sorted(_ready(manager) + running + [s.task_id for s in record.queued])


def test_unanswered_revoke_takes_back_the_tasks_still_queued(node) -> None:
    manager, worker = node
    a, b, c = _busy_with_two_queued(manager, worker)
    # The worker finished 1 (so it starts 2) just before it stopped; the manager has
    # not read that yet when the deadline passes.
    worker.write((Op.TASK_DONE, 1, [], 0.0, 0.0))
    due = manager.state.dispatch.revokes.due
    manager.expire_revokes(due - 0.1)  # before the deadline
    assert list(worker.record.queued) == [b, c]
    manager.expire_revokes(due + 0.1)
    assert a.state is TaskState.FINISHED
    assert worker.record.task is b and not worker.record.queued  # 2 stays: it started
    assert c.state is TaskState.READY and c.worker is None and c.attempts == 0
    assert _ready(manager) == [3]


def test_a_claimed_task_is_not_taken_back(node) -> None:
    manager, worker = node
    _a, b, _c = _busy_with_two_queued(manager, worker)
    answers: list[tuple[bool, Any]] = []
    manager.handle(worker.record, "claim", (2,), lambda ok, value: answers.append((ok, value)))
    assert answers == [(True, True)] and b.claimed
    manager.expire_revokes(manager.state.dispatch.revokes.due + 0.1)
    assert list(worker.record.queued) == [b]
    assert _ready(manager) == [3]


def test_a_late_answer_does_not_hand_back_a_task_twice(node) -> None:
    manager, worker = node
    _a, _b, _c = _busy_with_two_queued(manager, worker)
    manager.expire_revokes(manager.state.dispatch.revokes.due + 0.1)
    assert _ready(manager) == [2, 3]
    (revoke_id,) = worker.record.revokes
    # The worker wakes and answers: both handed back, which the manager already did.
    worker.write((Op.POST, "returned", ([2, 3], revoke_id)))
    with manager._lock:
        for message in worker.record.conn.feed():  # type: ignore[union-attr]
            manager.loop.on_message(worker.record, message)
        manager.loop.flush()
    assert not worker.record.revokes
    # Awake again, it may get tasks sent ahead (here the same two: one CPU), but each
    # task is in one place only.
    assert _placed(manager, worker) == [1, 2, 3]


def test_an_answer_in_time_needs_no_deadline(node) -> None:
    manager, worker = node
    _a, b, c = _busy_with_two_queued(manager, worker)
    (revoke_id,) = worker.record.revokes
    worker.write((Op.TASK_DONE, 1, [], 0.0, 0.0), (Op.POST, "returned", ([3], revoke_id)))
    manager.expire_revokes(manager.state.dispatch.revokes.due + 0.1)  # reads the answer first
    assert worker.record.task is b
    assert not worker.record.revokes
    assert c.attempts == 1  # handed back by the answer, then sent ahead again
    assert _placed(manager, worker) == [2, 3]


def test_no_task_is_taken_back_while_the_revoke_is_still_in_the_outbox(node) -> None:
    manager, worker = node
    _busy_with_two_queued(manager, worker)
    conn = worker.record.conn
    assert conn is not None
    conn.wants_write = True  # as if the socket had been full: the REVOKE not sent yet
    manager.expire_revokes(manager.state.dispatch.revokes.due + 0.1)
    assert len(worker.record.queued) == 2
    assert _ready(manager) == []


def test_a_claim_for_a_task_taken_back_is_refused(node) -> None:
    manager, worker = node
    _a, _b, c = _busy_with_two_queued(manager, worker)
    manager.expire_revokes(manager.state.dispatch.revokes.due + 0.1)
    answers: list[tuple[bool, Any]] = []
    manager.handle(worker.record, "claim", (3,), lambda ok, value: answers.append((ok, value)))
    assert answers == [(True, False)]
    assert not c.claimed
