"""The head's eventual index of where objects are stored, and the nodes' reports to it."""

from __future__ import annotations

import pytest

from heliostat.cluster import object_locations
from heliostat.cluster.object_locations import (
    ObjectLocations,
    ObjectPlace,
    ObjectReport,
    StoreDelta,
)


def test_a_node_reports_everything_first_then_only_what_changed() -> None:
    report = ObjectReport()
    first = report.delta({1: 100, 2: 200})
    assert first == StoreDelta(added={1: 100, 2: 200}, full=True)
    report.accepted({1: 100, 2: 200})
    assert not report.delta({1: 100, 2: 200})  # nothing changed: nothing to say
    second = report.delta({2: 200, 3: 300})
    assert second == StoreDelta(added={3: 300}, removed=(1,))


def test_a_report_the_head_did_not_accept_is_covered_by_the_next() -> None:
    report = ObjectReport()
    report.accepted({1: 100})
    lost = report.delta({2: 200})  # this heartbeat's answer never came
    assert lost == StoreDelta(added={2: 200}, removed=(1,))
    again = report.delta({2: 200, 3: 300})  # still against what was accepted
    assert again == StoreDelta(added={2: 200, 3: 300}, removed=(1,))
    head = ObjectLocations()
    head.apply("n1", StoreDelta(added={1: 100}, full=True))
    head.apply("n1", lost)  # it may have arrived after all: applying both is harmless
    head.apply("n1", again)
    assert [p.object_id for p in head.locate([1, 2, 3])] == [2, 3]


def test_registering_again_makes_the_next_report_a_full_one() -> None:
    report = ObjectReport()
    report.accepted({1: 100})
    report.forget()
    assert report.delta({1: 100}) == StoreDelta(added={1: 100}, full=True)


def test_the_head_knows_which_nodes_hold_each_object() -> None:
    head = ObjectLocations()
    head.apply("n1", StoreDelta(added={1: 100, 2: 2000}, full=True))
    head.apply("n2", StoreDelta(added={2: 2000}, full=True))
    assert head.locate([2, 1, 9]) == [
        ObjectPlace(object_id=2, size=2000, node_ids=("n1", "n2")),
        ObjectPlace(object_id=1, size=100, node_ids=("n1",)),
    ]
    assert head.node_summary("n1") == (2, 2100)
    places, total = head.listing(1)  # the largest first
    assert [p.object_id for p in places] == [2] and total == 2
    head.apply("n1", StoreDelta(added={}, removed=(2,)))
    assert head.locate([2]) == [ObjectPlace(object_id=2, size=2000, node_ids=("n2",))]


def test_a_full_report_replaces_what_the_node_said_before() -> None:
    head = ObjectLocations()
    head.apply("n1", StoreDelta(added={1: 100, 2: 200}, full=True))
    head.apply("n1", StoreDelta(added={3: 300}, full=True))  # it restarted its store
    assert [p.object_id for p in head.locate([1, 2, 3])] == [3]
    assert len(head) == 1


def test_a_node_that_is_gone_takes_its_objects_with_it() -> None:
    head = ObjectLocations()
    head.apply("n1", StoreDelta(added={1: 100, 2: 200}, full=True))
    head.apply("n2", StoreDelta(added={2: 200}, full=True))
    head.node_gone("n1")
    assert head.locate([1, 2]) == [ObjectPlace(object_id=2, size=200, node_ids=("n2",))]
    assert head.node_summary("n1") == (0, 0)
    head.node_gone("n1")  # twice is harmless


def test_a_node_reports_only_its_largest_objects_past_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(object_locations, "MAX_REPORTED", 2)
    report = ObjectReport()
    assert report.delta({1: 10, 2: 30, 3: 20}).added == {2: 30, 3: 20}


def test_a_head_without_a_full_report_of_a_node_asks_for_one() -> None:
    head = ObjectLocations()  # restarted: the node is known again, its store is not
    assert not head.apply("n1", StoreDelta(added={5: 50}))
    assert head.apply("n1", StoreDelta(added={5: 50, 6: 60}, full=True))
    assert head.apply("n1", StoreDelta(added={}, removed=(5,)))
    head.node_gone("n1")
    assert not head.apply("n1", StoreDelta(added={}))
