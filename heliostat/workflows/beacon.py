"""Lease beacons: a run's non-idempotent steps stop before its lease can be taken over.

Fencing (:mod:`heliostat.workflows.lease`) stops a driver that lost its lease from
*writing*; it cannot stop a step that driver already started, which runs on in its
worker process. A paused or cut-off driver's step could then act while a new driver,
which took the workflow over, settles the same step (its ``on_in_doubt`` hook saw no
effect yet and asked for a re-run): the effect twice. Leases only mean something if the
old holder's work has stopped by the time the lease expires.

So a driver publishes, in a small file per run (the *beacon*, in its session
directory), the moment until which its lease is surely held: the monotonic time of
its last successful renewal, taken *before* the renewal was sent, plus the lease
timeout, which is never later than the expiry the database holds. A worker running a
non-idempotent step of that run watches the beacon (:class:`Watchdog`) and kills its
own process once the deadline is less than a safety margin away. A driver that stops
renewing (SIGSTOP, a hang, a database it cannot reach) thereby loses its in-flight
non-idempotent steps before anyone can take the workflow over; the new holder finds
them in doubt and settles them knowing nothing runs any more. Idempotent steps are
left alone: running one twice is harmless by their own declaration.

The clock is ``time.monotonic`` (``CLOCK_MONOTONIC``), one clock for every process of
a machine and immune to changes of the wall clock (the file format is
``engine/deadline_file.py``). On a cluster, a step may run on another machine than its
driver's: that node's manager keeps a local copy of the beacon, asking the driver's node
for the time left (``engine/beacon_mirror.py``), and the step watches the copy.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from heliostat.engine.deadline_file import DeadlineFile, read_deadline

__all__ = ["WATCH_INTERVAL", "LeaseBeacon", "Watchdog", "fence_margin", "read_deadline"]

log = logging.getLogger("heliostat.workflows")

LeaseBeacon = DeadlineFile
"""The driver's side: the run's beacon file, rewritten with each renewal's deadline."""

WATCH_INTERVAL = 0.05
"""Seconds between two looks of a watchdog at its beacon."""


def fence_margin(timeout: float) -> float:
    """How long before the deadline a watched step stops: a fifth of the lease timeout,
    at least half a second (the watchdog's reaction time and a busy machine)."""
    return max(0.5, timeout / 5)


class Watchdog:
    """The worker's side: kills this process once the beacon's deadline is near.

    Used as a context manager around a non-idempotent step's code. If the deadline is
    already too near on entry, :class:`LeaseExpired` is raised and the step does not
    start.
    """

    def __init__(self, path: str, margin: float, *, what: str) -> None:
        self.path = path
        self.margin = margin
        self.what = what
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def expired(self) -> bool:
        return time.monotonic() >= read_deadline(self.path) - self.margin

    def __enter__(self) -> Watchdog:
        if self.expired():
            raise LeaseExpired(
                f"{self.what}: its driver's lease is not renewed (the driver is paused, "
                "gone, or cut off from its database), so the step does not start."
            )
        self._thread = threading.Thread(
            target=self._watch, name="heliostat-step-watchdog", daemon=True
        )
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            if self.expired():
                # Stderr, not logging: the process dies on the next line.
                os.write(
                    2,
                    f"heliostat: {self.what}: its driver's lease is about to expire; "
                    "stopping this worker so that nothing runs the step twice\n".encode(),
                )
                os.kill(os.getpid(), signal.SIGKILL)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class LeaseExpired(Exception):
    """A non-idempotent step was not started: its driver's lease is not being renewed."""
