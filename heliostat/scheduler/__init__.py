"""Scheduling policy: resource accounting, placement and cron schedules, as pure code
with no I/O.

The engine asks this package where and whether work can run and acts on the answer.
When schedules fire is :mod:`heliostat.scheduler.cron`, which the workflows' trigger
loop imports by its own name: it is not re-exported here because it brings croniter
(about 45 ms of import time), which the engine, and so ``import heliostat``, must not
pay for.
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
