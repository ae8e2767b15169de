"""Ray's scheduling strategy objects, and what a local node does with them.

``NodeAffinitySchedulingStrategy(node_id, soft)`` is honoured as far as one node
allows: the placement policy (:func:`heliostat.scheduler.choose_node`) decides over
the nodes there are, so a node id that is not this node makes a task fail with
``TaskUnschedulableError`` (``soft=False``) or run here (``soft=True``).
``PlacementGroupSchedulingStrategy`` is refused: placement groups are not supported
yet. ``"DEFAULT"`` and ``"SPREAD"`` are accepted as strings (one node: the same).
"""

from __future__ import annotations

from typing import Any

from heliostat.engine.ids import format_id
from heliostat.exceptions import PlacementGroupsNotSupportedError, TaskUnschedulableError
from heliostat.scheduler import (
    NodeAffinity,
    NodeView,
    PlacementKind,
    ResourceSet,
    choose_node,
)

__all__ = [
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
    "affinity_refusal",
    "check_strategy",
    "refuse_affinity",
]


class NodeAffinitySchedulingStrategy:
    """Run a task or actor on one node, given by its id (``nodes()[i]["NodeID"]``).

    Args:
        node_id: The node to run on.
        soft: If the node does not exist or can never hold the request, run anywhere
            (True) or fail with ``TaskUnschedulableError`` (False, the default).
    """

    def __init__(
        self,
        node_id: str,
        soft: bool,
        _spill_on_unavailable: bool = False,
        _fail_on_unavailable: bool = False,
    ) -> None:
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a str, not {type(node_id).__name__}.")
        if not isinstance(soft, bool):
            raise TypeError(f"soft must be a bool, not {type(soft).__name__}.")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Ray's placement-group strategy: refused, placement groups are not supported yet.

    Raises:
        PlacementGroupsNotSupportedError: always.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise PlacementGroupsNotSupportedError(
            "placement groups are not supported yet by heliostat: schedule with resources "
            "(num_cpus=, resources=) or NodeAffinitySchedulingStrategy instead."
        )


def check_strategy(strategy: Any, what: str) -> None:
    """Refuse a ``scheduling_strategy`` option heliostat cannot honour.

    Raises:
        TypeError: neither a strategy object nor a string.
        ValueError: a string other than ``"DEFAULT"`` / ``"SPREAD"``.
    """
    if strategy is None or isinstance(strategy, NodeAffinitySchedulingStrategy):
        return
    if isinstance(strategy, str):
        if strategy not in ("DEFAULT", "SPREAD"):
            raise ValueError(
                f"Unknown scheduling_strategy {strategy!r} for {what}; use 'DEFAULT', "
                "'SPREAD' or NodeAffinitySchedulingStrategy(node_id, soft)."
            )
        return
    raise TypeError(
        f"scheduling_strategy for {what} must be 'DEFAULT', 'SPREAD' or a "
        f"NodeAffinitySchedulingStrategy, not {type(strategy).__name__}."
    )


def affinity_refusal(
    strategy: NodeAffinitySchedulingStrategy,
    request: ResourceSet,
    local_node_id: str,
    total: ResourceSet,
    what: str,
) -> str | None:
    """Why a node-affinity request cannot run on this (only) node, or None if it can.

    A pure decision: the placement policy is asked over the one node there is.
    """
    node = NodeView(node_id=local_node_id, total=total, available=total)
    decision = choose_node(
        request,
        [node],
        local_node_id=local_node_id,
        strategy=NodeAffinity(strategy.node_id, strategy.soft),
    )
    if decision.kind is not PlacementKind.INFEASIBLE:
        return None
    return f"{what} cannot be scheduled: {decision.reason}"


def refuse_affinity(
    client: Any, strategy: NodeAffinitySchedulingStrategy, request: ResourceSet, name: str
) -> TaskUnschedulableError | None:
    """The error for a task whose node affinity this node cannot honour, or None.

    In a cluster the node manager decides, when the task is ready, over every node.
    """
    info = client.cluster_info()
    if info.get("cluster_peers"):
        return None
    total = ResourceSet.from_dict(info["total"])
    local = format_id(client.minter.node_index)
    reason = affinity_refusal(strategy, request, local, total, f"Task {name!r}")
    return None if reason is None else TaskUnschedulableError(reason)
