"""Scheduling strategy options: validation and the node-affinity decision (pure)."""

from __future__ import annotations

import pytest

from heliostat.engine.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    affinity_refusal,
    check_strategy,
)
from heliostat.scheduler import ResourceSet

TOTAL = ResourceSet.from_dict({"CPU": 4.0})
ONE_CPU = ResourceSet.from_dict({"CPU": 1.0})


def test_affinity_to_this_node_runs() -> None:
    strategy = NodeAffinitySchedulingStrategy("n0", soft=False)
    assert affinity_refusal(strategy, ONE_CPU, "n0", TOTAL, "Task 'f'") is None


def test_hard_affinity_to_another_node_is_refused_naming_it() -> None:
    strategy = NodeAffinitySchedulingStrategy("elsewhere", soft=False)
    reason = affinity_refusal(strategy, ONE_CPU, "n0", TOTAL, "Task 'f'")
    assert reason is not None
    assert "Task 'f'" in reason and "elsewhere" in reason


def test_soft_affinity_to_another_node_runs_here() -> None:
    strategy = NodeAffinitySchedulingStrategy("elsewhere", soft=True)
    assert affinity_refusal(strategy, ONE_CPU, "n0", TOTAL, "Task 'f'") is None


def test_hard_affinity_beyond_the_nodes_total_is_refused() -> None:
    strategy = NodeAffinitySchedulingStrategy("n0", soft=False)
    big = ResourceSet.from_dict({"CPU": 8.0})
    assert affinity_refusal(strategy, big, "n0", TOTAL, "Task 'f'") is not None


def test_check_strategy() -> None:
    for ok in (None, "DEFAULT", "SPREAD", NodeAffinitySchedulingStrategy("n", soft=True)):
        check_strategy(ok, "f")
    with pytest.raises(ValueError, match="PACK"):
        check_strategy("PACK", "f")
    with pytest.raises(TypeError, match="int"):
        check_strategy(1, "f")
    with pytest.raises(TypeError, match="node_id"):
        NodeAffinitySchedulingStrategy(3, soft=True)  # type: ignore[arg-type]
