"""How many tasks an owner keeps in flight at a peer, per slot: the spill depth.

A task forwarded to a peer starts there only after a round trip (batched sends, a gRPC
stream, the peer's own queue), so an owner that sent one task per free slot and waited
for its report would leave the peer idle for most of the time when tasks are short.
It therefore sends several ahead. How many is a trade:

* tiny tasks want many: a thousand 100-microsecond tasks go as a few large batches
  instead of many small ones (a batch costs the same few hundred microseconds of CPU
  on both ends however many tasks it carries), and the peer never runs dry;
* long tasks want few: a task queued behind a long one at a peer waits there even if
  the owner's own CPU frees up meanwhile (tasks are not stolen back between nodes).

:class:`SpillDepth` sizes the queue by time, not count: it keeps about
:data:`QUEUE_S` seconds of work per slot queued at a peer, from how long the
function's calls have run so far (a moving average of the run times peers report),
and never fewer than ``floor`` (one running, the rest hiding the round trip) nor more
than ``ceiling``. A function not seen yet gets the floor until its first report.

Pure bookkeeping: no clocks, no I/O; the owner calls :meth:`ran` with each report.

The same sizing serves a node's own workers (``dispatch.py``): the tasks sent ahead to
a busy worker, to run as soon as its current one ends, are about
:data:`PIPELINE_S` of work, so that the worker does not idle while its node manager is
busy elsewhere (a batch from a peer, another worker's results). Tiny tasks then go
many at a time (a node ran 20,000 tiny tasks a second with two sent ahead, 45,000 with
sixteen), and a long call is never queued more than two deep behind another.
"""

from __future__ import annotations

import math

__all__ = ["PIPELINE_S", "QUEUE_S", "SHORT_CALL_S", "SpillDepth"]

QUEUE_S = 0.02
"""Seconds of work kept queued per slot at a peer (about ten round trips)."""
PIPELINE_S = 0.002
"""Seconds of work sent ahead to a busy worker of this node (dispatch.py)."""
SHORT_CALL_S = 20e-6
"""Calls shorter than this are run on the submitter's node, never spilled, while one of
its workers runs such a call (``dispatch.py``).

Forwarding is worth it when the submitter's workers bound its throughput, not when its
node manager does. Measured on a cluster of three one-CPU nodes (2-core VM,
2026-12-05): a node manager spends about 15 us of CPU on each task it runs on its own
workers (submit, dispatch, result) and about 40 us on each it forwards (encode and
send, then apply the report), and the peer's node manager about 50 us more. A worker
adds about 6 us around each call. A call of a few microseconds (``return i``: 3 us)
therefore leaves its worker waiting on the node manager: every task forwarded instead
of run here takes more of the bottleneck, and the cluster runs fewer tasks a second
than the node alone (0.54 of one node with such calls spread over three). From about
this length on, a worker is busy longer than its node manager is per task, and the
peers add capacity. Dask's work stealing skips short tasks for the same reason.
"""
_WEIGHT = 0.2  # of the newest run time in the moving average
_MAX_FUNCTIONS = 4096  # averages kept; past that they start over


class SpillDepth:
    """Tasks per slot to keep in flight at a peer, by function.

    Args:
        floor: the least (and the first, for a function not seen yet); at least 1.
        ceiling: the most, however short the calls.
    """

    def __init__(self, floor: int = 2, ceiling: int = 128, queue_s: float = QUEUE_S) -> None:
        if floor < 1 or ceiling < floor:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor={floor} ceiling={ceiling}")
        if not queue_s > 0:
            raise ValueError(f"queue_s must be positive, got {queue_s!r}")
        self.floor = floor
        self.ceiling = ceiling
        self.queue_s = queue_s
        self._run_s: dict[bytes, float] = {}  # moving average of run time, by function
        self._depth: dict[bytes, int] = {}  # the depth it gives, cached

    def ran(self, fn_id: bytes, seconds: float) -> None:
        """A call of ``fn_id`` ran for ``seconds`` on some node."""
        seconds = max(seconds, 0.0)
        average = self._run_s.get(fn_id)
        if average is None:
            if len(self._run_s) >= _MAX_FUNCTIONS:
                self._run_s.clear()
                self._depth.clear()
            average = seconds
        else:
            average += _WEIGHT * (seconds - average)
        self._run_s[fn_id] = average
        wanted = math.ceil(self.queue_s / average) if average > 0 else self.ceiling
        self._depth[fn_id] = min(max(wanted, self.floor), self.ceiling)

    def run_time(self, fn_id: bytes | None) -> float | None:
        """The moving average of ``fn_id``'s run times, or None before its first."""
        return None if fn_id is None else self._run_s.get(fn_id)

    def of(self, fn_id: bytes | None) -> int:
        """Tasks per slot to keep in flight for calls of ``fn_id``."""
        if fn_id is None:
            return self.floor
        return self._depth.get(fn_id, self.floor)
