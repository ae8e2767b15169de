"""The node manager's I/O: the only code that touches its sockets, signals and spawns.

One thread runs :meth:`NodeLoop.run`: it waits on a selector over the listening
socket, every worker's socket, the fork server's event pipe and a wake-up socket; reads
what is there *without* the node lock; then takes the lock once for the whole batch,
turns each message into an event or a request for :class:`~heliostat.engine.node_state.
NodeState`, and at the end carries out every instruction the batch produced
(:meth:`NodeLoop.flush`): one frame per worker, then the signals. The driver's own calls
(``NodeManager.submit``, ``handle``) run on the driver's thread under the same lock and
flush the same way before they let go of it.

The tuple layouts of ``protocol.Op`` are built and taken apart here (and in
``worker.py``), nowhere else in the manager: the pure side speaks in the typed events
and instructions of ``node_instructions.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from heliostat.engine.node_instructions import (
    HEAD_EFFECTS,
    ActorReady,
    CallActor,
    CancelCall,
    CreateActor,
    Disconnect,
    Execute,
    Exit,
    Kill,
    Message,
    Poke,
    Reply,
    Revoke,
    Spawn,
    TaskDone,
    TaskFailed,
    Unmap,
    UnmapDriver,
    WorkerExited,
    WorkerLost,
    WorkerOutput,
    WorkerSpawned,
)
from heliostat.engine.node_state import NodeState
from heliostat.engine.peers import PEER_EFFECTS
from heliostat.engine.protocol import ConnectionClosed, Op, PeerConnection
from heliostat.engine.records import WorkerRecord, WorkerState, item_ids_to_send
from heliostat.engine.worker_output import from_node
from heliostat.engine.worker_pool import ForkServerClient
from heliostat.exceptions import ClusterError

__all__ = ["NodeLoop", "RequestHandler"]

log = logging.getLogger("heliostat.engine")

# (proc, verb, args, reply): the facade's request entry, with its error policy.
RequestHandler = Callable[[WorkerRecord, str, tuple[Any, ...], Any], None]

_DEAD = WorkerState.DEAD


def encode(message: Message) -> tuple[Any, ...]:
    """The wire tuple of an instruction for a worker (layouts: ``protocol.Op``)."""
    kind = type(message)
    if kind is Execute:
        spec = message.spec  # type: ignore[union-attr]
        return (
            Op.EXECUTE,
            spec.task_id,
            spec.fn_id,
            message.fn_bytes,  # type: ignore[union-attr]
            spec.args_payload,
            spec.ref_positions,
            message.resolved,  # type: ignore[union-attr]
            spec.return_ids,
            spec.name,
            spec.retry_exceptions,
            message.ahead,  # type: ignore[union-attr]
            spec.generator,
            spec.code,
            item_ids_to_send(spec),
        )
    if kind is Reply:
        return (Op.REPLY, message.request_id, message.ok, message.value)  # type: ignore[union-attr]
    if kind is CallActor:
        spec = message.spec  # type: ignore[union-attr]
        return (
            Op.ACTOR_CALL,
            spec.task_id,
            spec.method,
            spec.args_payload,
            spec.ref_positions,
            message.resolved,  # type: ignore[union-attr]
            spec.return_ids,
            spec.name,
            spec.generator,
        )
    if kind is Revoke:
        return (Op.REVOKE, message.task_ids, message.revoke_id)  # type: ignore[union-attr]
    if kind is WorkerOutput:
        return (
            Op.LOG_LINES,
            message.stream,  # type: ignore[union-attr]
            from_node(message.task_name, message.origin),  # type: ignore[union-attr]
            message.pid,  # type: ignore[union-attr]
            message.text,  # type: ignore[union-attr]
        )
    if kind is Unmap:
        return (Op.UNMAP, message.object_ids)  # type: ignore[union-attr]
    if kind is Exit:
        return (Op.EXIT,)
    if kind is CancelCall:
        return (Op.CANCEL_CALL, message.task_id)  # type: ignore[union-attr]
    if kind is CreateActor:
        actor = message.actor  # type: ignore[union-attr]
        spec = actor.creation
        return (
            Op.CREATE_ACTOR,
            actor.actor_id,
            spec.fn_id,
            message.cls_bytes,  # type: ignore[union-attr]
            spec.args_payload,
            spec.ref_positions,
            message.resolved,  # type: ignore[union-attr]
            actor.label(),
            actor.max_concurrency,
            spec.code,
        )
    raise TypeError(f"no wire form for {message!r}")


class NodeLoop:
    """Selector, batching and signals of one node manager."""

    def __init__(
        self,
        state: NodeState,
        lock: threading.Lock,
        *,
        socket_path: str,
        pool: ForkServerClient,
        handle_request: RequestHandler,
        introspect: Callable[[str], Any],
        driver_unmap: Callable[[list[int]], None],
        driver_drain: Callable[[], None],
        log_sink: Callable[[str, str, int, str], None],
        attach_facts: Callable[[WorkerRecord], dict[str, Any]] | None = None,
    ) -> None:
        self._state = state
        # What a driver that attaches is told (its process index, the node's session,
        # the shared-memory probe): ``engine/attach.py``. None: attaching is refused.
        self._attach_facts = attach_facts
        self._lock = lock
        self._socket_path = socket_path
        self._pool = pool
        self._handle_request = handle_request
        self._introspect = introspect
        self._driver_unmap = driver_unmap
        # Where effects for other nodes go (the cluster link); None on a lone node.
        self.peer_sink: Callable[[Any], None] | None = None
        self._driver_drain = driver_drain
        self._log_sink = log_sink
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._want_write: set[WorkerRecord] = set()  # sockets with bytes left to write
        self._logs: list[tuple[str, str, int, str]] = []
        self.stopping = False

    def listen(self) -> None:
        """Bind the node's socket and start the fork server (no workers yet)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self._socket_path)
        listener.listen(256)
        listener.setblocking(False)
        self._listener = listener
        self._pool.start()
        sel = self._selector
        sel.register(listener, selectors.EVENT_READ, "listener")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(self._pool.events_fd, selectors.EVENT_READ, "fork")

    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self.run, name="heliostat-node-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wake and join the I/O thread, stop the fork server, close every socket."""
        self.stopping = True
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._pool.stop()
        with self._lock:
            for worker in self._state.registry.workers.values():
                if worker.conn is not None:
                    worker.conn.close()
            self._state.registry.workers.clear()
            self._state.registry.idle.clear()
        with contextlib.suppress(Exception):
            self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # --------------------------------------------------------- instructions --

    def flush(self, *, from_loop: bool = False) -> None:
        """Carry out every pending instruction (under the lock): messages, then effects."""
        out = self._state.out
        dirty, out.dirty = out.dirty, []
        wake = False
        for worker in dirty:
            pending, worker.outbox = worker.outbox, []
            conn = worker.conn
            if conn is None or conn.closed or worker.state is _DEAD:
                continue
            if conn.send([encode(m) for m in pending]):
                self._want_write.add(worker)
                wake = True
        if out.effects:
            effects, out.effects = out.effects, []
            for effect in effects:
                self._apply(effect)
        if wake and not from_loop:
            self.wake()  # the loop must watch that socket for writability

    def _apply(self, effect: object) -> None:
        kind = type(effect)
        if kind is Poke:
            worker = effect.worker  # type: ignore[attr-defined]
            if worker.pid and worker.state is not _DEAD:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGUSR1)
        elif kind is Kill:
            worker = effect.worker  # type: ignore[attr-defined]
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, effect.signal)  # type: ignore[attr-defined]
        elif kind is Spawn:
            self._pool.spawn(effect.index)  # type: ignore[attr-defined]
        elif kind is UnmapDriver:
            self._driver_unmap(list(effect.object_ids))  # type: ignore[attr-defined]
        elif kind is WorkerOutput:
            self._logs.append(
                (
                    effect.stream,  # type: ignore[attr-defined]
                    from_node(effect.task_name, effect.origin),  # type: ignore[attr-defined]
                    effect.pid,  # type: ignore[attr-defined]
                    effect.text,  # type: ignore[attr-defined]
                )
            )
        elif kind is Disconnect:
            worker = effect.worker  # type: ignore[attr-defined]
            self._want_write.discard(worker)
            if worker.conn is not None:
                with contextlib.suppress(Exception):
                    self._selector.unregister(worker.conn.sock)
                worker.conn.close()
        elif kind in PEER_EFFECTS:
            if self.peer_sink is not None:
                self.peer_sink(effect)  # for another node: the cluster link sends it
            else:  # the node is leaving its cluster: nobody to send it to
                log.debug("dropped %s: the node left its cluster", kind.__name__)
        elif kind in HEAD_EFFECTS:
            if self.peer_sink is not None:
                self.peer_sink(effect)  # a question for the head: the cluster link asks it
            elif getattr(effect, "req", 0):  # nobody to ask: the asker must not wait
                self._state.actors.head_answer(
                    effect.req,  # type: ignore[attr-defined]
                    False,
                    ClusterError("this node left its cluster: the head cannot be asked"),
                )
        else:
            raise TypeError(f"unknown effect {effect!r}")

    # ----------------------------------------------------------------- inbound --

    def on_message(self, worker: WorkerRecord, message: tuple[Any, ...]) -> None:
        """One message from a worker, under the lock."""
        op = message[0]
        state = self._state
        if op == Op.TASK_DONE:
            _op, task_id, results, started, finished = message
            state.task_done(
                TaskDone(
                    worker=worker,
                    task_id=task_id,
                    results=results,
                    started=started,
                    finished=finished,
                )
            )
        elif op == Op.REQUEST:
            _op, req_id, verb, args = message
            out = state.out

            def reply(ok: bool, value: Any, _w: WorkerRecord = worker, _r: int = req_id) -> None:
                out.send(_w, Reply(request_id=_r, ok=ok, value=value))

            self._handle_request(worker, verb, args, reply)
        elif op == Op.POST:
            self._handle_request(worker, message[1], message[2], None)
        elif op == Op.TASK_FAILED:
            _op, task_id, payload, retryable, interrupted, started, finished = message
            state.task_failed(
                TaskFailed(
                    worker=worker,
                    task_id=task_id,
                    payload=payload,
                    retryable=retryable,
                    interrupted=interrupted,
                    started=started,
                    finished=finished,
                )
            )
        elif op == Op.LOG:
            self._logs.append((message[1], message[2], worker.pid, message[3]))
            if state.peers is not None:  # the job's driver may be elsewhere: tell it too
                state.worker_output(worker, message[1], message[2], message[3])
        elif op == Op.ACTOR_READY:
            state.actor_ready(ActorReady(worker=worker, actor_id=message[1], error=message[2]))

    def register(self, conn: PeerConnection, index: int, pid: int) -> WorkerRecord | None:
        """A worker's first message (REGISTER): adopt its connection, or close it."""
        worker = self._state.worker_registered(index, pid)
        if worker is None:
            conn.close()
            return None
        worker.conn = conn
        return worker

    def _adopt(self, conn: PeerConnection, messages: list[tuple[Any, ...]]) -> WorkerRecord | None:
        if messages and messages[0][0] == Op.INTROSPECT:
            self._answer_introspection(conn, str(messages[0][1]))
            return None
        if messages and messages[0][0] == Op.ATTACH:
            return self._attach(conn, int(messages[0][1]))
        if not messages or messages[0][0] != Op.REGISTER:
            return None
        _op, index, pid = messages[0]
        worker = self.register(conn, index, pid)
        if worker is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(conn.sock, selectors.EVENT_READ, worker)
        return worker

    def _attach(self, conn: PeerConnection, pid: int) -> WorkerRecord | None:
        """A driver on this machine attaches: adopt its connection and answer (request
        id 0) with what it needs to act as a process of this node."""
        if self._attach_facts is None or self._state.stopping:
            with contextlib.suppress(Exception):
                self._selector.unregister(conn.sock)
            conn.close()
            return None
        proc = self._state.driver_attached(pid)
        proc.conn = conn
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(conn.sock, selectors.EVENT_READ, proc)
        self._state.out.send(proc, Reply(request_id=0, ok=True, value=self._attach_facts(proc)))
        return proc

    def _on_fork_event(self, event: tuple[str, int, int]) -> None:
        what, a, b = event
        if what == "spawned":
            self._state.worker_spawned(WorkerSpawned(index=a, pid=b))
        elif what == "exited":
            self._state.worker_exited(WorkerExited(pid=a, code=b))

    def expire_revokes(self, now: float) -> None:
        """Step 2 of the revoke handshake (``revokes.py``): the reading half.

        A worker's REVOKE must have left the outbox (complete in its socket), and
        everything it wrote so far is read and handled before its queue is taken back.
        """
        state = self._state
        dispatch = state.dispatch
        for worker in dispatch.revokes.overdue(now):
            conn = worker.conn
            if conn is None or worker.outbox or conn.wants_write:
                continue  # the REVOKE may not be in the worker's socket yet: later
            try:
                messages = conn.feed()  # a task's end already written promotes the next
            except ConnectionClosed:
                state.worker_lost(WorkerLost(worker=worker))
                continue
            for message in messages:
                self._guarded(self.on_message, worker, message)
            if worker.state is not _DEAD:
                dispatch.reclaim(worker, now)
        dispatch.revokes.next_due()

    def _answer_introspection(self, conn: PeerConnection, what: str) -> None:
        try:
            body: Any = {"ok": True, "value": self._introspect(what)}
        except Exception as exc:  # the tool gets the reason, the manager goes on
            body = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(body, default=str).encode()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        sock = conn.sock

        def answer() -> None:  # off the I/O thread: a slow reader must not stall it
            try:
                sock.setblocking(True)
                sock.settimeout(5.0)
                sock.sendall(len(data).to_bytes(8, "little") + data)
            except OSError:
                pass
            finally:
                sock.close()

        threading.Thread(target=answer, name="heliostat-introspect", daemon=True).start()

    # -------------------------------------------------------------------- loop --

    def run(self) -> None:
        sel = self._selector
        state = self._state
        last_tick = time.monotonic()
        watching_write: set[WorkerRecord] = set()
        while not self.stopping:
            try:
                events = sel.select(timeout=0.05)
            except (OSError, ValueError):
                if self.stopping:
                    return
                raise
            inbound: list[tuple[Any, list[tuple[Any, ...]]]] = []
            closed: list[WorkerRecord] = []
            fork_events: list[tuple[str, int, int]] = []
            accepted: list[PeerConnection] = []
            writable: list[WorkerRecord] = []
            for key, mask in events:
                tag = key.data
                if tag == "listener":
                    while True:
                        try:
                            sock, _ = self._listener.accept()  # type: ignore[union-attr]
                        except (BlockingIOError, OSError):
                            break
                        accepted.append(PeerConnection(sock))
                elif tag == "wake":
                    with contextlib.suppress(BlockingIOError, OSError):
                        self._wake_r.recv(4096)
                elif tag == "fork":
                    fork_events.extend(self._pool.read_events())
                elif isinstance(tag, PeerConnection):  # not registered yet
                    try:
                        inbound.append((tag, tag.feed()))
                    except ConnectionClosed:
                        with contextlib.suppress(Exception):
                            sel.unregister(tag.sock)
                        tag.close()
                else:
                    worker = tag
                    if mask & selectors.EVENT_WRITE:
                        writable.append(worker)
                    if mask & selectors.EVENT_READ and worker.conn is not None:
                        try:
                            messages = worker.conn.feed()
                        except ConnectionClosed:
                            closed.append(worker)
                            continue
                        if messages:
                            inbound.append((worker, messages))
            for conn in accepted:
                sel.register(conn.sock, selectors.EVENT_READ, conn)
            with self._lock:
                if self.stopping:
                    return
                try:
                    with state.dispatch.batch():  # one scheduling pass for all of them
                        for source, messages in inbound:
                            if isinstance(source, PeerConnection):
                                source = self._adopt(source, messages)
                                if source is None:
                                    continue
                                messages = messages[1:]
                            for message in messages:
                                self._guarded(self.on_message, source, message)
                    for worker in writable:
                        if worker.conn is not None:
                            worker.conn.flush()
                            if not worker.conn.wants_write:
                                self._want_write.discard(worker)
                    for worker in closed:
                        self._guarded(state.worker_lost, WorkerLost(worker=worker))
                    for event in fork_events:
                        self._guarded(self._on_fork_event, event)
                    now = time.monotonic()
                    if now >= state.dispatch.revokes.due:
                        self.expire_revokes(now)
                    if now - last_tick > 1.0:
                        last_tick = now
                        state.registry.trim_idle(now)
                finally:
                    self.flush(from_loop=True)
                want = set(self._want_write)
                logs, self._logs = self._logs, []
            for worker in want - watching_write:
                if worker.conn is not None and not worker.conn.closed:
                    with contextlib.suppress(KeyError, ValueError):
                        sel.modify(
                            worker.conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, worker
                        )
            for worker in watching_write - want:
                if worker.conn is not None and not worker.conn.closed:
                    with contextlib.suppress(KeyError, ValueError):
                        sel.modify(worker.conn.sock, selectors.EVENT_READ, worker)
            watching_write = want
            for stream, task_name, pid, text in logs:
                self._log_sink(stream, task_name, pid, text)
            self._driver_drain()

    def _guarded(self, handler: Callable[..., None], *args: Any) -> None:
        """Run one event handler; a bug in it is logged, and the I/O loop goes on.

        A dead I/O thread would hang every ``get`` in the process, which is worse than
        the inconsistency a failed handler may leave.
        """
        try:
            handler(*args)
        except Exception:
            log.exception(
                "heliostat internal error in %s%r; please report it",
                getattr(handler, "__name__", handler),
                args[:2],
            )
