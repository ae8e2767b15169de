"""Event listeners for ``workflow.wait_for_event`` (Ray's ``ray.workflow.event_listener``).

A workflow waits for something outside it (a message, a file, a webhook) with
``workflow.wait_for_event(MyListener, *args)``: a step that builds ``MyListener()`` in
a worker and awaits ``poll_for_event(*args)``. The event it returns is the step's output,
checkpointed like any other (a small one in the lineage database's row of the step),
and only then does a second step call ``event_checkpointed(event)``: the place to
acknowledge the message to its source. So an event is never acknowledged before it is
durable, and a resumed workflow whose event was received does not wait for it again
(it may acknowledge it again if the crash came between the two steps: make the
acknowledgement idempotent).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["Event", "EventListener", "EventListenerType", "TimerListener"]

Event = Any
"""What a listener's ``poll_for_event`` returns: any value that can be checkpointed."""


class EventListener:
    """Base class of event listeners; subclass it and pass the class to ``wait_for_event``.

    The class is instantiated with no arguments in the worker that runs the wait (once
    for the poll, once for the acknowledgement), so keep connection settings in the
    arguments of ``wait_for_event`` or in the environment.
    """

    def __init__(self) -> None:
        """Listeners are built with no arguments."""

    async def poll_for_event(self, *args: Any, **kwargs: Any) -> Event:
        """Wait for the event and return it (the arguments are those of ``wait_for_event``).

        Raises:
            NotImplementedError: a subclass must implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement poll_for_event().")

    async def event_checkpointed(self, event: Event) -> None:
        """Called once ``event`` is durable in the workflow's lineage (default: nothing).

        Acknowledge or delete the message at its source here; it may be called again
        for the same event after a crash, so it must be idempotent.
        """


EventListenerType = type[EventListener]


class TimerListener(EventListener):
    """An event that happens at a given time (Ray's ``TimerListener``).

    ``workflow.wait_for_event(TimerListener, timestamp)`` completes once ``time.time()``
    reaches ``timestamp``, holding a worker meanwhile. :func:`heliostat.workflow.sleep`
    is the better timer: it waits in the driver, holds no worker, and its wake-up time
    is in the lineage database.
    """

    async def poll_for_event(self, timestamp: float) -> None:
        """Sleep until ``timestamp`` (seconds since the epoch)."""
        await asyncio.sleep(max(0.0, timestamp - time.time()))
