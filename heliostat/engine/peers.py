"""Tasks and objects between nodes: the node manager's side of the cluster (pure).

A node manager that belongs to a cluster knows its *peers* (the other live nodes, as
the head lists them) and decides here, under its lock like every other decision:

* **Where a ready task runs.** A task runs on the node that submitted it when it fits
  there; when the local node is full (or can never hold the task), it *spills back*
  to a peer with room (:meth:`Peers.spill`), least loaded first. ``SPREAD`` and
  ``NodeAffinitySchedulingStrategy`` are decided once, when the task becomes ready
  (:meth:`Peers.route`). The policy itself is ``scheduler.placement``.
* **What travels.** The submitting node stays the task's owner: it keeps the spec,
  the lineage and the returned values. It sends the peer the task and its arguments
  (:class:`ForwardTask`): small values inline, large ones as a size and the node whose
  store holds them (:class:`WireValue` ``at``), which the peer pulls (:class:`PullObject`)
  before the task runs. The peer runs the task as if it were its own, then reports the
  results the same way (:class:`ReportTask`).
* **Where large values live (ownership, as in Ray).** A large result stays on the node
  that made it: the owner only records where it lives (an entry of kind ``REMOTE``
  with its :class:`~heliostat.engine.object_table.Location`), and that node keeps it
  pinned on the owner's behalf. The bytes move only when something needs them, and
  straight from where they are:

  1. a reader on the owner's node (``get``, ``wait`` with ``fetch_local``, a task or
     actor call that runs there) pulls it (:meth:`Peers.fetch`) and waits for it, as
     for a value being computed (an actor's constructor pulls its arguments before
     the actor is placed anywhere: a restart may run it on the owner's node);
  2. a task forwarded to another node is told where the value is, and that node pulls
     it from there, not through the owner; on the node that holds it, no byte moves;
  3. the owner's last reference gone, the holder is told (:class:`ReleaseAt`) and
     frees it, whether or not it was ever pulled.

  The rule that makes it safe: **a node that tells a peer about a large value (inline
  values need nothing) keeps its own entry for that peer until the peer's**
  :class:`ReleaseAt`, and an entry that names a location keeps its *keeper's* hold
  (the node that told us) until the entry is freed or lost (:meth:`Peers.let_go`).
  So every location handed out is backed by a chain of holds down to the node that has
  the bytes. A value pulled for a forwarded task's arguments is released to its keeper
  once it is here (the copy then lives on its own); a REMOTE value pulled later keeps
  its keeper's hold, since other nodes may have been told to pull from there.
* **What a dead node costs.** Tasks forwarded to it are retried elsewhere within
  ``max_retries`` (else they fail with ``NodeDiedError``). Values that lived there (or
  that it kept alive for us) are lost: rebuilt from lineage when a reader needs them
  (at once if one waits, ``ObjectDirectory.lost``), else ``ObjectLostError``. Values it
  had promised but not sent yet fail with ``OwnerDiedError``. The other way round, what
  a node kept for a dead peer (its stand-in's holds) is freed.

Refs nested in a value (a list of refs passed to a task or returned by one) travel
with it: their values are sent when ready (:meth:`Peers.push_when_ready`), and the
receiving node holds a pending entry for each until then. Large ones arrive as
locations, like results, and are pulled when read.

A streaming generator task runs wherever a task may; its items travel one by one to
the node that owns it: see :mod:`heliostat.engine.peer_streams`. Actors: see
:mod:`heliostat.engine.peer_actors`.
"""

from __future__ import annotations

import itertools
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from heliostat.engine.dispatch import may_retry
from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    PEER_EFFECTS,
    ActorBorrow,
    ActorControl,
    ActorRefs,
    ActorStarted,
    CancelRemote,
    ForwardTask,
    Outbox,
    PeerEffect,
    PullObject,
    PushValues,
    ReleaseAt,
    ReportTask,
    StreamItem,
    WireValue,
)
from heliostat.engine.object_directory import ObjectDirectory, error_payload
from heliostat.engine.object_table import ObjKind
from heliostat.engine.peer_actors import PeerActors, placement_strategy
from heliostat.engine.peer_streams import PeerStreams
from heliostat.engine.peer_values import PeerValues, Pull
from heliostat.engine.records import (
    PEER_INDEX_BASE,
    ActorState,
    TaskKind,
    TaskSpec,
    TaskState,
    WorkerRecord,
    WorkerState,
    transition,
)
from heliostat.engine.spill_depth import SpillDepth
from heliostat.engine.streams import STREAMING
from heliostat.engine.task_table import TaskTable
from heliostat.exceptions import NodeDiedError, ObjectLostError, OwnerDiedError
from heliostat.scheduler import CPU, ResourceSet
from heliostat.scheduler.placement import (
    NodeAffinity,
    NodeView,
    PlacementKind,
    Strategy,
    choose_node,
)

__all__ = [
    "PEER_EFFECTS",
    "PEER_INDEX_BASE",
    "ActorBorrow",
    "ActorControl",
    "ActorRefs",
    "ActorStarted",
    "CancelRemote",
    "ForwardTask",
    "PeerEffect",
    "PeerInfo",
    "Peers",
    "PullObject",
    "PushValues",
    "ReleaseAt",
    "ReportTask",
    "StreamItem",
    "WireValue",
]

log = logging.getLogger("heliostat.engine")

_SHM = ObjKind.SHM
_NOTHING = ResourceSet()


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """Another node, as the head lists it."""

    index: int
    address: str  # host:port of its node service
    total: ResourceSet
    available: ResourceSet
    alive: bool = True

    @property
    def node_id(self) -> str:
        return format_id(self.index)


class Peers(PeerActors, PeerStreams, PeerValues):
    """This node's view of the others, and the work and values it exchanges with them.

    Called under the node lock; every output is an effect on the outbox.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        local_index: int,
        objects: ObjectDirectory,
        tasks: TaskTable,
        depth: int = 2,
        max_depth: int = 128,
    ) -> None:
        self._out = outbox
        self.local_index = local_index
        self._objects = objects
        self._tasks = tasks
        # Tasks this node keeps forwarded to one peer, per slot of that peer: the first
        # runs, the rest wait there so the peer never idles for a round trip; more for
        # short calls than for long ones (see spill_depth).
        self.depth = SpillDepth(depth, max_depth)
        self.nodes: dict[int, PeerInfo] = {}
        self.procs: dict[int, WorkerRecord] = {}  # a stand-in holder per peer node
        self.inflight: dict[int, dict[int, TaskSpec]] = {}  # owner side, by node
        # What the plain tasks in ``inflight`` ask of each node, together: placement
        # counts it as taken there until they are reported (see _views).
        self._sent_load: dict[int, ResourceSet] = {}
        self._sent_fns: dict[int, set[bytes]] = {}
        # Objects being copied here, by id: at most one pull per object, its record
        # kept until it ends (a pull with a keeper fills a PENDING entry, one without
        # a REMOTE one; either may outlive the entry it was for: Pull).
        self.pulls: dict[int, Pull] = {}
        self.pull_count = 0  # pulls started, ever (``cluster_info``: objects_pulled)
        # Ids of our entries with a location that names each node (as source or keeper),
        # so that a node's death costs what it held for us, not a scan of every entry.
        self.located: dict[int, set[int]] = {}
        self.promised: dict[int, set[int]] = {}  # node -> ids it owes us (PushValues)
        self.unwanted: dict[int, set[int]] = {}  # (peer_streams.py)
        self.remote_owner: dict[int, int] = {}  # executor side: task id -> owner node
        self.copies: dict[int, list[int]] = {}  # executor side: task id -> copies made
        self._spread = itertools.count()
        self._req = itertools.count(1)
        self.hooks: Any = None  # Dispatch: retry, track_deps, schedule (wired later)
        self.actors: Any = None  # ActorDirectory (wired later)
        self.actors_on: dict[int, int] = {}  # actors we placed on each peer
        # URIs of this job's code packages, sent with every task forwarded from here.
        self.code: tuple[str, ...] = ()  # this node's job: its code packages' URIs
        self.env: tuple[tuple[str, str], ...] = ()  # and its env_vars
        self._leaving = False
        self._hosts: dict[ResourceSet, tuple[tuple[int, int], ...]] = {}
        # A driver's node (it leaves with its driver): the detached actors it creates
        # are handed over to the node that hosts them (ActorDirectory.hand_over).
        self.driver_node = False
        # Values that live on peers: read through here, let go of through here.
        objects.remote = self
        objects.table.on_remote_drop = self.let_go

    # ------------------------------------------------------------------ membership --

    def proc(self, index: int) -> WorkerRecord:
        """The stand-in holder for node ``index`` (values held on its behalf)."""
        proc = self.procs.get(index)
        if proc is None:
            proc = self.procs[index] = WorkerRecord(PEER_INDEX_BASE + index)
            proc.state = WorkerState.IDLE
        return proc

    def update(self, nodes: Iterable[PeerInfo]) -> None:
        """The head's current list of nodes: new ones join, missing or dead ones die."""
        seen: dict[int, PeerInfo] = {}
        for info in nodes:
            if info.index != self.local_index and info.alive:
                seen[info.index] = info
        gone = [index for index in self.nodes if index not in seen]
        changed = any(
            (known := self.nodes.get(index)) is None or known.total != info.total
            for index, info in seen.items()
        )
        if gone or changed:
            self._hosts = {}  # who can hold what changed
        self.nodes = seen  # first: what the dead nodes had must not be sent to another dead one
        for index in gone:
            self.node_died(index)
        if self.hooks is not None:
            self.hooks.schedule()

    def leave(self) -> None:
        """This node leaves the cluster (it shuts down): every peer is gone for it.

        Nothing is retried: the work still out on peers was for this node alone.
        """
        self._leaving = True
        self.update([])

    def node_died(self, index: int) -> None:
        """Node ``index`` is gone: retry its tasks, rebuild what it had, fail its promises."""
        self.nodes.pop(index, None)
        self._hosts = {}
        self._sent_fns.pop(index, None)
        name = format_id(index)
        objects = self._objects
        self._sent_load.pop(index, None)
        for spec in list(self.inflight.pop(index, {}).values()):
            spec.remote_node = 0
            if spec.kind is TaskKind.ACTOR_CALL:
                continue  # the actor's restart decides (below)
            if spec.state is not TaskState.RUNNING:
                continue
            if self._leaving:
                exc = NodeDiedError(f"This node left the cluster while node {name} ran the task.")
                self._tasks.fail(spec, error_payload(exc), "node left")
            elif may_retry(spec):
                log.warning("node %s died while running %r; retrying elsewhere", name, spec.name)
                self._tasks.record(spec, None, "node died")
                self.hooks.retry(spec)
            else:
                exc = NodeDiedError(
                    f"The node {name} running task {spec.name!r} died and its retries "
                    f"are spent (max_retries={spec.max_retries})."
                )
                self._tasks.fail(spec, error_payload(exc), "node died")
        actors = self.actors
        if actors is not None:
            actors.owner_node_gone(index, "left the cluster" if self._leaving else "died or left")
            for actor in list(actors.actors.values()):
                if actor.remote_node == index:
                    self.actors_on[index] = 0
                    if self._leaving:
                        actor.remote_node = 0
                        actors.dead(actor, "this node left the cluster")
                    else:
                        actors.remote_node_died(actor, name)
        for oid, pull in list(self.pulls.items()):
            if pull.source == index:  # someone here waits for it: rebuild it now
                del self.pulls[oid]
                entry = objects.entries.get(oid)
                if entry is not None and entry.kind in (ObjKind.PENDING, ObjKind.REMOTE):
                    objects.lost(entry)
        self._forget_locations(index)
        self.unwanted.pop(index, None)
        for oid in self.promised.pop(index, set()):
            entry = objects.entries.get(oid)
            if entry is not None and entry.kind is ObjKind.PENDING:
                lost = OwnerDiedError(
                    f"Object {format_id(oid)} was to come from node {name}, which died.",
                    object_id=format_id(oid),
                )
                objects.set_value(entry, ObjKind.ERROR, error_payload(lost), 0, ())
        for task_id, owner in list(self.remote_owner.items()):
            if owner == index:  # its results have nowhere to go: the owner retries them
                del self.remote_owner[task_id]
                self.copies.pop(task_id, None)
        proc = self.procs.pop(index, None)
        if proc is not None:
            proc.state = WorkerState.DEAD
            if actors is not None:
                owner = proc.index
                for actor in list(actors.actors.values()):
                    if actor.creation.owner == owner:
                        actors.owner_gone(actor, f"its owner's node {name} left the cluster")
                actors.release_all(proc)
            else:
                objects.table.release_all(proc)

    # ------------------------------------------------------------------- placement --

    def _views(self) -> list[NodeView]:
        """The peers for placement. What a peer has available comes from its last
        heartbeat, which does not know about the tasks sent to it since: so at most its
        total less what our tasks in flight there ask (as Ray's raylet charges its view
        of a node for the work it sends there), or a burst of SPREAD tasks would all go
        to the one peer that looked free."""
        views = []
        sent_load = self._sent_load
        for index, info in self.nodes.items():
            available = info.available
            sent = sent_load.get(index)
            if sent:
                available = available.minimum(info.total - sent)
            views.append(NodeView(node_id=info.node_id, total=info.total, available=available))
        return views

    def _hosts_of(self, resources: ResourceSet) -> tuple[tuple[int, int], ...]:
        """The peers that can ever hold ``resources``, each with how many tasks of that
        shape it runs at once (its slots); cached per shape until the peers or their
        totals change."""
        hosts = self._hosts.get(resources)
        if hosts is None:
            cpu = resources.get(CPU)
            found = []
            for index, info in self.nodes.items():
                if resources.is_subset_of(info.total):
                    slots = int(info.total.get(CPU) // cpu) if cpu > 0 else 16
                    found.append((index, max(slots, 1)))
            hosts = self._hosts[resources] = tuple(found)
        return hosts

    def feasible_somewhere(self, resources: ResourceSet) -> bool:
        return bool(self._hosts_of(resources))

    def views(self) -> list[NodeView]:
        """Every peer as placement sees it (for error messages)."""
        return self._views()

    def route(self, spec: TaskSpec, local: NodeView) -> int | str | None:
        """Where a ready task with an explicit strategy goes, decided once.

        Returns None (run here), a peer's index (forward it), or the reason it can
        never run (a string). DEFAULT tasks are not routed: they queue here and spill
        when this node is full (:meth:`spill`).
        """
        strategy = placement_strategy(spec.strategy)
        if strategy is None or not self.spillable(spec):
            return None
        return self._choose(spec.resources, local, strategy)

    def _choose(
        self, request: ResourceSet, local: NodeView, strategy: Strategy | NodeAffinity
    ) -> int | str | None:
        """The placement policy over this node and its peers: None (here), a peer's
        index, or why no node ever can (a string)."""
        decision = choose_node(
            request,
            [local, *self._views()],
            local_node_id=local.node_id,
            strategy=strategy,
            spread_counter=next(self._spread),
        )
        if decision.kind is PlacementKind.INFEASIBLE:
            return decision.reason
        if decision.node_id is None or decision.node_id == local.node_id:
            return None
        return int(decision.node_id, 16)

    def spillable(self, spec: TaskSpec) -> bool:
        """Whether ``spec`` may run on another node (a task of our own)."""
        return spec.kind is TaskKind.NORMAL and spec.owner < PEER_INDEX_BASE and bool(self.nodes)

    def may_spill(self, spec: TaskSpec) -> bool:
        """Whether ``spec``, queued here, may go to a peer with room: a task of our own
        that is not pinned to this node (a node affinity, soft or not, waits for its
        node while that node is alive and can ever hold it, as Ray's does by default)."""
        return self.spillable(spec) and type(placement_strategy(spec.strategy)) is not NodeAffinity

    def spill_target(self, resources: ResourceSet, fn_id: bytes | None = None) -> int | None:
        """The least loaded peer that can take one more task of this shape (a call of
        ``fn_id``: its depth), or None."""
        best: int | None = None
        best_load = 1.0
        inflight = self.inflight
        depth = self.depth.of(fn_id)
        for index, slots in self._hosts_of(resources):
            load = len(inflight.get(index, ())) / (slots * depth)
            if load < best_load:
                best, best_load = index, load
        return best

    # ------------------------------------------------------------------ owner side --

    def forward(self, spec: TaskSpec, index: int, actor_options: Any = None) -> None:
        """Send a ready task of ours (or an actor's creation or call) to node ``index``."""
        objects = self._objects
        entries = objects.entries
        proc = self.proc(index)
        values: list[WireValue] = []
        pending: list[int] = []
        for aid in spec.arg_ids:
            self._add_value(proc, entries[aid], values, pending)
        seen = set(spec.arg_ids)
        for cid in spec.contained:
            if cid not in seen:
                seen.add(cid)
                entry = entries.get(cid)
                if entry is not None:
                    self._add_value(proc, entry, values, pending)
        if pending:
            self.push_when_ready(index, pending)
        if spec.kind is TaskKind.NORMAL:
            transition(spec, TaskState.RUNNING)
        else:
            spec.state = TaskState.RUNNING  # actor work skips READY (actor_directory.py)
        spec.attempts += 1
        spec.remote_node = index
        spec.worker = None
        self.inflight.setdefault(index, {})[spec.task_id] = spec
        if spec.kind is TaskKind.NORMAL:
            sent_load = self._sent_load
            sent_load[index] = sent_load.get(index, _NOTHING) + spec.resources
        self.lend(index, spec.contained, values)
        sent = self._sent_fns.setdefault(index, set())
        fn_bytes = None
        if spec.fn_id not in sent:
            sent.add(spec.fn_id)
            fn_bytes = self._tasks.functions.get(spec.fn_id)
        code, env = spec.job if spec.job is not None else (self.code, self.env)
        self._out.effect(
            ForwardTask(
                node=index,
                spec=spec,
                fn_bytes=fn_bytes,
                values=tuple(values),
                pending=tuple(pending),
                code=code,
                env=env,
                actor_options=actor_options,
            )
        )

    def on_report(
        self,
        index: int,
        task_id: int,
        outcome: str,
        started: float,
        finished: float,
        values: list[WireValue],
        pending: list[int],
    ) -> None:
        """Node ``index`` ran our task ``task_id``."""
        spec = self.inflight.get(index, {}).pop(task_id, None)
        if spec is not None and spec.kind is TaskKind.NORMAL:
            self._sent_load[index] -= spec.resources
        if spec is None or spec.state is not TaskState.RUNNING:
            # Retried elsewhere already (we thought the node dead), or cancelled:
            # its values are not wanted. Let the node drop what it holds for us.
            self._release_pulled(index, values)
            return
        spec.remote_node = 0
        if spec.kind is TaskKind.NORMAL:
            self.depth.ran(spec.fn_id, finished - started)
        if outcome == "error" and self._argument_lost(spec, values):
            self._release_pulled(index, values)
            if may_retry(spec):
                log.warning(
                    "node %s could not fetch an argument of %r; rebuilding it and retrying",
                    format_id(index),
                    spec.name,
                )
                self._tasks.record(spec, None, "argument lost")
                self.hooks.retry(spec)
                self.hooks.schedule()
                return
        # Large results stay where they were made until a reader needs them.
        self._adopt(index, self._receive(index, values, pending, lazy=True))
        if spec.generator == STREAMING:
            # A failed stream ends with its error as one more item, as a local one does.
            stream_value = self._objects.entries.get(spec.return_ids[0])
            if stream_value is not None and stream_value.kind is ObjKind.ERROR:
                self._objects.end_stream(spec.return_ids[0], stream_value.payload)
        self._tasks.finish(spec, started, finished, outcome)
        if spec.kind is TaskKind.ACTOR_CALL:
            self.actors.remote_call_ended(spec)
        self.hooks.schedule()

    def _argument_lost(self, spec: TaskSpec, values: list[WireValue]) -> bool:
        """Whether ``spec`` failed on its node because an argument we said lived on a
        third node could not be pulled from there (that node died, or lost it): then
        the argument is lost here too (rebuilt from lineage when the task runs again),
        as Ray's owner rebuilds an object a node failed to fetch."""
        if spec.kind is not TaskKind.NORMAL or not spec.arg_ids or not values:
            return False
        entries = self._objects.entries
        suspects = {
            format_id(aid): arg
            for aid in spec.arg_ids
            if (arg := entries.get(aid)) is not None
            and arg.kind in (ObjKind.REMOTE, ObjKind.FREED, ObjKind.PENDING)
        }
        first = values[0]
        if not suspects or first.kind != int(ObjKind.ERROR):
            return False
        try:
            exc = pickle.loads(first.payload or b"")
        except Exception:  # not an error of ours, then
            return False
        if type(exc) is not ObjectLostError:
            return False
        arg = suspects.get(exc.object_id)
        if arg is None:
            return False
        if arg.kind is ObjKind.REMOTE:
            self._objects.table.mark_lost(arg)  # its keeper is told (let_go)
        return True

    def cancel(self, spec: TaskSpec, force: bool) -> bool:
        """Ask the node running a forwarded task of ours to cancel it."""
        index = spec.remote_node
        if not index or index not in self.nodes:
            return False
        spec.cancel_requested = "force" if force else "soft"
        self._out.effect(CancelRemote(node=index, task_id=spec.task_id, force=force))
        return True

    # --------------------------------------------------------------- executor side --

    def on_forward(
        self,
        index: int,
        spec: TaskSpec,
        fn_bytes: bytes | None,
        values: list[WireValue],
        pending: list[int],
    ) -> None:
        """Node ``index`` asks us to run its task ``spec`` (already owned by its stand-in).

        ``spec.code`` holds the job's installed packages (import paths, working
        directory), installed by the I/O layer before it called this.
        """
        if spec.kind is TaskKind.ACTOR_CALL:
            ours = self.inflight.get(index)
            mine = ours.get(spec.task_id) if ours else None
            if mine is not None:
                self._came_home(index, mine, fn_bytes, values, pending)
                return
        self.copies[spec.task_id] = self.receive_for(index, spec, fn_bytes, values, pending)
        self.remote_owner[spec.task_id] = index
        self.hooks.submit(self.proc(index), spec)

    def _came_home(
        self,
        index: int,
        spec: TaskSpec,
        fn_bytes: bytes | None,
        values: list[WireValue],
        pending: list[int],
    ) -> None:
        """Our call ``spec`` to an actor we borrow went to its owner, node ``index``,
        which sends it back: the actor lives here now. It runs here as the task it
        is (its returns stay its caller's), and is reported to the owner when it
        ends, as a call the owner sent us would be (hosted_actors.py)."""
        hosted = self.actors.actors.get(spec.actor_id)
        if hosted is None or hosted.state is ActorState.DEAD:
            # It died here since the owner sent this. The owner, told first, takes
            # the call back (retries or fails it) and reports it to us as before.
            self._release_pulled(index, values)
            return
        del self.inflight[index][spec.task_id]
        if fn_bytes is not None:
            self._tasks.functions.setdefault(spec.fn_id, fn_bytes)
        entries = self._objects.entries
        # Its arguments are ours already; only what we lack is copied or promised.
        self.copies[spec.task_id] = self._receive(
            index, values, [oid for oid in pending if oid not in entries]
        )
        self.remote_owner[spec.task_id] = index
        proc = self.proc(index)
        table = self._objects.table
        for rid in spec.return_ids:  # let go of when reported (finished)
            table.hold(proc, rid)
        spec.remote_node = 0
        self.actors.call_came_home(spec)

    def receive_for(
        self,
        index: int,
        spec: TaskSpec,
        fn_bytes: bytes | None,
        values: list[WireValue],
        pending: list[int],
    ) -> list[int]:
        """Take in the code and values a forwarded task came with; the copies made."""
        if fn_bytes is not None:
            self._tasks.functions.setdefault(spec.fn_id, fn_bytes)
        spec.owner = self.proc(index).index
        return self._receive(index, values, pending)

    def release_copies(self, index: int, copies: list[int]) -> None:
        """Drop the stand-in's holds on copies made for work that pinned them itself."""
        proc = self.procs.get(index)
        if proc is not None:
            table = self._objects.table
            for oid in copies:
                table.release(proc, oid)

    def finished(self, spec: TaskSpec, outcome: str) -> None:
        """A task some peer forwarded to us ended here: report it to its owner."""
        index = self.remote_owner.pop(spec.task_id, None)
        if index is None:
            return
        proc = self.procs.get(index)
        if proc is None:
            return
        objects = self._objects
        entries = objects.entries
        values, pending = self._send_values(
            index, proc, [e for rid in spec.return_ids if (e := entries.get(rid)) is not None]
        )
        self._out.effect(
            ReportTask(
                node=index,
                task_id=spec.task_id,
                outcome=outcome,
                started=spec.started_at,
                finished=spec.finished_at,
                values=tuple(values),
                pending=tuple(pending),
            )
        )
        # Our entries for its returns and arguments were held by the owner's stand-in:
        # the values are sent (inline) or held again until pulled (_add_value), and the
        # arguments were only copies for this task.
        table = objects.table
        for ident in (*spec.return_ids, *self.copies.pop(spec.task_id, ())):
            table.release(proc, ident)

    def cancel_forwarded(self, index: int, task_id: int) -> TaskSpec | None:
        """The spec of a task node ``index`` forwarded to us, if it still runs here."""
        if self.remote_owner.get(task_id) != index:
            return None
        return self._tasks.tasks.get(task_id)
