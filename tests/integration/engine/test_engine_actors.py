"""Actors: ordering, state, concurrency, names, kill, restarts, failed constructors."""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest

import heliostat as hs
from heliostat.exceptions import ActorDiedError, TaskError


@hs.remote
class Recorder:
    def __init__(self) -> None:
        self.items: list[int] = []

    def append(self, item: int) -> int:
        self.items.append(item)
        return len(self.items)

    def items_so_far(self) -> list[int]:
        return list(self.items)

    def pid(self) -> int:
        return os.getpid()


@hs.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def incr(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def get(self) -> int:
        return self.value

    def pid(self) -> int:
        return os.getpid()

    def crash(self) -> None:
        os._exit(1)


@hs.remote
class Sleeper:
    """Records (start, end) of each call; calls wait at a barrier so they must overlap."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=20)
        self.lock = threading.Lock()
        self.intervals: list[tuple[float, float]] = []

    def nap(self, seconds: float) -> bool:
        start = time.monotonic()
        try:
            self.barrier.wait()
            met = True
        except threading.BrokenBarrierError:
            met = False
        time.sleep(seconds)
        with self.lock:
            self.intervals.append((start, time.monotonic()))
        return met

    def recorded(self) -> list[tuple[float, float]]:
        with self.lock:
            return list(self.intervals)


@hs.remote
class BrokenInit:
    def __init__(self) -> None:
        raise RuntimeError("cannot open the ledger")

    def ping(self) -> str:
        return "pong"


@hs.remote
def call_incr(counter, by):
    return hs.get(counter.incr.remote(by))


@hs.remote
def incr_named(name, by):
    return hs.get(hs.get_actor(name).incr.remote(by))


# --- ordering and state ------------------------------------------------------------------


def test_calls_run_in_submission_order(runtime) -> None:
    recorder = Recorder.remote()
    refs = [recorder.append.remote(i) for i in range(100)]
    assert hs.get(refs) == list(range(1, 101))
    assert hs.get(recorder.items_so_far.remote()) == list(range(100))


def test_actor_keeps_state_between_calls(runtime) -> None:
    counter = Counter.remote(10)
    hs.get(counter.incr.remote())
    hs.get(counter.incr.remote(5))
    assert hs.get(counter.get.remote()) == 16


def test_actor_runs_in_its_own_process(runtime) -> None:
    a, b = Counter.remote(), Counter.remote()
    pid_a, pid_b = hs.get([a.pid.remote(), b.pid.remote()])
    assert pid_a != pid_b != os.getpid()


def test_actor_method_error_is_task_error_and_actor_survives(runtime) -> None:
    counter = Counter.remote()
    with pytest.raises(TaskError) as info:
        hs.get(counter.incr.remote("one"))
    assert isinstance(info.value, TypeError)
    assert "Counter.incr" in str(info.value)
    assert hs.get(counter.incr.remote(2)) == 2


def test_a_method_call_named_by_options_carries_that_name(runtime) -> None:
    counter = Counter.remote()
    named = counter.incr.options(name="add-to-ledger")
    with pytest.raises(TaskError, match="add-to-ledger"):
        hs.get(named.remote("one"))
    assert hs.get(named.remote(2)) == 2  # the options stick to the copy
    with pytest.raises(TypeError, match="name"):
        counter.incr.options(name=5)


def test_max_concurrency_lets_calls_overlap(runtime) -> None:
    sleeper = Sleeper.options(max_concurrency=4).remote(4)
    met = hs.get([sleeper.nap.remote(0.2) for _ in range(4)], timeout=30)
    assert met == [True, True, True, True]
    intervals = hs.get(sleeper.recorded.remote())
    assert len(intervals) == 4
    latest_start = max(start for start, _ in intervals)
    earliest_end = min(end for _, end in intervals)
    assert latest_start < earliest_end, f"the 4 calls did not all overlap: {intervals}"


def test_default_concurrency_runs_calls_one_at_a_time(runtime) -> None:
    sleeper = Sleeper.remote(1)  # parties=1: the barrier never holds a call back
    hs.get([sleeper.nap.remote(0.05) for _ in range(3)], timeout=30)
    intervals = sorted(hs.get(sleeper.recorded.remote()))
    for (_s1, e1), (s2, _e2) in itertools.pairwise(intervals):
        assert e1 <= s2, f"calls overlapped without max_concurrency: {intervals}"


# --- handles and names -------------------------------------------------------------------


def test_actor_handle_passed_to_a_task(runtime) -> None:
    counter = Counter.remote()
    assert hs.get(call_incr.remote(counter, 3)) == 3
    assert sorted(hs.get([call_incr.remote(counter, 1) for _ in range(4)])) == [4, 5, 6, 7]
    assert hs.get(counter.get.remote()) == 7


def test_named_actor_found_from_driver_and_task(runtime) -> None:
    counter = Counter.options(name="engine-test-counter").remote()
    same = hs.get_actor("engine-test-counter")
    assert same == counter
    assert hs.get(same.incr.remote(2)) == 2
    assert hs.get(incr_named.remote("engine-test-counter", 5)) == 7
    assert hs.get(counter.get.remote()) == 7
    hs.kill(counter)


def test_get_actor_of_unknown_name_raises_value_error(runtime) -> None:
    with pytest.raises(ValueError, match="no-such-actor"):
        hs.get_actor("no-such-actor")


def test_duplicate_actor_name_is_rejected(runtime) -> None:
    first = Counter.options(name="engine-test-dup").remote()
    with pytest.raises(ValueError, match="engine-test-dup"):
        Counter.options(name="engine-test-dup").remote()
    hs.kill(first)


def test_calling_actor_class_or_method_directly_raises(runtime) -> None:
    with pytest.raises(TypeError, match=r"\.remote\("):
        Counter()
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"\.remote\("):
        counter.incr(1)
    with pytest.raises(AttributeError, match="no_such_method"):
        counter.no_such_method  # noqa: B018


# --- death, kill and restarts -------------------------------------------------------------


def test_killed_actor_raises_actor_died_on_later_calls(fresh_runtime) -> None:
    fresh_runtime()
    counter = Counter.remote()
    assert hs.get(counter.incr.remote()) == 1
    hs.kill(counter)
    with pytest.raises(ActorDiedError) as info:
        hs.get(counter.incr.remote(), timeout=20)
    assert "kill" in str(info.value)


def test_killed_named_actor_is_no_longer_found(fresh_runtime, wait_for) -> None:
    fresh_runtime()
    counter = Counter.options(name="engine-test-killed").remote()
    hs.get(counter.incr.remote())
    hs.kill(counter)

    def gone() -> bool:
        try:
            hs.get_actor("engine-test-killed")
        except ValueError:
            return True
        return False

    wait_for(gone, what="the killed actor's name to be released")


def test_crashed_actor_restarts_with_fresh_state(fresh_runtime) -> None:
    fresh_runtime()
    counter = Counter.options(max_restarts=1).remote(100)
    assert hs.get(counter.incr.remote()) == 101
    first_pid = hs.get(counter.pid.remote())
    with pytest.raises(ActorDiedError):
        hs.get(counter.crash.remote(), timeout=20)
    # Restarted: the constructor ran again, so the state is the initial one.
    assert hs.get(counter.incr.remote(), timeout=30) == 101
    assert hs.get(counter.pid.remote()) != first_pid


def test_crashed_actor_without_restarts_stays_dead(fresh_runtime) -> None:
    fresh_runtime()
    counter = Counter.remote()
    with pytest.raises(ActorDiedError):
        hs.get(counter.crash.remote(), timeout=20)
    with pytest.raises(ActorDiedError):
        hs.get(counter.incr.remote(), timeout=20)


def test_restarts_are_limited_by_max_restarts(fresh_runtime) -> None:
    fresh_runtime()
    counter = Counter.options(max_restarts=1).remote()
    with pytest.raises(ActorDiedError):
        hs.get(counter.crash.remote(), timeout=20)
    with pytest.raises(ActorDiedError):
        hs.get(counter.crash.remote(), timeout=20)
    with pytest.raises(ActorDiedError):
        hs.get(counter.incr.remote(), timeout=20)


def test_constructor_error_makes_calls_raise_actor_died(fresh_runtime) -> None:
    fresh_runtime()
    broken = BrokenInit.remote()
    with pytest.raises(ActorDiedError) as info:
        hs.get(broken.ping.remote(), timeout=20)
    message = str(info.value)
    assert "constructor" in message
    assert "cannot open the ledger" in message


def test_constructor_error_is_not_retried_with_restarts(fresh_runtime) -> None:
    fresh_runtime()
    broken = BrokenInit.options(max_restarts=3).remote()
    with pytest.raises(ActorDiedError, match="cannot open the ledger"):
        hs.get(broken.ping.remote(), timeout=20)
    with pytest.raises(ActorDiedError):
        hs.get(broken.ping.remote(), timeout=20)
