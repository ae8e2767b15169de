"""Ray's ``ray.util`` names: ``ActorPool``, ``queue.Queue``, scheduling strategies,
``list_named_actors``.

``import heliostat.util.queue`` and ``from heliostat.util.scheduling_strategies import
NodeAffinitySchedulingStrategy`` work as their Ray counterparts do. Placement groups
are not supported yet: :func:`placement_group` says so.
"""

from __future__ import annotations

from heliostat.engine.api import list_named_actors
from heliostat.util import queue, scheduling_strategies
from heliostat.util.actor_pool import ActorPool
from heliostat.util.placement_group import (
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "get_current_placement_group",
    "list_named_actors",
    "placement_group",
    "queue",
    "remove_placement_group",
    "scheduling_strategies",
]
