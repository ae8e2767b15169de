"""Tasks of one node that have not finished, and how a task ends (pure: no I/O).

A task enters with :meth:`TaskTable.register`: its return entries are created (the
submitter holds them) and everything it references is pinned until it ends. It ends
exactly once, by :meth:`finish` (its results are in), :meth:`fail` (the same error
stored in every return) or :meth:`cancel_unstarted`; each unpins what ``register``
pinned and records the attempt in the event log. Where a task waits and runs is
``dispatch.py``'s business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from heliostat.engine.events import TaskEventLog
from heliostat.engine.object_directory import ObjectDirectory, error_payload
from heliostat.engine.object_table import ObjKind, keeps_lineage
from heliostat.engine.records import (
    PEER_INDEX_BASE,
    TaskKind,
    TaskSpec,
    TaskState,
    WorkerRecord,
    function_key,
    transition,
)
from heliostat.engine.streams import STREAMING, StreamState
from heliostat.exceptions import TaskCancelledError

__all__ = ["DONE_STATES", "TaskTable"]

DONE_STATES = (TaskState.FINISHED, TaskState.CANCELLED)


class TaskTable:
    """Unfinished tasks by id, who submitted whom, and the functions workers need."""

    def __init__(self, objects: ObjectDirectory) -> None:
        self._objects = objects
        self.tasks: dict[int, TaskSpec] = {}  # not finished yet, by task id
        # Tasks submitted by a running task, by the submitter's task id, for
        # cancel(recursive=True); dropped when the submitter finishes.
        self.children: dict[int, list[TaskSpec]] = {}
        self.functions: dict[bytes, bytes] = {}  # pickled code, by function id
        self.events = TaskEventLog()
        # A task a peer node forwarded here ended: (spec, outcome). Set in a cluster.
        self.on_peer_task_end: Callable[[TaskSpec, str], None] | None = None

    def register(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        """Create the return entries and pin what the spec references."""
        objects = self._objects
        table = objects.table
        for rid in spec.return_ids:
            table.create(rid, proc, spec)
        for aid in spec.arg_ids:
            table.pin(aid)
        for cid in spec.contained:
            objects.pin_any(cid)
        if spec.generator == STREAMING:
            objects.streams[spec.return_ids[0]] = StreamState(
                proc.index, spec if keeps_lineage(spec) else None
            )
        if keeps_lineage(spec):
            entries = objects.entries
            for aid in spec.arg_ids:
                arg = entries.get(aid)
                if arg is not None:
                    arg.lineage_refs += 1
        self.tasks[spec.task_id] = spec

    def pin_again(self, spec: TaskSpec) -> None:
        """Pin a finished task's references again: it re-runs (reconstruction)."""
        objects = self._objects
        for aid in spec.arg_ids:
            objects.table.pin(aid)
        for cid in spec.contained:
            objects.pin_any(cid)
        self.tasks[spec.task_id] = spec

    def function_for(self, worker: WorkerRecord, spec: TaskSpec) -> bytes | None:
        """The code to send with a task: only the first time this worker needs it
        (for each job: a worker loads a function once per job, ``function_key``)."""
        fn_id = spec.fn_id
        key = function_key(fn_id, spec.code)
        if key in worker.known_functions:
            return None
        worker.known_functions.add(key)
        return self.functions.get(fn_id)

    def resolve_args(self, spec: TaskSpec, worker: WorkerRecord) -> list[Any] | None:
        """Values of the top-level arguments as (id, kind, data); pre-holds nested refs.

        None if an argument turned out lost, or is on another node: the task waits
        for its rebuild, or for every such argument to be pulled here (at once).
        """
        if not spec.arg_ids and not spec.contained:
            return []
        objects = self._objects
        entries = objects.entries
        remote = 0
        for aid in spec.arg_ids:
            arg = entries[aid]
            if arg.kind is ObjKind.REMOTE:
                objects.fetch(arg)
                arg.waiters = (arg.waiters or []) + [spec]
                remote += 1
        if remote:
            spec.pending_deps += remote
            if spec.state is TaskState.READY:
                transition(spec, TaskState.WAITING)
            return None
        resolved = []
        for aid in spec.arg_ids:
            arg = entries[aid]  # pinned by the task: a missing entry is a bug
            item = objects.value_for(worker, arg)
            if item is None:
                spec.pending_deps += 1
                if spec.state is TaskState.READY:
                    transition(spec, TaskState.WAITING)
                arg.waiters = (arg.waiters or []) + [spec]
                return None
            resolved.append(item)
        for cid in spec.contained:
            objects.hold_any(worker, cid)
        return resolved

    # ------------------------------------------------------ parents and children --

    def note_child(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        """Remember which running task submitted ``spec`` (for a recursive cancel)."""
        parent = proc.task
        if parent is None and proc.actor is not None and len(proc.actor.inflight) == 1:
            parent = next(iter(proc.actor.inflight.values()))
        if parent is None:
            return
        children = self.children.get(parent.task_id)
        if children is None:
            self.children[parent.task_id] = [spec]
            return
        children.append(spec)
        if len(children) >= 64 and len(children) & (len(children) - 1) == 0:
            # A long-running task submitting many children: forget the finished ones
            # (at sizes that are powers of two, so the cost stays amortized O(1)).
            children[:] = [c for c in children if c.state not in DONE_STATES]

    def descendants(self, spec: TaskSpec) -> list[TaskSpec]:
        """Tasks ``spec`` submitted, and theirs, breadth first (each once)."""
        out: list[TaskSpec] = []
        seen = {spec.task_id}
        frontier = [spec]
        while frontier:
            nxt: list[TaskSpec] = []
            for parent in frontier:
                for child in self.children.get(parent.task_id, ()):
                    if child.task_id not in seen:
                        seen.add(child.task_id)
                        out.append(child)
                        nxt.append(child)
            frontier = nxt
        return out

    # ------------------------------------------------------------------ ends --

    def finish(self, spec: TaskSpec, started: float, finished: float, outcome: str) -> None:
        transition(spec, TaskState.FINISHED)
        spec.started_at, spec.finished_at = started, finished
        if spec.generator == STREAMING:
            self._objects.end_stream(spec.return_ids[0], None)
        self.record(spec, spec.worker, outcome)
        self.tasks.pop(spec.task_id, None)
        if self.children:
            self.children.pop(spec.task_id, None)
        if self.on_peer_task_end is not None and (
            spec.owner >= PEER_INDEX_BASE or spec.kind is TaskKind.ACTOR_CALL
        ):
            # Report to the node that owns it (or, for a call of ours that the owner
            # of the actor sent back here to run, to that owner).
            self.on_peer_task_end(spec, outcome)
        self.unpin(spec)
        if spec.item_ids:
            self._objects.items_not_yielded(spec)

    def unpin(self, spec: TaskSpec) -> None:
        objects = self._objects
        table = objects.table
        for aid in spec.arg_ids:
            table.unpin(aid)
        for cid in spec.contained:
            objects.unpin_any(cid)

    def record(self, spec: TaskSpec, worker: WorkerRecord | None, outcome: str) -> None:
        self.events.record(
            spec.task_id,
            spec.name,
            spec.kind.name,
            spec.submitted_at,
            spec.started_at,
            spec.finished_at,
            worker.pid if worker is not None else 0,
            worker.index if worker is not None else 0,
            outcome,
            spec.attempts,
        )

    def fail(self, spec: TaskSpec, payload: bytes, outcome: str) -> None:
        """Store the same error in every return of ``spec`` and finish it."""
        objects = self._objects
        entries = objects.entries
        for rid in spec.return_ids:
            entry = entries.get(rid)
            if entry is not None and entry.kind is ObjKind.PENDING:
                objects.set_value(entry, ObjKind.ERROR, payload, 0, ())
        if spec.generator == STREAMING:
            objects.end_stream(spec.return_ids[0], payload)
            if spec.item_ids:
                objects.items_not_yielded(spec, payload)
        if spec.state is not TaskState.FINISHED:
            self.finish(spec, spec.started_at, spec.finished_at or time.time(), outcome)

    def cancel_unstarted(self, spec: TaskSpec) -> None:
        """End a task that never ran with TaskCancelledError."""
        exc = TaskCancelledError(f"Task {spec.name!r} was cancelled.", task_name=spec.name)
        objects = self._objects
        entries = objects.entries
        for aid in spec.arg_ids:  # stop waiting on its arguments
            arg = entries.get(aid)
            if arg is not None and arg.waiters and spec in arg.waiters:
                arg.waiters.remove(spec)
        for rid in spec.return_ids:
            entry = entries.get(rid)
            if entry is not None and entry.kind is ObjKind.PENDING:
                objects.set_value(entry, ObjKind.ERROR, error_payload(exc), 0, ())
        if spec.generator == STREAMING:
            objects.end_stream(spec.return_ids[0], error_payload(exc))
            if spec.item_ids:
                objects.items_not_yielded(spec, error_payload(exc))
        transition(spec, TaskState.CANCELLED)
        self.record(spec, None, "cancelled")
        if spec.owner >= PEER_INDEX_BASE and self.on_peer_task_end is not None:
            self.on_peer_task_end(spec, "cancelled")  # its owner is waiting for it
        self.tasks.pop(spec.task_id, None)
        self.children.pop(spec.task_id, None)
        self.unpin(spec)
