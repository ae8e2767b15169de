"""Actor names as Ray's ``ray.actor`` module offers them.

``import heliostat.actor`` stands in for ``import ray.actor``: the actor class and
handle types, and :func:`exit_actor` to end the current actor from inside one of
its methods.
"""

from __future__ import annotations

from heliostat.engine.actor import ActorClass, ActorHandle, ActorMethod, exit_actor, method

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "method"]
