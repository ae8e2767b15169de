"""Lease beacons: a watched step's process dies before its driver's lease can expire."""

from __future__ import annotations

import multiprocessing
import signal
import time
from pathlib import Path

import pytest

from heliostat.workflows.beacon import (
    LeaseBeacon,
    LeaseExpired,
    Watchdog,
    fence_margin,
    read_deadline,
)


def test_a_beacon_holds_the_latest_deadline_and_is_gone_when_closed(tmp_path: Path) -> None:
    beacon = LeaseBeacon(str(tmp_path / "leases" / "wf-1"))
    beacon.publish(123.5)
    beacon.publish(456.25)
    assert read_deadline(beacon.path) == 456.25
    assert (tmp_path / "leases").stat().st_mode & 0o777 == 0o700
    beacon.close()
    beacon.close()  # twice is fine
    assert read_deadline(beacon.path) == 0.0  # gone: long past


def test_a_step_does_not_start_once_the_deadline_is_near(tmp_path: Path) -> None:
    beacon = LeaseBeacon(str(tmp_path / "b"))
    try:
        beacon.publish(time.monotonic() + 0.2)
        with (
            pytest.raises(LeaseExpired, match="does not start"),
            Watchdog(beacon.path, 0.5, what="step 'x'"),
        ):
            pytest.fail("the step ran")
    finally:
        beacon.close()


def test_the_margin_is_a_fifth_of_the_timeout_and_at_least_half_a_second() -> None:
    assert fence_margin(6.0) == pytest.approx(1.2)
    assert fence_margin(1.0) == 0.5


def _watched_step(path: str, seconds: float) -> None:
    with Watchdog(path, 0.2, what="step 'charge'"):
        time.sleep(seconds)  # the step's work


def test_the_watchdog_kills_its_process_when_renewals_stop(tmp_path: Path) -> None:
    beacon = LeaseBeacon(str(tmp_path / "b"))
    ctx = multiprocessing.get_context("fork")
    try:
        beacon.publish(time.monotonic() + 0.6)
        stopped = ctx.Process(target=_watched_step, args=(beacon.path, 30))
        started = time.monotonic()
        stopped.start()
        stopped.join(timeout=20)
        assert stopped.exitcode == -signal.SIGKILL
        # It died about when the deadline came within the margin, not later.
        assert time.monotonic() - started < 5

        beacon.publish(time.monotonic() + 0.6)
        renewed = ctx.Process(target=_watched_step, args=(beacon.path, 1.5))
        renewed.start()
        deadline = time.monotonic() + 10
        while renewed.is_alive() and time.monotonic() < deadline:
            beacon.publish(time.monotonic() + 0.6)  # a driver renewing its lease
            renewed.join(timeout=0.1)
        assert renewed.exitcode == 0
    finally:
        beacon.close()
