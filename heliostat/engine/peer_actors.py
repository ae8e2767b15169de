"""Actors between nodes: the actor half of :class:`~heliostat.engine.peers.Peers` (pure).

An actor a node creates starts on that node when it fits there, else on the peer that
holds the fewest of this node's actors (or where its strategy says). The creating
node stays its *owner*: it keeps the record, the handles and the queue of calls, and
forwards each call, in order, to the node the actor lives on (``create_remote_actor``).
A detached actor created by a driver's node is instead *handed over*: the peer that
hosts it owns it from then on, so it outlives the driver (``hand_over_actor``). The
node an actor lives on reports its constructor's end and its process's death to the
owner (``ActorStarted``), who decides restarts; the owner kills or lets go of it with
``ActorControl``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import ActorControl, ActorStarted, Outbox, WireValue
from heliostat.engine.records import PEER_INDEX_BASE, ActorOptions, TaskSpec, WorkerRecord
from heliostat.scheduler import CPU
from heliostat.scheduler.placement import NodeAffinity, NodeView, Strategy

__all__ = ["PeerActors", "placement_strategy"]


class PeerActors:
    """Actor placement and the actor messages between nodes (mixed into ``Peers``,
    which provides the attributes and methods declared here)."""

    _out: Outbox
    local_index: int
    nodes: dict[int, Any]  # index -> PeerInfo
    inflight: dict[int, dict[int, TaskSpec]]
    actors: Any  # ActorDirectory
    actors_on: dict[int, int]
    _spread: itertools.count[int]

    if TYPE_CHECKING:  # provided by Peers

        def proc(self, index: int) -> WorkerRecord: ...
        def forward(self, spec: TaskSpec, index: int, actor_options: Any = None) -> None: ...
        def _choose(self, request: Any, local: NodeView, strategy: Any) -> int | str | None: ...

    def lend(self, index: int, contained: Iterable[int], values: Iterable[WireValue]) -> None:
        """A task's refs (``contained``) and ``values`` go to node ``index``: the actor
        handles among them are lent to it (``ActorDirectory.lend``), first."""
        actors = self.actors
        if actors is None or not (actors.actors or actors.borrowed):
            return
        ids = list(contained)
        for value in values:
            ids.extend(value.contained)
        if ids:
            actors.lend(index, ids)

    def is_actor(self, ident: int) -> bool:
        """Whether ``ident`` (inside a value that arrived) is an actor's id."""
        actors = self.actors
        return actors is not None and (ident in actors.actors or ident in actors.borrowed)

    def place_actor(self, actor: Any, local: Any) -> int | str:
        """Where an actor of ours starts: 0 here, a peer's index, -1 to wait for room,
        or why it never can (a string)."""
        request = actor.resources
        strategy = placement_strategy(actor.creation.strategy)
        local_view = NodeView(
            node_id=format_id(self.local_index), total=local.total, available=local.available
        )
        if strategy is None:
            if request.is_subset_of(local.total):
                return 0
            best: int | None = None
            for index, info in self.nodes.items():
                if request.is_subset_of(info.total) and (
                    best is None or self.actors_on.get(index, 0) < self.actors_on.get(best, 0)
                ):
                    best = index
            if best is not None:
                return best
            strategy = Strategy.DEFAULT  # no node can hold it: the policy says why
        where = self._choose(request, local_view, strategy)
        return 0 if where is None else where

    def create_remote_actor(self, actor: Any, index: int) -> None:
        """Create an actor of ours on node ``index``; its calls follow it there."""
        actor.remote_node = index
        self.actors_on[index] = self.actors_on.get(index, 0) + 1
        creation = actor.creation
        options = ActorOptions(
            name="",  # names live with the owner, who answers get_actor
            namespace=actor.namespace,
            class_name=actor.class_name,
            max_restarts=0,  # the owner restarts it, elsewhere if need be
            max_concurrency=actor.max_concurrency,
            detached=False,  # held by the owner's stand-in until the owner lets go
            methods=actor.methods,
            # Only this node's own callers' calls are retried by it (to the owner,
            # when the actor dies there: hosted_actors.py); the owner retries its own.
            max_task_retries=actor.max_task_retries,
        )
        self.forward(creation, index, actor_options=options)
        self.inflight.get(index, {}).pop(creation.task_id, None)  # ends by actor_started

    def place_detached(self, actor: Any) -> int | str:
        """Where a detached actor of this driver's node goes to live *and be owned*: a
        peer with CPUs (drivers' nodes have none, and leave with their driver); -1 to
        wait for one, or why none ever can (a string)."""
        request = actor.resources
        hosts = {i: info for i, info in self.nodes.items() if info.total.get(CPU) > 0}
        strategy = placement_strategy(actor.creation.strategy)
        if isinstance(strategy, NodeAffinity):
            try:
                wanted: int | None = int(strategy.node_id, 16)
            except ValueError:
                wanted = None
            info = hosts.get(wanted) if wanted is not None else None
            if info is not None and request.is_subset_of(info.total):
                return wanted  # type: ignore[return-value]
            if not strategy.soft:
                return f"node {strategy.node_id} is not a live node that can hold it"
        fits = sorted(i for i, info in hosts.items() if request.is_subset_of(info.total))
        if not fits:
            return -1 if not hosts else f"no node with CPUs can hold {request}"
        if strategy is Strategy.SPREAD:
            return fits[next(self._spread) % len(fits)]
        return min(fits, key=lambda i: self.actors_on.get(i, 0))

    def hand_over_actor(self, actor: Any, index: int) -> None:
        """Create a detached actor on node ``index``, which owns it from then on."""
        self.actors_on[index] = self.actors_on.get(index, 0) + 1
        options = ActorOptions(
            name=actor.name,
            namespace=actor.namespace,
            class_name=actor.class_name,
            max_restarts=actor.max_restarts,
            max_concurrency=actor.max_concurrency,
            detached=True,
            methods=actor.methods,
            max_task_retries=actor.max_task_retries,
            handover=True,
        )
        self.forward(actor.creation, index, actor_options=options)
        self.inflight.get(index, {}).pop(actor.creation.task_id, None)  # not ours any more

    def actor_started(self, owner: int, actor_id: int, error: bytes | None) -> None:
        """An actor a peer created here finished its constructor: tell the peer."""
        self._out.effect(ActorStarted(node=owner, actor_id=actor_id, error=error))

    def actor_died(self, owner: int, actor_id: int, how: str) -> None:
        """The process of an actor a peer placed here died: tell the peer (if alive)."""
        if owner in self.nodes:
            self._out.effect(ActorStarted(node=owner, actor_id=actor_id, error=None, died=how))

    def forget_calls(self, index: int, task_ids: list[int]) -> None:
        """Calls sent to node ``index`` are taken back: a late report of them is ignored."""
        sent = self.inflight.get(index)
        if sent:
            for task_id in task_ids:
                spec = sent.pop(task_id, None)
                if spec is not None:
                    spec.remote_node = 0

    def control_remote_actor(self, actor: Any, *, kill: bool, no_restart: bool) -> None:
        """Kill (or let go of) an actor of ours that lives on a peer."""
        index = actor.remote_node
        if index in self.nodes:
            self._out.effect(
                ActorControl(node=index, actor_id=actor.actor_id, kill=kill, no_restart=no_restart)
            )

    def on_actor_started(
        self, index: int, actor_id: int, error: bytes | None, died: str = ""
    ) -> None:
        if died:
            self.actors.remote_died(actor_id, index, died)
        else:
            self.actors.remote_ready(actor_id, error)

    def on_actor_control(self, index: int, actor_id: int, kill: bool, no_restart: bool) -> None:
        actors = self.actors
        actor = actors.actors.get(actor_id)
        if actor is None:
            borrowed = actors.borrowed.get(actor_id)
            if borrowed is not None and kill and borrowed.owner != index:
                # One we handed over: pass it on. (From its owner, it was meant for
                # the actor while it lived here, which has died since.)
                actors.kill_borrowed(borrowed, no_restart)
            return
        if actor.creation.owner != PEER_INDEX_BASE + index:
            if kill and actor.creation.owner < PEER_INDEX_BASE:  # a borrower kills ours
                actors.kill(actor, no_restart)
            return
        if kill:
            self.actors.kill(actor, no_restart)
        else:
            self.actors.release(self.proc(index), actor_id)


def placement_strategy(strategy: Any) -> Strategy | NodeAffinity | None:
    """The placement policy's form of a task's ``scheduling_strategy`` (None: DEFAULT)."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return Strategy.SPREAD
    node_id = getattr(strategy, "node_id", None)
    if node_id is not None:
        return NodeAffinity(str(node_id), bool(getattr(strategy, "soft", False)))
    return None
