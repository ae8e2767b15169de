"""Unit tests for heliostat.scheduler.resources: validation, fixed-point arithmetic, ledger."""

from __future__ import annotations

import math
import pickle

import pytest

from heliostat.exceptions import HeliostatInternalError
from heliostat.scheduler import CPU, NodeResources, ResourceSet

# --- from_request -------------------------------------------------------------------


def test_num_cpus_none_uses_default_cpus() -> None:
    assert ResourceSet.from_request(None, None, default_cpus=1).to_dict() == {"CPU": 1.0}


def test_num_cpus_overrides_default() -> None:
    rs = ResourceSet.from_request(0.5, {"db": 1}, default_cpus=1)
    assert rs.to_dict() == {"CPU": 0.5, "db": 1.0}


def test_zero_quantities_are_dropped() -> None:
    rs = ResourceSet.from_request(0, {"GPU": 0, "db": 2}, default_cpus=1)
    assert rs.to_dict() == {"db": 2.0}
    assert rs.names() == frozenset({"db"})


def test_zero_default_cpus_gives_empty_set() -> None:
    rs = ResourceSet.from_request(None, None, default_cpus=0)
    assert not rs
    assert rs == ResourceSet()


def test_cpu_inside_resources_is_used_when_num_cpus_is_none() -> None:
    rs = ResourceSet.from_request(None, {"CPU": 2}, default_cpus=1)
    assert rs.to_dict() == {"CPU": 2.0}


def test_cpu_given_twice_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'CPU'.*num_cpus=1.*resources\['CPU'\]=2"):
        ResourceSet.from_request(1, {"CPU": 2}, default_cpus=1)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, "non-negative"),
        (-0.5, "non-negative"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("2", "must be a number"),
        (None, "must be a number"),
        (True, "must be a number"),
        (1.5, "whole number"),
        (2.25, "whole number"),
        (0.00001, "1/10000"),
        (0.12345, "1/10000"),
        (1e-12, "1/10000"),
    ],
)
def test_invalid_resource_quantity_message_names_resource_and_value(
    value: object, fragment: str
) -> None:
    with pytest.raises(ValueError) as info:
        ResourceSet.from_request(None, {"GPU": value}, default_cpus=1)  # type: ignore[dict-item]
    message = str(info.value)
    assert "'GPU'" in message
    assert repr(value) in message
    assert fragment in message


@pytest.mark.parametrize("value", [-1, math.nan, 1.5, 0.00001, "one"])
def test_invalid_num_cpus_message_names_cpu_and_num_cpus(value: object) -> None:
    with pytest.raises(ValueError) as info:
        ResourceSet.from_request(value, None, default_cpus=1)  # type: ignore[arg-type]
    assert "'CPU'" in str(info.value)
    assert "num_cpus" in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("name", ["", 3, None])
def test_invalid_resource_name_is_rejected(name: object) -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        ResourceSet.from_request(None, {name: 1}, default_cpus=1)  # type: ignore[dict-item]


@pytest.mark.parametrize("value", [0.0001, 0.5, 0.3, 0.0003, 1, 1.0, 2, 64, 16 * 2**30])
def test_valid_quantities_round_trip_exactly(value: float) -> None:
    assert ResourceSet({"x": value}).get("x") == float(value)


def test_any_real_number_type_is_accepted() -> None:
    from fractions import Fraction

    assert ResourceSet({"x": Fraction(1, 4)}).get("x") == 0.25  # type: ignore[dict-item]


# --- from_dict / to_dict / accessors ------------------------------------------------


def test_from_dict_has_no_cpu_default() -> None:
    assert ResourceSet.from_dict({"db": 1}).to_dict() == {"db": 1.0}


def test_from_dict_validates_like_from_request() -> None:
    with pytest.raises(ValueError, match=r"'CPU'.*-2"):
        ResourceSet.from_dict({"CPU": -2})


def test_to_dict_returns_floats_with_sorted_names() -> None:
    d = ResourceSet.from_dict({"memory": 2, "CPU": 4}).to_dict()
    assert d == {"CPU": 4.0, "memory": 2.0}
    assert list(d) == ["CPU", "memory"]
    assert all(type(v) is float for v in d.values())


def test_get_missing_name_is_zero() -> None:
    assert ResourceSet({"CPU": 1}).get("GPU") == 0.0


def test_repr_shows_quantities() -> None:
    assert repr(ResourceSet({"CPU": 0.5})) == "ResourceSet({'CPU': 0.5})"


def test_constant_cpu_name() -> None:
    assert CPU == "CPU"


# --- equality, hashing, pickling ----------------------------------------------------


def test_equal_sets_hash_equal_regardless_of_order() -> None:
    a = ResourceSet({"CPU": 1, "db": 1})
    b = ResourceSet({"db": 1, "CPU": 1})
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_sets_with_zero_entries_equal_sets_without() -> None:
    assert ResourceSet({"CPU": 1, "GPU": 0}) == ResourceSet({"CPU": 1})


def test_comparison_with_other_types_is_not_equal() -> None:
    assert ResourceSet({"CPU": 1}) != {"CPU": 1.0}


def test_pickle_round_trip_preserves_value_and_recomputes_hash() -> None:
    rs = ResourceSet({"CPU": 0.5, "db": 3})
    hash(rs)  # populate the cache; it must not travel
    copy = pickle.loads(pickle.dumps(rs, protocol=5))
    assert copy == rs
    assert hash(copy) == hash(rs)


def test_unpickled_sets_of_one_shape_are_one_shared_object() -> None:
    """A node unpickles thousands of task specs a second: one set per shape is kept."""
    first = pickle.loads(pickle.dumps(ResourceSet({"CPU": 1, "db": 2})))
    again = pickle.loads(pickle.dumps(ResourceSet({"CPU": 1, "db": 2})))
    other = pickle.loads(pickle.dumps(ResourceSet({"CPU": 2})))
    assert first is again and first == ResourceSet({"CPU": 1, "db": 2})
    assert other is not first and other.to_dict() == {"CPU": 2.0}
    # Sharing is safe because a set never changes: arithmetic makes new ones.
    assert (first + other).to_dict() == {"CPU": 3.0, "db": 2.0} and first.get("CPU") == 1


# --- arithmetic ---------------------------------------------------------------------


def test_add_and_sub_merge_names() -> None:
    a = ResourceSet({"CPU": 1, "db": 1})
    b = ResourceSet({"CPU": 0.5, "GPU": 1})
    assert (a + b).to_dict() == {"CPU": 1.5, "GPU": 1.0, "db": 1.0}
    assert (a + b - b) == a


def test_sub_may_go_negative() -> None:
    diff = ResourceSet({"CPU": 1}) - ResourceSet({"CPU": 2, "GPU": 1})
    assert diff.to_dict() == {"CPU": -1.0, "GPU": -1.0}


def test_sub_to_zero_drops_the_name() -> None:
    diff = ResourceSet({"CPU": 1, "db": 1}) - ResourceSet({"CPU": 1})
    assert diff.names() == frozenset({"db"})


def test_fractional_cpus_do_not_drift_after_many_adds() -> None:
    tenth = ResourceSet({"CPU": 0.1})
    acc = ResourceSet()
    for _ in range(10_000):
        acc = acc + tenth
    assert acc == ResourceSet({"CPU": 1000})
    for _ in range(10_000):
        acc = acc - tenth
    assert not acc


def test_bool_is_false_only_when_empty() -> None:
    assert not ResourceSet()
    assert ResourceSet({"CPU": 0.0001})


# --- is_subset_of -------------------------------------------------------------------


def test_empty_request_fits_anything_including_empty_and_negative() -> None:
    empty = ResourceSet()
    assert empty.is_subset_of(empty)
    assert empty.is_subset_of(ResourceSet({"CPU": 1}) - ResourceSet({"CPU": 3}))


def test_request_equal_to_capacity_fits() -> None:
    cap = ResourceSet({"CPU": 2, "db": 1})
    assert cap.is_subset_of(cap)


def test_missing_resource_in_other_does_not_fit() -> None:
    assert not ResourceSet({"GPU": 1}).is_subset_of(ResourceSet({"CPU": 8}))


def test_extra_resources_in_other_are_ignored() -> None:
    assert ResourceSet({"CPU": 1}).is_subset_of(ResourceSet({"CPU": 1, "GPU": 4}))


def test_one_unit_over_does_not_fit() -> None:
    assert not ResourceSet({"CPU": 0.5001}).is_subset_of(ResourceSet({"CPU": 0.5}))


def test_nothing_naming_a_negative_resource_fits() -> None:
    oversubscribed = ResourceSet({"CPU": 1, "db": 1}) - ResourceSet({"CPU": 2})
    assert not ResourceSet({"CPU": 0.0001}).is_subset_of(oversubscribed)
    assert ResourceSet({"db": 1}).is_subset_of(oversubscribed)


# --- NodeResources ------------------------------------------------------------------


def test_node_starts_fully_available() -> None:
    node = NodeResources(ResourceSet({"CPU": 4}))
    assert node.available == node.total == ResourceSet({"CPU": 4})


def test_try_acquire_takes_only_when_it_fits() -> None:
    node = NodeResources(ResourceSet({"CPU": 1}))
    assert node.try_acquire(ResourceSet({"CPU": 0.75}))
    assert not node.try_acquire(ResourceSet({"CPU": 0.5}))
    assert node.available == ResourceSet({"CPU": 0.25})


def test_failed_try_acquire_changes_nothing_even_when_partially_fitting() -> None:
    node = NodeResources(ResourceSet({"CPU": 2, "db": 1}))
    assert not node.try_acquire(ResourceSet({"CPU": 1, "db": 2}))
    assert node.available == node.total


def test_try_acquire_of_unknown_resource_fails() -> None:
    node = NodeResources(ResourceSet({"CPU": 2}))
    assert not node.try_acquire(ResourceSet({"GPU": 1}))


def test_fractional_cpus_do_not_drift_after_many_acquires() -> None:
    node = NodeResources(ResourceSet({"CPU": 1}))
    tenth = ResourceSet({"CPU": 0.1})
    for _ in range(1000):
        taken = 0
        while node.try_acquire(tenth):
            taken += 1
        assert taken == 10
        for _ in range(taken):
            node.release(tenth)
    assert node.available == ResourceSet({"CPU": 1})


def test_acquire_force_oversubscribes_and_release_recovers() -> None:
    node = NodeResources(ResourceSet({"CPU": 1}))
    one = ResourceSet({"CPU": 1})
    assert node.try_acquire(one)
    node.acquire_force(one)
    assert node.available.get(CPU) == -1.0
    assert not node.fits(ResourceSet({"CPU": 0.5}))
    node.release(one)
    assert not node.available
    node.release(one)
    assert node.available == node.total


def test_release_beyond_total_is_an_internal_error() -> None:
    node = NodeResources(ResourceSet({"CPU": 2}))
    node.try_acquire(ResourceSet({"CPU": 1}))
    with pytest.raises(HeliostatInternalError, match=r"'CPU'.*released twice"):
        node.release(ResourceSet({"CPU": 2}))
    assert node.available == ResourceSet({"CPU": 1})


def test_release_of_resource_the_node_lacks_is_an_internal_error() -> None:
    node = NodeResources(ResourceSet({"CPU": 2}))
    with pytest.raises(HeliostatInternalError, match="'GPU'"):
        node.release(ResourceSet({"GPU": 1}))


def test_failed_release_changes_nothing() -> None:
    node = NodeResources(ResourceSet({"CPU": 2, "db": 1}))
    node.try_acquire(ResourceSet({"CPU": 2}))
    with pytest.raises(HeliostatInternalError):
        node.release(ResourceSet({"CPU": 1, "db": 1}))
    assert node.available == ResourceSet({"db": 1})


def test_is_feasible_checks_total_not_available() -> None:
    node = NodeResources(ResourceSet({"CPU": 2}))
    node.try_acquire(ResourceSet({"CPU": 2}))
    assert node.is_feasible(ResourceSet({"CPU": 2}))
    assert not node.fits(ResourceSet({"CPU": 2}))
    assert not node.is_feasible(ResourceSet({"CPU": 3}))


def test_available_is_a_snapshot() -> None:
    node = NodeResources(ResourceSet({"CPU": 2}))
    before = node.available
    node.try_acquire(ResourceSet({"CPU": 1}))
    assert before == ResourceSet({"CPU": 2})


def test_minimum_takes_the_smaller_of_each_and_keeps_negatives() -> None:
    reported = ResourceSet({"CPU": 4, "db": 1})
    left = ResourceSet({"CPU": 4, "db": 1}) - ResourceSet({"CPU": 6, "GPU": 0})
    assert reported.minimum(left) == ResourceSet({"db": 1}) - ResourceSet({"CPU": 2})
    assert reported.minimum(ResourceSet({"CPU": 1})) == ResourceSet({"CPU": 1})  # no db there
    assert ResourceSet().minimum(reported) == ResourceSet()
