"""An actor that ends on purpose runs its ``atexit`` handlers; a killed one does not.

Ray's documented behaviour: ``ray.actor.exit_actor()`` "exits gracefully by calling
atexit handlers"; ``handle.__ray_terminate__.remote()`` is an ordinary call queued
behind the calls sent before it, which ends the actor the same way once it runs;
``ray.kill`` ends it at once, with no handler run. Neither restarts the actor.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import pytest

import heliostat as hs
from heliostat.engine.actor_exit import EXIT_HANDLERS_TIMEOUT_S
from heliostat.exceptions import ActorDiedError
from tests.integration.engine.signal_actor import Signal


def _write(path: str, text: str) -> None:
    with open(path, "a") as out:
        out.write(text)


@hs.remote(max_restarts=1)
class Tidy:
    """Registers a handler that appends ``text`` to ``path`` when its process exits."""

    def __init__(self, path: str, text: str) -> None:
        atexit.register(_write, path, text)
        self.path = path

    def ready(self) -> int:
        return os.getpid()

    def leave(self) -> None:
        hs.actor.exit_actor()

    def log(self, text: str, gate: object = None) -> str:
        _write(self.path, text)
        return text


@hs.remote
class AsyncTidy:
    def __init__(self, path: str, text: str) -> None:
        atexit.register(_write, path, text)

    async def ready(self) -> bool:
        return True

    async def leave(self) -> None:
        hs.actor.exit_actor()


def _wait_for_text(wait_for, path: Path, text: str) -> None:
    wait_for(
        lambda: path.exists() and path.read_text() == text,
        timeout=EXIT_HANDLERS_TIMEOUT_S + 10,
        what=f"{path} to read {text!r}",
    )


def test_exit_actor_runs_the_actor_s_atexit_handlers(runtime, wait_for, tmp_path) -> None:
    path = tmp_path / "out.txt"
    actor = Tidy.remote(str(path), "bye")
    hs.get(actor.ready.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        hs.get(actor.leave.remote(), timeout=30)
    _wait_for_text(wait_for, path, "bye")
    with pytest.raises(ActorDiedError, match="exit_actor"):  # not restarted
        hs.get(actor.ready.remote(), timeout=30)


def test_exit_actor_in_an_async_actor_ends_it(runtime, wait_for, tmp_path) -> None:
    path = tmp_path / "out.txt"
    actor = AsyncTidy.remote(str(path), "bye")
    hs.get(actor.ready.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        hs.get(actor.leave.remote(), timeout=30)
    _wait_for_text(wait_for, path, "bye")
    with pytest.raises(ActorDiedError):
        hs.get(actor.ready.remote(), timeout=30)


def test_ray_terminate_runs_after_the_calls_sent_before_it(runtime, wait_for, tmp_path) -> None:
    path = tmp_path / "out.txt"
    gate = Signal.remote()
    actor = Tidy.remote(str(path), "|bye")
    hs.get(actor.ready.remote(), timeout=30)
    # The first call waits for the gate, so the others and the terminate call queue.
    first = actor.log.remote("a", gate.wait.remote())
    rest = [actor.log.remote(text) for text in ("b", "c")]
    end = actor.__ray_terminate__.remote()
    gate.send.remote()
    assert hs.get([first, *rest], timeout=30) == ["a", "b", "c"]
    with pytest.raises(ActorDiedError):
        hs.get(end, timeout=30)
    _wait_for_text(wait_for, path, "abc|bye")
    with pytest.raises(ActorDiedError):  # not restarted, despite max_restarts=1
        hs.get(actor.ready.remote(), timeout=30)


def test_every_actor_handle_has_ray_terminate(runtime) -> None:
    actor = Tidy.remote("/dev/null", "")
    assert "__ray_terminate__" in dir(actor) or hasattr(actor, "__ray_terminate__")
    hs.kill(actor)


def test_kill_runs_no_atexit_handler(runtime, wait_for, tmp_path) -> None:
    path = tmp_path / "out.txt"
    actor = Tidy.remote(str(path), "bye")
    pid = hs.get(actor.ready.remote(), timeout=30)
    hs.kill(actor)
    wait_for(lambda: not _alive(pid), timeout=30, what=f"actor process {pid} to end")
    assert not path.exists()


def test_a_driver_atexit_handler_does_not_run_in_workers(fresh_runtime, wait_for, tmp_path) -> None:
    # Workers are forks: what the parent registered (here before init) must not run
    # when an actor exits.
    path = tmp_path / "driver.txt"
    atexit.register(_write, str(path), "driver")
    try:
        fresh_runtime()
        fresh = tmp_path / "actor.txt"
        actor = Tidy.remote(str(fresh), "bye")
        hs.get(actor.ready.remote(), timeout=30)
        with pytest.raises(ActorDiedError):
            hs.get(actor.leave.remote(), timeout=30)
        _wait_for_text(wait_for, fresh, "bye")
        assert not path.exists()
    finally:
        atexit.unregister(_write)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers; read its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
