"""Everything one node manager knows, and every request and event it decides on (pure).

:class:`NodeState` builds the pure parts and wires them to each other:

- ``worker_registry.WorkerRegistry``: worker processes, idle and busy;
- ``object_directory.ObjectDirectory``: values, waiters, pins, lost values, streams;
- ``task_table.TaskTable``: unfinished tasks and how a task ends;
- ``actor_directory.ActorDirectory``: actors, names, call queues, restarts;
- ``dispatch.Dispatch``: ready queues, pipelining, stealing, retries, reconstruction.

It takes two kinds of input, both under the node lock: *requests* (a verb from the
driver or a worker, with a ``reply`` callback: :attr:`NodeState.verbs`, answered by
the ``NodeVerbs`` half in ``node_verbs.py``) and *events*
(``node_instructions``: a task ended, a worker started or died). Its output is the
:class:`~heliostat.engine.node_instructions.Outbox`, which ``node_loop.py`` drains.
Nothing here opens a socket, signals a process or starts one; tests drive it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from heliostat.engine.actor_directory import (
    ActorDirectory,
    name_taken_error,
)
from heliostat.engine.dispatch import Dispatch, may_retry
from heliostat.engine.ids import IdMinter, format_id
from heliostat.engine.node_instructions import (
    EXIT,
    ActorReady,
    Disconnect,
    Outbox,
    TaskDone,
    TaskFailed,
    WorkerExited,
    WorkerLost,
    WorkerSpawned,
)
from heliostat.engine.node_verbs import NodeVerbs
from heliostat.engine.object_directory import ObjectDirectory, Reply, error_payload
from heliostat.engine.object_table import ObjKind
from heliostat.engine.output_routes import OutputRoutes
from heliostat.engine.peers import Peers, WireValue
from heliostat.engine.records import (
    PEER_INDEX_BASE,
    ActorOptions,
    ActorState,
    JobEnv,
    TaskKind,
    TaskSpec,
    WorkerRecord,
    WorkerState,
    spec_from_wire,
    transition,
)
from heliostat.engine.streams import MANAGER_PROCESS_INDEX
from heliostat.engine.task_table import DONE_STATES, TaskTable
from heliostat.engine.worker_registry import WorkerRegistry, describe_exit
from heliostat.exceptions import (
    HeliostatError,
    InfeasibleResourcesError,
    TaskCancelledError,
    WorkerCrashedError,
)
from heliostat.scheduler import CPU, NodeResources, ResourceSet

__all__ = ["NodeState", "Verb"]

log = logging.getLogger("heliostat.engine")

Verb = Callable[..., None]  # (proc, reply, *args)


class NodeState(OutputRoutes, NodeVerbs):
    """The pure node manager: requests and events in, instructions out."""

    def __init__(
        self,
        *,
        session: str,
        node_index: int,
        num_cpus: float,
        resources: dict[str, float],
        object_store_memory: int,
        spill_dir: str,
        max_workers: int,
        driver_pid: int,
        idle_worker_timeout_s: float = 10.0,
        pipeline_depth: int = 2,
        revoke_timeout_s: float = 0.2,
    ) -> None:
        self.out = Outbox()
        self.node = NodeResources(ResourceSet.from_dict({CPU: num_cpus, **resources}))
        self.registry = WorkerRegistry(
            self.out,
            driver_pid=driver_pid,
            keep_idle=max(1, int(num_cpus)),
            idle_timeout_s=idle_worker_timeout_s,
        )
        self.objects = ObjectDirectory(
            self.out,
            session=session,
            limit=object_store_memory,
            spill_dir=spill_dir,
            own_ids=IdMinter(node_index, MANAGER_PROCESS_INDEX),
            registry=self.registry,
        )
        self.tasks = TaskTable(self.objects)
        self.actors = ActorDirectory(
            self.out,
            node=self.node,
            registry=self.registry,
            objects=self.objects,
            tasks=self.tasks,
        )
        self.dispatch = Dispatch(
            self.out,
            node=self.node,
            node_id=format_id(node_index),
            registry=self.registry,
            objects=self.objects,
            tasks=self.tasks,
            actors=self.actors,
            max_workers=max_workers,
            pipeline_depth=pipeline_depth,
            revoke_timeout_s=revoke_timeout_s,
        )
        # The parts call each other (a value set may start a task, a task's end may
        # retire an actor): wired here, once all exist.
        self.objects.hooks = self.dispatch
        self.objects.handles = self.actors
        self.actors.deps = self.dispatch
        self.driver = self.registry.driver
        self.stopping = False
        self.peers: Peers | None = None  # set by join_cluster
        # The request surface, whoever asks (driver or worker): verb -> handler.
        self.verbs: dict[str, Verb] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("_v_")
        }

    def join_cluster(self, local_index: int, *, depth: int = 2, max_depth: int = 128) -> Peers:
        """This node belongs to a cluster: work and values may cross to peers (up to
        ``depth`` to ``max_depth`` tasks in flight per slot of a peer: spill_depth)."""
        peers = Peers(
            self.out,
            local_index=local_index,
            objects=self.objects,
            tasks=self.tasks,
            depth=depth,
            max_depth=max_depth,
        )
        peers.hooks = self.dispatch
        peers.actors = self.actors
        self.actors.peers = peers
        self.dispatch.peers = peers
        self.tasks.on_peer_task_end = peers.finished
        self.peers = peers
        return peers

    def peer_forward(
        self,
        index: int,
        fields: tuple[Any, ...],
        fn_bytes: bytes | None,
        values: list[WireValue],
        pending: list[int],
        job: JobEnv | None = None,
        code: tuple[tuple[str, ...], str] | None = None,
        actor_options: ActorOptions | None = None,
    ) -> None:
        """Node ``index`` forwarded a task, or an actor's creation or call, to run here:
        ``job`` is its job's runtime_env (package URIs, env_vars), ``code`` those
        packages as installed here (import paths, working directory)."""
        peers = self.peers
        assert peers is not None
        spec = spec_from_wire(fields, PEER_INDEX_BASE + index)
        spec.strategy = None  # placed already: it runs here
        if job is not None:
            spec.job = job
            paths, working_dir = code if code is not None else ((), "")
            spec.code = (paths, working_dir, job[1])
        if spec.kind is TaskKind.ACTOR_CREATE:
            assert actor_options is not None
            copies = peers.receive_for(index, spec, fn_bytes, values, pending)
            if actor_options.handover:
                self._adopt_actor(index, spec, actor_options, copies)
                return
            refusal = self.actor_refusal(spec, actor_options)
            if refusal is None and not spec.resources.is_subset_of(self.node.total):
                refusal = InfeasibleResourcesError(self.dispatch.infeasible_message(spec.resources))
            if refusal is not None:
                peers.release_copies(index, copies)
                peers.actor_started(index, spec.actor_id, error_payload(refusal))
                return
            actor = self.actors.create(peers.proc(index), spec, actor_options)
            self.actors.fold_borrowed(actor)  # our own handles to it count on it now
            peers.release_copies(index, copies)  # the creation pins what it needs
            return
        peers.on_forward(index, spec, fn_bytes, values, pending)

    def _adopt_actor(
        self, index: int, spec: TaskSpec, options: ActorOptions, copies: list[int]
    ) -> None:
        """Node ``index`` (a driver's) hands a detached actor over: it lives here and
        this node owns it (its record, name, queue and restarts), whatever becomes of
        the driver. A refusal leaves it dead here, so that its callers learn why."""
        peers = self.peers
        assert peers is not None
        spec.owner = self.driver.index  # this node's own process holds it from now on
        refusal: HeliostatError | ValueError | None = None
        if self.actors.name_taken(options):
            refusal = name_taken_error(options.name, options.namespace)
        elif not spec.resources.is_subset_of(self.node.total):
            refusal = InfeasibleResourcesError(self.dispatch.infeasible_message(spec.resources))
        key = (options.namespace, options.name)
        holder = self.actors.named.get(key)
        actor = self.actors.create(self.driver, spec, options, start=refusal is None)
        peers.release_copies(index, copies)  # the creation pins what it needs
        if refusal is not None:
            if holder is not None:
                self.actors.named[key] = holder  # the name stays with the live one
            actor.max_restarts = 0
            self.actors.dead(actor, f"node {format_id(peers.local_index)} refused it: {refusal}")
            return
        self.actors.adopt(actor)

    def peer_cancel(self, index: int, task_id: int, force: bool) -> None:
        """The owner of a task forwarded here cancels it."""
        assert self.peers is not None
        spec = self.peers.cancel_forwarded(index, task_id)
        if spec is not None and spec.state not in DONE_STATES:
            self._cancel(spec, force)

    def stop(self) -> None:
        """No new dispatch; every worker is asked to exit."""
        self.stopping = True
        self.dispatch.stopping = True
        for worker in list(self.registry.workers.values()):
            self.out.send(worker, EXIT)

    # ------------------------------------------------------------------ events --

    def task_done(self, event: TaskDone) -> None:
        self.dispatch.task_done(event)

    def task_failed(self, event: TaskFailed) -> None:
        self.dispatch.task_failed(event)

    def actor_ready(self, event: ActorReady) -> None:
        self.actors.ready(event.worker, event.actor_id, event.error)

    def worker_spawned(self, event: WorkerSpawned) -> None:
        self.registry.spawned(event.index, event.pid)

    def worker_exited(self, event: WorkerExited) -> None:
        worker = self.registry.by_pid.pop(event.pid, None)
        if worker is not None:
            self._worker_gone(worker, event.code)

    def worker_lost(self, event: WorkerLost) -> None:
        self._worker_gone(event.worker, None)

    def worker_registered(self, index: int, pid: int) -> WorkerRecord | None:
        """Worker ``index`` connected as ``pid``; None: not one we expect (close it)."""
        worker = self.registry.registering(index, pid)
        if worker is None:
            return None
        actor = worker.purpose
        if actor is not None:
            if actor.state is ActorState.DEAD:
                self.out.send(worker, EXIT)
            else:
                self.actors.send_create(actor, worker)
            return worker
        transition(worker, WorkerState.IDLE)
        self.registry.make_idle(worker)
        self.dispatch.schedule()
        return worker

    def driver_attached(self, pid: int) -> WorkerRecord:
        """A driver on this machine attached to the node (``engine/attach.py``)."""
        proc = self.registry.attach_driver(pid)
        log.info("driver pid %d attached as process %d", pid, proc.index)
        return proc

    def _driver_left(self, proc: WorkerRecord) -> None:
        """An attached driver disconnected (it shut down, exited or died).

        As when a Ray driver exits: the actors it created go with it (fate sharing:
        nobody is left to call them), except detached ones, and every ref it held is
        released. Tasks it submitted that still run finish; their results, unheld,
        are freed.
        """
        self.registry.remove(proc)
        self.out.effect(Disconnect(worker=proc))
        owner = proc.index
        for actor in list(self.actors.actors.values()):
            if (
                actor.creation.owner == owner
                and not actor.lifetime_detached
                and actor.state is not ActorState.DEAD
            ):
                self.actors.owner_gone(actor, f"its driver (pid {proc.pid}) disconnected")
        self.actors.release_all(proc)
        log.info("driver pid %d (process %d) detached", proc.pid, owner)
        if not self.stopping:
            self.dispatch.schedule()

    def _worker_gone(self, worker: WorkerRecord, code: int | None) -> None:
        """A worker's process exited (``code``) or its connection closed (None)."""
        if worker.state is WorkerState.DRIVER:
            self._driver_left(worker)
            return
        if worker.state is WorkerState.DEAD:
            if code is not None and not worker.exit_status:
                worker.exit_status = describe_exit(code)
            return
        how = describe_exit(code) if code is not None else "connection lost"
        if worker.exit_status:  # the worker said why before it went (``exiting``)
            how = f"{worker.exit_status}, {how}" if code is not None else worker.exit_status
        worker.exit_status = how
        self.registry.remove(worker)
        self.out.effect(Disconnect(worker=worker))
        dispatch = self.dispatch
        queued, worker.queued = worker.queued, type(worker.queued)()
        dispatch.hand_back(list(queued))
        self.actors.release_all(worker)
        spec = worker.task
        if spec is not None:
            worker.task = None
            held, worker.held = worker.held, None
            if held is not None:
                self.node.release(held)
            self._task_lost(spec, worker, how)
        actor = worker.actor or worker.purpose
        if actor is not None and actor.worker in (worker, None):
            self.actors.worker_died(actor, worker, how)
        if not self.stopping:
            dispatch.schedule()

    def _task_lost(self, spec: TaskSpec, worker: WorkerRecord, how: str) -> None:
        tasks = self.tasks
        if spec.cancel_requested == "force":
            exc: HeliostatError = TaskCancelledError(
                f"Task {spec.name!r} was cancelled (its worker was killed).",
                task_name=spec.name,
            )
            tasks.fail(spec, error_payload(exc), "cancelled")
        elif may_retry(spec) and not self.stopping:
            log.warning(
                "worker pid %d died (%s) while running %r; retrying (attempt %d)",
                worker.pid,
                how,
                spec.name,
                spec.attempts + 1,
            )
            tasks.record(spec, worker, "crashed")
            self.dispatch.retry(spec)
        else:
            exc = WorkerCrashedError(
                f"The worker (pid {worker.pid}) running task {spec.name!r} died ({how}) "
                f"and its retries are spent (max_retries={spec.max_retries}).",
                task_name=spec.name,
                pid=worker.pid,
            )
            tasks.fail(spec, error_payload(exc), "crashed")

    # ----------------------------------------------------------- driver calls --

    def submit(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        self.dispatch.submit(proc, spec)

    def create_actor(
        self,
        proc: WorkerRecord,
        spec: TaskSpec,
        options: ActorOptions,
        reply: Reply | None = None,
    ) -> None:
        """Create an actor; raises (or replies) what :meth:`actor_refusal` finds wrong.

        In a cluster, with ``reply``, a named actor's name is first claimed at the
        head, cluster-wide; ``reply(True, None)`` once it is created.
        """
        if options.detached and proc.state is WorkerState.DRIVER:
            # An attached driver's detached actor is the node's own: it must not name
            # as its owner a process that will go.
            spec.owner = self.driver.index
        refusal = self.actor_refusal(spec, options)
        if refusal is not None:
            if reply is None:
                raise refusal
            reply(False, refusal)
            return
        if options.name and self.peers is not None and reply is not None:
            self.actors.create_named(proc, spec, options, reply)
            return
        self.actors.create(proc, spec, options)
        if reply is not None:
            reply(True, None)

    def actor_refusal(self, spec: TaskSpec, options: ActorOptions) -> ValueError | None:
        """Why this actor cannot be created (a taken name, infeasible resources), or None."""
        if self.actors.name_taken(options):
            return name_taken_error(options.name, options.namespace)
        if not self.dispatch.feasible(spec.resources):
            return InfeasibleResourcesError(self.dispatch.infeasible_message(spec.resources))
        return None

    # -------------------------------------------------------------- reading --

    def live_objects(self) -> list[dict[str, Any]]:
        return [
            {
                "object_id": format_id(entry.id),
                "kind": entry.kind.name,
                "size": entry.size,
                "ref_count": entry.count,
                "owner_pid": self.registry.pid_of(entry.owner),
                "has_lineage": entry.lineage is not None,
            }
            for entry in self.objects.entries.values()
            if entry.kind is not ObjKind.FREED
        ]
