"""The ordered stream of batches between two nodes (``engine/peer_stream.py``).

A real gRPC server in this process plays the receiving node: it applies what arrives
through a :class:`DeliveryLedger` as ``NodeLink`` does, and can break a stream midway,
so that the sender's resending and the ledger's dropping of repeats are exercised on a
real channel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from waiting import poll_for

from heliostat.cluster.v1 import node_pb2
from heliostat.engine import peer_stream
from heliostat.engine.peer_stream import SERVICE, DeliveryLedger, PeerSender

SENDER = 0x2A


def test_the_ledger_applies_each_batch_of_a_session_once() -> None:
    ledger = DeliveryLedger()
    assert [ledger.fresh(SENDER, 7, seq) for seq in (1, 2, 1, 2, 3)] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert ledger.applied(SENDER, 7) == 3
    # A new session of the same sender (it restarted its stream state) starts over.
    assert ledger.fresh(SENDER, 8, 1) and ledger.applied(SENDER, 8) == 1
    assert ledger.applied(SENDER, 7) == 0
    ledger.forget(SENDER)
    assert ledger.applied(SENDER, 8) == 0


class Receiver:
    """A NodeService whose ``Deliver`` applies batches through a ledger; it can break
    the first stream after a number of batches (``break_after``)."""

    def __init__(self, break_after: int | None = None) -> None:
        self.ledger = DeliveryLedger()
        self.applied: list[str] = []  # every message applied, in order
        self.batches: list[int] = []  # messages per batch received, in order
        self.streams = 0
        self.break_after = break_after
        self._lock = threading.Lock()

    def deliver(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.streams += 1
            breaking = self.streams == 1 and self.break_after is not None
        epoch, seen = 0, 0
        for request in requests:
            epoch = request.epoch
            with self._lock:
                self.batches.append(len(request.messages))
                if self.ledger.fresh(SENDER, request.epoch, request.seq):
                    self.applied.extend(m.cancel.task_id.decode() for m in request.messages)
            seen += 1
            if breaking and seen == self.break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the stream broke")
        return node_pb2.DeliverReply(applied=self.ledger.applied(SENDER, epoch))


@pytest.fixture
def serve() -> Iterator[Callable[[Receiver], str]]:
    servers: list[grpc.Server] = []

    def start(receiver: Receiver) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.stream_unary_rpc_method_handler(
            receiver.deliver,
            request_deserializer=node_pb2.DeliverRequest.FromString,
            response_serializer=node_pb2.DeliverReply.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Deliver": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None).wait(5)


def _sender(address: str) -> PeerSender:
    return PeerSender(
        index=SENDER,
        address=address,
        from_node="2a",
        metadata=(),
        encode=lambda name: node_pb2.Envelope(cancel=node_pb2.CancelTask(task_id=name.encode())),
        channel=grpc.insecure_channel(address),
    )


def _send(sender: PeerSender, names: list[str], batch: int = 7) -> None:
    """Put ``names`` in bursts, each burst waiting for the sender to drain the last."""
    for start in range(0, len(names), batch):
        for name in names[start : start + batch]:
            sender.put(name)
        poll_for(lambda: not sender._queue, 10, what="the sender to take the burst")


def test_messages_arrive_in_order_across_streams(
    serve: Callable[[Receiver], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_stream, "STREAM_BATCHES", 5)  # many streams, acknowledged
    monkeypatch.setattr(peer_stream, "STREAM_AGE_S", 0.1)  # and the last one soon, idle
    receiver = Receiver()
    sender = _sender(serve(receiver))
    names = [f"m{i}" for i in range(300)]
    try:
        _send(sender, names)
        poll_for(lambda: len(receiver.applied) == len(names), 20, what="every message")
        assert receiver.applied == names
        assert receiver.streams > 5
        poll_for(lambda: not sender._unacked, 20, what="the sender to hear every batch applied")
    finally:
        sender.close()
    assert not sender._thread.is_alive()


def test_a_broken_stream_is_sent_again_and_applied_once(
    serve: Callable[[Receiver], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_stream, "STREAM_BATCHES", 1000)  # one long stream until it breaks
    receiver = Receiver(break_after=4)
    sender = _sender(serve(receiver))
    names = [f"m{i}" for i in range(100)]
    try:
        _send(sender, names)
        poll_for(lambda: len(receiver.applied) == len(names), 20, what="every message")
        # The first stream broke after four batches it had applied: the sender sent
        # them again on the next stream, and the ledger dropped the repeats.
        assert receiver.streams >= 2
        assert receiver.applied == names
    finally:
        sender.close()


def test_an_unreachable_peer_is_given_up_and_the_sender_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peer_stream, "SEND_TRIES", 2)
    sender = _sender("127.0.0.1:1")  # nothing listens there
    try:
        sender.put("lost")
        poll_for(lambda: not sender._unacked and not sender._queue, 20, what="the batch dropped")
    finally:
        sender.close()
    assert not sender._thread.is_alive()


def test_drain_returns_once_everything_put_is_applied(serve: Callable[[Receiver], str]) -> None:
    """At shutdown a node drains its senders: its last messages (a kill, a release)
    must reach the peers, not die in a queue."""
    receiver = Receiver()
    sender = _sender(serve(receiver))
    names = [f"m{i}" for i in range(50)]
    try:
        for name in names:
            sender.put(name)
        assert sender.drain(10.0) is True
        assert receiver.applied == names  # applied, and the sender heard so
        assert not sender._unacked and not sender._queue
    finally:
        sender.close()
    assert not sender._thread.is_alive()


def test_a_lone_message_goes_at_once_and_a_burst_goes_as_one_batch(
    serve: Callable[[Receiver], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender lingers for more only when messages piled up (a burst): a lone
    message, such as one task sent to a peer, never waits for the linger."""
    monkeypatch.setattr(peer_stream, "LINGER_S", 30.0)  # longer than any wait below
    receiver = Receiver()
    sender = _sender(serve(receiver))
    try:
        sender.put("alone")
        poll_for(lambda: receiver.applied == ["alone"], 10, what="the lone message, unlingered")
        monkeypatch.setattr(peer_stream, "LINGER_S", 0.2)
        burst = [f"b{i}" for i in range(10)]
        with sender._cond:  # the sender's thread cannot take any until all are queued
            for name in burst:
                sender.put(name)
        poll_for(lambda: len(receiver.applied) == 11, 10, what="the burst")
        assert receiver.applied == ["alone", *burst]
        assert receiver.batches == [1, 10]
    finally:
        sender.close()
