"""The heap freeze around workflow runs: taken by the first run, given back by the last."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from heliostat.workflows.heap import HeapFreeze


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _no_freeze_left_behind() -> Iterator[None]:
    assert gc.get_freeze_count() == 0, "a test before this one left objects frozen"
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
        pytest.fail("the test left objects frozen")


def test_a_run_freezes_the_old_heap_and_gives_it_back() -> None:
    heap = HeapFreeze()

    with heap.during_run():
        assert gc.get_freeze_count() > 0
        assert heap.frozen

    assert gc.get_freeze_count() == 0
    assert not heap.frozen


def test_a_cycle_that_died_during_the_run_is_collected_after_it() -> None:
    heap = HeapFreeze()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)

    with heap.during_run():
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: skipped, not freed

    gc.collect()
    assert gone() is None


def test_the_runs_own_garbage_cycles_are_collected_during_the_run() -> None:
    heap = HeapFreeze()

    with heap.during_run():
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None


def test_nested_runs_unfreeze_only_when_the_last_one_ends() -> None:
    heap = HeapFreeze()

    with heap.during_run():
        with heap.during_run():
            assert heap.frozen
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_the_freeze_is_given_back_when_the_run_raises() -> None:
    heap = HeapFreeze()

    with pytest.raises(RuntimeError), heap.during_run():
        raise RuntimeError("the run failed")

    assert gc.get_freeze_count() == 0


def test_someone_elses_freeze_is_left_alone() -> None:
    heap = HeapFreeze()
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with heap.during_run():
            assert not heap.frozen
        assert gc.get_freeze_count() == before
    finally:
        gc.unfreeze()


def test_nothing_is_frozen_while_the_collector_is_disabled() -> None:
    heap = HeapFreeze()
    gc.disable()
    try:
        with heap.during_run():
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
