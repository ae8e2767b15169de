"""The membership state machine: events in, instructions out, times chosen by the test."""

from __future__ import annotations

import pytest

from heliostat.cluster import membership as ms
from heliostat.cluster.membership import NodeState
from heliostat.exceptions import InvalidTransition

TIMING = ms.Timing(heartbeat_interval=1.0, suspect_after=2.0, dead_after=4.0)


def _register(m: ms.Membership, node_id: str = "n1", now: float = 0.0, **kw: object):
    return m.handle(
        ms.NodeRegistered(
            node_id=node_id,
            address=kw.pop("address", "127.0.0.2"),  # type: ignore[arg-type]
            hostname=kw.pop("hostname", "box"),  # type: ignore[arg-type]
            pid=kw.pop("pid", 42),  # type: ignore[arg-type]
            total=kw.pop("total", {"CPU": 2.0}),  # type: ignore[arg-type]
            available={"CPU": 2.0},
            now=now,
            **kw,  # type: ignore[arg-type]
        )
    )


def _beat(m: ms.Membership, node_id: str, now: float, cpu: float = 1.0):
    return m.handle(ms.HeartbeatReceived(node_id=node_id, available={"CPU": cpu}, now=now))


def test_a_registered_node_is_alive_with_incarnation_one() -> None:
    m = ms.Membership(timing=TIMING)
    [alive] = _register(m)
    assert isinstance(alive, ms.NodeAlive) and not alive.rejoined
    assert alive.node.state is NodeState.ALIVE and alive.node.incarnation == 1
    assert m.resources().total == {"CPU": 2.0}


def test_heartbeats_keep_a_node_alive_and_report_free_resources() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    for t in range(1, 20):
        out = _beat(m, "n1", float(t), cpu=0.5)
        assert out == [ms.HeartbeatAccepted(node_id="n1", incarnation=1)]
        assert m.handle(ms.Tick(now=t + 0.9)) == []
    assert m.resources().available == {"CPU": 0.5}


def test_silence_makes_a_node_suspect_then_dead_at_the_thresholds() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    _beat(m, "n1", 1.0)
    assert m.handle(ms.Tick(now=2.99)) == []
    [suspect] = m.handle(ms.Tick(now=3.0))
    assert isinstance(suspect, ms.NodeSuspect) and suspect.silent_for == pytest.approx(2.0)
    assert m.handle(ms.Tick(now=4.99)) == []
    [dead] = m.handle(ms.Tick(now=5.0))
    assert isinstance(dead, ms.NodeDead) and dead.node.state is NodeState.DEAD
    assert dead.silent_for == pytest.approx(4.0)
    assert m.resources().total == {}
    assert m.handle(ms.Tick(now=100.0)) == []  # dead once


def test_a_late_tick_declares_an_alive_node_dead_directly() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    [dead] = m.handle(ms.Tick(now=10.0))
    assert isinstance(dead, ms.NodeDead)


def test_a_heartbeat_brings_a_suspect_node_back() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    m.handle(ms.Tick(now=2.5))
    assert m.get("n1").state is NodeState.SUSPECT  # type: ignore[union-attr]
    alive, ack = _beat(m, "n1", 2.6)
    assert isinstance(alive, ms.NodeAlive) and alive.node.state is NodeState.ALIVE
    assert isinstance(ack, ms.HeartbeatAccepted)


def test_a_dead_node_heartbeat_is_rejected_and_it_rejoins_as_a_new_incarnation() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    m.handle(ms.Tick(now=5.0))
    [rejected] = _beat(m, "n1", 5.5)
    assert isinstance(rejected, ms.HeartbeatRejected) and "DEAD" in rejected.reason
    [back] = _register(m, now=6.0)
    assert isinstance(back, ms.NodeAlive) and back.rejoined
    assert back.node.incarnation == 2 and back.node.last_heartbeat_at is None
    assert _beat(m, "n1", 6.5) == [ms.HeartbeatAccepted(node_id="n1", incarnation=2)]


def test_an_unknown_node_heartbeat_is_rejected() -> None:
    m = ms.Membership(timing=TIMING)
    [rejected] = _beat(m, "ghost", 1.0)
    assert isinstance(rejected, ms.HeartbeatRejected) and rejected.reason == "unknown node"


def test_registering_again_while_alive_keeps_the_incarnation() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    [again] = _register(m, now=1.0, total={"CPU": 4.0})
    assert isinstance(again, ms.NodeAlive) and not again.rejoined
    assert again.node.incarnation == 1 and again.node.total == {"CPU": 4.0}


@pytest.mark.parametrize(
    "other", [{"address": "127.0.0.9"}, {"pid": 43}, {"hostname": "another-box"}]
)
def test_a_live_nodes_id_is_refused_to_another_process(other: dict[str, object]) -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    [refused] = _register(m, now=1.0, **other)
    assert isinstance(refused, ms.RegistrationRefused)
    assert refused.node_id == "n1" and refused.holder.pid == 42
    held = m.get("n1")
    assert held is not None and (held.address, held.pid, held.hostname) == (
        "127.0.0.2",
        42,
        "box",
    )
    assert held.incarnation == 1 and m.alive_count() == 1


def test_a_suspect_nodes_id_is_refused_too_but_a_dead_or_left_ones_is_free() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m, "a")
    _register(m, "b")
    m.handle(ms.Tick(now=2.5))  # both suspect
    assert isinstance(_register(m, "a", now=2.6, pid=7)[0], ms.RegistrationRefused)
    m.handle(ms.Tick(now=5.0))  # both dead
    [taken] = _register(m, "a", now=5.1, pid=7)
    assert isinstance(taken, ms.NodeAlive) and taken.rejoined and taken.node.pid == 7
    m.handle(ms.NodeDeregistered(node_id="a", now=5.2))
    [again] = _register(m, "a", now=5.3, pid=8)
    assert isinstance(again, ms.NodeAlive) and again.node.incarnation == 3


def test_deregistering_leaves_and_frees_the_resources() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    [left] = m.handle(ms.NodeDeregistered(node_id="n1", now=1.0))
    assert isinstance(left, ms.NodeLeft) and left.node.state is NodeState.LEFT
    assert m.handle(ms.NodeDeregistered(node_id="n1", now=1.5)) == []
    assert m.handle(ms.Tick(now=100.0)) == []  # a node that left never dies
    assert m.resources().total == {}


def test_recovery_gives_live_nodes_a_full_grace_period() -> None:
    old = ms.Membership(timing=TIMING)
    _register(old, "a")
    _register(old, "b")
    old.handle(ms.Tick(now=10.0))  # both dead
    _register(old, "a", now=11.0)  # a is back
    records = old.nodes()
    new = ms.Membership(timing=TIMING, nodes=records, now=500.0)
    assert new.get("a").state is NodeState.ALIVE  # type: ignore[union-attr]
    assert new.handle(ms.Tick(now=501.9)) == []  # the grace counts from recovery
    # a heartbeat within the grace keeps it, without registering again
    assert _beat(new, "a", 501.95) == [ms.HeartbeatAccepted(node_id="a", incarnation=2)]
    assert isinstance(_beat(new, "b", 503.0)[0], ms.HeartbeatRejected)


def test_a_recovered_node_that_never_heartbeats_dies_after_the_grace() -> None:
    old = ms.Membership(timing=TIMING)
    _register(old, "a")
    new = ms.Membership(timing=TIMING, nodes=old.nodes(), now=1000.0)
    assert [type(i) for i in new.handle(ms.Tick(now=1003.99))] == [ms.NodeSuspect]
    assert [type(i) for i in new.handle(ms.Tick(now=1004.0))] == [ms.NodeDead]


def test_the_transition_table_reaches_every_state_and_refuses_other_edges() -> None:
    reachable = {NodeState.ALIVE}
    frontier = [NodeState.ALIVE]
    while frontier:
        for nxt in ms.NODE_TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(NodeState)
    for start in NodeState:
        for finish in NodeState:
            if finish in ms.NODE_TRANSITIONS[start] or finish is start:
                continue
            with pytest.raises(InvalidTransition):
                ms.check_node_transition("n", start, finish)


def test_resources_sum_over_live_nodes_only() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m, "a")
    _register(m, "b", now=3.0)
    m.handle(ms.Tick(now=4.5))  # a dead (silent 4.5), b alive (1.5)
    assert m.resources().total == {"CPU": 2.0}
    assert m.alive_count() == 1


@pytest.mark.parametrize(
    "values", [(0, 1, 2), (1, 1, 2), (1, 3, 2), (float("nan"), 1, 2), (-1, 1, 2)]
)
def test_timing_is_validated(values: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        ms.Timing(heartbeat_interval=values[0], suspect_after=values[1], dead_after=values[2])


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    from heliostat.cluster.agent import backoff_delay

    assert backoff_delay(0) == 0.0
    lows = [backoff_delay(n, rand=lambda: 0.0) for n in range(1, 8)]
    highs = [backoff_delay(n, rand=lambda: 1.0) for n in range(1, 8)]
    assert lows == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert highs == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_heartbeats_of_an_incarnation_that_is_over_are_rejected() -> None:
    m = ms.Membership(timing=TIMING)
    _register(m)
    assert _beat_as(m, 1, now=1.0) == [ms.HeartbeatAccepted(node_id="n1", incarnation=1)]
    m.handle(ms.Tick(now=10.0))  # dead
    _register(m, now=11.0, pid=7)  # another process takes the id: incarnation 2
    [rejected] = _beat_as(m, 1, now=11.5)  # the old process, back from a partition
    assert isinstance(rejected, ms.HeartbeatRejected) and "incarnation 1 is over" in rejected.reason
    assert _beat_as(m, 2, now=11.6) == [ms.HeartbeatAccepted(node_id="n1", incarnation=2)]
    assert _beat_as(m, 0, now=11.7) == [ms.HeartbeatAccepted(node_id="n1", incarnation=2)]


def _beat_as(m: ms.Membership, incarnation: int, now: float):
    return m.handle(
        ms.HeartbeatReceived(node_id="n1", available={}, now=now, incarnation=incarnation)
    )
