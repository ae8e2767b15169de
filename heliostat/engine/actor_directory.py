"""The node's actors: names, handles, call queues, restarts (pure: no I/O).

An actor is ``PENDING`` until its constructor's arguments are ready, ``CREATING``
while a dedicated worker runs the constructor, ``ALIVE``, ``RESTARTING`` after its
worker died with restarts left, and ``DEAD`` for good (``records.ACTOR_TRANSITIONS``).

Calls queue on the actor, not on the node: :meth:`ActorDirectory.pump` sends those
whose arguments are ready, in order per caller. An actor lives while some process
holds a handle to it (``holds``; a handle inside a value counts as a pin of that
value) or while it is named or detached; when the last handle goes and no call is
queued or running, its worker is told to exit.

What the directory decides is queued as instructions (``CreateActor``, ``CallActor``,
``Exit``, ``Kill``) on the outbox; ``node_loop.py`` sends them.

In a cluster, names are cluster-wide and kept by the head: a named actor's name is
claimed there before the actor is created (``ClaimName``), ``get_actor`` of a name not
known here asks the head (``LookupName``), and the name is released when the actor is
dead for good (``ReleaseName``). An actor owned by another node that this node has a
handle to (from the head, or inside something another node sent) is *borrowed*: its
calls are sent to its owner, which queues them with its other calls and reports their
results back; the owner keeps the actor while a borrowing node holds a handle. A detached actor
that a driver's node creates is handed over to the node that hosts it, which owns it
from then on, so that it outlives the driver. That half of the directory is in
:mod:`heliostat.engine.cluster_actors`.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import signal
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from heliostat.engine.cluster_actors import (
    BorrowedActor,
    ClusterActors,
    name_taken_error,
    no_such_actor_error,
)
from heliostat.engine.hosted_actors import HostedActors
from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    EXIT,
    CallActor,
    CancelCall,
    CreateActor,
    Kill,
    Outbox,
    Poke,
    ReleaseName,
)
from heliostat.engine.object_directory import ObjectDirectory, error_payload
from heliostat.engine.records import (
    PEER_INDEX_BASE,
    ActorOptions,
    ActorRecord,
    ActorState,
    TaskSpec,
    TaskState,
    WorkerRecord,
    WorkerState,
    transition,
)
from heliostat.engine.task_table import TaskTable
from heliostat.engine.worker_registry import WorkerRegistry
from heliostat.exceptions import ActorDiedError
from heliostat.scheduler import NodeResources

__all__ = [
    "ActorDirectory",
    "BorrowedActor",
    "DependencyTracker",
    "name_taken_error",
    "no_such_actor_error",
]

log = logging.getLogger("heliostat.engine")


class DependencyTracker(Protocol):
    """Counts a task's unready arguments and queues it when they are ready (dispatch)."""

    def track_deps(self, spec: TaskSpec) -> None: ...


class ActorDirectory(ClusterActors, HostedActors):
    """Actors by id and by (namespace, name). Called under the node lock."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        node: NodeResources,
        registry: WorkerRegistry,
        objects: ObjectDirectory,
        tasks: TaskTable,
    ) -> None:
        self._out = outbox
        self._node = node
        self._registry = registry
        self._objects = objects
        self._tasks = tasks
        self.actors: dict[int, ActorRecord] = {}
        self.named: dict[tuple[str, str], int] = {}
        # Actors whose arguments are ready, waiting for resources.
        self.pending: deque[ActorRecord] = deque()
        self.deps: DependencyTracker  # wired by the node manager
        self.peers: Any = None  # peers.Peers in a cluster: actors may live on other nodes
        # In a cluster: actors other nodes own that this node has handles to.
        self.borrowed: dict[int, BorrowedActor] = {}
        self.claiming: set[tuple[str, str]] = set()  # names being claimed at the head
        self._asks: dict[int, Callable[[bool, Any], None]] = {}  # questions to the head
        self._ask_ids = itertools.count(1)
        # In a cluster: our actors whose handles were sent to other nodes, by actor id:
        # node -> handle transfers not let go of yet (may dip below zero for a moment,
        # see ClusterActors.on_borrow). An actor with any count above zero is pinned.
        self.lent: dict[int, dict[int, int]] = {}
        # Peers' actors that live here: handle transfers to this node their owners
        # counted, given back when only the owner's own hold is left.
        self.hosted_received: dict[int, int] = {}

    # ------------------------------------------------------------------ handles --

    # Both kinds of actor are counted alike: ours (``ActorRecord``) and those another
    # node owns (``BorrowedActor``), whose record goes when the count falls to zero.

    def pin(self, actor: ActorRecord | BorrowedActor) -> None:
        actor.holds += 1

    def unpin(self, actor: ActorRecord | BorrowedActor) -> None:
        actor.holds -= 1
        if actor.holds <= 0:
            if type(actor) is BorrowedActor:
                self.unheld(actor)
            else:
                self._out_of_scope(actor)  # type: ignore[arg-type]
        elif self.hosted_received and actor.actor_id in self.hosted_received:
            self.hosted_unheld(actor)  # type: ignore[arg-type]

    def hold(self, proc: WorkerRecord, actor: ActorRecord | BorrowedActor) -> None:
        actor.holds += 1
        proc.holds[actor.actor_id] = proc.holds.get(actor.actor_id, 0) + 1

    def _counted(self, actor_id: int) -> ActorRecord | BorrowedActor | None:
        actor = self.actors.get(actor_id)
        return actor if actor is not None else self.borrowed.get(actor_id)

    def release(self, proc: WorkerRecord, actor_id: int) -> None:
        n = proc.holds.get(actor_id, 0)
        if n <= 0:
            return
        if n == 1:
            del proc.holds[actor_id]
        else:
            proc.holds[actor_id] = n - 1
        actor = self._counted(actor_id)
        if actor is not None:
            self.unpin(actor)

    def release_all(self, proc: WorkerRecord) -> None:
        """A process is gone: drop every handle and object hold it had."""
        actor_holds = {
            i: n for i, n in proc.holds.items() if i in self.actors or i in self.borrowed
        }
        for actor_id in actor_holds:
            del proc.holds[actor_id]
        self._objects.table.release_all(proc)
        for actor_id, n in actor_holds.items():
            for _ in range(n):
                actor = self._counted(actor_id)
                if actor is not None:
                    self.unpin(actor)

    # ----------------------------------------------------------------- creation --

    def name_taken(self, options: ActorOptions) -> bool:
        name = options.name
        if not name:
            return False
        if (options.namespace, name) in self.claiming:
            return True
        actor_id = self.named.get((options.namespace, name))
        existing = self.actors.get(actor_id) if actor_id is not None else None
        return existing is not None and existing.state is not ActorState.DEAD

    def create(
        self, proc: WorkerRecord, spec: TaskSpec, options: ActorOptions, *, start: bool = True
    ) -> ActorRecord:
        """Register an actor (name checked and resources feasible: the caller's part);
        ``start``: start it when its arguments are ready."""
        name, namespace = options.name, options.namespace
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
        actor.lifetime_detached = options.detached
        self.actors[actor.actor_id] = actor
        if name:
            self.named[(namespace, name)] = actor.actor_id
        self.hold(proc, actor)  # the creator's handle
        objects = self._objects
        for aid in spec.arg_ids:
            objects.table.pin(aid)
        for cid in spec.contained:
            objects.pin_any(cid)
        if start:
            self.deps.track_deps(spec)
        return actor

    def lookup(self, name: str, namespace: str) -> ActorRecord | None:
        """The live actor with this name, or None."""
        actor_id = self.named.get((namespace, name))
        actor = self.actors.get(actor_id) if actor_id is not None else None
        if actor is None or actor.state is ActorState.DEAD:
            return None
        return actor

    def start(self, actor: ActorRecord) -> None:
        """Find resources and a dedicated worker for an actor whose arguments are ready.

        In a cluster, an actor this node can never hold, or whose strategy names
        another node, is created on a peer (it then lives there; this node keeps its
        record, queue and handles, and forwards its calls).
        """
        if actor.state not in (ActorState.PENDING, ActorState.RESTARTING):
            return
        peers = self.peers
        if peers is not None and actor.creation.owner < PEER_INDEX_BASE:
            if actor.lifetime_detached and peers.driver_node:
                where = peers.place_detached(actor)
                if type(where) is str:
                    self.dead(actor, f"it cannot be scheduled: {where}")
                elif where == -1:
                    self.pending.append(actor)
                else:
                    self.hand_over(actor, where)
                return
            where = peers.place_actor(actor, self._node)
            if type(where) is str:
                self.dead(actor, f"it cannot be scheduled: {where}")
                return
            if where == -1:  # no peer has room now: wait like a local one would
                self.pending.append(actor)
                return
            if where:
                peers.create_remote_actor(actor, where)
                transition(actor, ActorState.CREATING)
                return
        if not self._node.try_acquire(actor.resources):
            self.pending.append(actor)
            return
        idle = self._registry.idle
        if idle:
            self.send_create(actor, idle.pop())
        else:
            self._registry.spawn(actor)
        transition(actor, ActorState.CREATING)

    def start_pending(self) -> None:
        for _ in range(len(self.pending)):
            self.start(self.pending.popleft())

    def send_create(self, actor: ActorRecord, worker: WorkerRecord) -> None:
        transition(worker, WorkerState.ACTOR)
        worker.actor = actor
        worker.purpose = None
        actor.worker = worker
        spec = actor.creation
        tasks = self._tasks
        resolved = tasks.resolve_args(spec, worker) or []
        cls_bytes = tasks.function_for(worker, spec)
        self._out.send(worker, CreateActor(actor=actor, cls_bytes=cls_bytes, resolved=resolved))

    def ready(self, worker: WorkerRecord, actor_id: int, error: bytes | None) -> None:
        """The constructor returned, or raised ``error`` (the actor is then dead)."""
        actor = worker.actor
        if actor is None or actor.actor_id != actor_id:
            return
        if actor.state is ActorState.DEAD:  # killed while its constructor ran
            self._out.send(worker, EXIT)
            return
        owner = actor.creation.owner
        if owner >= PEER_INDEX_BASE and self.peers is not None:
            self.peers.actor_started(owner - PEER_INDEX_BASE, actor.actor_id, error)
        if error is not None:
            actor.max_restarts = actor.restarts
            self.dead(actor, f"its constructor failed: {_first_line(error)}")
            self._out.send(worker, EXIT)
            return
        transition(actor, ActorState.ALIVE)
        self.pump(actor)

    # -------------------------------------------------------------------- calls --

    def submit_call(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        actor = self.actors.get(spec.actor_id)
        self._tasks.register(proc, spec)
        if self.borrowed and (actor is None or self.still_out_at_owner(proc, actor)):
            borrowed = self.borrowed.get(spec.actor_id)
            if borrowed is not None:
                self.call_borrowed(borrowed, spec)
                return
        if actor is None or actor.state is ActorState.DEAD:
            self._tasks.fail(spec, error_payload(self.died_error(actor, spec)), "actor_dead")
            return
        actor.queue.append(spec)
        self.deps.track_deps(spec)

    def pump(self, actor: ActorRecord) -> None:
        """Send queued calls whose arguments are ready, in order per caller.

        As in Ray, ordering is per caller (the process that submitted the call): a
        call waits behind an earlier call *of its own caller* whose arguments are not
        ready, never behind another caller's.
        """
        if actor.state is not ActorState.ALIVE:
            return
        if actor.remote_node:
            self._pump_remote(actor)
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
            if not self._send_call(actor, worker, spec):
                queue.appendleft(spec)
                break
        if len(queue) > 1:
            self._pump_past_blocked(actor, worker)

    def _pump_remote(self, actor: ActorRecord) -> None:
        """Forward ready calls to the node the actor lives on, in order per caller."""
        blocked: set[int] = set()
        keep: deque[TaskSpec] = deque()
        for spec in actor.queue:
            if spec.state is not TaskState.WAITING:
                continue
            if spec.owner in blocked or spec.pending_deps > 0:
                blocked.add(spec.owner)
                keep.append(spec)
                continue
            actor.inflight[spec.task_id] = spec
            self.peers.forward(spec, actor.remote_node)
        actor.queue = keep

    def remote_ready(self, actor_id: int, error: bytes | None) -> None:
        """The peer an actor of ours lives on says its constructor ended."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state is not ActorState.CREATING or not actor.remote_node:
            return
        if error is not None:
            actor.max_restarts = actor.restarts
            self.dead(actor, f"its constructor failed: {_first_line(error)}")
            return
        transition(actor, ActorState.ALIVE)
        self.pump(actor)

    def remote_call_ended(self, spec: TaskSpec) -> None:
        """A call forwarded to a remote actor of ours (or to the owner of an actor we
        borrow) was reported (done or failed)."""
        borrowed = self.borrowed.get(spec.actor_id)
        if borrowed is not None and borrowed.inflight.pop(spec.task_id, None) is not None:
            # (The actor may live here now, hosted: this call went out before.)
            self.unheld(borrowed)  # forgotten if that was all that kept it
            return
        actor = self.actors.get(spec.actor_id)
        if actor is not None:
            actor.inflight.pop(spec.task_id, None)
            self.after_call(actor)

    def remote_died(self, actor_id: int, index: int, how: str) -> None:
        """The node an actor of ours lives on says its process died."""
        actor = self.actors.get(actor_id)
        if actor is not None and actor.remote_node == index and actor.state is not ActorState.DEAD:
            self.worker_died(actor, None, how)

    def remote_node_died(self, actor: ActorRecord, node: str) -> None:
        """The node a remote actor of ours lived on died: restart it, or it is dead."""
        self.worker_died(actor, None, f"its node {node} died")

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
                or not self._send_call(actor, worker, spec)
            ):
                blocked.add(spec.owner)
                keep.append(spec)
        actor.queue = keep

    def _send_call(self, actor: ActorRecord, worker: WorkerRecord, spec: TaskSpec) -> bool:
        """Send one call to the actor's worker; False if an argument must be rebuilt."""
        resolved = self._tasks.resolve_args(spec, worker)
        if resolved is None:
            return False
        spec.state = TaskState.RUNNING  # actor calls skip READY: the actor is the queue
        spec.attempts += 1
        spec.worker = worker
        actor.inflight[spec.task_id] = spec
        self._out.send(worker, CallActor(spec=spec, resolved=resolved))
        return True

    def cancel_call(self, worker: WorkerRecord, spec: TaskSpec) -> None:
        """Ask the actor's worker to drop (or cancel, if async) a call it was sent."""
        self._out.send(worker, CancelCall(task_id=spec.task_id))
        self._out.effect(Poke(worker=worker))

    def after_call(self, actor: ActorRecord) -> None:
        """A call ended: retire an actor nobody holds, or send what is next."""
        if actor.out_of_scope and not actor.queue and not actor.inflight:
            self.retire(actor, "all of its handles went out of scope")
        else:
            self.pump(actor)

    # -------------------------------------------------------------------- death --

    def died_error(self, actor: ActorRecord | None, spec: TaskSpec) -> ActorDiedError:
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

    def kill(self, actor: ActorRecord, no_restart: bool) -> None:
        """``kill(actor)``: SIGKILL its worker (the exit then restarts it, or not)."""
        if no_restart:
            actor.max_restarts = actor.restarts  # nothing left
            actor.death_cause = "it was killed with kill()"
        if actor.remote_node:
            self.peers.control_remote_actor(actor, kill=True, no_restart=no_restart)
            if no_restart:
                self.dead(actor, actor.death_cause)
            return
        worker = actor.worker
        if worker is not None and worker.pid:
            self._out.effect(Kill(worker=worker, signal=signal.SIGKILL))
            if no_restart:
                # Dead from now on, not from when its exit is seen: a call that
                # arrives meanwhile fails instead of reaching the dying worker (which
                # might still answer it before the signal lands).
                self.dead(actor, actor.death_cause)
        elif no_restart:
            self.dead(actor, actor.death_cause)

    def exit_requested(self, actor: ActorRecord) -> None:
        """The actor called ``exit_actor()``: when its worker exits, no restart."""
        actor.max_restarts = actor.restarts
        actor.death_cause = "it called exit_actor()"

    def worker_died(self, actor: ActorRecord, worker: WorkerRecord | None, how: str) -> None:
        """The actor's worker (or node: ``worker`` None) is gone: retry its calls on a
        restart, or it is dead."""
        owner = actor.creation.owner
        if owner >= PEER_INDEX_BASE and self.peers is not None:
            # An actor a peer placed here: the peer decides its restart (maybe on
            # another node). Told first, so the failures of its calls that follow
            # on the same ordered stream find them already taken back.
            self.peers.actor_died(owner - PEER_INDEX_BASE, actor.actor_id, how)
        remote = actor.remote_node
        actor.remote_node = 0
        if remote:
            self.peers.forget_calls(remote, list(actor.inflight))
        inflight, actor.inflight = actor.inflight, {}
        if not actor.death_cause:
            actor.death_cause = f"its worker process died ({how})"
        alive = actor.state is not ActorState.DEAD
        restarts = alive and (actor.max_restarts < 0 or actor.restarts < actor.max_restarts)
        # A peer's actor: its owner restarts it, so the calls of this node's own
        # callers that may run again go to the owner (unfold_hosted, from dead()).
        hosted = alive and owner >= PEER_INDEX_BASE and self.peers is not None
        retry: list[TaskSpec] = []
        tasks = self._tasks
        for spec in inflight.values():
            if (restarts or (hosted and spec.owner < PEER_INDEX_BASE)) and _may_retry_call(
                actor, spec
            ):
                retry.append(spec)
                continue
            tasks.fail(spec, error_payload(self.died_error(actor, spec)), "actor_dead")
        for spec in reversed(retry):  # back to the front of the queue, in their order
            tasks.record(spec, worker, "crashed")
            spec.state = TaskState.WAITING  # unsent again (actor calls skip READY)
            spec.worker = None
            actor.queue.appendleft(spec)
        actor.worker = None
        if actor.state is not ActorState.DEAD and not remote:
            self._node.release(actor.resources)
        if actor.state is ActorState.DEAD:
            return
        if actor.max_restarts < 0 or actor.restarts < actor.max_restarts:
            actor.restarts += 1
            actor.death_cause = ""
            transition(actor, ActorState.RESTARTING)
            log.info("restarting actor %s (restart %d)", actor.label(), actor.restarts)
            self.start(actor)
        else:
            self.dead(actor, actor.death_cause, resources_released=True)

    def dead(self, actor: ActorRecord, cause: str, *, resources_released: bool = False) -> None:
        """The actor is dead for good: its queued and running calls fail."""
        if actor.state is ActorState.DEAD:
            return
        if actor.worker is not None and not resources_released:
            self._node.release(actor.resources)
        if actor.remote_node:  # let the node it lives on end it too
            self.peers.control_remote_actor(actor, kill=True, no_restart=True)
            actor.remote_node = 0
        if actor.name and self.peers is not None and actor.creation.owner < PEER_INDEX_BASE:
            # Ours, and named: its name is free again, cluster-wide.
            self._out.effect(
                ReleaseName(namespace=actor.namespace, name=actor.name, actor_id=actor.actor_id)
            )
        actor.death_cause = cause
        transition(actor, ActorState.DEAD)
        if actor.creation.owner >= PEER_INDEX_BASE and self.peers is not None:
            self.unfold_hosted(actor)  # this node's callers follow it to its owner
        tasks = self._tasks
        queue, actor.queue = actor.queue, deque()
        for spec in queue:
            if spec.state in (TaskState.WAITING, TaskState.READY):
                tasks.fail(spec, error_payload(self.died_error(actor, spec)), "actor_dead")
        inflight, actor.inflight = actor.inflight, {}
        for spec in inflight.values():
            tasks.fail(spec, error_payload(self.died_error(actor, spec)), "actor_dead")
        creation = actor.creation
        if creation.state is not TaskState.FINISHED:
            creation.state = TaskState.FINISHED
            tasks.unpin(creation)
        if actor in self.pending:
            self.pending.remove(actor)

    def _out_of_scope(self, actor: ActorRecord) -> None:
        if actor.detached or actor.state is ActorState.DEAD:
            return
        actor.out_of_scope = True
        if not actor.queue and not actor.inflight:
            self.retire(actor, "all of its handles went out of scope")

    def retire(self, actor: ActorRecord, cause: str) -> None:
        worker = actor.worker
        actor.max_restarts = actor.restarts
        self.dead(actor, cause)
        if worker is not None:
            self._out.send(worker, EXIT)  # dropped if it has not connected yet
        self.actors.pop(actor.actor_id, None)
        self.lent.pop(actor.actor_id, None)
        self.hosted_received.pop(actor.actor_id, None)
        if actor.name:
            self.named.pop((actor.namespace, actor.name), None)

    def owner_gone(self, actor: ActorRecord, cause: str) -> None:
        """The actor's owner is gone (its node left or died): the actor goes too, at
        once, even mid-call (fate sharing: nobody is left to call it or to read what
        it returns), and its resources are free for other work."""
        worker = actor.worker
        self.retire(actor, cause)
        if worker is not None and worker.pid:
            self._out.effect(Kill(worker=worker, signal=signal.SIGKILL))

    def summary(self) -> list[dict[str, object]]:
        return [
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
            for a in self.actors.values()
        ]


def _first_line(error: bytes) -> str:
    try:
        cause = pickle.loads(error)
        return str(cause).splitlines()[0] if str(cause) else repr(cause)
    except Exception:  # an unpicklable error still kills the actor
        return "its constructor raised an exception"


def _may_retry_call(actor: ActorRecord, spec: TaskSpec) -> bool:
    """May a call in flight when the actor's process died run again (max_task_retries)?"""
    if spec.cancel_requested:
        return False
    limit = actor.max_task_retries
    return limit < 0 or spec.attempts <= limit
