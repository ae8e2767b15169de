"""``import heliostat.workflow``: the durable workflows API under Ray's module name.

Ray programs write ``from ray import workflow`` or ``import ray.workflow``; after
``import heliostat as ray`` both must work and give one module object. The package
holding the code is :mod:`heliostat.workflows`; this module makes
``heliostat.workflow`` another name for it, by putting the package itself in
``sys.modules`` under this name while it is imported. So::

    import heliostat.workflow as workflow
    from heliostat import workflow
    heliostat.workflow            # the attribute, imported on first use

are all the same module object, :mod:`heliostat.workflows`. Ray's submodule
``ray.workflow.event_listener`` (where ``EventListener`` lives) is aliased the same
way. Nothing here runs until a program names the workflows layer: ``import
heliostat`` alone does not import it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from heliostat import workflows as _workflows
from heliostat.workflows import event_listener as _event_listener

if TYPE_CHECKING:
    from heliostat.workflows import *  # noqa: F403

sys.modules[__name__] = _workflows
sys.modules[f"{__name__}.event_listener"] = _event_listener
