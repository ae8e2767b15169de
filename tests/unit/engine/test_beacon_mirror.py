"""Copies of other nodes' lease beacons: what a node keeps, for whom, and until when.

The node that holds the beacon is a function here (``ask``); the mirror's thread and
files are real.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from waiting import poll_for

from heliostat.engine.beacon_mirror import BeaconMirror, beacon_path, mirrored_deadline
from heliostat.engine.deadline_file import read_deadline
from heliostat.engine.ids import format_id
from heliostat.exceptions import ClusterError


class Driver:
    """A driver's node as the mirror asks it: a lease that holds ``remaining`` more
    seconds, or is gone, or cannot be asked at all."""

    def __init__(self) -> None:
        self.remaining: float | None = 10.0  # None: the beacon is gone
        self.reachable = True
        self.asked: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def ask(self, index: int, beacon: str, timeout: float) -> tuple[bool, float]:
        with self.lock:
            self.asked.append((index, beacon))
            if not self.reachable:
                raise ConnectionError("node unreachable")
            if self.remaining is None:
                return False, 0.0
            return True, self.remaining


def _answers() -> tuple[queue.Queue[tuple[bool, Any]], Any]:
    got: queue.Queue[tuple[bool, Any]] = queue.Queue()
    return got, lambda ok, value: got.put((ok, value))


@pytest.fixture
def driver() -> Driver:
    return Driver()


@pytest.fixture
def alive() -> set[int]:
    return {101, 102}


@pytest.fixture
def mirror(tmp_path: Path, driver: Driver, alive: set[int]) -> Any:
    made = BeaconMirror(str(tmp_path / "mirrors"), driver.ask, alive=alive.__contains__)
    made.start()
    yield made
    made.stop()


def test_the_local_deadline_is_never_later_than_the_true_one() -> None:
    # Asked at local moment 100, answered "7 s left": the answer was read after 100.
    assert mirrored_deadline(100.0, True, 7.0) == 107.0
    assert mirrored_deadline(100.0, False, 7.0) == 0.0  # gone: long past


def test_a_step_gets_its_copy_only_once_it_holds_a_deadline(
    mirror: BeaconMirror, driver: Driver
) -> None:
    got, answer = _answers()
    before = time.monotonic()
    mirror.watch(101, 0x2A, "wf-1-abc", answer)
    ok, path = got.get(timeout=5)
    assert ok, path
    assert os.path.basename(path) == f"{format_id(0x2A)}-wf-1-abc"
    deadline = read_deadline(path)
    assert before + 10.0 <= deadline <= time.monotonic() + 10.0
    assert driver.asked[0] == (0x2A, "wf-1-abc")
    # It follows the driver: a lease renewed further is seen in the copy.
    driver.remaining = 20.0
    poll_for(lambda: read_deadline(path) > deadline + 5, what="the copy to follow a renewal")


def test_a_beacon_gone_at_its_node_reads_as_long_past(mirror: BeaconMirror, driver: Driver) -> None:
    got, answer = _answers()
    mirror.watch(101, 3, "wf-2-abc", answer)
    ok, path = got.get(timeout=5)
    assert ok
    driver.remaining = None  # the run released its lease, or the driver is gone
    poll_for(lambda: read_deadline(path) == 0.0, what="the copy to read as long past")


def test_a_node_that_cannot_be_asked_lets_the_copy_run_out(
    mirror: BeaconMirror, driver: Driver
) -> None:
    got, answer = _answers()
    mirror.watch(101, 3, "wf-3-abc", answer)
    ok, path = got.get(timeout=5)
    assert ok
    deadline = read_deadline(path)
    driver.reachable = False
    asked = len(driver.asked)
    poll_for(lambda: len(driver.asked) > asked + 2, what="more questions to the node")
    assert read_deadline(path) == deadline  # not extended: it runs out by itself


def test_a_first_copy_that_cannot_be_had_is_refused_and_not_kept(
    mirror: BeaconMirror, driver: Driver
) -> None:
    driver.reachable = False
    got, answer = _answers()
    mirror.watch(101, 3, "wf-4-abc", answer)
    ok, error = got.get(timeout=5)
    assert not ok
    assert isinstance(error, ClusterError)
    assert f"node {format_id(3)}" in str(error)
    poll_for(lambda: not mirror.paths(), what="the refused copy to be dropped")


def test_a_copy_lasts_while_a_watcher_needs_it(
    mirror: BeaconMirror, driver: Driver, alive: set[int]
) -> None:
    first, answer1 = _answers()
    second, answer2 = _answers()
    mirror.watch(101, 3, "wf-5-abc", answer1)
    mirror.watch(102, 3, "wf-5-abc", answer2)
    path = first.get(timeout=5)[1]
    assert second.get(timeout=5) == (True, path)  # one copy, shared
    mirror.unwatch(101, path)
    assert os.path.exists(path)
    alive.discard(102)  # the other worker died (its watchdog killed it, say)
    poll_for(lambda: not os.path.exists(path), what="the copy to be removed")
    assert not mirror.paths()


def test_the_last_watcher_done_removes_the_copy(mirror: BeaconMirror) -> None:
    got, answer = _answers()
    mirror.watch(101, 3, "wf-6-abc", answer)
    path = got.get(timeout=5)[1]
    mirror.unwatch(101, path)
    assert not os.path.exists(path)
    mirror.unwatch(101, path)  # twice is harmless


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ".hidden", "", "x" * 201])
def test_names_that_are_not_a_beacons_are_refused(
    mirror: BeaconMirror, tmp_path: Path, name: str
) -> None:
    with pytest.raises(ValueError, match="not a lease beacon"):
        beacon_path(str(tmp_path), name)
    with pytest.raises(ValueError, match="not a lease beacon"):
        mirror.watch(101, 3, name, lambda ok, value: None)


def test_stopping_removes_every_copy_and_fails_the_waiting(tmp_path: Path, driver: Driver) -> None:
    made = BeaconMirror(str(tmp_path / "m"), driver.ask, alive=lambda pid: True)
    got, answer = _answers()
    made.watch(101, 3, "wf-7-abc", answer)  # not started: nobody answers it yet
    made.stop()
    ok, error = got.get(timeout=5)
    assert not ok and "shutting down" in str(error)
    assert not list((tmp_path / "m").iterdir())
    with pytest.raises(ClusterError, match="shutting down"):
        made.watch(101, 3, "wf-7-abc", answer)


def test_a_slow_node_delays_only_its_own_copies(tmp_path: Path) -> None:
    release = threading.Event()
    asked: dict[int, int] = {3: 0, 4: 0}

    def ask(index: int, beacon: str, timeout: float) -> tuple[bool, float]:
        asked[index] += 1
        if index == 3 and asked[3] > 1:
            release.wait(10)  # node 3 stops answering after its first answer
        return True, 10.0

    made = BeaconMirror(str(tmp_path / "m"), ask, alive=lambda pid: True)
    made.start()
    try:
        slow, answer_slow = _answers()
        fast, answer_fast = _answers()
        made.watch(101, 3, "wf-8-abc", answer_slow)
        made.watch(102, 4, "wf-9-abc", answer_fast)
        assert slow.get(timeout=5)[0] and fast.get(timeout=5)[0]
        poll_for(lambda: asked[3] >= 2, what="node 3 to be asked again")
        seen = asked[4]
        # Node 3's question hangs; node 4's copy is still asked about, every interval.
        poll_for(lambda: asked[4] >= seen + 5, what="node 4's copy to keep being refreshed")
        assert asked[3] == 2  # and node 3 is not asked twice at once
    finally:
        release.set()
        made.stop()
