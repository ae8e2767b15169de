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
handle to (from the head) is *borrowed* (:class:`BorrowedActor`): its calls are sent
to its owner, which queues them with its other calls and reports their results back.
A detached actor that a driver's node creates is handed over to the node that hosts
it, which owns it from then on (:meth:`ActorDirectory.hand_over`), so that it outlives
the driver.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import signal
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    EXIT,
    ActorControl,
    CallActor,
    CancelCall,
    ClaimName,
    CreateActor,
    Kill,
    ListNames,
    LookupName,
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


def name_taken_error(name: str, namespace: str) -> ValueError:
    return ValueError(
        f"An actor named {name!r} already exists in namespace {namespace!r}; "
        "pick another name or use get_actor()."
    )


def no_such_actor_error(name: str, namespace: str, why: str = "") -> ValueError:
    return ValueError(f"No actor named {name!r} in namespace {namespace!r}{why}.")


class BorrowedActor:
    """An actor owned by another node (``owner``), that this node holds handles to.

    Its calls are forwarded to the owner as they are submitted (their arguments
    follow when ready); the owner reports each one back.
    """

    __slots__ = (
        "actor_id",
        "owner",
        "name",
        "namespace",
        "class_name",
        "methods",
        "inflight",
        "death_cause",
    )

    def __init__(
        self,
        *,
        actor_id: int,
        owner: int,
        name: str,
        namespace: str,
        class_name: str,
        methods: dict[str, int],
    ) -> None:
        self.actor_id = actor_id
        self.owner = owner  # the node index of its owner
        self.name = name
        self.namespace = namespace
        self.class_name = class_name
        self.methods = methods
        self.inflight: dict[int, TaskSpec] = {}  # calls sent to the owner
        self.death_cause = ""  # set when its owner is gone

    def label(self) -> str:
        return f"{self.class_name}({self.name or hex(self.actor_id)})"


class DependencyTracker(Protocol):
    """Counts a task's unready arguments and queues it when they are ready (dispatch)."""

    def track_deps(self, spec: TaskSpec) -> None: ...


class ActorDirectory:
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

    # ------------------------------------------------------------------ handles --

    def pin(self, actor: ActorRecord) -> None:
        actor.holds += 1

    def unpin(self, actor: ActorRecord) -> None:
        actor.holds -= 1
        if actor.holds <= 0:
            self._out_of_scope(actor)

    def hold(self, proc: WorkerRecord, actor: ActorRecord) -> None:
        actor.holds += 1
        proc.holds[actor.actor_id] = proc.holds.get(actor.actor_id, 0) + 1

    def release(self, proc: WorkerRecord, actor_id: int) -> None:
        n = proc.holds.get(actor_id, 0)
        if n <= 0:
            return
        if n == 1:
            del proc.holds[actor_id]
        else:
            proc.holds[actor_id] = n - 1
        actor = self.actors.get(actor_id)
        if actor is not None:
            self.unpin(actor)

    def release_all(self, proc: WorkerRecord) -> None:
        """A process is gone: drop every handle and object hold it had."""
        actor_holds = {i: n for i, n in proc.holds.items() if i in self.actors}
        for actor_id in actor_holds:
            del proc.holds[actor_id]
        self._objects.table.release_all(proc)
        for actor_id, n in actor_holds.items():
            for _ in range(n):
                actor = self.actors.get(actor_id)
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
        cls_bytes = tasks.function_for(worker, spec.fn_id)
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
        if actor is None:
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
        actor = self.actors.get(spec.actor_id)
        if actor is not None:
            actor.inflight.pop(spec.task_id, None)
            self.after_call(actor)
            return
        borrowed = self.borrowed.get(spec.actor_id)
        if borrowed is not None:
            borrowed.inflight.pop(spec.task_id, None)

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
        restarts = actor.state is not ActorState.DEAD and (
            actor.max_restarts < 0 or actor.restarts < actor.max_restarts
        )
        retry: list[TaskSpec] = []
        tasks = self._tasks
        for spec in inflight.values():
            if restarts and _may_retry_call(actor, spec):
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

    # ------------------------------------------------- names across the cluster --

    def ask_head(self, make: Callable[[int], Any], then: Callable[[bool, Any], None]) -> None:
        """Queue a question for the head (``make(req)``); ``then(ok, answer)`` later."""
        req = next(self._ask_ids)
        self._asks[req] = then
        self._out.effect(make(req))

    def head_answer(self, req: int, ok: bool, value: Any) -> None:
        """The head answered question ``req`` (``ok`` False: ``value`` is why not)."""
        then = self._asks.pop(req, None)
        if then is not None:
            then(ok, value)

    def create_named(
        self, proc: WorkerRecord, spec: TaskSpec, options: ActorOptions, reply: Any
    ) -> None:
        """Claim the actor's name at the head, then create it (``reply`` either way)."""
        key = (options.namespace, options.name)
        self.claiming.add(key)

        def then(ok: bool, holder: Any) -> None:
            self.claiming.discard(key)
            if not ok:
                reply(False, holder)
            elif holder is not None:
                reply(False, name_taken_error(options.name, options.namespace))
            elif proc.state is WorkerState.DEAD:  # its creator is gone: nobody wants it
                self._out.effect(ReleaseName(namespace=key[0], name=key[1], actor_id=spec.actor_id))
            else:
                self.create(proc, spec, options)
                reply(True, None)

        self.ask_head(lambda req: _claim(req, spec.actor_id, options), then)

    def lookup_cluster(self, proc: WorkerRecord, name: str, namespace: str, reply: Any) -> None:
        """``get_actor`` of a name this node does not know: ask the head."""
        peers = self.peers

        def then(ok: bool, found: Any) -> None:
            if not ok:
                reply(False, found)
                return
            if found is None:
                reply(False, no_such_actor_error(name, namespace, " anywhere in the cluster"))
                return
            actor_id = found.actor_id
            owner = int(found.owner, 16)
            if owner == peers.local_index and actor_id not in self.borrowed:
                actor = self.actors.get(actor_id)
                if actor is None or actor.state is ActorState.DEAD:
                    reply(False, no_such_actor_error(name, namespace, " (it is dead)"))
                    return
                self.hold(proc, actor)
                reply(True, (actor_id, actor.class_name, actor.methods))
                return
            if owner != peers.local_index:
                self.borrow(
                    actor_id,
                    owner,
                    name=name,
                    namespace=namespace,
                    class_name=found.class_name,
                    methods=dict(found.methods),
                )
            borrowed = self.borrowed[actor_id]
            reply(True, (actor_id, borrowed.class_name, borrowed.methods))

        self.ask_head(lambda req: LookupName(req=req, namespace=namespace, name=name), then)

    def list_names(self, namespace: str | None, reply: Any) -> None:
        """``(namespace, name)`` of every live named actor (``namespace`` None: all)."""
        if self.peers is None:
            reply(
                True,
                sorted(
                    key
                    for key in self.named
                    if (namespace is None or key[0] == namespace)
                    and self.lookup(key[1], key[0]) is not None
                ),
            )
            return

        def then(ok: bool, found: Any) -> None:
            if ok:
                reply(True, [(e.namespace, e.name) for e in found])
            else:
                reply(False, found)

        self.ask_head(lambda req: ListNames(req=req, namespace=namespace), then)

    def borrow(
        self,
        actor_id: int,
        owner: int,
        *,
        name: str,
        namespace: str,
        class_name: str,
        methods: dict[str, int],
    ) -> BorrowedActor:
        """Node ``owner`` owns actor ``actor_id`` (the head says): send it its calls."""
        borrowed = self.borrowed.get(actor_id)
        if borrowed is None or borrowed.death_cause:
            borrowed = self.borrowed[actor_id] = BorrowedActor(
                actor_id=actor_id,
                owner=owner,
                name=name,
                namespace=namespace,
                class_name=class_name,
                methods=methods,
            )
        else:
            borrowed.owner = owner  # ownership moved (a detached actor's hand-over)
        return borrowed

    def call_borrowed(self, borrowed: BorrowedActor, spec: TaskSpec) -> None:
        """Send a call to the owner of a borrowed actor (or fail it: the owner is gone)."""
        peers = self.peers
        if not borrowed.death_cause and (peers is None or borrowed.owner not in peers.nodes):
            borrowed.death_cause = (
                f"its owner's node {format_id(borrowed.owner)} is no longer in the cluster"
            )
        if borrowed.death_cause:
            self._tasks.fail(
                spec, error_payload(self._borrowed_error(borrowed, spec)), "actor_dead"
            )
            return
        borrowed.inflight[spec.task_id] = spec
        peers.forward(spec, borrowed.owner)

    def _borrowed_error(self, borrowed: BorrowedActor, spec: TaskSpec) -> ActorDiedError:
        return ActorDiedError(
            f"The actor {borrowed.label()} is dead because {borrowed.death_cause}; "
            f"{spec.name!r} did not run.",
            actor_id=format_id(borrowed.actor_id),
            class_name=borrowed.class_name,
        )

    def kill_borrowed(self, borrowed: BorrowedActor, no_restart: bool) -> bool:
        """``kill()`` of an actor another node owns: ask its owner. False: it is gone."""
        peers = self.peers
        if borrowed.death_cause or peers is None or borrowed.owner not in peers.nodes:
            return False
        self._out.effect(
            ActorControl(
                node=borrowed.owner,
                actor_id=borrowed.actor_id,
                kill=True,
                no_restart=no_restart,
            )
        )
        return True

    def owner_node_gone(self, index: int, how: str) -> None:
        """Node ``index`` died or left: the actors it owned that we borrow are dead,
        and their calls in flight fail."""
        for borrowed in self.borrowed.values():
            if borrowed.owner != index or borrowed.death_cause:
                continue
            borrowed.death_cause = f"its owner's node {format_id(index)} {how}"
            inflight, borrowed.inflight = borrowed.inflight, {}
            for spec in inflight.values():
                if spec.state is TaskState.RUNNING:
                    spec.remote_node = 0
                    self._tasks.fail(
                        spec, error_payload(self._borrowed_error(borrowed, spec)), "actor_dead"
                    )

    def hand_over(self, actor: ActorRecord, index: int) -> None:
        """A detached actor this driver's node created goes to node ``index``, which
        hosts and owns it from now on; this node borrows it like any other node."""
        self.peers.hand_over_actor(actor, index)
        self.actors.pop(actor.actor_id, None)
        if actor.name and self.named.get((actor.namespace, actor.name)) == actor.actor_id:
            del self.named[(actor.namespace, actor.name)]
        creation = actor.creation
        creation.state = TaskState.FINISHED
        self._tasks.unpin(creation)  # its arguments travelled with it
        borrowed = self.borrow(
            actor.actor_id,
            index,
            name=actor.name,
            namespace=actor.namespace,
            class_name=actor.class_name,
            methods=actor.methods,
        )
        entries = self._objects.entries
        queue, actor.queue = actor.queue, deque()
        for spec in queue:  # calls made before it started follow it, in order
            if spec.state is not TaskState.WAITING:
                continue
            for aid in spec.arg_ids:  # their arguments follow them (PushValues)
                arg = entries.get(aid)
                if arg is not None and arg.waiters and spec in arg.waiters:
                    arg.waiters.remove(spec)
            spec.pending_deps = 0
            self.call_borrowed(borrowed, spec)

    def adopt(self, actor: ActorRecord) -> None:
        """A peer handed actor ``actor`` over to this node, which owns it now: its name
        (if any) is this node's at the head."""
        if not actor.name:
            return

        def then(ok: bool, holder: Any) -> None:
            if not ok:
                log.warning(
                    "could not tell the head that actor %s is owned here now: %s",
                    actor.label(),
                    holder,
                )
            elif holder is not None and actor.state is not ActorState.DEAD:
                self.dead(actor, f"its name {actor.name!r} was taken by another actor meanwhile")

        options = ActorOptions(
            name=actor.name,
            namespace=actor.namespace,
            class_name=actor.class_name,
            max_restarts=actor.max_restarts,
            max_concurrency=actor.max_concurrency,
            detached=actor.lifetime_detached,
            methods=actor.methods,
        )
        self.ask_head(lambda req: _claim(req, actor.actor_id, options), then)

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


def _claim(req: int, actor_id: int, options: ActorOptions) -> ClaimName:
    return ClaimName(
        req=req,
        namespace=options.namespace,
        name=options.name,
        actor_id=actor_id,
        class_name=options.class_name,
        methods=dict(options.methods),
        detached=options.detached,
    )


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
