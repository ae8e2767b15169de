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

__all__ = ["PIPELINE_S", "QUEUE_S", "SpillDepth"]

QUEUE_S = 0.02
"""Seconds of work kept queued per slot at a peer (about ten round trips)."""
PIPELINE_S = 0.002
"""Seconds of work sent ahead to a busy worker of this node (dispatch.py)."""
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

    def of(self, fn_id: bytes | None) -> int:
        """Tasks per slot to keep in flight for calls of ``fn_id``."""
        if fn_id is None:
            return self.floor
        return self._depth.get(fn_id, self.floor)
