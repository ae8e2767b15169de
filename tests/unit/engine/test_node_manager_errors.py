"""A bug inside the node manager is reported as one, not as the caller's own error."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heliostat.engine.node_manager import NodeConfig, NodeManager
from heliostat.exceptions import HeliostatInternalError, ObjectLostError


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NodeManager]:
    config = NodeConfig(
        session="0-000000",
        session_dir=str(tmp_path),
        socket_path=str(tmp_path / "node.sock"),
        spill_dir=str(tmp_path / "spill"),
        num_cpus=1,
        object_store_memory=1 << 20,
        max_workers=1,
    )
    # Not started: no fork server, no socket, no thread; requests still work.
    yield NodeManager(
        config, driver_unmap=lambda ids: None, driver_drain=lambda: None, log_sink=print
    )


def _ask(manager: NodeManager, verb: str, *args: Any) -> list[tuple[bool, Any]]:
    answers: list[tuple[bool, Any]] = []
    manager.handle(manager.driver, verb, args, lambda ok, v: answers.append((ok, v)))
    return answers


def test_a_key_error_in_a_verb_is_an_internal_error(manager, monkeypatch, caplog) -> None:
    def broken(proc: Any, reply: Any, *args: Any) -> None:
        raise KeyError("some internal table")

    monkeypatch.setitem(manager._verbs, "timeline", broken)
    with caplog.at_level(logging.ERROR, logger="heliostat.engine"):
        ((ok, error),) = _ask(manager, "timeline")
    assert not ok
    assert isinstance(error, HeliostatInternalError) and not isinstance(error, KeyError)
    assert "bug in heliostat" in str(error)
    assert any("internal error" in r.getMessage() and r.exc_info for r in caplog.records)


def test_wrong_arguments_to_a_verb_are_an_internal_error(manager, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="heliostat.engine"):
        ((ok, error),) = _ask(manager, "get", 1)  # the ids are missing: a TypeError inside
    assert not ok and isinstance(error, HeliostatInternalError)
    assert not isinstance(error, TypeError)


def test_without_a_reply_the_driver_gets_the_internal_error(manager, monkeypatch) -> None:
    def broken(proc: Any, reply: Any, *args: Any) -> None:
        raise TypeError("unexpected None")

    monkeypatch.setitem(manager._verbs, "release", broken)
    with pytest.raises(HeliostatInternalError) as raised:
        manager.release(manager.driver, [1])
    assert isinstance(raised.value.__cause__, TypeError)


def test_an_unknown_verb_is_an_internal_error(manager) -> None:
    ((ok, error),) = _ask(manager, "no_such_verb")
    assert not ok and isinstance(error, HeliostatInternalError)


def test_the_caller_s_own_errors_still_reach_it_as_they_are(manager) -> None:
    ((ok, error),) = _ask(manager, "get", 1, [424242])
    assert not ok and isinstance(error, ObjectLostError)
    ((ok, error),) = _ask(manager, "cancel", 0, True)
    assert (ok, error) == (True, False)  # nothing to cancel is not an error
