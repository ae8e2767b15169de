"""Scheduling policy: resource accounting and placement, as pure code with no I/O.

The engine asks this package where and whether work can run and acts on the answer.
"""

from __future__ import annotations

from heliostat.scheduler.placement import (
    NodeAffinity,
    NodeView,
    PlacementDecision,
    PlacementKind,
    Strategy,
    choose_node,
    infeasible_message,
    is_feasible,
)
from heliostat.scheduler.resources import CPU, NodeResources, ResourceSet

__all__ = [
    "CPU",
    "NodeAffinity",
    "NodeResources",
    "NodeView",
    "PlacementDecision",
    "PlacementKind",
    "ResourceSet",
    "Strategy",
    "choose_node",
    "infeasible_message",
    "is_feasible",
]
