"""A joining node picks a node index no listed node holds, and picks again when the
head says a node joining at the same time took it."""

from __future__ import annotations

from typing import Any

import pytest

from heliostat.cluster.client import NodeIdTaken
from heliostat.engine.cluster_join import choose_node_index, join_with_free_index
from heliostat.exceptions import ClusterError


class FakeHead:
    def __init__(self, listed: list[str]) -> None:
        self.listed = listed

    def list_nodes(self) -> list[Any]:
        return [type("View", (), {"node_id": node_id})() for node_id in self.listed]


class FakeRuntime:
    def __init__(self, index: int) -> None:
        self.index = index
        self.stopped = False

    def shutdown(self) -> None:
        self.stopped = True


def test_choose_node_index_skips_the_listed_ones() -> None:
    picks = iter([4, 9, 2])  # rand() values; the index is 1 + rand
    assert choose_node_index({5, 10}, rand=lambda _n: next(picks)) == 3


def test_a_refused_index_is_given_up_and_another_picked() -> None:
    head = FakeHead(["0000000000000005"])
    runtimes: list[FakeRuntime] = []
    seen_taken: list[set[int]] = []

    def choose(taken: set[int]) -> int:
        seen_taken.append(set(taken))
        return 7 if 7 not in taken else 8

    def start(index: int) -> FakeRuntime:
        runtimes.append(FakeRuntime(index))
        return runtimes[-1]

    def join(runtime: FakeRuntime) -> Any:
        if runtime.index == 7:
            raise NodeIdTaken("node id 7 is held by a live node", address="h:1")
        return f"member-{runtime.index}"

    runtime, membership = join_with_free_index(head, start, join, choose=choose)  # type: ignore[arg-type]
    assert (runtime.index, membership) == (8, "member-8")
    assert [r.stopped for r in runtimes] == [True, False]  # the refused one was shut down
    assert seen_taken == [{5}, {5, 7}]


def test_it_gives_up_after_a_few_refusals_and_other_errors_pass_through() -> None:
    head = FakeHead([])
    runtimes: list[FakeRuntime] = []

    def start(index: int) -> FakeRuntime:
        runtimes.append(FakeRuntime(index))
        return runtimes[-1]

    def always_taken(runtime: FakeRuntime) -> Any:
        raise NodeIdTaken("taken", address="h:1")

    picks = iter(range(1, 100))
    with pytest.raises(ClusterError, match="3 node indexes in a row were taken"):
        join_with_free_index(
            head,  # type: ignore[arg-type]
            start,
            always_taken,
            choose=lambda _taken: next(picks),
            attempts=3,
        )
    assert len(runtimes) == 3 and all(r.stopped for r in runtimes)

    def refused_token(runtime: FakeRuntime) -> Any:
        raise ClusterError("the head refused the cluster token", address="h:1")

    with pytest.raises(ClusterError, match="token"):
        join_with_free_index(head, start, refused_token, choose=lambda _t: 42)  # type: ignore[arg-type]
    assert runtimes[-1].stopped and len(runtimes) == 4
