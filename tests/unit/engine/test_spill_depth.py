"""The spill depth: how many tasks an owner keeps in flight at a peer, by how long the
function's calls run (pure bookkeeping, then through the owner's Peers)."""

from __future__ import annotations

import pytest

from heliostat.engine.peers import PeerInfo
from heliostat.engine.spill_depth import QUEUE_S, SpillDepth
from heliostat.scheduler import ResourceSet

A, B = 1, 2
SHORT, LONG = b"short-fn", b"long-fn"


def test_an_unknown_function_gets_the_floor() -> None:
    depth = SpillDepth(2, 128)
    assert depth.of(SHORT) == 2 and depth.of(None) == 2


def test_short_calls_go_deep_and_long_ones_stay_at_the_floor() -> None:
    depth = SpillDepth(2, 128)
    depth.ran(SHORT, 0.0001)  # 100 us: 200 calls make QUEUE_S, capped at 128
    depth.ran(LONG, 5.0)
    assert depth.of(SHORT) == 128
    assert depth.of(LONG) == 2
    depth.ran(b"medium", QUEUE_S / 10)
    assert depth.of(b"medium") == 10


def test_the_depth_follows_a_function_whose_calls_get_longer() -> None:
    depth = SpillDepth(1, 128)
    depth.ran(SHORT, 0.0001)
    assert depth.of(SHORT) == 128
    for _ in range(30):  # the moving average catches up within a few dozen calls
        depth.ran(SHORT, 1.0)
    assert depth.of(SHORT) == 1


def test_the_run_time_is_a_moving_average_and_none_before_a_call() -> None:
    depth = SpillDepth(2, 128)
    assert depth.run_time(SHORT) is None and depth.run_time(None) is None
    depth.ran(SHORT, 1.0)
    depth.ran(SHORT, 2.0)
    assert depth.run_time(SHORT) == pytest.approx(1.2)  # a fifth of the way to 2.0


def test_a_call_that_took_no_time_is_worth_the_ceiling_not_a_division_by_zero() -> None:
    depth = SpillDepth(2, 64)
    depth.ran(SHORT, 0.0)
    depth.ran(LONG, -0.5)  # clocks step: a negative run time counts as none
    assert depth.of(SHORT) == 64 and depth.of(LONG) == 64


@pytest.mark.parametrize(("floor", "ceiling"), [(0, 4), (5, 4)])
def test_bad_bounds_are_refused(floor: int, ceiling: int) -> None:
    with pytest.raises(ValueError, match="floor"):
        SpillDepth(floor, ceiling)


def _owner(make_node):
    node = make_node(num_cpus=0)  # no CPUs here: everything spills
    peers = node.state.join_cluster(A, depth=2, max_depth=8)
    total = ResourceSet.from_dict({"CPU": 1})
    peers.update([PeerInfo(index=B, address="127.0.0.2:1", total=total, available=total)])
    return node, peers


def _forwarded(node) -> list:
    from heliostat.engine.peers import ForwardTask

    return [e.spec for e in node.effects() if isinstance(e, ForwardTask)]


def test_an_owner_sends_short_calls_deeper_once_one_has_reported(make_node, make_spec) -> None:
    node, peers = _owner(make_node)
    specs = [make_spec(fn_id=SHORT) for _ in range(12)]
    for spec in specs:
        node.state.submit(node.state.driver, spec)
    assert _forwarded(node) == specs[:2]  # one slot, the floor: two in flight
    peers.on_report(B, specs[0].task_id, "ok", 10.0, 10.0001, [], [])
    # 100 us a call: the peer's one slot now holds up to the ceiling, 8.
    assert _forwarded(node) == specs[2:9]
    assert len(peers.inflight[B]) == 8


def test_long_calls_keep_the_floor_and_do_not_deepen_other_functions(make_node, make_spec) -> None:
    node, peers = _owner(make_node)
    slow = [make_spec(fn_id=LONG) for _ in range(4)]
    for spec in slow:
        node.state.submit(node.state.driver, spec)
    assert _forwarded(node) == slow[:2]
    peers.on_report(B, slow[0].task_id, "ok", 10.0, 13.0, [], [])
    assert _forwarded(node) == slow[2:3]  # one finished, one more: still two in flight
    assert peers.depth.of(LONG) == 2 and peers.depth.of(SHORT) == 2
