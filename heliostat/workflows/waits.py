"""Durable timers and events: ``workflow.sleep`` and ``workflow.wait_for_event``.

Both return DAG nodes, to be bound into a workflow like any step (Ray's API)::

    nap = workflow.sleep(3600)                       # a step that completes in an hour
    order = workflow.wait_for_event(OrderListener, "queue-a")
    dag = ship.bind(order, nap)

**Timers.** A ``sleep`` step never occupies a worker: the workflow's executor waits for
it in the driver. The moment it wakes up is fixed when the step first starts (its
INTENT), in the same group commit, in the lineage table ``workflow_timers``; a resumed
workflow reads it back and waits only for what is left (not at all if that moment has
passed). Its output is ``None``. Outside a workflow (``dag.execute()``) the node is an
ordinary task that sleeps.

**Events.** ``wait_for_event(Listener, *args, **kwargs)`` is two ordinary steps, as in
Ray: the first builds ``Listener()`` in a worker and awaits
``poll_for_event(*args, **kwargs)``; its output, the event, is checkpointed (a small
event in the step's row of the lineage database). Only after that COMMIT does the second
step run ``event_checkpointed(event)`` (acknowledge the message at its source) and
output the event. A resumed workflow whose event was committed does not wait again; a
crash between the two steps repeats only the acknowledgement.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from heliostat.engine.api import remote
from heliostat.engine.dag import FunctionNode
from heliostat.engine.remote_function import RemoteFunction
from heliostat.workflows.event_listener import Event, EventListener, EventListenerType

__all__ = ["sleep", "timer_duration", "wait_for_event"]


def _sleep(duration: float) -> None:
    """The body of a ``workflow.sleep`` node run as a plain task (``dag.execute()``);
    inside a workflow the executor waits instead and this never runs."""
    time.sleep(duration)


def _wait_for_event(listener_type: EventListenerType, *args: Any, **kwargs: Any) -> Event:
    return asyncio.run(listener_type().poll_for_event(*args, **kwargs))


def _event_checkpointed(listener_type: EventListenerType, event: Event) -> Event:
    asyncio.run(listener_type().event_checkpointed(event))
    return event


_SLEEP: RemoteFunction = remote(num_cpus=0, name="sleep")(_sleep)
_POLL: RemoteFunction = remote(name="wait_for_event")(_wait_for_event)
_ACK: RemoteFunction = remote(name="event_checkpointed")(_event_checkpointed)


def sleep(duration: float) -> FunctionNode:
    """A workflow step that completes ``duration`` seconds after it first starts.

    The wake-up time is stored in the lineage database when the step starts, so a
    workflow resumed after a crash waits only for the remaining time. The step holds no
    worker while it waits; its output is ``None``.

    Args:
        duration: seconds, a number >= 0.

    Returns:
        A DAG node: bind it into a workflow (``f.bind(workflow.sleep(60))``) or run it
        as the workflow itself.

    Raises:
        TypeError: ``duration`` is not a number.
        ValueError: it is negative, infinite or NaN.
    """
    if not isinstance(duration, (int, float)) or isinstance(duration, bool):
        raise TypeError(
            f"workflow.sleep() takes seconds as a number, not {type(duration).__name__}."
        )
    if not math.isfinite(duration) or duration < 0:
        raise ValueError(f"workflow.sleep() takes seconds >= 0, got {duration!r}.")
    return _SLEEP.bind(float(duration))


def timer_duration(function: RemoteFunction, args: tuple[Any, ...]) -> float | None:
    """The duration of a ``workflow.sleep`` step (``None``: not a timer step)."""
    if function.underlying_function is not _sleep:
        return None
    return float(args[0])


def wait_for_event(
    event_listener_type: EventListenerType, *args: Any, **kwargs: Any
) -> FunctionNode:
    """A workflow step whose output is the next event ``event_listener_type`` receives.

    ``event_listener_type()`` is built in a worker and ``poll_for_event(*args,
    **kwargs)`` awaited; the event is checkpointed, then ``event_checkpointed(event)``
    is awaited (see the module docstring). A resumed workflow does not wait again for
    an event it has received.

    Args:
        event_listener_type: a subclass of
            :class:`~heliostat.workflows.event_listener.EventListener`.
        *args: passed to ``poll_for_event``.
        **kwargs: passed to ``poll_for_event``.

    Returns:
        A DAG node whose output is the event.

    Raises:
        TypeError: ``event_listener_type`` is not an EventListener subclass.
    """
    if not isinstance(event_listener_type, type) or not issubclass(
        event_listener_type, EventListener
    ):
        raise TypeError(
            "workflow.wait_for_event() takes a subclass of workflow.EventListener, not "
            f"{event_listener_type!r}."
        )
    return _ACK.bind(event_listener_type, _POLL.bind(event_listener_type, *args, **kwargs))
