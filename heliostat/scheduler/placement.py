"""Where a task should run: pure placement policy over a snapshot of the nodes.

The engine gives :func:`choose_node` a request, a snapshot of every node's total and
available resources (:class:`NodeView`), the id of the node that is deciding, and the
task's strategy; it gets back a :class:`PlacementDecision` and acts on it. Nothing here
does I/O, keeps state or reads a clock, so every rule is a unit test.

Strategies, following Ray:

* ``Strategy.DEFAULT`` is bottom-up and local-first: run on the local node if the
  request fits there now; otherwise spill back to the live node that fits now and is
  least utilized; otherwise, if some node could ever hold the request, queue it (on the
  local node if its total can hold it, so the task waits where it was submitted);
  otherwise the request is infeasible.
* ``Strategy.SPREAD`` rotates over the live nodes that fit now, starting at the
  caller's ``spread_counter`` (the caller increments it per task), so consecutive tasks
  land on different nodes.
* :class:`NodeAffinity` pins a task to one node. If that node is dead, unknown or too
  small, a soft affinity falls back to ``DEFAULT`` and a hard one is infeasible.

Utilization, used to pick among spillback candidates, is a node's most-used resource:
``max((total - available) / total)`` over the resources it has (Ray's "critical
resource utilization"). Ties go to the node listed first, so pass nodes in a stable
order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from heliostat.scheduler.resources import ResourceSet

__all__ = [
    "NodeAffinity",
    "NodeView",
    "PlacementDecision",
    "PlacementKind",
    "Strategy",
    "choose_node",
    "infeasible_message",
    "is_feasible",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    """A snapshot of one node's resources, as placement sees it.

    Attributes:
        node_id: The node's id.
        total: Everything the node has.
        available: What is free now; may be negative while the node is oversubscribed.
        alive: False once the node has missed its heartbeats; dead nodes get no work.
    """

    node_id: str
    total: ResourceSet
    available: ResourceSet
    alive: bool = True


class Strategy(StrEnum):
    """A named scheduling strategy (``scheduling_strategy="SPREAD"``)."""

    DEFAULT = "DEFAULT"
    SPREAD = "SPREAD"


@dataclass(frozen=True, slots=True)
class NodeAffinity:
    """Run on one given node (Ray's ``NodeAffinitySchedulingStrategy``).

    Attributes:
        node_id: The node to run on.
        soft: If True and the node is dead, unknown or can never hold the request, fall
            back to the default strategy; if False, the request is infeasible instead.
    """

    node_id: str
    soft: bool = False


class PlacementKind(StrEnum):
    """What the engine should do with a request."""

    RUN = "RUN"
    """Dispatch to ``node_id`` now: it has the resources available."""
    SPILLBACK = "SPILLBACK"
    """The local node is full; forward to ``node_id``, which has the resources now."""
    QUEUE = "QUEUE"
    """No suitable node has the resources now; wait on ``node_id``, which can hold them."""
    INFEASIBLE = "INFEASIBLE"
    """No live node can ever hold the request (``node_id`` is None); see ``reason``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementDecision:
    """The result of :func:`choose_node`.

    Attributes:
        kind: What to do (run, spill back, queue, or report infeasible).
        node_id: The chosen node; None exactly when ``kind`` is ``INFEASIBLE``.
        reason: A sentence saying why, for logs and for the user's error message.
    """

    kind: PlacementKind
    node_id: str | None
    reason: str


def is_feasible(request: ResourceSet, nodes: Iterable[NodeView]) -> bool:
    """Return whether some live node's total could ever hold ``request``.

    Args:
        request: The resources asked for.
        nodes: The cluster's nodes.
    """
    return any(node.alive and request.is_subset_of(node.total) for node in nodes)


def infeasible_message(request: ResourceSet, nodes: Iterable[NodeView]) -> str:
    """Explain why ``request`` fits no node: for each resource it asks for, the most
    any one live node has, and the whole cluster's.

    Example:
        ``No node can ever satisfy {'CPU': 4.0, 'GPU': 1.0}: the most any one node has
        is {'CPU': 2.0, 'GPU': 0.0} (the whole cluster: {'CPU': 2.0, 'GPU': 0.0}).
        Ask for less, or add a node that has these resources.``

    Args:
        request: The resources asked for.
        nodes: The cluster's nodes; dead ones are ignored.
    """
    wanted = request.to_dict()
    hint = "Ask for less, or add a node that has these resources."
    live = [node for node in nodes if node.alive]
    if not live:
        return f"No node can ever satisfy {wanted}: there are no live nodes. {hint}"
    largest = {name: max(node.total.get(name) for node in live) for name in wanted}
    cluster = {name: sum(node.total.get(name) for node in live) for name in wanted}
    return (
        f"No node can ever satisfy {wanted}: the most any one node has is {largest} "
        f"(the whole cluster: {cluster}). {hint}"
    )


def choose_node(
    request: ResourceSet,
    nodes: Sequence[NodeView],
    *,
    local_node_id: str,
    strategy: Strategy | NodeAffinity = Strategy.DEFAULT,
    spread_counter: int = 0,
) -> PlacementDecision:
    """Decide where ``request`` should run.

    Args:
        request: The resources the task or actor asks for.
        nodes: A snapshot of the cluster's nodes, in a stable order (ties and SPREAD's
            rotation follow it). The local node may be absent (a driver-only process).
        local_node_id: The id of the node making the decision.
        strategy: ``Strategy.DEFAULT``, ``Strategy.SPREAD`` (plain strings
            ``"DEFAULT"`` / ``"SPREAD"`` also work) or a :class:`NodeAffinity`.
        spread_counter: For SPREAD, where the rotation starts; the caller increments it
            after each task it spreads.

    Returns:
        The decision. See the module docstring for the rules of each strategy.

    Raises:
        ValueError: If ``strategy`` is not one of the above.
    """
    if isinstance(strategy, NodeAffinity):
        return _choose_affinity(request, nodes, local_node_id, strategy)
    if strategy == Strategy.DEFAULT:
        return _choose_default(request, nodes, local_node_id)
    if strategy == Strategy.SPREAD:
        return _choose_spread(request, nodes, spread_counter)
    raise ValueError(
        f"Unknown scheduling strategy {strategy!r}; use 'DEFAULT', 'SPREAD' or "
        "NodeAffinity(node_id, soft=...)."
    )


def _utilization(node: NodeView) -> float:
    """The fraction used of the node's most-used resource (may exceed 1)."""
    worst = 0.0
    for name, total in node.total.to_dict().items():
        used = (total - node.available.get(name)) / total
        worst = max(worst, used)
    return worst


def _least_utilized(candidates: Sequence[NodeView]) -> NodeView:
    # min() keeps the first of equal keys, so ties go to the earliest node listed.
    return min(candidates, key=_utilization)


def _find(nodes: Sequence[NodeView], node_id: str) -> NodeView | None:
    for node in nodes:
        if node.node_id == node_id:
            return node
    return None


def _infeasible(request: ResourceSet, nodes: Sequence[NodeView]) -> PlacementDecision:
    return PlacementDecision(
        kind=PlacementKind.INFEASIBLE,
        node_id=None,
        reason=infeasible_message(request, nodes),
    )


def _choose_default(
    request: ResourceSet, nodes: Sequence[NodeView], local_node_id: str
) -> PlacementDecision:
    local = _find(nodes, local_node_id)
    if local is not None and local.alive and request.is_subset_of(local.available):
        return PlacementDecision(
            kind=PlacementKind.RUN,
            node_id=local.node_id,
            reason=f"The local node {local.node_id!r} has {request.to_dict()} available.",
        )
    fitting = [
        node
        for node in nodes
        if node.alive and node.node_id != local_node_id and request.is_subset_of(node.available)
    ]
    if fitting:
        chosen = _least_utilized(fitting)
        return PlacementDecision(
            kind=PlacementKind.SPILLBACK,
            node_id=chosen.node_id,
            reason=(
                f"The local node {local_node_id!r} cannot run {request.to_dict()} now; "
                f"node {chosen.node_id!r} is the least utilized node that can."
            ),
        )
    if local is not None and local.alive and request.is_subset_of(local.total):
        return PlacementDecision(
            kind=PlacementKind.QUEUE,
            node_id=local.node_id,
            reason=(
                f"No node has {request.to_dict()} available now; queued on the local "
                f"node {local.node_id!r}, which can hold it."
            ),
        )
    feasible = [node for node in nodes if node.alive and request.is_subset_of(node.total)]
    if feasible:
        chosen = _least_utilized(feasible)
        return PlacementDecision(
            kind=PlacementKind.QUEUE,
            node_id=chosen.node_id,
            reason=(
                f"No node has {request.to_dict()} available now and the local node "
                f"{local_node_id!r} can never hold it; queued on node {chosen.node_id!r}."
            ),
        )
    return _infeasible(request, nodes)


def _choose_spread(
    request: ResourceSet, nodes: Sequence[NodeView], spread_counter: int
) -> PlacementDecision:
    fitting = [node for node in nodes if node.alive and request.is_subset_of(node.available)]
    if fitting:
        chosen = fitting[spread_counter % len(fitting)]
        return PlacementDecision(
            kind=PlacementKind.RUN,
            node_id=chosen.node_id,
            reason=(
                f"SPREAD: node {chosen.node_id!r} is next in rotation among the "
                f"{len(fitting)} node(s) with {request.to_dict()} available."
            ),
        )
    feasible = [node for node in nodes if node.alive and request.is_subset_of(node.total)]
    if feasible:
        chosen = feasible[spread_counter % len(feasible)]
        return PlacementDecision(
            kind=PlacementKind.QUEUE,
            node_id=chosen.node_id,
            reason=(
                f"SPREAD: no node has {request.to_dict()} available now; queued on node "
                f"{chosen.node_id!r}, next in rotation among nodes that can hold it."
            ),
        )
    return _infeasible(request, nodes)


def _choose_affinity(
    request: ResourceSet,
    nodes: Sequence[NodeView],
    local_node_id: str,
    affinity: NodeAffinity,
) -> PlacementDecision:
    target = _find(nodes, affinity.node_id)
    if target is None:
        problem = f"node {affinity.node_id!r} is not in the cluster"
    elif not target.alive:
        problem = f"node {affinity.node_id!r} is dead"
    elif not request.is_subset_of(target.total):
        problem = (
            f"node {affinity.node_id!r} can never hold {request.to_dict()} "
            f"(its total is {target.total.to_dict()})"
        )
    elif request.is_subset_of(target.available):
        return PlacementDecision(
            kind=PlacementKind.RUN,
            node_id=target.node_id,
            reason=f"Node affinity: node {target.node_id!r} has {request.to_dict()} available.",
        )
    else:
        return PlacementDecision(
            kind=PlacementKind.QUEUE,
            node_id=target.node_id,
            reason=(
                f"Node affinity: node {target.node_id!r} does not have {request.to_dict()} "
                "available now; queued there."
            ),
        )
    if affinity.soft:
        fallback = _choose_default(request, nodes, local_node_id)
        return PlacementDecision(
            kind=fallback.kind,
            node_id=fallback.node_id,
            reason=f"Soft node affinity ignored: {problem}. {fallback.reason}",
        )
    return PlacementDecision(
        kind=PlacementKind.INFEASIBLE,
        node_id=None,
        reason=(
            f"Hard node affinity cannot be met: {problem}. Pass "
            f"NodeAffinity({affinity.node_id!r}, soft=True) to fall back to other nodes, "
            "or choose a live node that has these resources."
        ),
    )
