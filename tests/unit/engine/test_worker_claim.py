"""The worker's half of the revoke handshake: a REVOKE already sent wins over a start.

Before a task sent ahead runs, the worker writes the end of the previous task and then
reads what is already in its socket; a REVOKE found there takes the task away
(``WorkerClient.take``). The node manager relies on this to run elsewhere the tasks of
a worker that did not answer a REVOKE (``dispatch.py``). These tests drive a real
``WorkerClient`` over a socket pair, with the test playing the node manager.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from heliostat.engine.ids import IdMinter
from heliostat.engine.protocol import BlockingChannel, Op, encode_frame
from heliostat.engine.worker_client import WorkerClient

DONE = (Op.TASK_DONE, 1, [], 0.0, 0.0)  # the reply of the task before


class _Manager:
    """The node manager's end of a worker socket, blocking, for tests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.chan = BlockingChannel(sock)
        self._pending: list[tuple[Any, ...]] = []

    def send(self, *messages: tuple[Any, ...]) -> None:
        self.sock.sendall(encode_frame(list(messages)))

    def recv(self) -> tuple[Any, ...]:
        """The next message the worker sent (frames may hold several)."""
        if not self._pending:
            self._pending = list(self.chan.recv())
        return self._pending.pop(0)

    def nothing_sent(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.recv()
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(10)
        return False


@pytest.fixture
def pair() -> Iterator[tuple[WorkerClient, _Manager]]:
    worker_sock, manager_sock = socket.socketpair()
    manager_sock.settimeout(10)
    client = WorkerClient(
        BlockingChannel(worker_sock),
        worker_sock,
        minter=IdMinter(0, 1),
        session="0-000000",
        namespace="default",
    )
    yield client, _Manager(manager_sock)
    worker_sock.close()
    manager_sock.close()


def _execute(task_id: int, *, ahead: bool, code: bytes | None = None) -> tuple[Any, ...]:
    fn_id = b"fn-%d" % task_id
    return (Op.EXECUTE, task_id, fn_id, code, b"", (), [], (task_id,), "t", False, ahead)


def test_a_task_sent_ahead_runs_after_the_previous_reply(pair) -> None:
    client, manager = pair
    message = _execute(7, ahead=True)
    client.inbox.append(message)
    assert client.take(DONE) is message
    assert manager.recv() == DONE
    assert not client.inbox


def test_a_revoke_already_in_the_socket_wins(pair) -> None:
    client, manager = pair
    client.inbox.append(_execute(7, ahead=True, code=b"pickled code"))
    manager.send((Op.REVOKE, [7], 41))  # in the socket, not read yet: a stopped worker

    assert client.take(DONE) is None

    assert manager.recv() == DONE
    assert manager.recv() == (Op.POST, "returned", ([7], 41))
    assert not client.inbox
    assert client.revoked_code == {b"fn-7": b"pickled code"}  # the code is not lost


def test_without_a_read_since_our_last_write_the_socket_is_checked(pair) -> None:
    client, manager = pair
    client.inbox.append(_execute(7, ahead=True))
    client._chan.send([(Op.POST, "returned", ([6], 1))])  # the end of the task before
    manager.send((Op.REVOKE, [7], 2))
    assert client.take(None) is None
    assert manager.recv() == (Op.POST, "returned", ([6], 1))
    assert manager.recv() == (Op.POST, "returned", ([7], 2))


def test_after_waiting_for_work_no_extra_read_is_needed(pair) -> None:
    client, manager = pair
    client.take(DONE)  # nothing to run: the reply goes out alone
    assert manager.recv() == DONE
    message = _execute(8, ahead=True)
    manager.send(message)
    client.pump_until(lambda: bool(client.inbox), None)  # read after our last write
    assert client._chan.caught_up
    manager.send((Op.REVOKE, [8], 3))  # sent after the manager saw our reply: too late
    assert client.take(None) == message


def test_frames_a_signal_handler_deferred_go_out_before_the_check(pair) -> None:
    client, manager = pair
    client.inbox.append(_execute(5, ahead=True))
    client._chan.caught_up = True
    with client._chan._send_lock:  # a send in progress: send_soon has to defer
        client._chan.send_soon([(Op.POST, "returned", ([4], 1))])
    manager.send((Op.REVOKE, [5], 2))
    assert client.take(None) is None  # the deferred frame was written, then the check
    assert manager.recv() == (Op.POST, "returned", ([4], 1))
    assert manager.recv() == (Op.POST, "returned", ([5], 2))


def test_a_revoke_hands_back_only_tasks_not_started(pair) -> None:
    client, manager = pair
    first, second = _execute(1, ahead=True), _execute(2, ahead=True)
    client.inbox.extend([first, second])
    assert client.take(None) is first  # running
    manager.send((Op.REVOKE, [1, 2], 5))
    assert client.take(DONE) is None  # the REVOKE is read before 2 may start
    assert manager.recv() == DONE
    assert manager.recv() == (Op.POST, "returned", ([2], 5))


def test_a_task_sent_to_an_idle_worker_is_not_checked(pair) -> None:
    client, manager = pair
    message = _execute(3, ahead=False)
    client.inbox.append(message)
    manager.send((Op.REVOKE, [99], 1))  # not read by take(): nothing to check
    assert client.take(DONE) is message
    assert manager.recv() == DONE
    assert manager.nothing_sent()


def _reader_thread(client: WorkerClient) -> tuple[threading.Thread, threading.Event]:
    """A thread of the task waiting in get(): it holds the reader role, in recv."""
    stop = threading.Event()
    reader = threading.Thread(target=client.pump_until, args=(stop.is_set, None))
    reader.start()
    with client._cv:
        assert client._cv.wait_for(lambda: client._reader_active, timeout=10)
    return reader, stop


@pytest.mark.parametrize("granted", [True, False])
def test_with_another_reader_the_manager_decides(pair, granted: bool) -> None:
    client, manager = pair
    reader, stop = _reader_thread(client)
    try:
        message = _execute(9, ahead=True)
        client.inbox.append(message)
        result: list[Any] = []
        taker = threading.Thread(target=lambda: result.append(client.take(DONE)))
        taker.start()
        assert manager.recv() == DONE
        op, req_id, verb, args = manager.recv()
        assert (op, verb, args) == (Op.REQUEST, "claim", (9,))
        manager.send((Op.REPLY, req_id, True, granted))
        taker.join(10)
        assert result == [message if granted else None]
        assert not client.inbox
    finally:
        stop.set()
        manager.send((Op.UNMAP, ()))  # wake the reader so it sees stop
        reader.join(10)


def test_with_another_reader_a_revoke_before_the_answer_wins(pair) -> None:
    client, manager = pair
    reader, stop = _reader_thread(client)
    try:
        client.inbox.append(_execute(9, ahead=True))
        result: list[Any] = []
        taker = threading.Thread(target=lambda: result.append(client.take(None)))
        taker.start()
        _op, req_id, _verb, _args = manager.recv()
        # The manager took the task back (and sent it elsewhere, or to this worker
        # again) before the claim reached it: the REVOKE precedes any answer.
        manager.send((Op.REVOKE, [9], 3), (Op.REPLY, req_id, True, True))
        taker.join(10)
        assert result == [None]
        assert manager.recv() == (Op.POST, "returned", ([9], 3))
    finally:
        stop.set()
        manager.send((Op.UNMAP, ()))
        reader.join(10)
