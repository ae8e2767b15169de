"""One node's ordered stream of messages to one peer (``NodeService.Deliver``).

A node manager decides, under its lock, what another node must be told (the effects
of ``engine/peers.py``); :class:`PeerSender` carries them there in order:

* a thread of its own drains the peer's queue (a lone message at once; in a burst it
  lingers a moment, so that many small messages go as one batch), encodes the batch
  off the node lock and writes it
  to a gRPC client stream that stays open across batches (a message on an open stream
  costs a fraction of a call of its own);
* every batch carries a number (``seq``) within the sender's session (``epoch``). Now
  and then (after :data:`STREAM_BATCHES` batches, :data:`STREAM_AGE_S` seconds, or
  when idle) the sender closes the stream; the reply says which batch the peer applied
  last, and the sender forgets those. When a stream breaks, the batches it has not
  heard of go again on the next stream, and the receiver's :class:`DeliveryLedger`
  drops those it had applied already: each batch is applied once, in order;
* past :data:`SEND_TRIES` broken streams in a row the peer is taken for unreachable;
  what was queued for it is dropped, and the head's node table (which soon lists it
  dead) makes the node manager retry the work it had sent there.

A new stream opens only when the previous one has ended, so two streams of one sender
never run at once, and the receiver applies batches in the order they were sent.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc

from heliostat.cluster.v1 import node_pb2
from heliostat.engine.ids import format_id

__all__ = ["DeliveryLedger", "PeerSender"]

log = logging.getLogger("heliostat.cluster")

SERVICE = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
LINGER_S = 0.002  # how long a busy sender waits for more messages before a batch
BATCH = 128  # messages worth a batch without lingering
STREAM_BATCHES = 512  # batches on one stream before it is closed and acknowledged
STREAM_AGE_S = 1.0  # seconds a stream stays open (also: how long it may sit idle)
STREAM_TIMEOUT_S = 60.0  # deadline of one stream, a safeguard against a stuck peer
SEND_TRIES = 5

_END = object()  # ends a stream's request iterator


class PeerSender:
    """The ordered stream of messages from this node to node ``index`` at ``address``.

    Args:
        index: the peer's node index.
        address: host:port of its node service.
        from_node: this node's id, as the peer knows it.
        metadata: call metadata (the cluster token).
        encode: turns one effect into its ``Envelope``.
        channel: the gRPC channel to the peer (this sender closes it).
    """

    def __init__(
        self,
        *,
        index: int,
        address: str,
        from_node: str,
        metadata: Any,
        encode: Callable[[Any], Any],
        channel: grpc.Channel,
    ) -> None:
        self.index = index
        self.address = address
        self.channel = channel
        self._from = from_node
        self._metadata = metadata
        self._encode = encode
        self._deliver = channel.stream_unary(
            f"/{SERVICE}/Deliver",
            request_serializer=node_pb2.DeliverRequest.SerializeToString,
            response_deserializer=node_pb2.DeliverReply.FromString,
        )
        self._queue: deque[Any] = deque()  # effects, encoded by the sending thread
        self._cond = threading.Condition()
        self._closed = False
        self._draining = False
        self._epoch = secrets.randbits(63) or 1
        self._seq = 0
        self._unacked: deque[node_pb2.DeliverRequest] = deque()
        self._stream: queue.SimpleQueue[Any] | None = None  # the open stream's requests
        self._call: Any = None  # its future
        self._opened = 0.0
        self._written = 0
        self._failures = 0
        self._thread = threading.Thread(
            target=self._run, name=f"hs-peer-{format_id(index)[-4:]}", daemon=True
        )
        self._thread.start()

    def put(self, effect: Any) -> None:
        with self._cond:
            queue = self._queue
            queue.append(effect)
            # Wake the thread for the first message, and for a full batch: not for
            # each one in between, which would cut its linger short (and costs).
            if len(queue) == 1 or len(queue) == BATCH:
                self._cond.notify()

    def drain(self, timeout: float) -> bool:
        """Wait until everything put so far is sent and acknowledged (True), at most
        ``timeout`` seconds (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._draining = True
            self._cond.notify()
            while self._queue or self._unacked or self._stream is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or not self._thread.is_alive():
                    return False
                self._cond.wait(timeout=min(left, 0.05))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.channel.close()  # first: a stream stuck on a dead peer ends now
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ thread --

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except ValueError:  # the channel was closed under a call: the peer is gone
            pass
        finally:
            self._end_stream(wait=False)

    def _step(self) -> bool:
        """Send one batch (or close an idle stream); False when the sender is done."""
        with self._cond:
            if not self._queue and not self._closed and not self._draining:
                self._cond.wait(timeout=STREAM_AGE_S if self._stream is not None else None)
            if self._closed:
                return False
            idle = not self._queue
            if idle and self._stream is None:  # draining, and all is acknowledged
                self._cond.notify_all()
                self._cond.wait(timeout=STREAM_AGE_S)
                return True
        if idle:
            # Idle a while (or draining): learn what the peer applied. Never under the
            # condition's lock: put() is called under the node lock.
            self._settle()
            return True
        with self._cond:
            if 1 < len(self._queue) < BATCH:
                # Messages piled up while the last batch was being written: a burst.
                # Linger a moment for more, so that many small tasks cost one message
                # per batch instead of one per task. A lone message goes at once.
                self._cond.wait(timeout=LINGER_S)
            effects = list(self._queue)
            self._queue.clear()
        # Encoded here, off the node lock: what an effect holds does not change once
        # decided (a spec's wire fields, values, ids).
        self._seq += 1
        request = node_pb2.DeliverRequest(
            from_node=self._from,
            messages=[self._encode(effect) for effect in effects],
            epoch=self._epoch,
            seq=self._seq,
        )
        self._unacked.append(request)
        self._write(request)
        return True

    def _write(self, request: node_pb2.DeliverRequest) -> None:
        if self._call is not None and self._call.done():
            self._settle()  # it broke (or the peer ended it): resend what it lost
        if self._stream is None:
            self._open()
            return  # _open sent every unacknowledged batch, this one included
        assert self._stream is not None
        self._stream.put(request)
        self._written += 1
        if self._written >= STREAM_BATCHES or time.monotonic() - self._opened > STREAM_AGE_S:
            self._settle()

    def _open(self) -> None:
        """Open a stream and send it every batch the peer has not acknowledged."""
        stream: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for request in self._unacked:
            stream.put(request)
        # The call first: if opening it fails (the channel was closed), no stream is
        # left without its call for _end_stream to trip over.
        call = self._deliver.future(
            iter(stream.get, _END), timeout=STREAM_TIMEOUT_S, metadata=self._metadata
        )
        self._stream, self._call = stream, call
        self._written, self._opened = len(self._unacked), time.monotonic()
        call.add_done_callback(self._wake)

    def _wake(self, _call: Any) -> None:
        with self._cond:
            self._cond.notify()

    def _end_stream(self, *, wait: bool) -> Any:
        """Close the open stream; its reply (``wait``), or None."""
        stream, call = self._stream, self._call
        self._stream = self._call = None
        if stream is None or call is None:
            return None
        stream.put(_END)
        if not wait:
            call.cancel()
            return None
        return call.result()

    def _settle(self) -> None:
        """Close the stream, forget what the peer applied, and resend the rest on a
        new stream (after a pause, when it broke)."""
        if self._stream is None:
            return
        try:
            reply = self._end_stream(wait=True)
        except grpc.RpcError as exc:
            if self._closed:
                return
            self._failures += 1
            if self._failures >= SEND_TRIES:
                log.warning(
                    "node %s (%s) is unreachable (%s): dropped %d batches for it",
                    format_id(self.index),
                    self.address,
                    _code(exc),
                    len(self._unacked),
                )
                self._unacked.clear()
                self._failures = 0
                return
            log.warning(
                "the stream to node %s (%s) broke (%s): sending %d batches again, try %d",
                format_id(self.index),
                self.address,
                _code(exc),
                len(self._unacked),
                self._failures + 1,
            )
            with self._cond:
                self._cond.wait(timeout=min(0.1 * 2**self._failures, 2.0))
            if not self._closed:
                self._open()
            return
        self._failures = 0
        unacked = self._unacked
        while unacked and unacked[0].seq <= reply.applied:
            unacked.popleft()
        if unacked:  # the peer ended the stream early: the rest go again
            self._open()


def _code(exc: BaseException) -> Any:
    code = getattr(exc, "code", None)
    return code() if callable(code) else exc


class DeliveryLedger:
    """The receiving side's record of the last batch applied from each sender session.

    :meth:`fresh` is called under the node lock, so checking a batch and applying it
    are one step even when a sender's broken stream and its replacement are served at
    the same time.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, int]] = {}  # sender index -> (epoch, seq)

    def fresh(self, index: int, epoch: int, seq: int) -> bool:
        """Whether batch ``seq`` of ``index``'s session ``epoch`` is new (then noted)."""
        last = self._last.get(index)
        if last is not None and last[0] == epoch and seq <= last[1]:
            return False
        self._last[index] = (epoch, seq)
        return True

    def applied(self, index: int, epoch: int) -> int:
        """The last batch of that session applied here (0: none)."""
        last = self._last.get(index)
        return last[1] if last is not None and last[0] == epoch else 0

    def forget(self, index: int) -> None:
        self._last.pop(index, None)
