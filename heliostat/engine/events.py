"""Task events: when each task was submitted, started and finished, where, and how.

The node manager appends one compact tuple per finished task attempt to a bounded
ring (the newest ``capacity`` survive), which costs a few hundred nanoseconds per task.
:func:`to_chrome_trace` turns the ring into the Chrome tracing format (the one
``chrome://tracing`` and Perfetto read, and the one ``ray.timeline()`` returns): one
complete event (``"ph": "X"``) per task, on a row per worker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskEvent", "TaskEventLog", "to_chrome_trace"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent:
    """One finished task attempt, as shown in timelines and the UI."""

    task_id: int
    name: str
    kind: str
    submitted: float
    started: float
    finished: float
    worker_pid: int
    worker_index: int
    outcome: str  # "ok", "error", "cancelled", "crashed", ...
    attempt: int


class TaskEventLog:
    """A bounded ring of task events. Not thread-safe: the node manager locks around it."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ring: deque[tuple[Any, ...]] = deque(maxlen=capacity)

    def record(
        self,
        task_id: int,
        name: str,
        kind: str,
        submitted: float,
        started: float,
        finished: float,
        worker_pid: int,
        worker_index: int,
        outcome: str,
        attempt: int,
    ) -> None:
        self._ring.append(
            (
                task_id,
                name,
                kind,
                submitted,
                started,
                finished,
                worker_pid,
                worker_index,
                outcome,
                attempt,
            )
        )

    def events(self) -> list[TaskEvent]:
        return [
            TaskEvent(
                task_id=t[0],
                name=t[1],
                kind=t[2],
                submitted=t[3],
                started=t[4],
                finished=t[5],
                worker_pid=t[6],
                worker_index=t[7],
                outcome=t[8],
                attempt=t[9],
            )
            for t in list(self._ring)
        ]

    def __len__(self) -> int:
        return len(self._ring)


def to_chrome_trace(events: list[TaskEvent]) -> list[dict[str, Any]]:
    """Chrome-trace events: one ``X`` event per task attempt, times in microseconds."""
    trace: list[dict[str, Any]] = []
    workers: set[tuple[int, int]] = set()
    for ev in events:
        workers.add((ev.worker_index, ev.worker_pid))
        start = ev.started or ev.submitted
        end = ev.finished or start
        trace.append(
            {
                "cat": ev.kind,
                "name": ev.name,
                "pid": "node 0",
                "tid": f"worker {ev.worker_index} (pid {ev.worker_pid})",
                "ph": "X",
                "ts": start * 1e6,
                "dur": max(end - start, 0.0) * 1e6,
                "args": {
                    "task_id": f"{ev.task_id:020x}",
                    "outcome": ev.outcome,
                    "attempt": ev.attempt,
                    "submitted": ev.submitted,
                    "queued_us": max(start - ev.submitted, 0.0) * 1e6,
                },
            }
        )
    for index, pid in sorted(workers):
        trace.append(
            {
                "name": "thread_name",
                "ph": "M",
                "pid": "node 0",
                "tid": f"worker {index} (pid {pid})",
                "args": {"name": f"worker {index} (pid {pid})"},
            }
        )
    return trace
