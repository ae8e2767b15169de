"""Unit tests for the trigger loop's clocks: FakeClock and SystemClock."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from heliostat.workflows.triggers import FakeClock, SystemClock

T0 = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)


def _sleep_in_thread(
    clock: FakeClock, until: dt.datetime, wake: threading.Event
) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(clock.wait(until, wake)), daemon=True)
    thread.start()
    clock.wait_for_sleepers(1)
    return thread, result


def test_advancing_to_the_deadline_wakes_the_sleeper() -> None:
    clock = FakeClock(T0)
    wake = threading.Event()
    thread, result = _sleep_in_thread(clock, T0 + dt.timedelta(minutes=5), wake)
    assert clock.deadlines == [T0 + dt.timedelta(minutes=5)]
    clock.advance(dt.timedelta(minutes=4))
    assert clock.sleepers == 1  # not yet
    clock.advance(60)
    thread.join(timeout=10)
    assert result == [False]  # woken by time, not by the event
    assert clock.sleepers == 0 and clock.now() == T0 + dt.timedelta(minutes=5)


def test_setting_the_event_wakes_the_sleeper_early() -> None:
    clock = FakeClock(T0)
    wake = threading.Event()
    thread, result = _sleep_in_thread(clock, T0 + dt.timedelta(hours=1), wake)
    wake.set()
    thread.join(timeout=10)
    assert result == [True]
    assert clock.now() == T0


def test_a_deadline_in_the_past_returns_at_once() -> None:
    clock = FakeClock(T0)
    assert clock.wait(T0, threading.Event()) is False
    assert clock.sleepers == 0


def test_fake_time_never_goes_backwards() -> None:
    clock = FakeClock(T0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(T0 - dt.timedelta(seconds=1))
    with pytest.raises(ValueError, match="aware"):
        FakeClock(dt.datetime(2026, 1, 1))


def test_wait_for_sleepers_times_out_with_a_message() -> None:
    with pytest.raises(TimeoutError, match="0 of 1 threads"):
        FakeClock(T0).wait_for_sleepers(1, timeout=0.01)


def test_system_clock_is_aware_utc_and_wakes_on_its_event() -> None:
    clock = SystemClock()
    now = clock.now()
    assert now.tzinfo is dt.UTC
    wake = threading.Event()
    wake.set()
    assert clock.wait(now + dt.timedelta(hours=1), wake) is True
    assert clock.wait(now - dt.timedelta(seconds=1), threading.Event()) is False
