"""An attaching driver waits until its node knows the peers the head lists
(``cluster_join.await_node_view``), so its first SPREAD sees a node that joined
just before; a view that never catches up costs a bounded wait, not a hang."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from heliostat.engine.cluster_join import await_node_view
from heliostat.storage.node_states import NodeState


class FakeHead:
    def __init__(self, *views: tuple[str, NodeState, str]) -> None:
        self.views = [SimpleNamespace(node_id=n, state=s, address=a) for n, s, a in views]

    def list_nodes(self) -> list[Any]:
        return self.views


HEAD = FakeHead(
    ("0001", NodeState.ALIVE, "127.0.0.1:7001"),  # the node attached to
    ("0002", NodeState.ALIVE, "127.0.0.2:7002"),
    ("0003", NodeState.SUSPECT, "127.0.0.3:7003"),  # late with a heartbeat: still live
    ("0004", NodeState.DEAD, "127.0.0.4:7004"),
    ("0005", NodeState.ALIVE, ""),  # a driver's node that serves nothing yet
)


def test_it_returns_once_the_node_knows_every_live_peer() -> None:
    answers = iter([0, 1, 2])
    asked = []

    def known() -> int:
        asked.append(1)
        return next(answers)

    assert await_node_view(HEAD, "0001", known, timeout=5)
    assert len(asked) == 3  # 0, then 1, then the 2 live peers (0002 and 0003)


def test_a_view_that_never_catches_up_gives_up_after_the_timeout() -> None:
    start = time.monotonic()
    assert not await_node_view(HEAD, "0001", lambda: 1, timeout=0.05)
    assert time.monotonic() - start < 2


def test_a_lone_node_needs_no_wait() -> None:
    calls = []
    lone = FakeHead(("0001", NodeState.ALIVE, "127.0.0.1:7001"))
    assert await_node_view(lone, "0001", lambda: calls.append(1) or 0, timeout=0)
    assert calls == [1]
