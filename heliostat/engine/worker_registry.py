"""The worker processes of one node, as the node manager sees them (pure: no I/O).

A worker is ``STARTING`` from the moment we ask the fork server for it until it
connects and registers; then ``IDLE``, ``BUSY`` (a task, maybe more sent ahead) or
``ACTOR`` (dedicated to one actor for its life); ``RETIRING`` once it ran the last call
a ``max_calls`` function allows it and was told to exit; ``DEAD`` when its process is
gone.
The registry keeps the indexes the scheduler needs to answer "which worker is free?"
in O(1): ``idle`` (a stack: the most recently idle worker is reused first, its caches
warm) and ``busy``. Spawning, exiting and signalling are instructions in the
:class:`~heliostat.engine.node_instructions.Outbox`; ``node_loop.py`` carries them out.
"""

from __future__ import annotations

import itertools
import signal
import time

from heliostat.engine.node_instructions import EXIT, Outbox, Spawn
from heliostat.engine.records import (
    ActorRecord,
    TaskSpec,
    WorkerRecord,
    WorkerState,
    transition,
)

__all__ = ["WorkerRegistry", "describe_exit"]


class WorkerRegistry:
    """Workers by index and pid, and which of them are idle or busy.

    State changes go through ``records.transition`` (the worker state table).
    """

    def __init__(
        self, outbox: Outbox, *, driver_pid: int, keep_idle: int, idle_timeout_s: float
    ) -> None:
        self._out = outbox
        self.driver = WorkerRecord(0, driver_pid)
        self.driver.state = WorkerState.IDLE
        self.workers: dict[int, WorkerRecord] = {}  # live or starting, by index
        self.by_pid: dict[int, WorkerRecord] = {}
        self.idle: list[WorkerRecord] = []  # invariant: state IDLE, no task
        self.busy: dict[int, WorkerRecord] = {}  # invariant: state BUSY, a task
        # Workers asked for and not registered yet that are not made for an actor: the
        # scheduler counts them as on their way, so it does not ask twice.
        self.starting = 0
        self._next_index = itertools.count(1)
        self._keep_idle = keep_idle
        self._idle_timeout_s = idle_timeout_s

    def spawn(self, purpose: ActorRecord | None) -> WorkerRecord:
        """A new worker record; the fork server is asked for its process."""
        worker = WorkerRecord(next(self._next_index))
        worker.purpose = purpose
        self.workers[worker.index] = worker
        if purpose is None:
            self.starting += 1
        self._out.effect(Spawn(index=worker.index))
        return worker

    def live_task_workers(self) -> int:
        """Workers that count against ``max_workers`` (actors' workers and attached
        drivers do not)."""
        return len(self.workers) - sum(
            1 for w in self.workers.values() if w.actor or w.state is WorkerState.DRIVER
        )

    def attach_driver(self, pid: int) -> WorkerRecord:
        """A driver process on this machine attached (``engine/attach.py``).

        It gets a process index of its own (its ids are minted under it), lives in
        ``workers`` so that replies and unmaps reach it, and is never idle or busy:
        the scheduler never gives it a task. Not in ``by_pid``: the fork server did
        not start it, and its connection closing is how the node learns it left.
        """
        proc = WorkerRecord(next(self._next_index), pid)
        transition(proc, WorkerState.DRIVER)
        self.workers[proc.index] = proc
        return proc

    def spawned(self, index: int, pid: int) -> None:
        worker = self.workers.get(index)
        if worker is not None:
            worker.pid = pid
            self.by_pid[pid] = worker

    def registering(self, index: int, pid: int) -> WorkerRecord | None:
        """The worker ``index`` connected; None if we do not expect it (close it)."""
        worker = self.workers.get(index)
        if worker is None or worker.state is not WorkerState.STARTING:
            return None
        worker.pid = pid
        self.by_pid[pid] = worker
        if worker.purpose is None:
            self.starting -= 1
        return worker

    def make_idle(self, worker: WorkerRecord) -> None:
        worker.idle_since = time.monotonic()
        self.idle.append(worker)

    def proc_of(self, index: int) -> WorkerRecord | None:
        """The live process with this index (0: the driver)."""
        if index == 0:
            return self.driver
        worker = self.workers.get(index)
        if worker is None or worker.state is WorkerState.DEAD:
            return None
        return worker

    def pid_of(self, index: int) -> int | None:
        if index == 0:
            return self.driver.pid
        worker = self.workers.get(index)
        return worker.pid if worker is not None else None

    def remove(self, worker: WorkerRecord) -> bool:
        """Forget a worker that died; True if it had not registered yet."""
        was_starting = worker.state is WorkerState.STARTING
        transition(worker, WorkerState.DEAD)
        self.workers.pop(worker.index, None)
        if worker in self.idle:
            self.idle.remove(worker)
        self.busy.pop(worker.index, None)
        if was_starting and worker.purpose is None:
            self.starting -= 1
        return was_starting

    def count_call(self, worker: WorkerRecord, spec: TaskSpec) -> None:
        """``spec`` starts on ``worker``: one call fewer left of a ``max_calls`` function."""
        if spec.max_calls:
            left = worker.calls.get(spec.fn_id, spec.max_calls)
            worker.calls[spec.fn_id] = left - 1

    @staticmethod
    def spent(worker: WorkerRecord) -> bool:
        """Has the worker run its last allowed call of some ``max_calls`` function?"""
        calls = worker.calls
        return bool(calls) and min(calls.values()) <= 0

    def retire(self, worker: WorkerRecord) -> None:
        """The spent worker's last task ended: it exits, and a fresh one replaces it.

        As in Ray, a worker that ran ``max_calls`` calls of a function exits, so what the
        function left in its process (GPU memory most often) goes with it. It counts
        against ``max_workers`` until its exit is seen; the scheduler then starts
        another if tasks wait.
        """
        self.busy.pop(worker.index, None)
        transition(worker, WorkerState.RETIRING)
        self._out.send(worker, EXIT)

    def trim_idle(self, now: float) -> None:
        """Let idle workers beyond the CPU count go once idle for the timeout."""
        idle = self.idle
        if len(idle) <= self._keep_idle:
            return
        deadline = now - self._idle_timeout_s
        for worker in list(idle[: len(idle) - self._keep_idle]):
            if worker.idle_since < deadline:
                idle.remove(worker)
                self._out.send(worker, EXIT)

    def summary(self) -> list[dict[str, object]]:
        return [
            {
                "index": w.index,
                "pid": w.pid,
                "state": str(w.state),
                "task": w.task.name if w.task is not None else None,
                "actor": w.actor.label() if w.actor is not None else None,
                "blocked": w.blocked > 0,
            }
            for w in self.workers.values()
        ]


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL``, from a wait status."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
