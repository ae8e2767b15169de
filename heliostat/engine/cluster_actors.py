"""Actors across a cluster: names kept by the head, handles to other nodes' actors,
detached actors handed over (the cluster half of ``ActorDirectory``; pure).

* **Names.** A named actor's name is claimed at the head before the actor is created
  (a name taken anywhere in the cluster is refused as a local clash is), looked up
  there when this node does not know it, and released when the actor dies for good.
  Questions to the head are effects (``AskHead``); their answers come back through
  :meth:`ClusterActors.head_answer` under the node lock.
* **Borrowed handles** (:class:`BorrowedActor`): an actor owned by another node, found
  by name or received inside a task, a value or a result (the sender names the owner
  first: ``ActorRefs``). Its calls go to the owner, which queues them with the
  actor's other calls; a kill or a cancel is passed on to the owner; if the owner's
  node goes, the calls fail with ``ActorDiedError`` naming it. The record is counted
  like a local actor and goes with this node's last handle.
* **Lifetime across nodes**: the owner counts, per borrowing node, the handles sent
  there and not given back (``ActorBorrow``), and keeps the actor while any count is
  above zero; the protocol is numbered above :meth:`ClusterActors.lend`.
* **Detached actors** created by a driver's node are handed over to the node that
  hosts them, which owns them from then on (the driver's node leaves with its driver).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    ActorBorrow,
    ActorControl,
    ActorRefs,
    ClaimName,
    ListNames,
    LookupName,
    Outbox,
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
)
from heliostat.engine.task_table import TaskTable
from heliostat.exceptions import ActorDiedError

__all__ = ["BorrowedActor", "ClusterActors", "name_taken_error", "no_such_actor_error"]

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
    follow when ready); the owner reports each one back. The record is counted like
    an actor of ours (``holds``: processes with a handle, tasks and values with one
    inside) and goes when the count is zero and no call is out
    (:meth:`ClusterActors.unheld`).
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
        "holds",
        "received",
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
        self.holds = 0  # handles here: processes' holds plus pins (tasks, values)
        # Handle transfers to this node the owner counts (``ActorRefs`` received):
        # given back to the owner when the record goes.
        self.received = 0

    def label(self) -> str:
        return f"{self.class_name or 'actor'}({self.name or format_id(self.actor_id)})"


class ClusterActors:
    """Mixed into ``ActorDirectory``, which provides what is declared here."""

    actors: dict[int, ActorRecord]
    named: dict[tuple[str, str], int]
    peers: Any  # peers.Peers in a cluster
    borrowed: dict[int, BorrowedActor]
    lent: dict[int, dict[int, int]]
    hosted_received: dict[int, int]
    claiming: set[tuple[str, str]]
    _asks: dict[int, Callable[[bool, Any], None]]
    _ask_ids: itertools.count[int]
    _out: Outbox
    _tasks: TaskTable
    _objects: ObjectDirectory

    if TYPE_CHECKING:  # provided by ActorDirectory

        def lookup(self, name: str, namespace: str) -> ActorRecord | None: ...
        def hold(self, proc: WorkerRecord, actor: ActorRecord | BorrowedActor) -> None: ...
        def dead(
            self, actor: ActorRecord, cause: str, *, resources_released: bool = False
        ) -> None: ...
        def create(
            self, proc: WorkerRecord, spec: TaskSpec, options: ActorOptions, *, start: bool = ...
        ) -> ActorRecord: ...
        def pin(self, actor: ActorRecord | BorrowedActor) -> None: ...
        def unpin(self, actor: ActorRecord | BorrowedActor) -> None: ...

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
            hosted = self.actors.get(actor_id)
            if owner != peers.local_index and hosted is not None:
                # Another node's actor that lives here: handles of this node's processes
                # are counted on it (as handles that arrive in values are), never on a
                # borrowed record as well, which a release could not tell apart.
                if hosted.state is ActorState.DEAD:
                    reply(False, no_such_actor_error(name, namespace, " (it is dead)"))
                    return
                self.hold(proc, hosted)
                reply(True, (actor_id, hosted.class_name, hosted.methods))
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
            self.hold(proc, borrowed)  # adopted by the handle the caller builds
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
        if borrowed is None:
            borrowed = self.borrowed[actor_id] = BorrowedActor(
                actor_id=actor_id,
                owner=owner,
                name=name,
                namespace=namespace,
                class_name=class_name,
                methods=methods,
            )
            return borrowed
        # Ownership moved (a detached actor's hand-over), or a record of a dead owner
        # meets the actor again (a new incarnation of its node): the handles counted
        # here stay counted.
        borrowed.owner = owner
        borrowed.death_cause = ""
        borrowed.name = borrowed.name or name
        borrowed.namespace = borrowed.namespace or namespace
        borrowed.class_name = borrowed.class_name or class_name
        borrowed.methods = borrowed.methods or methods
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

    def kill_hosted(self, actor: ActorRecord, no_restart: bool) -> bool:
        """``kill()`` of another node's actor that lives here: its owner decides (it
        records why the actor died, restarts it or frees its name), so it is asked, as
        for a borrowed actor. False: the owner is gone."""
        peers = self.peers
        owner = actor.creation.owner - PEER_INDEX_BASE
        if peers is None or owner not in peers.nodes:
            return False
        self._out.effect(
            ActorControl(node=owner, actor_id=actor.actor_id, kill=True, no_restart=no_restart)
        )
        return True

    def owner_node_gone(self, index: int, how: str) -> None:
        """Node ``index`` died or left: the actors it owned that we borrow are dead,
        and their calls in flight fail; the handles it borrowed of ours are gone."""
        for borrowed in list(self.borrowed.values()):
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
            self.unheld(borrowed)
        for actor_id, counts in list(self.lent.items()):
            n = counts.get(index)
            actor = self.actors.get(actor_id)
            if actor is None:
                del self.lent[actor_id]
            elif n is not None:
                self._lent_change(actor, index, -n)

    # -------------------------------------------------- handles between nodes --
    #
    # Lifetime across nodes (Ray's borrowers, counted per node):
    #
    # 1. A node that sends a handle to node N (in a task, its result, a value) first
    #    sends N an ``ActorRefs`` naming the actor's owner, on the same ordered stream,
    #    and counts one transfer to N at the owner: directly if it is the owner, else
    #    by an ``ActorBorrow(+1)`` to the owner, sent before anything that could let
    #    go of its own handles (its own ``ActorBorrow(-n)`` follows on that stream).
    # 2. N keeps a ``BorrowedActor`` counted like a local actor, adding one to
    #    ``received`` per ``ActorRefs``. When its count is zero and none of its calls
    #    is out, N forgets it and gives the owner back ``received`` (``ActorBorrow``).
    # 3. The owner pins the actor while some node's count is above zero. A count may
    #    dip below zero when a borrower's give-back overtakes a third node's +1 (two
    #    streams); that node's own count stays above zero until its +1 has arrived
    #    (step 1), so the actor never ends while a handle to it exists.
    # 4. A borrower's node that dies or leaves loses its counts; an owner's node that
    #    dies or leaves makes its actors dead for every borrower.

    def lend(self, index: int, ids: Iterable[int]) -> None:
        """What is about to be sent to node ``index`` holds these ids: for the actors
        among them, tell ``index`` their owners and count the transfer (step 1)."""
        local = self.peers.local_index
        refs: list[tuple[int, int]] = []
        seen: set[int] = set()
        for ident in ids:
            if ident in seen:
                continue
            seen.add(ident)
            actor = self.actors.get(ident)
            if actor is not None:
                owner = actor.creation.owner
                if owner < PEER_INDEX_BASE:  # ours
                    refs.append((ident, local))
                    if actor.state is not ActorState.DEAD:
                        self._lent_change(actor, index, 1)
                    continue
                owner -= PEER_INDEX_BASE  # a peer's actor that lives here
            else:
                borrowed = self.borrowed.get(ident)
                if borrowed is None:
                    continue
                owner = borrowed.owner
            if owner != index:
                refs.append((ident, owner))
                self._out.effect(ActorBorrow(node=owner, actor_id=ident, borrower=index, delta=1))
        if refs:
            self._out.effect(ActorRefs(node=index, refs=tuple(refs)))

    def borrow_refs(self, refs: list[tuple[int, int]]) -> None:
        """Handles to these (actor id, owner) arrive next (step 2)."""
        peers = self.peers
        if peers is None:
            return
        local = peers.local_index
        for actor_id, owner in refs:
            if owner == local:
                continue  # ours
            hosted = self.actors.get(actor_id)
            if hosted is not None:  # a peer's actor that lives here: counted on it
                if hosted.creation.owner >= PEER_INDEX_BASE:
                    self.hosted_received[actor_id] = self.hosted_received.get(actor_id, 0) + 1
                continue
            borrowed = self.borrowed.get(actor_id)
            if borrowed is None:
                borrowed = self.borrowed[actor_id] = BorrowedActor(
                    actor_id=actor_id,
                    owner=owner,
                    name="",
                    namespace="",
                    class_name="",
                    methods={},
                )
            elif borrowed.owner != owner and not borrowed.death_cause:
                borrowed.owner = owner  # a detached actor handed over since
            borrowed.received += 1

    def unheld(self, borrowed: BorrowedActor) -> None:
        """No handle to ``borrowed`` is left here: once its calls are back, forget it
        and give the owner back what it counted for this node (step 2)."""
        if borrowed.holds > 0 or borrowed.inflight:
            return
        if self.borrowed.get(borrowed.actor_id) is not borrowed:
            return
        peers = self.peers
        if peers is not None and peers.pulls:
            actor_id = borrowed.actor_id
            if any(actor_id in inner for _source, inner in peers.pulls.values()):
                return  # a value on its way here holds a handle to it (pinned on arrival)
        del self.borrowed[borrowed.actor_id]
        if (
            borrowed.received
            and not borrowed.death_cause
            and peers is not None
            and borrowed.owner in peers.nodes
        ):
            self._out.effect(
                ActorBorrow(
                    node=borrowed.owner,
                    actor_id=borrowed.actor_id,
                    borrower=peers.local_index,
                    delta=-borrowed.received,
                )
            )

    def on_borrow(self, actor_id: int, borrower: int, delta: int) -> None:
        """Node ``borrower`` got (``delta`` > 0) or gave back handles of an actor of
        ours (step 3)."""
        actor = self.actors.get(actor_id)
        if (
            actor is None
            or actor.state is ActorState.DEAD
            or actor.creation.owner >= PEER_INDEX_BASE
        ):
            return
        self._lent_change(actor, borrower, delta)

    def _lent_change(self, actor: ActorRecord, index: int, delta: int) -> None:
        counts = self.lent.get(actor.actor_id)
        if counts is None:
            counts = self.lent[actor.actor_id] = {}
        before = any(n > 0 for n in counts.values())
        n = counts.get(index, 0) + delta
        if n:
            counts[index] = n
        else:
            counts.pop(index, None)
        after = any(n > 0 for n in counts.values())
        if not counts:
            del self.lent[actor.actor_id]
        if after and not before:
            self.pin(actor)
        elif before and not after:
            self.unpin(actor)

    def hand_over(self, actor: ActorRecord, index: int) -> None:
        """A detached actor this driver's node created goes to node ``index``, which
        hosts and owns it from now on; this node borrows it like any other node."""
        self.peers.hand_over_actor(actor, index)
        self.actors.pop(actor.actor_id, None)
        lent = self.lent.pop(actor.actor_id, {})  # detached: borrowers do not keep it
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
        # The handles counted here keep counting (not the borrowers' pin: detached).
        borrowed.holds += actor.holds - (1 if any(n > 0 for n in lent.values()) else 0)
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

        self.ask_head(lambda req: _claim(req, actor.actor_id, _options_of(actor)), then)

    def reclaim_names(self) -> None:
        """This node registered with the head again (it was cut off and declared dead,
        which made the head forget its names; or the head restarted): claim the names
        of its living named actors again. A name another actor took meanwhile stays
        that actor's; ours lives on, known by its handles only."""
        for actor in list(self.actors.values()):
            key = (actor.namespace, actor.name)
            if (
                not actor.name
                or actor.state is ActorState.DEAD
                or actor.creation.owner >= PEER_INDEX_BASE
                or self.named.get(key) != actor.actor_id
            ):
                continue

            def then(ok: bool, holder: Any, actor: ActorRecord = actor) -> None:
                key = (actor.namespace, actor.name)
                if not ok:
                    log.warning(
                        "could not claim the name of actor %s again: %s", actor.label(), holder
                    )
                elif holder is not None and self.named.get(key) == actor.actor_id:
                    log.warning(
                        "actor %s lost its name %r to another actor while this node was "
                        "cut off from the cluster; it lives on without it",
                        actor.label(),
                        actor.name,
                    )
                    del self.named[key]

            def claim(req: int, actor: ActorRecord = actor) -> ClaimName:
                return _claim(req, actor.actor_id, _options_of(actor))

            self.ask_head(claim, then)


def _options_of(actor: ActorRecord) -> ActorOptions:
    return ActorOptions(
        name=actor.name,
        namespace=actor.namespace,
        class_name=actor.class_name,
        max_restarts=actor.max_restarts,
        max_concurrency=actor.max_concurrency,
        detached=actor.lifetime_detached,
        methods=actor.methods,
    )


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
