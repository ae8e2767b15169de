"""A node's local copies of lease beacons that live on other nodes.

A durable workflow's driver publishes, in a file of its session (its *beacon*, see
``workflows/beacon.py``), the moment until which its lease is surely held; a worker
running one of the run's non-idempotent steps watches that file and kills itself
before the moment passes, so nothing runs the step twice once another driver can
take the workflow over. A file is read on one machine only. When the step runs on
another node than its driver's (on a cluster a driver's node has no CPUs, so every
step does), the worker asks its node manager for a *mirror*: a local file that this
module keeps up to date by asking the driver's node, over ``NodeService.LeaseDeadline``,
how long the lease still holds.

Two machines' monotonic clocks have different origins, so the driver's node answers
with the time *left* (``remaining``), read when it answers. The mirror turns it into a
local moment as ``sent + remaining``, ``sent`` being when the question left here: the
answer was read later than that, so the local deadline is never later than the true
one (:func:`mirrored_deadline`; two clocks are taken to tick at the same rate over a
few seconds). An answer that does not come, or comes late, only lets the mirrored
deadline run out: a node cut off from the driver's stops the step, as a paused
driver's own node would.

Each mirror is asked about every :data:`POLL_INTERVAL` seconds while a worker watches
it, by a few threads (:data:`ASKERS`), and never twice at once: a driver's node that is
slow to answer delays only its own mirrors. A mirror whose workers all said they are
done, or died (the watchdog kills its worker), is closed and its file removed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from heliostat._process import process_running
from heliostat.engine.deadline_file import DeadlineFile
from heliostat.engine.ids import format_id
from heliostat.exceptions import ClusterError

__all__ = [
    "ASKERS",
    "ASK_TIMEOUT",
    "BEACON_DIR",
    "POLL_INTERVAL",
    "Answer",
    "AskDeadline",
    "BeaconMirror",
    "beacon_path",
    "mirrored_deadline",
]

log = logging.getLogger("heliostat.engine")

BEACON_DIR = "leases"
"""Where, in a driver's session directory, its runs' beacons are (``workflows/api.py``)."""

POLL_INTERVAL = 0.1
"""Seconds between two questions about one mirrored beacon."""

ASK_TIMEOUT = 1.0
"""Seconds one question to the beacon's node may take."""

ASKERS = 4
"""Questions under way at once, at most."""

_NAME = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]{0,199}")

Answer = Callable[[bool, Any], None]
"""``answer(ok, value)``: the local path of a mirror, once it holds a deadline, or why
there is none."""

AskDeadline = Callable[[int, str, float], tuple[bool, float]]
"""``ask(node_index, beacon, timeout) -> (found, remaining)``; raises when the node
cannot be asked."""


def beacon_path(session_dir: str, beacon: str) -> str:
    """The file of beacon ``beacon`` in a session directory; ValueError for a name that
    is not a plain file name (it comes over the network)."""
    if not _NAME.fullmatch(beacon):
        raise ValueError(f"not a lease beacon's name: {beacon!r}")
    return os.path.join(session_dir, BEACON_DIR, beacon)


def mirrored_deadline(sent: float, found: bool, remaining: float) -> float:
    """The local deadline for an answer to a question sent at ``sent`` (this machine's
    ``time.monotonic()``): ``sent + remaining``, never later than the true one; 0 (long
    past) when the beacon is gone."""
    return sent + remaining if found else 0.0


@dataclass(slots=True, kw_only=True)
class _Mirror:
    index: int  # the node the beacon lives on
    beacon: str
    file: DeadlineFile
    watchers: set[int] = field(default_factory=set)  # pids of the workers watching it
    waiting: list[tuple[int, Answer]] = field(default_factory=list)  # owed a first answer


class BeaconMirror:
    """The mirrors of one node: started and stopped with its ``NodeLink``.

    Args:
        directory: where the mirror files go (a directory of the node's session).
        ask: how to ask a node about a beacon (``NodeLink`` over gRPC).
        alive: whether a watcher's process still runs.
        interval: seconds between two questions about one beacon.
    """

    def __init__(
        self,
        directory: str,
        ask: AskDeadline,
        *,
        alive: Callable[[int], bool] = process_running,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.directory = directory
        self._ask = ask
        self._alive = alive
        self._interval = interval
        self._mirrors: dict[str, _Mirror] = {}  # local path -> mirror
        self._asking: set[str] = set()  # mirrors with a question under way (by path)
        self._askers = futures.ThreadPoolExecutor(ASKERS, thread_name_prefix="hs-lease-ask")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="hs-lease-mirror", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop asking; every mirror file is removed (a watching step stops)."""
        with self._lock:
            self._stopped = True
            mirrors, self._mirrors = list(self._mirrors.values()), {}
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=ASK_TIMEOUT + 1)
        self._askers.shutdown(wait=True)  # questions under way end within ASK_TIMEOUT
        for mirror in mirrors:
            mirror.file.close()
            for _pid, answer in mirror.waiting:
                answer(False, ClusterError("the node is shutting down"))

    def watch(self, pid: int, index: int, beacon: str, answer: Answer) -> None:
        """Worker ``pid`` watches beacon ``beacon`` of node ``index``: ``answer`` gets
        the mirror's local path once it holds a first deadline (not before: a step
        must not start on a file that says nothing yet). Does not block."""
        beacon_path(self.directory, beacon)  # refuse a name that is not one
        path = os.path.join(self.directory, f"{format_id(index)}-{beacon}")
        with self._lock:
            if self._stopped:
                raise ClusterError("the node is shutting down")
            mirror = self._mirrors.get(path)
            if mirror is None:
                mirror = self._mirrors[path] = _Mirror(
                    index=index, beacon=beacon, file=DeadlineFile(path)
                )
            mirror.watchers.add(pid)
            mirror.waiting.append((pid, answer))
        self._wake.set()

    def unwatch(self, pid: int, path: str) -> None:
        """Worker ``pid`` is done with the mirror at ``path`` (its step ended)."""
        with self._lock:
            mirror = self._mirrors.get(path)
            if mirror is None:
                return
            mirror.watchers.discard(pid)
            if mirror.watchers:
                return
            del self._mirrors[path]
        mirror.file.close()

    def paths(self) -> list[str]:
        """The mirrors kept now (their local paths)."""
        with self._lock:
            return list(self._mirrors)

    # ------------------------------------------------------------------ the thread --

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._lock:
                if self._stopped:
                    return
                due = [(p, m) for p, m in self._mirrors.items() if p not in self._asking]
                self._asking.update(path for path, _mirror in due)
            for path, mirror in due:
                self._askers.submit(self._refresh_once, path, mirror)

    def _refresh_once(self, path: str, mirror: _Mirror) -> None:
        try:
            self._refresh(path, mirror)
        except Exception:  # a bug: the copy's deadline runs out, the step stops
            log.exception("heliostat internal error refreshing lease beacon %s", path)
        finally:
            with self._lock:
                self._asking.discard(path)

    def _refresh(self, path: str, mirror: _Mirror) -> None:
        with self._lock:
            gone = {pid for pid in mirror.watchers if not self._alive(pid)}
            mirror.watchers -= gone
            if not mirror.watchers:  # its workers died (a watchdog's kill, a crash)
                if self._mirrors.get(path) is mirror:
                    del self._mirrors[path]
                mirror.file.close()
                return
        sent = time.monotonic()
        try:
            found, remaining = self._ask(mirror.index, mirror.beacon, ASK_TIMEOUT)
        except Exception as exc:
            # The deadline published last stays and runs out by itself.
            log.warning(
                "cannot ask node %s about lease beacon %s: %s",
                format_id(mirror.index),
                mirror.beacon,
                exc,
            )
            self._answer(
                mirror,
                False,
                ClusterError(
                    f"cannot learn the lease of node {format_id(mirror.index)}'s driver: {exc}"
                ),
            )
            return
        mirror.file.publish(mirrored_deadline(sent, found, remaining))
        self._answer(mirror, True, path)

    def _answer(self, mirror: _Mirror, ok: bool, value: Any) -> None:
        """Answer the workers owed their first answer; on a failure, they no longer
        watch (they never learn the mirror's path to say they are done)."""
        with self._lock:
            waiting, mirror.waiting = mirror.waiting, []
            if not ok:
                mirror.watchers.difference_update(pid for pid, _answer in waiting)
        for _pid, answer in waiting:
            answer(ok, value)
