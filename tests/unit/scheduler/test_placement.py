"""Unit tests for heliostat.scheduler.placement: each strategy's rules on node snapshots."""

from __future__ import annotations

import pytest

from heliostat.scheduler import (
    NodeAffinity,
    NodeView,
    PlacementKind,
    ResourceSet,
    Strategy,
    choose_node,
    infeasible_message,
    is_feasible,
)


def rs(**quantities: float) -> ResourceSet:
    return ResourceSet(quantities)


def node(
    node_id: str,
    total: dict[str, float],
    used: dict[str, float] | None = None,
    *,
    alive: bool = True,
) -> NodeView:
    t = ResourceSet(total)
    return NodeView(node_id=node_id, total=t, available=t - ResourceSet(used or {}), alive=alive)


# --- is_feasible / infeasible_message -----------------------------------------------


def test_feasible_uses_totals_not_availability() -> None:
    assert is_feasible(rs(CPU=2), [node("a", {"CPU": 2}, {"CPU": 2})])


def test_dead_nodes_are_not_feasible() -> None:
    assert not is_feasible(rs(CPU=1), [node("a", {"CPU": 8}, alive=False)])


def test_feasibility_needs_one_node_to_hold_everything() -> None:
    nodes = [node("a", {"CPU": 4}), node("b", {"GPU": 1})]
    assert not is_feasible(rs(CPU=1, GPU=1), nodes)


def test_feasible_with_no_nodes_is_false() -> None:
    assert not is_feasible(rs(CPU=1), [])


def test_infeasible_message_names_request_and_the_most_one_node_has() -> None:
    msg = infeasible_message(rs(CPU=4, GPU=1), [node("a", {"CPU": 2})])
    assert msg.startswith(
        "No node can ever satisfy {'CPU': 4.0, 'GPU': 1.0}: the most any one node has is "
        "{'CPU': 2.0, 'GPU': 0.0} (the whole cluster: {'CPU': 2.0, 'GPU': 0.0})."
    )


def test_infeasible_message_takes_per_resource_maximum_and_cluster_sum() -> None:
    nodes = [
        node("a", {"CPU": 2, "db": 1}),
        node("b", {"CPU": 8}),
        node("c", {"CPU": 64}, alive=False),
    ]
    msg = infeasible_message(rs(CPU=16, db=1), nodes)
    assert "the most any one node has is {'CPU': 8.0, 'db': 1.0}" in msg
    assert "(the whole cluster: {'CPU': 10.0, 'db': 1.0})" in msg
    # Only what was asked for: resources the request does not name are left out.
    assert "db" not in infeasible_message(rs(CPU=16), nodes)


def test_infeasible_message_without_live_nodes() -> None:
    msg = infeasible_message(rs(CPU=1), [node("a", {"CPU": 1}, alive=False)])
    assert "no live nodes" in msg


# --- DEFAULT ------------------------------------------------------------------------


def test_default_runs_locally_when_it_fits() -> None:
    nodes = [node("remote", {"CPU": 8}), node("local", {"CPU": 2}, {"CPU": 1})]
    d = choose_node(rs(CPU=1), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.RUN, "local")


def test_default_spills_back_to_least_utilized_fitting_node() -> None:
    nodes = [
        node("local", {"CPU": 2}, {"CPU": 2}),
        node("busy", {"CPU": 4}, {"CPU": 3}),
        node("idle", {"CPU": 4}, {"CPU": 1}),
        node("small", {"CPU": 1}),
    ]
    d = choose_node(rs(CPU=1), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.SPILLBACK, "small")
    d = choose_node(rs(CPU=2), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.SPILLBACK, "idle")
    assert "'local'" in d.reason


def test_default_utilization_is_the_most_used_resource() -> None:
    nodes = [
        node("local", {"CPU": 1}, {"CPU": 1}),
        node("gpu_busy", {"CPU": 8, "GPU": 1}, {"GPU": 1}),
        node("cpu_half", {"CPU": 8}, {"CPU": 4}),
    ]
    d = choose_node(rs(CPU=1), nodes, local_node_id="local")
    assert d.node_id == "cpu_half"


def test_default_spillback_ties_go_to_first_listed_node() -> None:
    nodes = [node("local", {"CPU": 1}, {"CPU": 1}), node("x", {"CPU": 2}), node("y", {"CPU": 2})]
    assert choose_node(rs(CPU=1), nodes, local_node_id="local").node_id == "x"


def test_default_skips_dead_nodes() -> None:
    nodes = [
        node("local", {"CPU": 1}, {"CPU": 1}),
        node("dead", {"CPU": 8}, alive=False),
        node("live", {"CPU": 8}, {"CPU": 4}),
    ]
    assert choose_node(rs(CPU=1), nodes, local_node_id="local").node_id == "live"


def test_default_dead_local_node_is_not_used() -> None:
    nodes = [node("local", {"CPU": 8}, alive=False), node("other", {"CPU": 8})]
    d = choose_node(rs(CPU=1), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.SPILLBACK, "other")


def test_default_queues_locally_when_local_can_hold_it_but_is_full() -> None:
    nodes = [node("local", {"CPU": 4}, {"CPU": 4}), node("other", {"CPU": 8}, {"CPU": 8})]
    d = choose_node(rs(CPU=2), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.QUEUE, "local")


def test_default_queues_on_a_feasible_node_when_local_is_too_small() -> None:
    nodes = [
        node("local", {"CPU": 1}),
        node("big", {"CPU": 8, "GPU": 1}, {"GPU": 1}),
    ]
    d = choose_node(rs(CPU=1, GPU=1), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.QUEUE, "big")


def test_default_works_when_local_node_is_absent() -> None:
    nodes = [node("a", {"CPU": 2})]
    d = choose_node(rs(CPU=1), nodes, local_node_id="driver-only")
    assert (d.kind, d.node_id) == (PlacementKind.SPILLBACK, "a")


def test_default_infeasible_names_request() -> None:
    d = choose_node(rs(CPU=4, GPU=1), [node("local", {"CPU": 2})], local_node_id="local")
    assert d.kind is PlacementKind.INFEASIBLE
    assert d.node_id is None
    assert "{'CPU': 4.0, 'GPU': 1.0}" in d.reason


def test_empty_request_runs_locally_even_when_full() -> None:
    nodes = [node("local", {"CPU": 1}, {"CPU": 1})]
    d = choose_node(ResourceSet(), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.RUN, "local")


def test_oversubscribed_local_node_spills_back() -> None:
    nodes = [node("local", {"CPU": 1}, {"CPU": 2}), node("other", {"CPU": 1})]
    d = choose_node(rs(CPU=0.5), nodes, local_node_id="local")
    assert (d.kind, d.node_id) == (PlacementKind.SPILLBACK, "other")


# --- SPREAD -------------------------------------------------------------------------


def test_spread_rotates_over_nodes_that_fit_now() -> None:
    nodes = [node("a", {"CPU": 2}), node("b", {"CPU": 2}, {"CPU": 2}), node("c", {"CPU": 2})]
    chosen = [
        choose_node(
            rs(CPU=1), nodes, local_node_id="a", strategy=Strategy.SPREAD, spread_counter=i
        ).node_id
        for i in range(4)
    ]
    assert chosen == ["a", "c", "a", "c"]


def test_spread_decisions_are_run() -> None:
    nodes = [node("a", {"CPU": 2}), node("b", {"CPU": 2})]
    d = choose_node(rs(CPU=1), nodes, local_node_id="a", strategy=Strategy.SPREAD, spread_counter=1)
    assert (d.kind, d.node_id) == (PlacementKind.RUN, "b")


def test_spread_skips_dead_and_too_small_nodes() -> None:
    nodes = [
        node("dead", {"CPU": 8}, alive=False),
        node("tiny", {"CPU": 0.5}),
        node("ok", {"CPU": 2}),
    ]
    for i in range(3):
        d = choose_node(
            rs(CPU=1), nodes, local_node_id="tiny", strategy=Strategy.SPREAD, spread_counter=i
        )
        assert d.node_id == "ok"


def test_spread_queues_round_robin_when_nothing_fits_now() -> None:
    nodes = [node("a", {"CPU": 1}, {"CPU": 1}), node("b", {"CPU": 1}, {"CPU": 1})]
    d0 = choose_node(rs(CPU=1), nodes, local_node_id="a", strategy=Strategy.SPREAD)
    d1 = choose_node(
        rs(CPU=1), nodes, local_node_id="a", strategy=Strategy.SPREAD, spread_counter=1
    )
    assert (d0.kind, d0.node_id) == (PlacementKind.QUEUE, "a")
    assert (d1.kind, d1.node_id) == (PlacementKind.QUEUE, "b")


def test_spread_infeasible() -> None:
    d = choose_node(rs(GPU=1), [node("a", {"CPU": 1})], local_node_id="a", strategy=Strategy.SPREAD)
    assert d.kind is PlacementKind.INFEASIBLE
    assert "No node can ever satisfy {'GPU': 1.0}" in d.reason


def test_plain_strategy_strings_are_accepted() -> None:
    nodes = [node("a", {"CPU": 1}), node("b", {"CPU": 1})]
    d = choose_node(
        rs(CPU=1),
        nodes,
        local_node_id="a",
        strategy="SPREAD",  # type: ignore[arg-type]
        spread_counter=1,
    )
    assert d.node_id == "b"


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(ValueError, match="'PACK'"):
        choose_node(rs(CPU=1), [node("a", {"CPU": 1})], local_node_id="a", strategy="PACK")  # type: ignore[arg-type]


# --- NodeAffinity -------------------------------------------------------------------


def test_affinity_runs_on_target_when_it_fits() -> None:
    nodes = [node("local", {"CPU": 4}), node("target", {"CPU": 2})]
    d = choose_node(rs(CPU=1), nodes, local_node_id="local", strategy=NodeAffinity("target"))
    assert (d.kind, d.node_id) == (PlacementKind.RUN, "target")


def test_affinity_queues_on_busy_target_even_if_others_are_free() -> None:
    nodes = [node("local", {"CPU": 4}), node("target", {"CPU": 2}, {"CPU": 2})]
    for soft in (False, True):
        d = choose_node(
            rs(CPU=1), nodes, local_node_id="local", strategy=NodeAffinity("target", soft=soft)
        )
        assert (d.kind, d.node_id) == (PlacementKind.QUEUE, "target")


@pytest.mark.parametrize(
    ("nodes", "fragment"),
    [
        ([node("local", {"CPU": 4})], "not in the cluster"),
        ([node("local", {"CPU": 4}), node("target", {"CPU": 4}, alive=False)], "is dead"),
        ([node("local", {"CPU": 4}), node("target", {"CPU": 0.5})], "can never hold"),
    ],
)
def test_hard_affinity_to_unusable_node_is_infeasible(nodes: list[NodeView], fragment: str) -> None:
    d = choose_node(rs(CPU=1), nodes, local_node_id="local", strategy=NodeAffinity("target"))
    assert d.kind is PlacementKind.INFEASIBLE
    assert d.node_id is None
    assert "'target'" in d.reason
    assert fragment in d.reason
    assert "soft=True" in d.reason


@pytest.mark.parametrize(
    "nodes",
    [
        [node("local", {"CPU": 4})],
        [node("local", {"CPU": 4}), node("target", {"CPU": 4}, alive=False)],
        [node("local", {"CPU": 4}), node("target", {"CPU": 0.5})],
    ],
)
def test_soft_affinity_to_unusable_node_falls_back_to_default(nodes: list[NodeView]) -> None:
    d = choose_node(
        rs(CPU=1), nodes, local_node_id="local", strategy=NodeAffinity("target", soft=True)
    )
    assert (d.kind, d.node_id) == (PlacementKind.RUN, "local")
    assert "'target'" in d.reason


def test_soft_affinity_fallback_can_still_be_infeasible() -> None:
    d = choose_node(
        rs(GPU=1),
        [node("local", {"CPU": 4})],
        local_node_id="local",
        strategy=NodeAffinity("target", soft=True),
    )
    assert d.kind is PlacementKind.INFEASIBLE
    assert "No node can ever satisfy" in d.reason


def test_decisions_are_frozen() -> None:
    d = choose_node(rs(CPU=1), [node("a", {"CPU": 1})], local_node_id="a")
    with pytest.raises(AttributeError):
        d.node_id = "b"  # type: ignore[misc]
