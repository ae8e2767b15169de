"""Placement groups (``ray.util.placement_group``): not supported yet, said clearly.

Every call that would create or use a placement group raises
:class:`~heliostat.exceptions.PlacementGroupsNotSupportedError`;
:func:`get_current_placement_group` answers None, which is true: no code runs in one.
"""

from __future__ import annotations

from typing import Any, NoReturn

from heliostat.exceptions import PlacementGroupsNotSupportedError

__all__ = ["get_current_placement_group", "placement_group", "remove_placement_group"]

_MESSAGE = (
    "placement groups are not supported yet by heliostat: ask for resources per task "
    "or actor (num_cpus=, num_gpus=, resources=) instead."
)


def placement_group(*args: Any, **kwargs: Any) -> NoReturn:
    """Refused: placement groups are not supported yet.

    Raises:
        PlacementGroupsNotSupportedError: always.
    """
    raise PlacementGroupsNotSupportedError(_MESSAGE)


def remove_placement_group(*args: Any, **kwargs: Any) -> NoReturn:
    """Refused: placement groups are not supported yet.

    Raises:
        PlacementGroupsNotSupportedError: always.
    """
    raise PlacementGroupsNotSupportedError(_MESSAGE)


def get_current_placement_group() -> None:
    """None: no task or actor runs in a placement group here."""
    return None
