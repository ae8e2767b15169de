"""Where and when tasks run on one node: queues, pipelining, stealing, retries (pure).

Task path: submit -> (arguments pending: WAITING) -> ready queue of its resource
shape -> an idle worker whose node has room -> :class:`Execute` -> the worker's
``TaskDone`` -> waiters of the returns are answered. Every decision here ends in an
instruction on the outbox; ``node_loop.py`` sends it.

Pipelining and stealing: short tasks are sent *ahead* to a busy worker of the same
resource shape (``WorkerRecord.queued``), so it never waits a round trip between two
of them. When a worker idles while another holds tasks sent ahead, that one gets a
:class:`Revoke` (and a :class:`Poke`, so a worker busy in Python code reads it at
once); the worker hands back the tasks it has not started (``returned``).

Taking tasks sent ahead back from a worker (the revoke handshake, and what it does
with a worker that never answers) is ``revokes.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

from heliostat.engine.actor_directory import ActorDirectory
from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    Execute,
    Outbox,
    TaskDone,
    TaskFailed,
)
from heliostat.engine.object_directory import ObjectDirectory, error_payload
from heliostat.engine.object_table import KIND_OF, ObjectEntry, ObjKind, keeps_lineage
from heliostat.engine.records import (
    TaskKind,
    TaskSpec,
    TaskState,
    WorkerRecord,
    WorkerState,
    transition,
)
from heliostat.engine.revokes import Revokes
from heliostat.engine.spill_depth import PIPELINE_S, SHORT_CALL_S, SpillDepth
from heliostat.engine.task_table import TaskTable
from heliostat.engine.worker_registry import WorkerRegistry
from heliostat.exceptions import (
    InfeasibleResourcesError,
    ObjectLostError,
    TaskCancelledError,
    TaskUnschedulableError,
)
from heliostat.scheduler import CPU, NodeResources, ResourceSet, infeasible_message
from heliostat.scheduler.placement import NodeView

__all__ = ["Dispatch"]

log = logging.getLogger("heliostat.engine")

_SHM = int(ObjKind.SHM)


class Dispatch:
    """Ready queues and the decisions that move tasks onto workers.

    Task states change only through ``records.transition`` (actor calls, which skip
    READY, set theirs where they are sent).
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        node: NodeResources,
        node_id: str,
        registry: WorkerRegistry,
        objects: ObjectDirectory,
        tasks: TaskTable,
        actors: ActorDirectory,
        max_workers: int,
        pipeline_depth: int,
        revoke_timeout_s: float,
    ) -> None:
        self._out = outbox
        self.node = node
        self._node_id = node_id
        self._registry = registry
        self._objects = objects
        self._tasks = tasks
        self._actors = actors
        self._max_workers = max_workers
        # Tasks sent ahead to a busy worker (same resource shape): about PIPELINE_S of
        # work by each function's run times, two at first, at most pipeline_depth
        # (0: none are sent ahead).
        self._pipeline = (
            SpillDepth(min(2, pipeline_depth), pipeline_depth, PIPELINE_S)
            if pipeline_depth > 0
            else None
        )
        self.ready: dict[ResourceSet, deque[TaskSpec]] = {}  # invariant: state READY
        self.stopping = False  # no new dispatch once the node is shutting down
        # Tasks sent ahead asked back from workers (the revoke handshake).
        self.revokes = Revokes(outbox, registry, timeout_s=revoke_timeout_s)
        self._feasible: dict[ResourceSet, bool] = {}
        self._cpu_of: dict[ResourceSet, ResourceSet] = {}
        # The other nodes of a cluster (peers.Peers), or None on a node of its own.
        self.peers: Any = None
        # Inside batch(): schedule() only notes that a pass is due (_due).
        self._batching = False
        self._due = False

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Handle several events with one scheduling pass at the end instead of one
        each: the messages of one read from the sockets, or one batch from a peer (a
        hundred submits or reports then cost one pass, not a hundred). Nested batches
        join the outer one. A failing pass at the end is logged, as a failing handler
        is: the I/O loop goes on."""
        if self._batching:
            yield
            return
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            if self._due:
                self._due = False
                try:
                    self.schedule()
                except Exception:
                    log.exception("heliostat internal error in a scheduling pass; please report it")

    # ------------------------------------------------------------- feasibility --

    def check_feasible(self, resources: ResourceSet) -> None:
        """Raise InfeasibleResourcesError if no node could ever run the request."""
        if not self.feasible(resources):
            raise InfeasibleResourcesError(self.infeasible_message(resources))

    def feasible(self, resources: ResourceSet) -> bool:
        """Whether this node, or a peer of a cluster, could ever hold the request."""
        ok = self._feasible.get(resources)
        if ok is None:
            ok = self._feasible[resources] = resources.is_subset_of(self.node.total)
        if ok:
            return True
        peers = self.peers
        return peers is not None and peers.feasible_somewhere(resources)

    def local_view(self) -> NodeView:
        return NodeView(node_id=self._node_id, total=self.node.total, available=self.node.available)

    def infeasible_message(self, resources: ResourceSet) -> str:
        views = [self.local_view()]
        if self.peers is not None:
            views += self.peers.views()
        return infeasible_message(resources, views)

    # ------------------------------------------------------------ submission --

    def submit(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        if spec.kind is TaskKind.ACTOR_CALL:
            self._actors.submit_call(proc, spec)
            return
        self._tasks.register(proc, spec)
        if not self.feasible(spec.resources):
            exc = InfeasibleResourcesError(self.infeasible_message(spec.resources))
            self._tasks.fail(spec, error_payload(exc), "infeasible")
            return
        self.track_deps(spec)

    def track_deps(self, spec: TaskSpec) -> None:
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
                self._tasks.fail(spec, error_payload(exc), "error")
                return
            kind = arg.kind
            if kind is ObjKind.FREED:
                if not self.reconstruct(arg):
                    exc = ObjectLostError(
                        f"Argument {format_id(aid)} of task {spec.name!r} was lost and "
                        "cannot be rebuilt.",
                        object_id=format_id(aid),
                    )
                    self._tasks.fail(spec, error_payload(exc), "error")
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
            self.dependency_ready(spec)

    def dependency_ready(self, spec: TaskSpec) -> None:
        """Every argument of ``spec`` is ready (or one failed: so does the task)."""
        entries = self._objects.entries
        actors = self._actors
        for aid in spec.arg_ids:
            arg = entries.get(aid)
            if arg is not None and arg.kind is ObjKind.ERROR:
                # An upstream failure fails this task without running it (as in Ray).
                arg.error_seen = True  # it lives on in this task's result
                actor = actors.actors.get(spec.actor_id) if spec.actor_id else None
                if spec.kind is TaskKind.ACTOR_CREATE:
                    if actor is not None:
                        actors.dead(actor, "an argument of its constructor failed")
                    return
                if actor is not None and spec in actor.queue:
                    actor.queue.remove(spec)
                self._tasks.fail(spec, arg.payload or b"", "error")
                if actor is not None:
                    actors.pump(actor)
                return
        if spec.kind is TaskKind.NORMAL:
            if self.peers is not None and spec.strategy is not None and self._routed(spec):
                return
            transition(spec, TaskState.READY)
            queue = self.ready.get(spec.resources)
            if queue is None:
                queue = self.ready[spec.resources] = deque()
            queue.append(spec)
            self.schedule()
            return
        actor = actors.actors.get(spec.actor_id)
        if actor is None:
            return
        if spec.kind is TaskKind.ACTOR_CALL:
            actors.pump(actor)
        elif not self._fetch_remote_args(spec):
            actors.start(actor)

    def _fetch_remote_args(self, spec: TaskSpec) -> bool:
        """Pull the arguments of an actor's constructor that live on other nodes here,
        before the actor starts: wherever it is placed now, a restart may run it here.
        True if the creation waits for them."""
        objects = self._objects
        entries = objects.entries
        remote = 0
        for aid in spec.arg_ids:
            arg = entries.get(aid)
            if arg is not None and arg.kind is ObjKind.REMOTE:
                objects.fetch(arg)
                arg.waiters = (arg.waiters or []) + [spec]
                remote += 1
        spec.pending_deps += remote
        return remote > 0

    def _routed(self, spec: TaskSpec) -> bool:
        """Place a ready task with an explicit strategy over the cluster: True if it was
        sent to a peer or failed as unschedulable, False if it queues here."""
        where = self.peers.route(spec, self.local_view())
        if type(where) is str:
            exc = TaskUnschedulableError(f"Task {spec.name!r} cannot be scheduled: {where}")
            self._tasks.fail(spec, error_payload(exc), "infeasible")
            return True
        if where is None:
            return False
        transition(spec, TaskState.READY)
        self.peers.forward(spec, where)
        return True

    def reconstruct(self, entry: ObjectEntry) -> bool:
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
        # A generator's re-run yields each item it yielded before under the same id,
        # which fills the lost ones (and the others are dropped as replays).
        spec.item_ids = tuple(spec.item_ids)
        entries = self._objects.entries
        for rid in spec.return_ids:
            ret = entries.get(rid)
            if ret is not None and ret.kind is ObjKind.FREED:
                ret.kind = ObjKind.PENDING
        entry.kind = ObjKind.PENDING
        transition(spec, TaskState.WAITING)
        spec.attempts = 0
        self._tasks.pin_again(spec)
        self.track_deps(spec)
        return True

    # ---------------------------------------------------------------- dispatch --

    def schedule(self) -> None:
        """Dispatch ready tasks to idle workers while resources allow (at the end of
        the current :meth:`batch`, inside one)."""
        if self._batching:
            self._due = True
            return
        if self.stopping:
            return
        node = self.node
        registry = self._registry
        idle = registry.idle
        busy = registry.busy
        wanted = 0
        for resources, queue in self.ready.items():
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
        if self.peers is not None and self.peers.nodes:
            # Before sending any ahead here: a peer with a free CPU starts a task at
            # once, where one sent ahead waits for the running task to end (a call
            # seen for the first time may be long).
            self._spill()
        pipeline = self._pipeline
        if pipeline is not None and busy:
            for resources, queue in self.ready.items():
                if not queue:
                    continue
                depth = pipeline.of(queue[0].fn_id)
                for worker in busy.values():
                    task = worker.task
                    if (
                        task is None
                        or worker.blocked
                        or worker.revokes
                        or task.resources != resources
                        or len(worker.queued) >= depth
                        or registry.spent(worker)  # it exits after its running task
                    ):
                        continue
                    # A ``max_calls`` task is never sent ahead: it goes to an idle
                    # worker, so the count of calls a worker ran is never handed back.
                    while queue and len(worker.queued) < depth and not queue[0].max_calls:
                        self._dispatch(queue.popleft(), worker, ahead=True)
                    if not queue:
                        break
        if idle and busy and not any(self.ready.values()):
            # A worker is idle while others hold tasks sent ahead: take them back, so
            # no task waits behind a long one while a CPU is free (work stealing).
            # Only tasks that could start now: else they would bounce back and forth.
            for worker in busy.values():
                if worker.queued and node.fits(worker.queued[0].resources):
                    self.revokes.ask_queued(worker)
        if self._actors.pending:
            self._actors.start_pending()
        if wanted > registry.starting:
            room = self._max_workers - registry.live_task_workers()
            for _ in range(min(wanted - registry.starting, room)):
                registry.spawn(None)

    def _spill(self) -> None:
        """Send tasks this node has no room for to peers with room (spillback).

        Not short calls while a worker here runs one: they are sent ahead to it
        instead (forwarding costs this node manager more than running them,
        ``SHORT_CALL_S``).
        """
        peers = self.peers
        node = self.node
        for resources, queue in self.ready.items():
            if not queue or node.fits(resources) or self._runs_short_here(queue[0]):
                continue
            while queue and peers.may_spill(queue[0]):
                target = peers.spill_target(resources, queue[0].fn_id)
                if target is None:
                    break
                peers.forward(queue.popleft(), target)

    def _short(self, fn_id: bytes | None) -> bool:
        """Whether calls of ``fn_id`` are known to run shorter than SHORT_CALL_S."""
        seconds = self._pipeline.run_time(fn_id) if self._pipeline is not None else None
        if seconds is None and self.peers is not None:
            seconds = self.peers.depth.run_time(fn_id)
        return seconds is not None and seconds < SHORT_CALL_S

    def _runs_short_here(self, spec: TaskSpec) -> bool:
        """Whether a short call like ``spec`` is better sent ahead to a worker here,
        one running a short call of its shape, than spilled to a peer."""
        if self._pipeline is None or spec.max_calls or not self._short(spec.fn_id):
            return False  # a max_calls task is never sent ahead
        registry = self._registry
        for worker in registry.busy.values():
            task = worker.task
            if (
                task is not None
                and task.resources == spec.resources
                and not worker.blocked
                and not worker.revokes
                and not registry.spent(worker)
                and self._short(task.fn_id)
            ):
                return True
        return False

    def _dispatch(self, spec: TaskSpec, worker: WorkerRecord, *, ahead: bool = False) -> None:
        resolved = self._tasks.resolve_args(spec, worker)
        if resolved is None:  # an argument was lost; the task waits for its rebuild
            if not ahead:
                self.node.release(spec.resources)
                self._registry.make_idle(worker)
            return
        transition(spec, TaskState.RUNNING)
        spec.attempts += 1
        spec.worker = worker
        spec.claimed = False
        self._registry.count_call(worker, spec)
        if ahead:
            worker.queued.append(spec)
        else:
            transition(worker, WorkerState.BUSY)
            worker.task = spec
            worker.held = spec.resources
            self._registry.busy[worker.index] = worker
        fn_bytes = self._tasks.function_for(worker, spec)
        self._out.send(
            worker, Execute(spec=spec, fn_bytes=fn_bytes, resolved=resolved, ahead=ahead)
        )

    # ------------------------------------------------------------- task ends --

    def task_done(self, event: TaskDone) -> None:
        worker = event.worker
        objects = self._objects
        table = objects.table
        spec = self._task_of(worker, event.task_id)
        if spec is None:
            for _oid, kind, payload, _contained, _size in event.results:
                table.discard_payload(KIND_OF[kind], payload)
            return
        entries = objects.entries
        for oid, kind, payload, contained, size in event.results:
            entry = entries.get(oid)
            if entry is None or entry.kind is not ObjKind.PENDING:
                table.discard_payload(KIND_OF[kind], payload)
                continue
            if kind == _SHM:
                table.make_room(size)
            objects.set_value(entry, KIND_OF[kind], payload, size, contained)
        if self._pipeline is not None and spec.kind is TaskKind.NORMAL:
            self._pipeline.ran(spec.fn_id, event.finished - event.started)
        self._tasks.finish(spec, event.started, event.finished, "ok")
        self._after_execution(worker, spec)

    def task_failed(self, event: TaskFailed) -> None:
        worker = event.worker
        spec = self._task_of(worker, event.task_id)
        if spec is None:
            return
        tasks = self._tasks
        spec.started_at, spec.finished_at = event.started, event.finished
        if event.interrupted and spec.cancel_requested:
            exc = TaskCancelledError(f"Task {spec.name!r} was cancelled.", task_name=spec.name)
            tasks.fail(spec, error_payload(exc), "cancelled")
        elif event.interrupted or (event.retryable and may_retry(spec)):
            tasks.record(spec, worker, "interrupted" if event.interrupted else "retried")
            self.retry(spec)
        else:
            tasks.fail(spec, event.payload, "error")
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
            self._actors.after_call(actor)
            return
        if spec.worker is worker:  # not when ending it started it again (a rebuild)
            spec.worker = None
        self.next_queued_or_idle(worker)
        self.schedule()

    def next_queued_or_idle(self, worker: WorkerRecord) -> None:
        """The worker's current task is over: its next queued task runs, or it idles.

        A worker that ran the last call a ``max_calls`` function allows it exits instead.
        """
        worker.task = None
        held, worker.held = worker.held, None
        if held is not None:
            self.node.release(held)
        if worker.queued:
            # The worker starts its next queued task on its own: move the resources.
            nxt = worker.queued.popleft()
            self.node.acquire_force(nxt.resources)
            worker.task = nxt
            worker.held = nxt.resources
        elif self._registry.spent(worker):
            self._registry.retire(worker)
        else:
            self._registry.busy.pop(worker.index, None)
            transition(worker, WorkerState.IDLE)
            self._registry.make_idle(worker)

    def retry(self, spec: TaskSpec) -> None:
        spec.worker = None
        if spec.kind is TaskKind.NORMAL:
            if self.peers is not None and spec.strategy is not None and self._routed(spec):
                return
            transition(spec, TaskState.READY)
            queue = self.ready.get(spec.resources)
            if queue is None:
                queue = self.ready[spec.resources] = deque()
            queue.appendleft(spec)

    def hand_back(self, specs: list[TaskSpec]) -> None:
        """Tasks sent ahead that never started: to the ready queue (or cancelled).

        Reversed, as each goes to the front of the queue: they keep their order.
        """
        for spec in reversed(specs):
            spec.attempts -= 1
            spec.worker = None
            if spec.cancel_requested:
                self._tasks.cancel_unstarted(spec)
            else:
                self.retry(spec)

    # ------------------------------------------------------ blocking in get --

    def block(self, proc: WorkerRecord) -> None:
        """A worker waits in get: give its CPU back so nested tasks can run."""
        if proc.index == 0:
            return
        proc.blocked += 1
        if proc.blocked == 1:
            # Queued tasks cannot start while this one waits (and may be what it
            # waits for): ask for them back.
            self.revokes.ask_queued(proc)
        spec = proc.task
        if proc.blocked == 1 and spec is not None and proc.held is not None:
            cpu = self._cpu_part(proc.held)
            if cpu:
                self.node.release(cpu)
                proc.held = proc.held - cpu
                self.schedule()

    def unblock(self, proc: WorkerRecord) -> None:
        if proc.index == 0 or proc.blocked == 0:
            return
        proc.blocked -= 1
        spec = proc.task
        if proc.blocked == 0 and spec is not None and proc.held is not None:
            cpu = self._cpu_part(spec.resources)
            if cpu and not proc.held.get(CPU):
                self.node.acquire_force(cpu)
                proc.held = proc.held + cpu

    def _cpu_part(self, resources: ResourceSet) -> ResourceSet:
        cpu = self._cpu_of.get(resources)
        if cpu is None:
            amount = resources.get(CPU)
            cpu = ResourceSet({CPU: amount}) if amount else ResourceSet()
            self._cpu_of[resources] = cpu
        return cpu

    # ------------------------------------------------- revoke handshake --

    def returned(self, proc: WorkerRecord, task_ids: list[int], revoke_id: int) -> None:
        """A worker handed back tasks we had queued on it (its answer to a REVOKE)."""
        handed_back, current = self.revokes.answered(proc, task_ids, revoke_id)
        if current is not None:
            handed_back.insert(0, current)
            self.next_queued_or_idle(proc)
        self.hand_back(handed_back)
        if proc.blocked and proc.queued:
            self.revokes.ask_queued(proc)  # sent ahead while the first REVOKE was on its way
        self.schedule()

    def reclaim(self, worker: WorkerRecord, now: float) -> None:
        """Run elsewhere what an unanswering worker still had queued (``revokes.py``)."""
        taken = self.revokes.reclaim(worker, now)
        if taken:
            self.hand_back(taken)
            self.schedule()


def may_retry(spec: TaskSpec) -> bool:
    return spec.max_retries < 0 or spec.attempts <= spec.max_retries
