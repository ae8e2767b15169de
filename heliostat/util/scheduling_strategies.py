"""Ray's scheduling strategy names (``ray.util.scheduling_strategies``).

``NodeAffinitySchedulingStrategy`` works (as far as one node allows: see
:mod:`heliostat.engine.scheduling_strategies`); ``PlacementGroupSchedulingStrategy``
raises :class:`~heliostat.exceptions.PlacementGroupsNotSupportedError`. The strings
``"DEFAULT"`` and ``"SPREAD"`` are accepted as ``scheduling_strategy``.
"""

from __future__ import annotations

from heliostat.engine.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "DEFAULT_SCHEDULING_STRATEGY",
    "SPREAD_SCHEDULING_STRATEGY",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
]

DEFAULT_SCHEDULING_STRATEGY = "DEFAULT"
SPREAD_SCHEDULING_STRATEGY = "SPREAD"
