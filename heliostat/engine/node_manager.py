"""The node manager: scheduler, object directory and worker pool of one node.

It runs inside the driver process, on its own I/O thread, so a driver's submit or get
is a method call under a lock rather than a message (DESIGN §8). Workers talk to it
over Unix sockets (``protocol.py``). Every piece of state lives in this object and is
touched only while holding ``self._lock``; the I/O thread reads sockets without the
lock and then handles a whole batch of messages in one lock hold, sending replies in
one frame per worker at the end of the batch.

Requests come in through :meth:`NodeManager.handle` as a *verb* with arguments and a
``reply(ok, value)`` callback. The driver calls it directly; a worker's ``REQUEST``
message is turned into the same call with a reply that sends a ``REPLY`` frame. So the
request surface is one set of ``_v_*`` methods, whoever calls.

Task path: submit -> (arguments pending: WAITING) -> ready queue of its resource
shape -> an idle worker whose node has room -> ``EXECUTE`` -> ``TASK_DONE`` with the
results inline or as shared-memory paths the worker wrote itself -> waiters of the
returns are answered.

Pipelining and stealing: short tasks are sent *ahead* to a busy worker of the same
resource shape (``WorkerRecord.queued``), so it never waits a round trip between two
of them. When a worker idles while another holds tasks sent ahead, the manager sends
that one a ``REVOKE`` (and SIGUSR1, so a worker busy in Python code reads it at once);
the worker hands back the tasks it has not started (``returned``).

A worker that is stopped (SIGSTOP, or stuck in a C call that never returns to Python)
never answers. After ``revoke_timeout_s`` the manager takes back the revoked tasks that
are still *queued* on it (not yet promoted to its running task), and runs them
elsewhere. The invariant: **a task taken back this way never runs on the worker it
was taken from.** The handshake rests on what already orders a worker's tasks: the
manager promotes ``queued[0]`` to the running task when the previous task's end
(``TASK_DONE``, ``TASK_FAILED``, or ``returned`` naming it) arrives, and the worker
starts a task sent ahead only after writing that end. So the end of the previous task
is the claim on the next one:

1. The worker (``WorkerClient.take``), before it runs a task sent ahead, has written
   the previous task's end, then dispatches every message complete in its socket
   after that write; a REVOKE among them removes the task from its inbox, and it does
   not run. (With another thread reading its socket, it asks ``claim`` instead, and
   the manager's answer, sent after any REVOKE, decides; ``TaskSpec.claimed``.)
2. The manager takes back a task only after the deadline, only once the REVOKE has
   left its outbox (so it is complete in the worker's socket), and only after reading
   everything the worker has written so far (``_reclaim``); a task promoted by then
   stays with the worker.

Why no task runs twice: say the REVOKE is complete in the worker's socket at time R,
the manager decides at X >= R, the previous task's end is complete in the manager's
socket at E, and the worker drains its socket at D > E. The worker runs the task only
if the REVOKE was not there at D, so D < R; the manager takes it back only if it has
not read the end (it would have promoted the task) at X, so E > X. Together
E < D < R <= X < E: impossible. The worker's late answer to that REVOKE lists the
tasks taken back too; they are ignored (``PendingRevoke.reclaimed``). Not taken back:
a task promoted just before the worker stopped (it stopped between writing one task's
end and starting the next); it waits for the worker.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import pickle
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from heliostat.engine.events import TaskEventLog
from heliostat.engine.ids import IdMinter, format_id
from heliostat.engine.object_table import ObjectEntry, ObjectTable, ObjKind, keeps_lineage
from heliostat.engine.protocol import ConnectionClosed, Op, PeerConnection
from heliostat.engine.records import (
    ActorOptions,
    ActorRecord,
    ActorState,
    PendingRevoke,
    TaskKind,
    TaskSpec,
    TaskState,
    WorkerRecord,
    WorkerState,
    spec_from_wire,
    transition,
)
from heliostat.engine.shm import SHM_DIR, segment_path, session_glob
from heliostat.engine.streams import MANAGER_PROCESS_INDEX, STREAMING, StreamState
from heliostat.engine.worker_pool import ForkServerClient
from heliostat.exceptions import (
    ActorDiedError,
    HeliostatError,
    InfeasibleResourcesError,
    ObjectLostError,
    TaskCancelledError,
    WorkerCrashedError,
)
from heliostat.scheduler import CPU, NodeResources, ResourceSet, infeasible_message
from heliostat.scheduler.placement import NodeView

__all__ = ["NodeConfig", "NodeManager", "Reply"]

log = logging.getLogger("heliostat.engine")

Reply = Callable[[bool, Any], None]

_INLINE = int(ObjKind.INLINE)
_SHM = int(ObjKind.SHM)
_ERROR = int(ObjKind.ERROR)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node manager needs to start."""

    session: str
    session_dir: str
    socket_path: str
    spill_dir: str
    num_cpus: float
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int
    max_workers: int
    node_index: int = 0
    idle_worker_timeout_s: float = 10.0
    # Tasks sent ahead to a busy worker (same resource shape), so it never waits a
    # round trip between two short tasks.
    pipeline_depth: int = 2
    # How long a worker may take to answer a REVOKE before the tasks still queued on
    # it are taken back and run elsewhere (it may be stopped; see above).
    revoke_timeout_s: float = 0.2
    env: dict[str, str] = field(default_factory=dict)


class _Waiter:
    """A pending get or wait: answered when ``need`` more of its ids are ready."""

    __slots__ = ("proc", "req_id", "ids", "need", "reply", "is_get", "done")

    def __init__(
        self, proc: WorkerRecord, req_id: int, ids: list[int], need: int, reply: Reply, is_get: bool
    ) -> None:
        self.proc = proc
        self.req_id = req_id
        self.ids = ids
        self.need = need
        self.reply = reply
        self.is_get = is_get
        self.done = False


_DONE_STATES = (TaskState.FINISHED, TaskState.CANCELLED)

_INTROSPECT_FINISHED = 1000  # finished tasks listed by ``heliostat list tasks``


def _error_payload(exc: BaseException) -> bytes:
    return pickle.dumps(exc, protocol=5)


class NodeManager:
    """Scheduler, object table, actor directory and worker pool of one node."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        driver_unmap: Callable[[list[int]], None],
        driver_drain: Callable[[], None],
        log_sink: Callable[[str, str, int, str], None],
    ) -> None:
        self.config = config
        self._lock = threading.Lock()
        total = ResourceSet.from_dict({CPU: config.num_cpus, **config.resources})
        self._node = NodeResources(total)
        self._objects = ObjectTable(
            limit=config.object_store_memory,
            spill_dir=config.spill_dir,
            unmap=self._unmap,
            on_unhandled_error=self._log_unhandled_error,
        )
        self._driver_unmap = driver_unmap
        self._driver_drain = driver_drain
        self._log_sink = log_sink
        self.driver = WorkerRecord(0, os.getpid())
        self.driver.state = WorkerState.IDLE
        self._workers: dict[int, WorkerRecord] = {}
        self._by_pid: dict[int, WorkerRecord] = {}
        self._idle: list[WorkerRecord] = []
        self._busy: dict[int, WorkerRecord] = {}
        self._starting = 0
        self._next_worker_index = itertools.count(1)
        self._ready: dict[ResourceSet, deque[TaskSpec]] = {}
        self._tasks: dict[int, TaskSpec] = {}  # not finished yet, by task id
        # Tasks submitted by a running task, by the submitter's task id, for
        # cancel(recursive=True); dropped when the submitter finishes.
        self._children: dict[int, list[TaskSpec]] = {}
        self._functions: dict[bytes, bytes] = {}
        self._actors: dict[int, ActorRecord] = {}
        self._named: dict[tuple[str, str], int] = {}
        self._pending_actors: deque[ActorRecord] = deque()
        self._waiters: dict[tuple[int, int], _Waiter] = {}
        self._events = TaskEventLog()
        # Streaming generator tasks by stream id (streams.py).
        self._streams: dict[int, StreamState] = {}
        self._own_ids = IdMinter(config.node_index, MANAGER_PROCESS_INDEX)
        self._pool = ForkServerClient(
            {
                "socket_path": config.socket_path,
                "session": config.session,
                "node_index": config.node_index,
                "shm_glob": os.path.join(str(SHM_DIR), session_glob(config.session)),
                "cleanup_dirs": [config.session_dir],
            },
            env=config.env,
        )
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._io_thread: threading.Thread | None = None
        self._stopping = False
        self._batching = False
        self._dirty: list[WorkerRecord] = []
        self._pokes: list[WorkerRecord] = []
        self._want_write: set[WorkerRecord] = set()
        self._logs: list[tuple[str, str, int, str]] = []
        self._infeasible_cache: dict[ResourceSet, bool] = {}
        self._cpu_of: dict[ResourceSet, ResourceSet] = {}
        self._revoke_ids = itertools.count(1)
        self._revoke_due = math.inf  # the earliest deadline of an unanswered REVOKE
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle --

    def start(self) -> None:
        """Listen, start the fork server and the first workers; does not wait for them."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.config.socket_path)
        listener.listen(256)
        listener.setblocking(False)
        self._listener = listener
        self._pool.start()
        sel = self._selector
        sel.register(listener, selectors.EVENT_READ, "listener")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(self._pool.events_fd, selectors.EVENT_READ, "fork")
        with self._lock:
            for _ in range(max(1, int(self.config.num_cpus))):
                self._spawn_worker(None)
        self._io_thread = threading.Thread(
            target=self._io_loop, name="heliostat-node-manager", daemon=True
        )
        self._io_thread.start()

    def stop(self) -> None:
        """Stop every worker and the fork server; remove the session's files."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            for worker in list(self._workers.values()):
                if worker.conn is not None and not worker.conn.closed:
                    worker.conn.send([(Op.EXIT,)])
        self._wake()
        if self._io_thread is not None and self._io_thread is not threading.current_thread():
            self._io_thread.join(timeout=5)
        self._pool.stop()
        with self._lock:
            for worker in self._workers.values():
                if worker.conn is not None:
                    worker.conn.close()
            self._workers.clear()
            self._idle.clear()
        with contextlib.suppress(Exception):
            self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    @property
    def pool_pid(self) -> int:
        return self._pool.pid

    # ------------------------------------------------------------------ requests --

    def handle(
        self, proc: WorkerRecord, verb: str, args: tuple[Any, ...], reply: Reply | None
    ) -> None:
        """Run one request verb for ``proc``; ``reply`` gets ``(ok, value)`` (maybe later)."""
        with self._lock:
            self._handle_locked(proc, verb, args, reply)

    def _handle_locked(
        self, proc: WorkerRecord, verb: str, args: tuple[Any, ...], reply: Reply | None
    ) -> None:
        handler = getattr(self, "_v_" + verb, None)
        if handler is None:
            if reply is not None:
                reply(False, HeliostatError(f"unknown request {verb!r}"))
            return
        try:
            handler(proc, reply, *args)
        except HeliostatError as exc:
            if reply is None:
                raise
            reply(False, exc)
        except (ValueError, TypeError, KeyError) as exc:
            if reply is None:
                raise
            reply(False, exc)

    def submit(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        """Submit a normal task or actor call (the driver's fast path)."""
        with self._lock:
            if spec.kind is TaskKind.ACTOR_CALL:
                self._submit_actor_call(proc, spec)
            else:
                self._submit_task(proc, spec)

    def release(self, proc: WorkerRecord, ids: list[int]) -> None:
        with self._lock:
            self._v_release(proc, None, ids)

    def check_feasible(self, resources: ResourceSet) -> None:
        """Raise InfeasibleResourcesError if no node could ever run this request."""
        ok = self._infeasible_cache.get(resources)
        if ok is None:
            ok = resources.is_subset_of(self._node.total)
            self._infeasible_cache[resources] = ok
        if not ok:
            raise InfeasibleResourcesError(self._infeasible_message(resources))

    def _infeasible_message(self, resources: ResourceSet) -> str:
        view = NodeView(
            node_id=format_id(self.config.node_index),
            total=self._node.total,
            available=self._node.available,
        )
        return infeasible_message(resources, [view])

    # --- verbs (called under the lock) ----------------------------------------------

    def _v_register_function(
        self, proc: WorkerRecord, reply: Reply | None, fn_id: bytes, data: bytes
    ) -> None:
        self._functions.setdefault(fn_id, data)

    def _v_submit(self, proc: WorkerRecord, reply: Reply | None, fields: tuple[Any, ...]) -> None:
        spec = spec_from_wire(fields, proc.index)
        self._note_child(proc, spec)
        if spec.kind is TaskKind.ACTOR_CALL:
            self._submit_actor_call(proc, spec)
        else:
            self._submit_task(proc, spec)

    def _v_put(
        self,
        proc: WorkerRecord,
        reply: Reply | None,
        object_id: int,
        kind: int,
        payload: Any,
        size: int,
        contained: tuple[int, ...],
    ) -> None:
        self._v_promise(proc, reply, object_id)
        self._v_fulfill(proc, reply, object_id, kind, payload, size, contained)

    def _v_promise(self, proc: WorkerRecord, reply: Reply | None, object_id: int) -> None:
        self._objects.create(object_id, proc, None)

    def _v_fulfill(
        self,
        proc: WorkerRecord,
        reply: Reply | None,
        object_id: int,
        kind: int,
        payload: Any,
        size: int,
        contained: tuple[int, ...],
    ) -> None:
        entry = self._objects.entries.get(object_id)
        if entry is None or entry.kind is not ObjKind.PENDING:
            self._objects.discard_payload(ObjKind(kind), payload)
            return
        if kind == _SHM:
            self._objects.make_room(size)
        self._set_value(entry, ObjKind(kind), payload, size, contained)

    def _v_release(self, proc: WorkerRecord, reply: Reply | None, ids: list[int]) -> None:
        objects = self._objects
        actors = self._actors
        for ident in ids:
            if ident in actors:
                self._release_actor(proc, ident)
            else:
                objects.release(proc, ident)
        if self._streams:
            self._streams_released(ids)

    def _v_get(self, proc: WorkerRecord, reply: Reply, req_id: int, ids: list[int]) -> None:
        self._await(proc, req_id, ids, len(set(ids)), reply, is_get=True)

    def _v_wait(
        self, proc: WorkerRecord, reply: Reply, req_id: int, ids: list[int], num_returns: int
    ) -> None:
        self._await(proc, req_id, ids, num_returns, reply, is_get=False)

    def _v_returned(
        self, proc: WorkerRecord, reply: Reply | None, task_ids: list[int], revoke_id: int
    ) -> None:
        """A worker handed back tasks we had queued on it (its answer to a REVOKE)."""
        pending = proc.revokes.pop(revoke_id, None)
        returned = set(task_ids)
        if pending is not None and pending.reclaimed:
            returned -= pending.reclaimed  # taken back when it did not answer in time
        handed_back = [s for s in proc.queued if s.task_id in returned]
        for spec in handed_back:
            proc.queued.remove(spec)
        current = proc.task
        if current is not None and current.task_id in returned:
            # We promoted it to "running" when its predecessor finished, but the worker
            # had handed it back before starting it: it runs nowhere.
            handed_back.insert(0, current)
            self._next_queued_or_idle(proc)
        self._hand_back(handed_back)
        if proc.blocked and proc.queued:
            self._revoke_queued(proc)  # sent ahead while the first REVOKE was on its way
        self._schedule()

    def _hand_back(self, specs: list[TaskSpec]) -> None:
        """Tasks sent ahead that never started: to the ready queue (or cancelled).

        Reversed, as each goes to the front of the queue: they keep their order.
        """
        for spec in reversed(specs):
            spec.attempts -= 1
            spec.worker = None
            if spec.cancel_requested:
                self._cancel_unstarted(spec)
            else:
                self._retry(spec)

    def _sent_ahead(self, proc: WorkerRecord, task_id: int) -> TaskSpec | None:
        current = proc.task
        if current is not None and current.task_id == task_id:
            return current
        for spec in proc.queued:
            if spec.task_id == task_id:
                return spec
        return None

    def _v_claim(self, proc: WorkerRecord, reply: Reply, task_id: int) -> None:
        """May the worker run this task sent ahead? (It cannot drain its own socket.)

        Yes while it is still the worker's; from then on it is never taken back.
        """
        spec = self._sent_ahead(proc, task_id)
        if spec is not None:
            spec.claimed = True
        reply(True, spec is not None)

    def _v_forget(self, proc: WorkerRecord, reply: Reply | None, req_id: int) -> None:
        waiter = self._waiters.pop((proc.index, req_id), None)
        if waiter is not None and not waiter.done:
            waiter.done = True
            self._unblock(proc)

    def _v_locate(self, proc: WorkerRecord, reply: Reply, req_id: int, object_id: int) -> None:
        """A reader could not open a segment we gave it: find or rebuild the object."""
        entry = self._objects.entries.get(object_id)
        if entry is not None and entry.kind is ObjKind.SHM and not os.path.exists(entry.path):
            self._objects.mark_lost(entry)
        self._await(proc, req_id, [object_id], 1, reply, is_get=True)

    def _note_child(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        """Remember which running task submitted ``spec`` (for a recursive cancel)."""
        parent = proc.task
        if parent is None and proc.actor is not None and len(proc.actor.inflight) == 1:
            parent = next(iter(proc.actor.inflight.values()))
        if parent is None:
            return
        children = self._children.get(parent.task_id)
        if children is None:
            self._children[parent.task_id] = [spec]
            return
        children.append(spec)
        if len(children) >= 64 and len(children) & (len(children) - 1) == 0:
            # A long-running task submitting many children: forget the finished ones
            # (at sizes that are powers of two, so the cost stays amortized O(1)).
            children[:] = [c for c in children if c.state not in _DONE_STATES]

    def _v_cancel(
        self,
        proc: WorkerRecord,
        reply: Reply,
        object_id: int,
        force: bool,
        recursive: bool = True,
    ) -> None:
        entry = self._objects.entries.get(object_id)
        spec = entry.lineage if entry is not None else None
        if spec is None or spec.state in _DONE_STATES:
            reply(True, False)
            return
        if spec.kind is TaskKind.ACTOR_CALL and force:
            reply(False, ValueError("force=True is not supported for actor tasks; use kill()"))
            return
        # Descendants are collected before the task is cancelled (that forgets them).
        descendants = self._descendants(spec) if recursive else []
        cancelled = self._cancel_spec(spec, force)
        for child in descendants:
            if child.state not in _DONE_STATES:
                self._cancel_spec(child, force and child.kind is not TaskKind.ACTOR_CALL)
        reply(True, cancelled)

    def _descendants(self, spec: TaskSpec) -> list[TaskSpec]:
        """Tasks ``spec`` submitted, and theirs, breadth first (each once)."""
        out: list[TaskSpec] = []
        seen = {spec.task_id}
        frontier = [spec]
        while frontier:
            nxt: list[TaskSpec] = []
            for parent in frontier:
                for child in self._children.get(parent.task_id, ()):
                    if child.task_id not in seen:
                        seen.add(child.task_id)
                        out.append(child)
                        nxt.append(child)
            frontier = nxt
        return out

    def _cancel_spec(self, spec: TaskSpec, force: bool) -> bool:
        """Cancel one unfinished task; False if it can no longer be cancelled."""
        if spec.kind is TaskKind.ACTOR_CALL:
            actor = self._actors.get(spec.actor_id)
            if actor is not None and spec in actor.queue:
                actor.queue.remove(spec)
                self._cancel_unstarted(spec)
                return True
            if actor is not None and actor.worker is not None and spec.task_id in actor.inflight:
                # Sent: the worker drops it if not started, or cancels its coroutine
                # on an async actor; a running call of a sync actor goes on (as Ray).
                spec.cancel_requested = "soft"
                self._send(actor.worker, (Op.CANCEL_CALL, spec.task_id))
                self._poke(actor.worker)
                return True
            return False
        if spec.state in (TaskState.WAITING, TaskState.READY):
            if spec.state is TaskState.READY:
                queue = self._ready.get(spec.resources)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(spec)
            self._cancel_unstarted(spec)
            return True
        worker = spec.worker
        if worker is None or not worker.pid:
            return False
        if spec in worker.queued:  # sent ahead, not started: ask for it back
            spec.cancel_requested = "soft"
            self._send_revoke(worker, [spec.task_id])
            return True
        spec.cancel_requested = "force" if force else "soft"
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL if force else signal.SIGINT)
        return True

    def _v_create_actor(
        self, proc: WorkerRecord, reply: Reply, fields: tuple[Any, ...], options: ActorOptions
    ) -> None:
        self._create_actor(proc, spec_from_wire(fields, proc.index), options)
        reply(True, None)

    def create_actor(self, proc: WorkerRecord, spec: TaskSpec, options: ActorOptions) -> None:
        with self._lock:
            self._create_actor(proc, spec, options)

    def _v_get_actor(self, proc: WorkerRecord, reply: Reply, name: str, namespace: str) -> None:
        actor_id = self._named.get((namespace, name))
        actor = self._actors.get(actor_id) if actor_id is not None else None
        if actor is None or actor.state is ActorState.DEAD:
            reply(False, ValueError(f"No actor named {name!r} in namespace {namespace!r}."))
            return
        self._hold_actor(proc, actor)  # adopted by the handle the caller builds
        reply(True, (actor.actor_id, actor.class_name, actor.methods))

    def _v_kill_actor(
        self, proc: WorkerRecord, reply: Reply | None, actor_id: int, no_restart: bool
    ) -> None:
        actor = self._actors.get(actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            if reply is not None:
                reply(True, False)
            return
        if no_restart:
            actor.max_restarts = actor.restarts  # nothing left
            actor.death_cause = "it was killed with kill()"
        worker = actor.worker
        if worker is not None and worker.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        elif no_restart:
            self._actor_dead(actor, actor.death_cause)
        if reply is not None:
            reply(True, True)

    def _log_unhandled_error(self, entry: ObjectEntry) -> None:
        """The last ref to a failed result is gone and no reader ever saw the error.

        Logged at ERROR, as Ray logs an "unhandled error" when such a ref is dropped,
        so a failure in a task nobody waited for does not pass silently.
        Cancellations are not reported: whoever cancelled the task knows.
        """
        spec = entry.lineage
        name = spec.name if spec is not None else "put()"
        try:
            exc = pickle.loads(entry.payload or b"")
        except Exception as load_error:  # the class may not load here: say so
            detail = f"(the error could not be loaded: {load_error!r})"
            kind = "error"
        else:
            if isinstance(exc, TaskCancelledError):
                return
            kind = type(exc).__name__
            detail = str(exc)
        log.error(
            "Unhandled error in task %r (its result %s was never retrieved): %s: %s",
            name,
            format_id(entry.id),
            kind,
            detail,
        )

    def _v_exiting(self, proc: WorkerRecord, reply: Reply, reason: str) -> None:
        """A worker is about to exit on purpose (user code raised SystemExit)."""
        proc.exit_status = reason
        reply(True, None)

    def _v_exit_actor(self, proc: WorkerRecord, reply: Reply, actor_id: int) -> None:
        """The actor in ``proc`` calls ``exit_actor()``: it exits and is not restarted."""
        actor = proc.actor
        if actor is None or actor.actor_id != actor_id:
            reply(False, TypeError("exit_actor() can only be called inside an actor."))
            return
        actor.max_restarts = actor.restarts  # an intended exit: no restart
        actor.death_cause = "it called exit_actor()"
        reply(True, None)

    def _v_cluster_info(self, proc: WorkerRecord, reply: Reply) -> None:
        reply(True, self.cluster_info_locked())

    def _v_context_info(self, proc: WorkerRecord, reply: Reply, task_id: int) -> None:
        """What ``get_runtime_context()`` asks about the caller: its actor and resources."""
        actor = proc.actor
        spec = self._tasks.get(task_id) if task_id else None
        if actor is not None:
            resources = actor.resources
        elif spec is not None:
            resources = spec.resources
        else:
            resources = None
        reply(
            True,
            {
                "actor_name": actor.name if actor is not None else "",
                "actor_namespace": actor.namespace if actor is not None else "",
                "restarts": actor.restarts if actor is not None else 0,
                "resources": resources.to_dict() if resources is not None else {},
            },
        )

    def _v_timeline(self, proc: WorkerRecord, reply: Reply) -> None:
        reply(True, self._events.events())

    def cluster_info(self) -> dict[str, Any]:
        with self._lock:
            return self.cluster_info_locked()

    def cluster_info_locked(self) -> dict[str, Any]:
        workers = [
            {
                "index": w.index,
                "pid": w.pid,
                "state": str(w.state),
                "task": w.task.name if w.task is not None else None,
                "actor": w.actor.label() if w.actor is not None else None,
                "blocked": w.blocked > 0,
            }
            for w in self._workers.values()
        ]
        actors = [
            {
                "actor_id": format_id(a.actor_id),
                "class_name": a.class_name,
                "name": a.name,
                "namespace": a.namespace,
                "state": str(a.state),
                "pid": a.worker.pid if a.worker is not None else 0,
                "restarts": a.restarts,
                "death_cause": a.death_cause,
            }
            for a in self._actors.values()
        ]
        return {
            "node_id": format_id(self.config.node_index),
            "node_index": self.config.node_index,
            "address": "127.0.0.1",
            "session": self.config.session,
            "total": self._node.total.to_dict(),
            "available": self._node.available.to_dict(),
            "workers": workers,
            "actors": actors,
            "object_store": self._objects.stats(),
            "tasks_pending": sum(len(q) for q in self._ready.values()),
            "tasks_running": sum(1 for w in self._workers.values() if w.task is not None),
            "started_at": self.started_at,
        }

    def introspect_locked(self, what: str) -> Any:
        """A JSON-able snapshot for tools: ``status``, ``tasks``, ``actors`` or ``objects``."""
        if what == "status":
            info = self.cluster_info_locked()
            counts: dict[str, int] = {}
            for spec in self._tasks.values():
                counts[str(spec.state)] = counts.get(str(spec.state), 0) + 1
            counts["FINISHED"] = len(self._events)  # the recent ones the event ring keeps
            info.pop("actors")
            info.update(pid=os.getpid(), tasks=counts, actors=len(self._actors))
            return info
        if what == "tasks":
            live = [
                {
                    "task_id": format_id(spec.task_id),
                    "name": spec.name,
                    "state": str(spec.state),
                    "attempt": spec.attempts,
                    "worker_pid": spec.worker.pid if spec.worker is not None else None,
                    "submitted_at": spec.submitted_at,
                    "started_at": spec.started_at or None,
                    "finished_at": None,
                }
                for spec in self._tasks.values()
            ]
            done = [
                {
                    "task_id": format_id(ev.task_id),
                    "name": ev.name,
                    "state": "FINISHED" if ev.outcome == "ok" else ev.outcome.upper(),
                    "attempt": ev.attempt,
                    "worker_pid": ev.worker_pid,
                    "submitted_at": ev.submitted,
                    "started_at": ev.started,
                    "finished_at": ev.finished,
                }
                for ev in self._events.events()[-_INTROSPECT_FINISHED:]
            ]
            return done + live
        if what == "actors":
            return self.cluster_info_locked()["actors"]
        if what == "objects":
            return [
                {
                    "object_id": format_id(entry.id),
                    "kind": entry.kind.name,
                    "size": entry.size,
                    "ref_count": entry.count,
                    "owner_pid": self._pid_of_index(entry.owner),
                    "has_lineage": entry.lineage is not None,
                }
                for entry in self._objects.entries.values()
                if entry.kind is not ObjKind.FREED
            ]
        raise ValueError(f"unknown snapshot {what!r}; known: status, tasks, actors, objects")

    def _pid_of_index(self, index: int) -> int | None:
        if index == 0:
            return self.driver.pid
        worker = self._workers.get(index)
        return worker.pid if worker is not None else None

    def _answer_introspection(self, conn: PeerConnection, what: str) -> None:
        try:
            body: Any = {"ok": True, "value": self.introspect_locked(what)}
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

    def task_events(self) -> list[Any]:
        with self._lock:
            return self._events.events()

    def object_stats(self) -> dict[str, int]:
        with self._lock:
            return self._objects.stats()

    def spill_object(self, object_id: int) -> bool:
        """Spill one object now (tests and the CLI use this to exercise restore)."""
        with self._lock:
            entry = self._objects.entries.get(object_id)
            if entry is None or entry.kind is not ObjKind.SHM:
                return False
            self._objects.spill(entry)
            return True

    def object_location(self, object_id: int) -> tuple[str, str]:
        """(kind, path) of an object, for tests and diagnostics."""
        with self._lock:
            entry = self._objects.entries.get(object_id)
            if entry is None:
                return ("MISSING", "")
            return (entry.kind.name, entry.path)

    # ------------------------------------------------------------ generator tasks --

    def _v_gen_item(
        self,
        proc: WorkerRecord,
        reply: Reply | None,
        stream_id: int,
        index: int,
        object_id: int,
        kind: int,
        payload: Any,
        contained: tuple[int, ...],
        size: int,
    ) -> None:
        """A streaming generator yielded item ``index`` (streams.py, step 1)."""
        stream = self._streams.get(stream_id)
        owner = self._proc_of(stream.owner) if stream is not None else None
        if stream is None or owner is None or not stream.accepts(index):
            self._objects.discard_payload(ObjKind(kind), payload)
            return
        if kind == _SHM:
            self._objects.make_room(size)
        entry = self._objects.create(object_id, owner, None)  # the caller holds it
        self._set_value(entry, ObjKind(kind), payload, size, contained)
        for _index, waiting, answer in stream.add(object_id):
            self._answer_stream_waiter(waiting, answer, object_id)

    def _v_gen_next(self, proc: WorkerRecord, reply: Reply, stream_id: int, index: int) -> None:
        """The id of item ``index`` of a stream, 0 at its end; waits until one is known."""
        stream = self._streams.get(stream_id)
        if stream is None:
            reply(True, 0)
            return
        found = stream.lookup(index)
        if found is not None:
            reply(True, found)
            return
        stream.waiters.append((index, proc.index, reply))
        self._block(proc)

    def _answer_stream_waiter(self, waiting: int, answer: Reply, object_id: int) -> None:
        """Answer a ``gen_next`` (``waiting``: the asking process) and unblock it."""
        proc = self._proc_of(waiting)
        if proc is not None:
            self._unblock(proc)
        answer(True, object_id)

    def _end_stream(self, stream_id: int, error: bytes | None) -> None:
        """The generator task ended (streams.py, step 3): store its error as the last item."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.finished:
            return
        owner = self._proc_of(stream.owner)
        if error is not None and owner is not None and not stream.dropped:
            object_id = self._own_ids.next()
            entry = self._objects.create(object_id, owner, None)
            self._set_value(entry, ObjKind.ERROR, error, 0, ())
            for _index, waiting, answer in stream.add(object_id):
                self._answer_stream_waiter(waiting, answer, object_id)
        for _index, waiting, answer in stream.finish():
            self._answer_stream_waiter(waiting, answer, 0)
        if stream.dropped:
            del self._streams[stream_id]

    def _streams_released(self, ids: list[int]) -> None:
        """Step 4 of streams.py: a caller let go of a generator (its stream id is free)."""
        streams = self._streams
        entries = self._objects.entries
        for ident in ids:
            stream = streams.get(ident)
            if stream is None or stream.dropped:
                continue
            entry = entries.get(ident)
            if entry is not None and entry.count > 0:
                continue
            owner = self._proc_of(stream.owner)
            for object_id in stream.drop():
                if owner is not None:
                    self._objects.release(owner, object_id)
            if stream.finished:
                del streams[ident]

    def _proc_of(self, index: int) -> WorkerRecord | None:
        """The live process with this index (0: the driver)."""
        if index == 0:
            return self.driver
        worker = self._workers.get(index)
        if worker is None or worker.state is WorkerState.DEAD:
            return None
        return worker

    # ------------------------------------------------------------------ tasks --

    def _register_task(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        """Create the return entries and pin what the spec references."""
        objects = self._objects
        for rid in spec.return_ids:
            objects.create(rid, proc, spec)
        for aid in spec.arg_ids:
            objects.pin(aid)
        for cid in spec.contained:
            self._pin_any(cid)
        if spec.generator == STREAMING:
            self._streams[spec.return_ids[0]] = StreamState(proc.index)
        if keeps_lineage(spec):
            entries = objects.entries
            for aid in spec.arg_ids:
                arg = entries.get(aid)
                if arg is not None:
                    arg.lineage_refs += 1
        self._tasks[spec.task_id] = spec

    def _submit_task(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        self._register_task(proc, spec)
        if not spec.resources.is_subset_of(self._node.total):
            exc = InfeasibleResourcesError(self._infeasible_message(spec.resources))
            self._fail_task(spec, _error_payload(exc), "infeasible")
            return
        self._track_deps(spec)

    def _track_deps(self, spec: TaskSpec) -> None:
        """Count unready arguments; queue the task now if there are none."""
        entries = self._objects.entries
        pending = 0
        for aid in spec.arg_ids:
            arg = entries.get(aid)
            if arg is None:
                exc = ObjectLostError(
                    f"Argument {format_id(aid)} of task {spec.name!r} no longer exists.",
                    object_id=format_id(aid),
                )
                self._fail_task(spec, _error_payload(exc), "error")
                return
            kind = arg.kind
            if kind is ObjKind.FREED:
                if not self._reconstruct(arg):
                    exc = ObjectLostError(
                        f"Argument {format_id(aid)} of task {spec.name!r} was lost and "
                        "cannot be rebuilt.",
                        object_id=format_id(aid),
                    )
                    self._fail_task(spec, _error_payload(exc), "error")
                    return
                kind = arg.kind
            if kind is ObjKind.PENDING:
                pending += 1
                waiters = arg.waiters
                if waiters is None:
                    arg.waiters = [spec]
                else:
                    waiters.append(spec)
        spec.pending_deps = pending
        if pending == 0:
            self._deps_ready(spec)

    def _deps_ready(self, spec: TaskSpec) -> None:
        # An upstream failure fails this task without running it (as in Ray).
        entries = self._objects.entries
        for aid in spec.arg_ids:
            arg = entries.get(aid)
            if arg is not None and arg.kind is ObjKind.ERROR:
                arg.error_seen = True  # it lives on in this task's result
                if spec.kind is TaskKind.ACTOR_CREATE:
                    actor = self._actors.get(spec.actor_id)
                    if actor is not None:
                        self._actor_dead(actor, "an argument of its constructor failed")
                    return
                if spec.kind is TaskKind.ACTOR_CALL:
                    actor = self._actors.get(spec.actor_id)
                    if actor is not None and spec in actor.queue:
                        actor.queue.remove(spec)
                self._fail_task(spec, arg.payload or b"", "error")
                if spec.kind is TaskKind.ACTOR_CALL:
                    actor = self._actors.get(spec.actor_id)
                    if actor is not None:
                        self._pump_actor(actor)
                return
        if spec.kind is TaskKind.NORMAL:
            transition(spec, TaskState.READY)
            queue = self._ready.get(spec.resources)
            if queue is None:
                queue = self._ready[spec.resources] = deque()
            queue.append(spec)
            self._schedule()
        elif spec.kind is TaskKind.ACTOR_CALL:
            actor = self._actors.get(spec.actor_id)
            if actor is not None:
                self._pump_actor(actor)
        else:
            actor = self._actors.get(spec.actor_id)
            if actor is not None:
                self._start_actor(actor)

    def _schedule(self) -> None:
        """Dispatch ready tasks to idle workers while resources allow."""
        if self._stopping:
            return
        node = self._node
        idle = self._idle
        wanted = 0
        for resources, queue in self._ready.items():
            while queue:
                if not node.fits(resources):
                    break
                if not idle:
                    cpu = resources.get(CPU)
                    if cpu > 0:
                        slots = int(max(node.available.get(CPU), 0) // cpu) or 1
                        wanted += min(len(queue), slots)
                    else:
                        wanted += len(queue)
                    break
                spec = queue.popleft()
                worker = idle.pop()
                node.try_acquire(resources)
                self._dispatch(spec, worker)
        depth = self.config.pipeline_depth
        if depth and self._busy:
            for resources, queue in self._ready.items():
                if not queue:
                    continue
                for worker in self._busy.values():
                    task = worker.task
                    if (
                        task is None
                        or worker.blocked
                        or worker.revokes
                        or task.resources != resources
                        or len(worker.queued) >= depth
                    ):
                        continue
                    while queue and len(worker.queued) < depth:
                        self._dispatch(queue.popleft(), worker, ahead=True)
                    if not queue:
                        break
        if idle and self._busy and not any(self._ready.values()):
            # A worker is idle while others hold tasks sent ahead: take them back, so
            # no task waits behind a long one while a CPU is free (work stealing).
            # Only tasks that could start now: else they would bounce back and forth.
            for worker in self._busy.values():
                if worker.queued and node.fits(worker.queued[0].resources):
                    self._revoke_queued(worker)
        if self._pending_actors:
            for _ in range(len(self._pending_actors)):
                self._start_actor(self._pending_actors.popleft())
        if wanted > self._starting:
            live = len(self._workers) - sum(1 for w in self._workers.values() if w.actor)
            room = self.config.max_workers - live
            for _ in range(min(wanted - self._starting, room)):
                self._spawn_worker(None)

    def _dispatch(self, spec: TaskSpec, worker: WorkerRecord, *, ahead: bool = False) -> None:
        resolved = self._resolve_args(spec, worker)
        if resolved is None:  # an argument was lost; the task waits for its rebuild
            if not ahead:
                self._node.release(spec.resources)
                self._make_idle(worker)
            return
        transition(spec, TaskState.RUNNING)
        spec.attempts += 1
        spec.worker = worker
        spec.claimed = False
        if ahead:
            worker.queued.append(spec)
        else:
            transition(worker, WorkerState.BUSY)
            worker.task = spec
            worker.held = spec.resources
            self._busy[worker.index] = worker
        fn_bytes = None
        if spec.fn_id not in worker.known_functions:
            fn_bytes = self._functions.get(spec.fn_id)
            worker.known_functions.add(spec.fn_id)
        self._send(
            worker,
            (
                Op.EXECUTE,
                spec.task_id,
                spec.fn_id,
                fn_bytes,
                spec.args_payload,
                spec.ref_positions,
                resolved,
                spec.return_ids,
                spec.name,
                spec.retry_exceptions,
                ahead,
                spec.generator,
            ),
        )

    def _resolve_args(self, spec: TaskSpec, worker: WorkerRecord) -> list[Any] | None:
        """Values of the top-level arguments as (id, kind, data); pre-holds nested refs."""
        if not spec.arg_ids and not spec.contained:
            return []
        entries = self._objects.entries
        resolved = []
        for aid in spec.arg_ids:
            arg = entries[aid]
            item = self._value_for(worker, arg)
            if item is None:
                spec.pending_deps += 1
                if spec.state is TaskState.READY:
                    transition(spec, TaskState.WAITING)
                arg.waiters = (arg.waiters or []) + [spec]
                return None
            resolved.append(item)
        for cid in spec.contained:
            self._hold_any(worker, cid)
        return resolved

    def _value_for(self, proc: WorkerRecord, entry: ObjectEntry) -> tuple[int, int, Any] | None:
        """What a reader needs to load ``entry``, or None if it must be rebuilt first.

        Adds a hold for ``proc`` on each ref inside the value (the reader adopts them).
        """
        kind = entry.kind
        if kind is ObjKind.SPILLED:
            if not self._objects.restore(entry, segment_path(self.config.session, entry.id)):
                self._lost(entry)
                # Rebuilding (None: wait for it), or an ObjectLostError stored now.
                return self._value_for(proc, entry) if entry.kind is ObjKind.ERROR else None
            kind = ObjKind.SHM
        if kind is ObjKind.SHM:
            self._objects.touch(entry)
            if proc.index:
                mapped = entry.mapped_by
                if mapped is None:
                    entry.mapped_by = {proc.index}
                else:
                    mapped.add(proc.index)
            data: Any = entry.path
        elif kind is ObjKind.INLINE:
            data = entry.payload
        elif kind is ObjKind.ERROR:
            data = entry.payload
            entry.error_seen = True  # a reader gets it: not an unhandled error
        else:
            self._lost(entry)
            return self._value_for(proc, entry) if entry.kind is ObjKind.ERROR else None
        for cid in entry.contained:
            self._hold_any(proc, cid)
        return (entry.id, int(kind), data)

    def _lost(self, entry: ObjectEntry) -> None:
        """A value is gone: rebuild it from lineage, or store ObjectLostError."""
        self._objects.mark_lost(entry)
        if self._reconstruct(entry):
            log.info("rebuilding lost object %s from lineage", format_id(entry.id))
            return
        reason = "it was created by put()" if entry.lineage is None else "its task cannot be re-run"
        exc = ObjectLostError(
            f"Object {format_id(entry.id)} was lost and cannot be rebuilt: {reason}.",
            object_id=format_id(entry.id),
        )
        self._set_value(entry, ObjKind.ERROR, _error_payload(exc), 0, ())

    def _reconstruct(self, entry: ObjectEntry) -> bool:
        """Re-run the task that made ``entry`` (lineage reconstruction)."""
        spec = entry.lineage
        if spec is None or not keeps_lineage(spec):
            return False
        if spec.state is not TaskState.FINISHED:
            entry.kind = ObjKind.PENDING
            return True  # already being (re)computed
        if 0 <= spec.max_retries <= spec.reconstructions:
            return False
        spec.reconstructions += 1
        entries = self._objects.entries
        for rid in spec.return_ids:
            ret = entries.get(rid)
            if ret is not None and ret.kind is ObjKind.FREED:
                ret.kind = ObjKind.PENDING
        entry.kind = ObjKind.PENDING
        transition(spec, TaskState.WAITING)
        spec.attempts = 0
        for aid in spec.arg_ids:
            self._objects.pin(aid)
        for cid in spec.contained:
            self._pin_any(cid)
        self._tasks[spec.task_id] = spec
        self._track_deps(spec)
        return True

    def _on_task_done(
        self,
        worker: WorkerRecord,
        task_id: int,
        results: list[tuple[int, int, Any, tuple[int, ...], int]],
        started: float,
        finished: float,
    ) -> None:
        spec = self._task_of(worker, task_id)
        if spec is None:
            for _oid, kind, payload, _contained, _size in results:
                self._objects.discard_payload(ObjKind(kind), payload)
            return
        entries = self._objects.entries
        for oid, kind, payload, contained, size in results:
            entry = entries.get(oid)
            if entry is None or entry.kind is not ObjKind.PENDING:
                self._objects.discard_payload(ObjKind(kind), payload)
                continue
            if kind == _SHM:
                self._objects.make_room(size)
            self._set_value(entry, ObjKind(kind), payload, size, contained)
        self._finish(spec, started, finished, "ok")
        self._after_execution(worker, spec)

    def _on_task_failed(
        self,
        worker: WorkerRecord,
        task_id: int,
        payload: bytes,
        retryable: bool,
        interrupted: bool,
        started: float,
        finished: float,
    ) -> None:
        spec = self._task_of(worker, task_id)
        if spec is None:
            return
        spec.started_at, spec.finished_at = started, finished
        if interrupted and spec.cancel_requested:
            exc = TaskCancelledError(f"Task {spec.name!r} was cancelled.", task_name=spec.name)
            self._fail_task(spec, _error_payload(exc), "cancelled")
        elif interrupted or (retryable and self._may_retry(spec)):
            self._record(spec, worker, "interrupted" if interrupted else "retried")
            self._retry(spec)
        else:
            self._fail_task(spec, payload, "error")
        self._after_execution(worker, spec)

    def _task_of(self, worker: WorkerRecord, task_id: int) -> TaskSpec | None:
        actor = worker.actor
        if actor is not None:
            return actor.inflight.pop(task_id, None)
        spec = worker.task
        if spec is None or spec.task_id != task_id:
            return None
        return spec

    def _after_execution(self, worker: WorkerRecord, spec: TaskSpec) -> None:
        actor = worker.actor
        if actor is not None:
            if actor.out_of_scope and not actor.queue and not actor.inflight:
                self._retire_actor(actor, "all of its handles went out of scope")
            else:
                self._pump_actor(actor)
            return
        spec.worker = None
        self._next_queued_or_idle(worker)
        self._schedule()

    def _next_queued_or_idle(self, worker: WorkerRecord) -> None:
        """The worker's current task is over: its next queued task runs, or it idles."""
        worker.task = None
        held, worker.held = worker.held, None
        if held is not None:
            self._node.release(held)
        if worker.queued:
            # The worker starts its next queued task on its own: move the resources.
            nxt = worker.queued.popleft()
            self._node.acquire_force(nxt.resources)
            worker.task = nxt
            worker.held = nxt.resources
        else:
            self._busy.pop(worker.index, None)
            transition(worker, WorkerState.IDLE)
            self._make_idle(worker)

    def _make_idle(self, worker: WorkerRecord) -> None:
        worker.idle_since = time.monotonic()
        self._idle.append(worker)

    def _may_retry(self, spec: TaskSpec) -> bool:
        return spec.max_retries < 0 or spec.attempts <= spec.max_retries

    def _retry(self, spec: TaskSpec) -> None:
        spec.worker = None
        if spec.kind is TaskKind.NORMAL:
            transition(spec, TaskState.READY)
            queue = self._ready.get(spec.resources)
            if queue is None:
                queue = self._ready[spec.resources] = deque()
            queue.appendleft(spec)

    def _finish(self, spec: TaskSpec, started: float, finished: float, outcome: str) -> None:
        transition(spec, TaskState.FINISHED)
        spec.started_at, spec.finished_at = started, finished
        if spec.generator == STREAMING:
            self._end_stream(spec.return_ids[0], None)
        self._record(spec, spec.worker, outcome)
        self._tasks.pop(spec.task_id, None)
        if self._children:
            self._children.pop(spec.task_id, None)
        self._unpin_spec(spec)

    def _unpin_spec(self, spec: TaskSpec) -> None:
        objects = self._objects
        for aid in spec.arg_ids:
            objects.unpin(aid)
        for cid in spec.contained:
            self._unpin_any(cid)

    def _record(self, spec: TaskSpec, worker: WorkerRecord | None, outcome: str) -> None:
        self._events.record(
            spec.task_id,
            spec.name,
            spec.kind.name,
            spec.submitted_at,
            spec.started_at,
            spec.finished_at,
            worker.pid if worker is not None else 0,
            worker.index if worker is not None else 0,
            outcome,
            spec.attempts,
        )

    def _fail_task(self, spec: TaskSpec, payload: bytes, outcome: str) -> None:
        """Store the same error in every return of ``spec`` and finish it."""
        entries = self._objects.entries
        for rid in spec.return_ids:
            entry = entries.get(rid)
            if entry is not None and entry.kind is ObjKind.PENDING:
                self._set_value(entry, ObjKind.ERROR, payload, 0, ())
        if spec.generator == STREAMING:
            self._end_stream(spec.return_ids[0], payload)
        if spec.state is not TaskState.FINISHED:
            self._finish(spec, spec.started_at, spec.finished_at or time.time(), outcome)

    def _cancel_unstarted(self, spec: TaskSpec) -> None:
        exc = TaskCancelledError(f"Task {spec.name!r} was cancelled.", task_name=spec.name)
        entries = self._objects.entries
        for aid in spec.arg_ids:  # stop waiting on its arguments
            arg = entries.get(aid)
            if arg is not None and arg.waiters and spec in arg.waiters:
                arg.waiters.remove(spec)
        for rid in spec.return_ids:
            entry = entries.get(rid)
            if entry is not None and entry.kind is ObjKind.PENDING:
                self._set_value(entry, ObjKind.ERROR, _error_payload(exc), 0, ())
        if spec.generator == STREAMING:
            self._end_stream(spec.return_ids[0], _error_payload(exc))
        transition(spec, TaskState.CANCELLED)
        self._record(spec, None, "cancelled")
        self._tasks.pop(spec.task_id, None)
        self._children.pop(spec.task_id, None)
        self._unpin_spec(spec)

    # ------------------------------------------------------------------ objects --

    def _set_value(
        self, entry: ObjectEntry, kind: ObjKind, payload: Any, size: int, contained: tuple[int, ...]
    ) -> None:
        for cid in contained:
            if cid in self._actors:
                self._pin_any(cid)
        self._objects.set_value(
            entry, kind, payload, size, tuple(c for c in contained if c not in self._actors)
        )
        waiters = entry.waiters
        if waiters:
            entry.waiters = None
            for waiter in waiters:
                if type(waiter) is TaskSpec:
                    if waiter.state is TaskState.WAITING:
                        waiter.pending_deps -= 1
                        if waiter.pending_deps == 0:
                            self._deps_ready(waiter)
                else:
                    self._waiter_progress(waiter, entry)

    def _await(
        self, proc: WorkerRecord, req_id: int, ids: list[int], need: int, reply: Reply, is_get: bool
    ) -> None:
        entries = self._objects.entries
        waiter = _Waiter(proc, req_id, ids, need, reply, is_get)
        pending: list[ObjectEntry] = []
        ready = 0
        failed: ObjectEntry | None = None  # the first ready error, for a get
        seen: set[int] = set()
        for oid in ids:
            if oid in seen:
                continue
            seen.add(oid)
            entry = entries.get(oid)
            if entry is None:
                exc = ObjectLostError(
                    f"Object {format_id(oid)} does not exist (freed or never created).",
                    object_id=format_id(oid),
                )
                reply(False, exc)
                return
            if entry.kind is ObjKind.FREED:
                self._lost(entry)
            if entry.kind is ObjKind.PENDING:
                pending.append(entry)
            else:
                ready += 1
                if failed is None and entry.kind is ObjKind.ERROR:
                    failed = entry
        waiter.need = need - ready
        if waiter.need <= 0:
            self._complete(waiter)
            return
        if is_get and failed is not None:
            # Fail fast, as Ray does: a get raises an error it already has at once,
            # whether or not the other refs ever become ready.
            waiter.done = True
            self._reply_error(waiter, failed)
            return
        for entry in pending:
            if entry.waiters is None:
                entry.waiters = [waiter]
            else:
                entry.waiters.append(waiter)
        self._waiters[(proc.index, req_id)] = waiter
        self._block(proc)

    def _waiter_progress(self, waiter: _Waiter, entry: ObjectEntry) -> None:
        if waiter.done:
            return
        waiter.need -= 1
        if waiter.need > 0 and waiter.is_get and entry.kind is ObjKind.ERROR:
            # Fail fast: the other refs of this get need not be waited for.
            waiter.done = True
            self._waiters.pop((waiter.proc.index, waiter.req_id), None)
            self._unblock(waiter.proc)
            self._reply_error(waiter, entry)
            return
        if waiter.need <= 0:
            self._waiters.pop((waiter.proc.index, waiter.req_id), None)
            self._unblock(waiter.proc)
            self._complete(waiter)

    def _reply_error(self, waiter: _Waiter, entry: ObjectEntry) -> None:
        """Answer a get with just the error of ``entry`` (the reader raises it)."""
        entry.error_seen = True
        waiter.reply(True, [(entry.id, _ERROR, entry.payload)])

    def _complete(self, waiter: _Waiter) -> None:
        waiter.done = True
        entries = self._objects.entries
        if not waiter.is_get:
            ready_ids = [
                oid
                for oid in waiter.ids
                if (e := entries.get(oid)) is not None and e.kind is not ObjKind.PENDING
            ]
            waiter.reply(True, ready_ids)
            return
        values = []
        for oid in waiter.ids:
            entry = entries.get(oid)
            if entry is None:
                exc = ObjectLostError(
                    f"Object {format_id(oid)} was freed.", object_id=format_id(oid)
                )
                values.append((oid, _ERROR, _error_payload(exc)))
                continue
            item = self._value_for(waiter.proc, entry)
            if item is None:
                # Lost while we looked: wait again for the rebuild.
                waiter.done = False
                waiter.need = 1
                entry.waiters = (entry.waiters or []) + [waiter]
                self._waiters[(waiter.proc.index, waiter.req_id)] = waiter
                self._block(waiter.proc)
                return
            values.append(item)
        waiter.reply(True, values)

    def _block(self, proc: WorkerRecord) -> None:
        """A worker waits in get: give its CPU back so nested tasks can run."""
        if proc.index == 0:
            return
        proc.blocked += 1
        if proc.blocked == 1:
            # Queued tasks cannot start while this one waits (and may be what it
            # waits for): ask for them back.
            self._revoke_queued(proc)
        spec = proc.task
        if proc.blocked == 1 and spec is not None and proc.held is not None:
            cpu = self._cpu_part(proc.held)
            if cpu:
                self._node.release(cpu)
                proc.held = proc.held - cpu
                self._schedule()

    def _unblock(self, proc: WorkerRecord) -> None:
        if proc.index == 0 or proc.blocked == 0:
            return
        proc.blocked -= 1
        spec = proc.task
        if proc.blocked == 0 and spec is not None and proc.held is not None:
            cpu = self._cpu_part(spec.resources)
            if cpu and not proc.held.get(CPU):
                self._node.acquire_force(cpu)
                proc.held = proc.held + cpu

    def _revoke_queued(self, worker: WorkerRecord) -> None:
        if worker.queued and not worker.revokes:
            self._send_revoke(worker, [s.task_id for s in worker.queued])

    def _send_revoke(self, worker: WorkerRecord, task_ids: list[int]) -> None:
        """Ask a worker for tasks sent ahead; those still queued come back at the deadline."""
        revoke_id = next(self._revoke_ids)
        deadline = time.monotonic() + self.config.revoke_timeout_s
        worker.revokes[revoke_id] = PendingRevoke(frozenset(task_ids), deadline)
        self._revoke_due = min(self._revoke_due, deadline)
        self._send(worker, (Op.REVOKE, task_ids, revoke_id))
        self._poke(worker)

    def _expire_revokes(self, now: float) -> None:
        """Take back the tasks still queued on workers that did not answer a REVOKE."""
        for worker in list(self._workers.values()):
            if worker.revokes and any(
                p.reclaimed is None and p.deadline <= now for p in worker.revokes.values()
            ):
                self._reclaim(worker, now)
        # After every reclaim: each may have sent REVOKEs to workers seen before it.
        self._revoke_due = min(
            (
                p.deadline
                for w in self._workers.values()
                for p in w.revokes.values()
                if p.reclaimed is None
            ),
            default=math.inf,
        )

    def _reclaim(self, worker: WorkerRecord, now: float) -> None:
        """Steps of the handshake in the module docstring, on the manager's side."""
        conn = worker.conn
        if conn is None or worker.outbox or conn.wants_write:
            return  # the REVOKE may not be in the worker's socket yet: try again later
        try:
            messages = conn.feed()  # a task's end already written promotes the next
        except ConnectionClosed:
            self._on_worker_exit(worker, None)
            return
        for message in messages:
            self._guarded(self._on_message, worker, message)
        if worker.state is WorkerState.DEAD:
            return
        taken: list[TaskSpec] = []
        for pending in worker.revokes.values():
            if pending.reclaimed is not None or pending.deadline > now:
                continue
            ids = pending.task_ids
            mine = [s for s in worker.queued if s.task_id in ids and not s.claimed]
            pending.reclaimed = {s.task_id for s in mine}
            taken.extend(mine)
        if not taken:
            return
        for spec in taken:
            worker.queued.remove(spec)
        log.warning(
            "worker pid %d did not answer within %.2f s (stopped or stuck in native code?); "
            "running %d task(s) queued on it elsewhere",
            worker.pid,
            self.config.revoke_timeout_s,
            len(taken),
        )
        self._hand_back(taken)
        self._schedule()

    def _poke(self, worker: WorkerRecord) -> None:
        """Make a worker busy in user code read its messages now (SIGUSR1).

        Sent after the message itself is on the socket: during a batch, at the flush.
        """
        if self._batching:
            self._pokes.append(worker)
        elif worker.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGUSR1)

    def _cpu_part(self, resources: ResourceSet) -> ResourceSet:
        cpu = self._cpu_of.get(resources)
        if cpu is None:
            amount = resources.get(CPU)
            cpu = ResourceSet({CPU: amount}) if amount else ResourceSet()
            self._cpu_of[resources] = cpu
        return cpu

    def _unmap(self, entry: ObjectEntry) -> None:
        """Tell processes that mapped a segment to let go of it (freed or spilled)."""
        mapped, entry.mapped_by = entry.mapped_by, None
        if mapped:
            for index in mapped:
                worker = self._workers.get(index)
                if worker is not None and worker.conn is not None:
                    self._send(worker, (Op.UNMAP, (entry.id,)))
        self._driver_unmap([entry.id])  # the driver may have mapped it too

    def _pin_any(self, ident: int) -> None:
        actor = self._actors.get(ident)
        if actor is not None:
            actor.holds += 1
        else:
            self._objects.pin(ident)

    def _unpin_any(self, ident: int) -> None:
        actor = self._actors.get(ident)
        if actor is not None:
            actor.holds -= 1
            if actor.holds <= 0:
                self._actor_out_of_scope(actor)
        else:
            self._objects.unpin(ident)

    def _hold_any(self, proc: WorkerRecord, ident: int) -> None:
        actor = self._actors.get(ident)
        if actor is not None:
            self._hold_actor(proc, actor)
        else:
            self._objects.hold(proc, ident)

    def _hold_actor(self, proc: WorkerRecord, actor: ActorRecord) -> None:
        actor.holds += 1
        proc.holds[actor.actor_id] = proc.holds.get(actor.actor_id, 0) + 1

    def _release_actor(self, proc: WorkerRecord, actor_id: int) -> None:
        n = proc.holds.get(actor_id, 0)
        if n <= 0:
            return
        if n == 1:
            del proc.holds[actor_id]
        else:
            proc.holds[actor_id] = n - 1
        self._unpin_any(actor_id)

    def _release_all_holds(self, proc: WorkerRecord) -> None:
        actor_holds = {i: n for i, n in proc.holds.items() if i in self._actors}
        for actor_id in actor_holds:
            del proc.holds[actor_id]
        self._objects.release_all(proc)
        for actor_id, n in actor_holds.items():
            for _ in range(n):
                self._unpin_any(actor_id)

    # ------------------------------------------------------------------ actors --

    def _create_actor(self, proc: WorkerRecord, spec: TaskSpec, options: ActorOptions) -> None:
        name, namespace = options.name, options.namespace
        if name and (namespace, name) in self._named:
            existing = self._actors.get(self._named[(namespace, name)])
            if existing is not None and existing.state is not ActorState.DEAD:
                raise ValueError(
                    f"An actor named {name!r} already exists in namespace {namespace!r}; "
                    "pick another name or use get_actor()."
                )
        if not spec.resources.is_subset_of(self._node.total):
            raise InfeasibleResourcesError(self._infeasible_message(spec.resources))
        actor = ActorRecord(
            actor_id=spec.actor_id,
            name=name,
            namespace=namespace,
            class_name=options.class_name,
            creation=spec,
            max_restarts=options.max_restarts,
            max_concurrency=options.max_concurrency,
            detached=options.detached or bool(name),
        )
        actor.methods = options.methods
        actor.max_task_retries = options.max_task_retries
        self._actors[actor.actor_id] = actor
        if name:
            self._named[(namespace, name)] = actor.actor_id
        self._hold_actor(proc, actor)  # the creator's handle
        objects = self._objects
        for aid in spec.arg_ids:
            objects.pin(aid)
        for cid in spec.contained:
            self._pin_any(cid)
        self._track_deps(spec)

    def _start_actor(self, actor: ActorRecord) -> None:
        """Find resources and a dedicated worker for an actor whose arguments are ready."""
        if actor.state not in (ActorState.PENDING, ActorState.RESTARTING):
            return
        if not self._node.try_acquire(actor.resources):
            self._pending_actors.append(actor)
            return
        if self._idle:
            worker = self._idle.pop()
            self._send_create_actor(actor, worker)
        else:
            self._spawn_worker(actor)
        transition(actor, ActorState.CREATING)

    def _send_create_actor(self, actor: ActorRecord, worker: WorkerRecord) -> None:
        transition(worker, WorkerState.ACTOR)
        worker.actor = actor
        worker.purpose = None
        actor.worker = worker
        spec = actor.creation
        resolved = self._resolve_args(spec, worker) or []
        cls_bytes = None
        if spec.fn_id not in worker.known_functions:
            cls_bytes = self._functions.get(spec.fn_id)
            worker.known_functions.add(spec.fn_id)
        self._send(
            worker,
            (
                Op.CREATE_ACTOR,
                actor.actor_id,
                spec.fn_id,
                cls_bytes,
                spec.args_payload,
                spec.ref_positions,
                resolved,
                actor.label(),
                actor.max_concurrency,
            ),
        )

    def _on_actor_ready(self, worker: WorkerRecord, actor_id: int, error: bytes | None) -> None:
        actor = worker.actor
        if actor is None or actor.actor_id != actor_id:
            return
        if actor.state is ActorState.DEAD:  # killed while its constructor ran
            self._send(worker, (Op.EXIT,))
            return
        if error is not None:
            try:
                cause = pickle.loads(error)
                detail = str(cause).splitlines()[0] if str(cause) else repr(cause)
            except Exception:  # an unpicklable error still kills the actor
                detail = "its constructor raised an exception"
            actor.max_restarts = actor.restarts
            self._actor_dead(actor, f"its constructor failed: {detail}")
            self._send(worker, (Op.EXIT,))
            return
        transition(actor, ActorState.ALIVE)
        self._pump_actor(actor)

    def _submit_actor_call(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        actor = self._actors.get(spec.actor_id)
        self._register_task(proc, spec)
        if actor is None or actor.state is ActorState.DEAD:
            self._fail_task(spec, _error_payload(self._actor_died_error(actor, spec)), "actor_dead")
            return
        actor.queue.append(spec)
        self._track_deps(spec)

    def _pump_actor(self, actor: ActorRecord) -> None:
        """Send queued calls whose arguments are ready, in order per caller.

        As in Ray, ordering is per caller (the process that submitted the call): a
        call waits behind an earlier call *of its own caller* whose arguments are not
        ready, never behind another caller's.
        """
        if actor.state is not ActorState.ALIVE:
            return
        worker = actor.worker
        if worker is None:
            return
        queue = actor.queue
        while queue:  # the common case: the head is ready
            spec = queue[0]
            if spec.state is TaskState.WAITING and spec.pending_deps > 0:
                break
            queue.popleft()
            if spec.state is not TaskState.WAITING:
                continue  # cancelled or failed before it was sent
            if not self._send_actor_call(actor, worker, spec):
                queue.appendleft(spec)
                break
        if len(queue) > 1:
            self._pump_past_blocked(actor, worker)

    def _pump_past_blocked(self, actor: ActorRecord, worker: WorkerRecord) -> None:
        """The head call waits for an argument: send other callers' ready calls."""
        blocked: set[int] = set()
        keep: deque[TaskSpec] = deque()
        for spec in actor.queue:
            if spec.state is not TaskState.WAITING:
                continue  # cancelled or failed before it was sent
            if (
                spec.owner in blocked
                or spec.pending_deps > 0
                or not self._send_actor_call(actor, worker, spec)
            ):
                blocked.add(spec.owner)
                keep.append(spec)
        actor.queue = keep

    def _send_actor_call(self, actor: ActorRecord, worker: WorkerRecord, spec: TaskSpec) -> bool:
        """Send one call to the actor's worker; False if an argument must be rebuilt."""
        resolved = self._resolve_args(spec, worker)
        if resolved is None:
            return False
        spec.state = TaskState.RUNNING  # actor calls skip READY: the actor is the queue
        spec.attempts += 1
        spec.worker = worker
        actor.inflight[spec.task_id] = spec
        self._send(
            worker,
            (
                Op.ACTOR_CALL,
                spec.task_id,
                spec.method,
                spec.args_payload,
                spec.ref_positions,
                resolved,
                spec.return_ids,
                spec.name,
                spec.generator,
            ),
        )
        return True

    def _actor_died_error(self, actor: ActorRecord | None, spec: TaskSpec) -> ActorDiedError:
        if actor is None:
            return ActorDiedError(
                f"Cannot run {spec.name!r}: the actor does not exist.",
                actor_id=format_id(spec.actor_id),
            )
        return ActorDiedError(
            f"The actor {actor.label()} is dead because {actor.death_cause or 'its worker died'}; "
            f"{spec.name!r} did not run.",
            actor_id=format_id(actor.actor_id),
            class_name=actor.class_name,
        )

    def _actor_worker_died(self, actor: ActorRecord, worker: WorkerRecord, how: str) -> None:
        inflight, actor.inflight = actor.inflight, {}
        if not actor.death_cause:
            actor.death_cause = f"its worker process died ({how})"
        restarts = actor.state is not ActorState.DEAD and (
            actor.max_restarts < 0 or actor.restarts < actor.max_restarts
        )
        retry: list[TaskSpec] = []
        for spec in inflight.values():
            if restarts and _may_retry_call(actor, spec):
                retry.append(spec)
                continue
            self._fail_task(spec, _error_payload(self._actor_died_error(actor, spec)), "actor_dead")
        for spec in reversed(retry):  # back to the front of the queue, in their order
            self._record(spec, worker, "crashed")
            spec.state = TaskState.WAITING  # unsent again (actor calls skip READY)
            spec.worker = None
            actor.queue.appendleft(spec)
        actor.worker = None
        if actor.state is not ActorState.DEAD:
            self._node.release(actor.resources)
        if actor.state is ActorState.DEAD:
            return
        if actor.max_restarts < 0 or actor.restarts < actor.max_restarts:
            actor.restarts += 1
            actor.death_cause = ""
            transition(actor, ActorState.RESTARTING)
            log.info("restarting actor %s (restart %d)", actor.label(), actor.restarts)
            self._start_actor(actor)
        else:
            self._actor_dead(actor, actor.death_cause, resources_released=True)

    def _actor_dead(
        self, actor: ActorRecord, cause: str, *, resources_released: bool = False
    ) -> None:
        if actor.state is ActorState.DEAD:
            return
        if actor.worker is not None and not resources_released:
            self._node.release(actor.resources)
        actor.death_cause = cause
        transition(actor, ActorState.DEAD)
        queue, actor.queue = actor.queue, deque()
        for spec in queue:
            if spec.state in (TaskState.WAITING, TaskState.READY):
                self._fail_task(
                    spec, _error_payload(self._actor_died_error(actor, spec)), "actor_dead"
                )
        inflight, actor.inflight = actor.inflight, {}
        for spec in inflight.values():
            self._fail_task(spec, _error_payload(self._actor_died_error(actor, spec)), "actor_dead")
        creation = actor.creation
        if creation.state is not TaskState.FINISHED:
            creation.state = TaskState.FINISHED
            self._unpin_spec(creation)
        if actor in self._pending_actors:
            self._pending_actors.remove(actor)

    def _actor_out_of_scope(self, actor: ActorRecord) -> None:
        if actor.detached or actor.state is ActorState.DEAD:
            return
        actor.out_of_scope = True
        if not actor.queue and not actor.inflight:
            self._retire_actor(actor, "all of its handles went out of scope")

    def _retire_actor(self, actor: ActorRecord, cause: str) -> None:
        worker = actor.worker
        actor.max_restarts = actor.restarts
        self._actor_dead(actor, cause)
        if worker is not None and worker.conn is not None:
            self._send(worker, (Op.EXIT,))
        self._actors.pop(actor.actor_id, None)
        if actor.name:
            self._named.pop((actor.namespace, actor.name), None)

    # ------------------------------------------------------------------ workers --

    def _spawn_worker(self, purpose: ActorRecord | None) -> WorkerRecord:
        worker = WorkerRecord(next(self._next_worker_index))
        worker.purpose = purpose
        self._workers[worker.index] = worker
        if purpose is None:
            self._starting += 1
        self._pool.spawn(worker.index)
        return worker

    def _on_register(self, conn: PeerConnection, index: int, pid: int) -> WorkerRecord | None:
        worker = self._workers.get(index)
        if worker is None or worker.state is not WorkerState.STARTING:
            conn.close()
            return None
        worker.conn = conn
        worker.pid = pid
        self._by_pid[pid] = worker
        actor = worker.purpose
        if actor is not None:
            if actor.state is ActorState.DEAD:
                self._send(worker, (Op.EXIT,))
                return worker
            self._send_create_actor(actor, worker)
            return worker
        self._starting -= 1
        transition(worker, WorkerState.IDLE)
        self._make_idle(worker)
        self._schedule()
        return worker

    def _on_worker_exit(self, worker: WorkerRecord, code: int | None) -> None:
        if worker.state is WorkerState.DEAD:
            if code is not None and not worker.exit_status:
                worker.exit_status = _describe_exit(code)
            return
        how = _describe_exit(code) if code is not None else "connection lost"
        if worker.exit_status:  # the worker said why before it went (``exiting``)
            how = f"{worker.exit_status}, {how}" if code is not None else worker.exit_status
        worker.exit_status = how
        was_starting = worker.state is WorkerState.STARTING
        transition(worker, WorkerState.DEAD)
        self._workers.pop(worker.index, None)
        if worker.conn is not None:
            with contextlib.suppress(Exception):
                self._selector.unregister(worker.conn.sock)
            worker.conn.close()
        if worker in self._idle:
            self._idle.remove(worker)
        self._busy.pop(worker.index, None)
        queued, worker.queued = worker.queued, deque()
        for ahead in queued:
            ahead.attempts -= 1
            if ahead.cancel_requested:
                self._cancel_unstarted(ahead)
            else:
                self._retry(ahead)
        self._want_write.discard(worker)
        if was_starting and worker.purpose is None:
            self._starting -= 1
        self._release_all_holds(worker)
        spec = worker.task
        if spec is not None:
            worker.task = None
            held, worker.held = worker.held, None
            if held is not None:
                self._node.release(held)
            if spec.cancel_requested == "force":
                exc: HeliostatError = TaskCancelledError(
                    f"Task {spec.name!r} was cancelled (its worker was killed).",
                    task_name=spec.name,
                )
                self._fail_task(spec, _error_payload(exc), "cancelled")
            elif self._may_retry(spec) and not self._stopping:
                log.warning(
                    "worker pid %d died (%s) while running %r; retrying (attempt %d)",
                    worker.pid,
                    how,
                    spec.name,
                    spec.attempts + 1,
                )
                self._record(spec, worker, "crashed")
                self._retry(spec)
            else:
                exc = WorkerCrashedError(
                    f"The worker (pid {worker.pid}) running task {spec.name!r} died ({how}) "
                    f"and its retries are spent (max_retries={spec.max_retries}).",
                    task_name=spec.name,
                    pid=worker.pid,
                )
                self._fail_task(spec, _error_payload(exc), "crashed")
        actor = worker.actor or worker.purpose
        if actor is not None and actor.worker in (worker, None):
            self._actor_worker_died(actor, worker, how)
        if not self._stopping:
            self._schedule()

    def _trim_idle(self) -> None:
        """Let idle workers beyond the CPU count go after a while."""
        keep = max(1, int(self.config.num_cpus))
        idle = self._idle
        if len(idle) <= keep:
            return
        deadline = time.monotonic() - self.config.idle_worker_timeout_s
        for worker in list(idle[: len(idle) - keep]):
            if worker.idle_since < deadline:
                idle.remove(worker)
                self._send(worker, (Op.EXIT,))

    # ------------------------------------------------------------------ I/O --

    def _send(self, worker: WorkerRecord, message: tuple[Any, ...]) -> None:
        if self._batching:
            if not worker.outbox:
                self._dirty.append(worker)
            worker.outbox.append(message)
            return
        conn = worker.conn
        if conn is not None and conn.send([message]):
            self._want_write.add(worker)
            self._wake()

    def _flush_batch(self) -> None:
        dirty, self._dirty = self._dirty, []
        for worker in dirty:
            messages, worker.outbox = worker.outbox, []
            conn = worker.conn
            if conn is not None and messages and conn.send(messages):
                self._want_write.add(worker)
        pokes, self._pokes = self._pokes, []
        for worker in pokes:
            if worker.pid and worker.state is not WorkerState.DEAD:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGUSR1)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _io_loop(self) -> None:
        sel = self._selector
        last_tick = time.monotonic()
        watching_write: set[WorkerRecord] = set()
        while not self._stopping:
            try:
                events = sel.select(timeout=0.05)
            except (OSError, ValueError):
                if self._stopping:
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
                if self._stopping:
                    return
                self._batching = True
                try:
                    for source, messages in inbound:
                        if isinstance(source, PeerConnection):
                            source = self._adopt_connection(source, messages)
                            if source is None:
                                continue
                            messages = messages[1:]
                        for message in messages:
                            self._guarded(self._on_message, source, message)
                    for worker in writable:
                        if worker.conn is not None:
                            worker.conn.flush()
                            if not worker.conn.wants_write:
                                self._want_write.discard(worker)
                    for worker in closed:
                        self._guarded(self._on_worker_exit, worker, None)
                    for event in fork_events:
                        self._guarded(self._on_fork_event, event)
                    now = time.monotonic()
                    if now >= self._revoke_due:
                        self._expire_revokes(now)
                    if now - last_tick > 1.0:
                        last_tick = now
                        self._trim_idle()
                finally:
                    self._flush_batch()
                    self._batching = False
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
                "heliostat internal error in %s%r; please report it", handler.__name__, args[:2]
            )

    def _adopt_connection(
        self, conn: PeerConnection, messages: list[tuple[Any, ...]]
    ) -> WorkerRecord | None:
        if messages and messages[0][0] == Op.INTROSPECT:
            self._answer_introspection(conn, str(messages[0][1]))
            return None
        if not messages or messages[0][0] != Op.REGISTER:
            return None
        _op, index, pid = messages[0]
        worker = self._on_register(conn, index, pid)
        if worker is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(conn.sock, selectors.EVENT_READ, worker)
        return worker

    def _on_fork_event(self, event: tuple[str, int, int]) -> None:
        what, a, b = event
        if what == "spawned":
            worker = self._workers.get(a)
            if worker is not None:
                worker.pid = b
                self._by_pid[b] = worker
        elif what == "exited":
            worker = self._by_pid.pop(a, None)
            if worker is not None:
                self._on_worker_exit(worker, b)

    def _on_message(self, worker: WorkerRecord, message: tuple[Any, ...]) -> None:
        op = message[0]
        if op == Op.TASK_DONE:
            self._on_task_done(worker, *message[1:])
        elif op == Op.REQUEST:
            _op, req_id, verb, args = message

            def reply(ok: bool, value: Any, _w: WorkerRecord = worker, _r: int = req_id) -> None:
                self._send(_w, (Op.REPLY, _r, ok, value))

            self._handle_locked(worker, verb, args, reply)
        elif op == Op.POST:
            self._handle_locked(worker, message[1], message[2], None)
        elif op == Op.TASK_FAILED:
            self._on_task_failed(worker, *message[1:])
        elif op == Op.LOG:
            self._logs.append((message[1], message[2], worker.pid, message[3]))
        elif op == Op.ACTOR_READY:
            self._on_actor_ready(worker, message[1], message[2])


def _may_retry_call(actor: ActorRecord, spec: TaskSpec) -> bool:
    """May a call in flight when the actor's process died run again (max_task_retries)?"""
    if spec.cancel_requested:
        return False
    limit = actor.max_task_retries
    return limit < 0 or spec.attempts <= limit


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
