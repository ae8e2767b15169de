"""Another node's actor that lives on this node: whose handles count where (pure).

A peer places its actor here (it stays the owner: it keeps the name, the restarts
and the record its borrowers' calls go through). This node's own processes may hold
handles to it too: received inside values, or found by name. Those handles are
counted on exactly one record at a time, because a process's hold is kept by actor
id and a release could not tell two records apart:

* while the actor lives here, on the **hosted** record (its calls go straight to its
  worker; the owner is given back the transfers it counted for this node once only
  its own hold is left: :meth:`HostedActors.hosted_unheld`);
* otherwise on a **borrowed** record, whose calls go to the owner.

The actor moves between the two as it dies and restarts:

* **Fold** (:meth:`HostedActors.fold_borrowed`): the owner (re)starts the actor here
  while this node borrows it. The borrowed record's handles move onto the hosted
  one; the record stays only while some of its calls are still out at the owner,
  and until they are back, this node's new calls go through the owner too, so that
  none overtakes an earlier one (:meth:`HostedActors.still_out_at_owner`).
* **Coming home** (:meth:`HostedActors.call_came_home`): such a call, sent to the
  owner before the restart, is sent back here by the owner to run. It is the same
  task as ours, under the same ids: it is queued on the actor as it is, never
  registered a second time (which would hand its returns to the owner's stand-in
  and drop the caller's hold on them), and reported to the owner when it ends.
* **Unfold** (:meth:`HostedActors.unfold_hosted`): the actor dies here. Its owner
  decides whether it restarts and where, so this node's handles move onto a
  borrowed record, and this node's calls that had not run (or may run again under
  ``max_task_retries``) go to the owner, which queues them for the restart or fails
  them. Without this, a caller on this node would see the actor as dead for good
  while its owner had restarted it elsewhere.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from heliostat.engine.node_instructions import ActorBorrow, Outbox
from heliostat.engine.records import (
    PEER_INDEX_BASE,
    ActorRecord,
    TaskSpec,
    TaskState,
    WorkerRecord,
)
from heliostat.engine.task_table import TaskTable

if TYPE_CHECKING:
    from heliostat.engine.cluster_actors import BorrowedActor

__all__ = ["HostedActors"]


class HostedActors:
    """Mixed into ``ActorDirectory`` (with ``ClusterActors``), which provides what is
    declared here."""

    actors: dict[int, ActorRecord]
    borrowed: dict[int, BorrowedActor]
    hosted_received: dict[int, int]
    peers: Any  # peers.Peers in a cluster
    deps: Any  # DependencyTracker
    _out: Outbox
    _tasks: TaskTable

    if TYPE_CHECKING:  # provided by ActorDirectory and ClusterActors

        def unheld(self, borrowed: BorrowedActor) -> None: ...
        def call_borrowed(self, borrowed: BorrowedActor, spec: TaskSpec) -> None: ...

    def hosted_unheld(self, actor: ActorRecord) -> None:
        """A handle to ``actor``, a peer's actor that lives here, went: if only its
        owner's own hold is left, give the owner back what it counted for this node."""
        owner = actor.creation.owner - PEER_INDEX_BASE
        standin = self.peers.procs.get(owner) if self.peers is not None else None
        if actor.holds > (standin.holds.get(actor.actor_id, 0) if standin is not None else 0):
            return
        n = self.hosted_received.pop(actor.actor_id, 0)
        if n and owner in self.peers.nodes:
            self._out.effect(
                ActorBorrow(
                    node=owner,
                    actor_id=actor.actor_id,
                    borrower=self.peers.local_index,
                    delta=-n,
                )
            )

    def fold_borrowed(self, actor: ActorRecord) -> None:
        """The owner (re)started ``actor`` here: the handles this node borrowed it by
        are counted on the hosted record from now on."""
        borrowed = self.borrowed.get(actor.actor_id)
        if borrowed is None:
            return
        actor.holds += borrowed.holds
        borrowed.holds = 0
        if borrowed.received:
            received = self.hosted_received
            received[actor.actor_id] = received.get(actor.actor_id, 0) + borrowed.received
            borrowed.received = 0
        self.unheld(borrowed)  # kept while some of its calls are out at the owner

    def still_out_at_owner(self, proc: WorkerRecord, actor: ActorRecord) -> bool:
        """Whether a call by ``proc`` to ``actor`` goes through its owner although the
        actor lives here: it was restarted here while calls of this node were out at
        the owner (a borrowed record is left for them), which come back here in their
        order; a later call goes after them, not past them."""
        return (
            proc.index < PEER_INDEX_BASE  # not a call the owner sent
            and actor.creation.owner >= PEER_INDEX_BASE
            and actor.actor_id in self.borrowed
        )

    def call_came_home(self, spec: TaskSpec) -> None:
        """A call of ours to a borrowed actor, sent to its owner, was sent back here,
        where the actor now lives (alive: ``Peers`` checked): run it on the actor (it
        is registered already). It is reported to the owner when it ends
        (``Peers.finished``)."""
        borrowed = self.borrowed.get(spec.actor_id)
        if borrowed is not None and borrowed.inflight.pop(spec.task_id, None) is not None:
            self.unheld(borrowed)
        spec.state = TaskState.WAITING  # unsent again (actor calls skip READY)
        spec.worker = None
        self.actors[spec.actor_id].queue.append(spec)
        self.deps.track_deps(spec)

    def unfold_hosted(self, actor: ActorRecord) -> None:
        """``actor``, a peer's, died here: this node's handles and unsent calls go to
        its owner through a borrowed record, and the hosted record is dropped."""
        from heliostat.engine.cluster_actors import BorrowedActor

        actor_id = actor.actor_id
        if self.actors.get(actor_id) is actor:
            del self.actors[actor_id]
        owner = actor.creation.owner - PEER_INDEX_BASE
        standin = self.peers.procs.get(owner)
        owners = standin.holds.pop(actor_id, 0) if standin is not None else 0
        local = actor.holds - owners
        received = self.hosted_received.pop(actor_id, 0)
        calls = [
            spec
            for spec in actor.queue
            if spec.owner < PEER_INDEX_BASE and spec.state is TaskState.WAITING
        ]
        if local <= 0 and not received and not calls:
            return
        borrowed = self.borrowed.get(actor_id)
        if borrowed is None:
            borrowed = self.borrowed[actor_id] = BorrowedActor(
                actor_id=actor_id,
                owner=owner,
                name="",  # the owner answers get_actor
                namespace=actor.namespace,
                class_name=actor.class_name,
                methods=actor.methods,
            )
        borrowed.holds += max(local, 0)
        borrowed.received += received
        if calls:
            moved = {spec.task_id for spec in calls}
            actor.queue = deque(spec for spec in actor.queue if spec.task_id not in moved)
            for spec in calls:
                self.call_borrowed(borrowed, spec)
        self.unheld(borrowed)  # nothing here holds it: give the owner its count back
