"""What the code running in this process is: which task, which actor.

The worker records the task it starts (one attribute of a thread-local, so threaded
actors keep their calls apart) and the actor it hosts; ``get_runtime_context()`` reads
them. Nothing here is asked on the hot path: what only the node manager knows (an
actor's name and restarts, a task's resources) is fetched by :func:`context_info`
when the user asks for it.
"""

from __future__ import annotations

import threading
from typing import Any

from heliostat.engine.runtime import current_client

__all__ = ["actor_id", "context_info", "running", "set_actor", "task_id"]

# ``running.task_id``: the task or actor call this thread runs (0: none, the driver).
running = threading.local()
_actor_id = 0  # the actor this worker process hosts (0: none)


def set_actor(ident: int) -> None:
    """Record the actor this worker process hosts (called once, at its creation)."""
    global _actor_id
    _actor_id = ident


def actor_id() -> int:
    """The id of the actor this process hosts, or 0."""
    return _actor_id


def task_id() -> int:
    """The id of the task or actor call this thread runs, or 0 (the driver)."""
    return int(getattr(running, "task_id", 0))


def context_info() -> dict[str, Any]:
    """Ask the node manager about this process: actor name, restarts, resources."""
    info: dict[str, Any] = current_client()._call("context_info", task_id())
    return info
