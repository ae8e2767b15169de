"""Where a worker's output goes: the routing half of ``NodeState`` (pure).

A worker sends the lines its task prints to its node, which prints them where it
prints its workers' output (its own driver, or its log file: ``node_loop``). On a
cluster the task's job may have its driver elsewhere, and Ray prints every worker's
output at the job's driver: the node follows the owners from the task (a nested
task's owner is the worker running its parent; an actor's, its creator) until it
finds the driver:

* a driver attached to this node: a ``WorkerOutput`` message for it (``LOG_LINES`` on
  its socket);
* another node, the task's owner: a ``LogLines`` peer message, and that node goes on
  from the task it forwarded (``peer_output``);
* this node's own driver: printed here already (or, for lines from a peer, a
  ``WorkerOutput`` effect for the node loop to print).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import LogLines, WorkerOutput
from heliostat.engine.records import PEER_INDEX_BASE, TaskSpec, WorkerRecord, WorkerState

__all__ = ["OutputRoutes"]

_MAX_HOPS = 64  # a chain of nested tasks longer than this is a cycle (a bug)


class OutputRoutes:
    """Routing of workers' output, mixed into ``NodeState`` (whose fields it uses)."""

    if TYPE_CHECKING:  # provided by NodeState
        registry: Any
        peers: Any
        actors: Any
        tasks: Any
        out: Any
        driver: WorkerRecord

    def worker_output(self, worker: WorkerRecord, stream: str, task_name: str, text: str) -> None:
        """A worker here wrote ``text``. It is printed on this node in any case (its
        driver, or its log file, the node loop does that); here: also at the driver
        of the job, when that is a driver attached here or the job of another node."""
        actor = worker.actor
        spec = actor.creation if actor is not None else worker.task
        if spec is None:
            return
        actor_id = actor.actor_id if actor is not None else 0
        self._route_output(spec, actor_id, stream, task_name, worker.pid, text, "", local=True)

    def peer_output(
        self,
        index: int,
        task_id: int,
        actor_id: int,
        stream: str,
        task_name: str,
        pid: int,
        text: str,
        origin: str,
    ) -> None:
        """Node ``index`` ran our task ``task_id`` (or hosts our actor ``actor_id``),
        which wrote ``text``: print it at the driver of the job."""
        spec: TaskSpec | None = None
        if actor_id:
            actor = self.actors.actors.get(actor_id)
            spec = actor.creation if actor is not None else None
        else:
            peers = self.peers
            spec = peers.inflight.get(index, {}).get(task_id) if peers is not None else None
            spec = spec or self.tasks.tasks.get(task_id)
        if spec is None:  # ended and forgotten meanwhile: printed where this node prints
            self.out.effect(self._output(stream, task_name, pid, text, origin))
            return
        self._route_output(spec, actor_id, stream, task_name, pid, text, origin, local=False)

    def _route_output(
        self,
        spec: TaskSpec,
        actor_id: int,
        stream: str,
        task_name: str,
        pid: int,
        text: str,
        origin: str,
        *,
        local: bool,
    ) -> None:
        """Follow the owners from ``spec`` (a nested task's owner is the worker that
        runs its parent) to the job's driver: one attached here, another node (which
        goes on from there), or this node's own (``local``: already printed here)."""
        registry = self.registry
        peers = self.peers
        for _ in range(_MAX_HOPS):
            owner = spec.owner
            if owner >= PEER_INDEX_BASE:
                if peers is not None:
                    self.out.effect(
                        LogLines(
                            node=owner - PEER_INDEX_BASE,
                            task_id=spec.task_id,
                            actor_id=actor_id,
                            stream=stream,
                            task_name=task_name,
                            pid=pid,
                            text=text,
                            origin=origin or format_id(peers.local_index),
                        )
                    )
                return
            proc = registry.proc_of(owner)
            if proc is None or proc is self.driver:
                break
            if proc.state is WorkerState.DRIVER:  # attached here (gone: nothing is sent)
                self.out.send(proc, self._output(stream, task_name, pid, text, origin))
                return
            actor = proc.actor
            parent = actor.creation if actor is not None else proc.task
            if parent is None:
                break
            spec, actor_id = parent, (actor.actor_id if actor is not None else 0)
        if not local:
            self.out.effect(self._output(stream, task_name, pid, text, origin))

    @staticmethod
    def _output(stream: str, task_name: str, pid: int, text: str, origin: str) -> WorkerOutput:
        return WorkerOutput(stream=stream, task_name=task_name, pid=pid, text=text, origin=origin)
