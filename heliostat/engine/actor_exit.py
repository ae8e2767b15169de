"""An actor ending on purpose: ``exit_actor()``, ``__ray_terminate__`` and ``atexit``.

Ray lets an actor end itself (``ray.actor.exit_actor()`` in one of its methods) or be
asked to end after the calls already sent to it (``handle.__ray_terminate__.remote()``,
an ordinary call queued behind the others). Either way the actor is not restarted, and
its process exits *gracefully*: the ``atexit`` handlers the actor registered run, so it
can flush a file or close a connection. ``kill()`` is the opposite: the process is
killed and nothing of it runs.

A worker is a fork of the fork server, and a fork inherits its parent's ``atexit``
list: handlers registered by the modules the fork server imported (heliostat's own
runtime clean-up among them). They are not the actor's and must not run in it, so the
worker forgets them when it starts (:func:`forget_inherited_handlers`); what is
registered later is the actor's (or a library's it imported). The driver's handlers
are never seen: the fork server is a fresh interpreter. Handlers then run only
on this path, not when a task calls ``sys.exit()`` (Ray runs them there too, but a
stuck handler in a pooled task worker would hold a CPU; nobody asked for it), and for
at most :data:`EXIT_HANDLERS_TIMEOUT_S`: a handler that blocks cannot keep a dead
actor's process, and its resources, alive. CPython exposes the run and the reset of the
list as ``atexit._run_exitfuncs`` and ``atexit._clear``; both exist since Python 3.0.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any, NoReturn, TextIO

from heliostat.engine.runtime import current_client
from heliostat.exceptions import HeliostatError

__all__ = [
    "EXIT_HANDLERS_TIMEOUT_S",
    "TERMINATE_METHOD",
    "ActorExit",
    "exit_actor",
    "forget_inherited_handlers",
    "run_exit_handlers",
]

# The method every actor has, as in Ray: a call of it ends the actor once it runs.
TERMINATE_METHOD = "__ray_terminate__"

# How long the actor's atexit handlers may run before the process exits anyway.
EXIT_HANDLERS_TIMEOUT_S = 10.0


class ActorExit(SystemExit):
    """Raised by :func:`exit_actor`: the worker runs the actor's atexit handlers, then exits."""


def exit_actor() -> NoReturn:
    """End the actor whose method calls this, on purpose (Ray's ``ray.actor.exit_actor``).

    The actor's ``atexit`` handlers run (for at most ``EXIT_HANDLERS_TIMEOUT_S``), its
    process exits, and the actor is not restarted, whatever its ``max_restarts``. The
    call that invoked ``exit_actor()`` and the calls queued behind it fail with
    :class:`~heliostat.exceptions.ActorDiedError`.

    Raises:
        TypeError: called outside an actor (in the driver or a plain task).
    """
    try:
        client = current_client()
    except HeliostatError:
        client = None
    if client is None or not client.actor_id:
        raise TypeError("exit_actor() can only be called inside an actor's method.")
    client._call("exit_actor", client.actor_id)
    raise ActorExit(0)


def forget_inherited_handlers() -> None:
    """Drop the atexit handlers a new worker inherited from the process it was forked from."""
    atexit._clear()


def run_exit_handlers(timeout_s: float, stderr: TextIO | Any) -> bool:
    """Run the registered atexit handlers, waiting at most ``timeout_s``; True if they ended.

    They run in a daemon thread, so one that never returns is left behind when the
    process exits. A handler's exception is printed by ``atexit`` itself and does not
    stop the others.
    """
    runner = threading.Thread(target=atexit._run_exitfuncs, name="atexit", daemon=True)
    runner.start()
    runner.join(timeout_s)
    if runner.is_alive():
        stderr.write(
            f"heliostat: the actor's atexit handlers did not finish within {timeout_s:g} s; "
            "exiting without waiting for them\n"
        )
        return False
    return True
