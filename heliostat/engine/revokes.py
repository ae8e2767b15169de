"""Taking tasks sent ahead back from a worker: the revoke handshake (pure).

``dispatch.py`` sends short tasks ahead to a busy worker (``WorkerRecord.queued``).
It wants them back when the worker blocks in ``get``, when another worker idles (work
stealing), or when one of them is cancelled: :meth:`Revokes.ask` sends a
:class:`Revoke` and a :class:`Poke`, and the worker answers with the tasks it had not
started (:meth:`Revokes.answered`). What the caller does with the tasks it gets back
(queue them again, cancel them) is ``Dispatch``'s; what is decided here is which
tasks come back.

A worker that is stopped (SIGSTOP, or stuck in a C call that never returns to Python)
never answers. After ``revoke_timeout_s`` the manager takes back the revoked tasks that
are still *queued* on it (not yet promoted to its running task), and runs them
elsewhere. The invariant: **a task taken back this way never runs on the worker it
was taken from.** The handshake rests on what already orders a worker's tasks: the
manager promotes ``queued[0]`` to the running task when the previous task's end
(``TASK_DONE``, ``TASK_FAILED``, or ``returned`` naming it) arrives, and the worker
starts a task sent ahead only after writing that end. So the end of the previous task
is the claim on the next one:

1. The worker (``WorkerClient.take``), before it runs a task sent ahead, has written
   the previous task's end, then dispatches every message complete in its socket
   after that write; a REVOKE among them removes the task from its inbox, and it does
   not run. (With another thread reading its socket, it asks ``claim`` instead, and
   the manager's answer, sent after any REVOKE, decides; ``TaskSpec.claimed``.)
2. The manager takes back a task only after the deadline, only once the REVOKE has
   left its outbox (so it is complete in the worker's socket), and only after reading
   everything the worker has written so far: the loop reads the worker's socket, then
   calls :meth:`Revokes.reclaim`; a task promoted by then stays with the worker.

Why no task runs twice: say the REVOKE is complete in the worker's socket at time R,
the manager decides at X >= R, the previous task's end is complete in the manager's
socket at E, and the worker drains its socket at D > E. The worker runs the task only
if the REVOKE was not there at D, so D < R; the manager takes it back only if it has
not read the end (it would have promoted the task) at X, so E > X. Together
E < D < R <= X < E: impossible. The worker's late answer to that REVOKE lists the
tasks taken back too; they are ignored (``PendingRevoke.reclaimed``). Not taken back:
a task promoted just before the worker stopped (it stopped between writing one task's
end and starting the next); it waits for the worker.
"""

from __future__ import annotations

import itertools
import logging
import math
import time

from heliostat.engine.node_instructions import Outbox, Poke, Revoke
from heliostat.engine.records import PendingRevoke, TaskSpec, WorkerRecord
from heliostat.engine.worker_registry import WorkerRegistry

__all__ = ["Revokes"]

log = logging.getLogger("heliostat.engine")


class Revokes:
    """The REVOKEs this node's workers have not answered, and their deadlines.

    Args:
        outbox: where the REVOKE and POKE instructions go.
        registry: the node's workers.
        timeout_s: how long a worker has to answer before its revoked tasks that are
            still queued on it are taken back without its answer.
    """

    def __init__(self, outbox: Outbox, registry: WorkerRegistry, *, timeout_s: float) -> None:
        self._out = outbox
        self._registry = registry
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self.due = math.inf  # the earliest deadline of an unanswered REVOKE

    def ask(self, worker: WorkerRecord, task_ids: list[int]) -> None:
        """Ask a worker for tasks sent ahead; those still queued come back at the deadline."""
        revoke_id = next(self._ids)
        deadline = time.monotonic() + self.timeout_s
        worker.revokes[revoke_id] = PendingRevoke(frozenset(task_ids), deadline)
        self.due = min(self.due, deadline)
        self._out.send(worker, Revoke(task_ids=task_ids, revoke_id=revoke_id))
        self._out.effect(Poke(worker=worker))

    def ask_queued(self, worker: WorkerRecord) -> None:
        """Ask for everything queued on ``worker`` (unless a REVOKE is on its way)."""
        if worker.queued and not worker.revokes:
            self.ask(worker, [s.task_id for s in worker.queued])

    def answered(
        self, worker: WorkerRecord, task_ids: list[int], revoke_id: int
    ) -> tuple[list[TaskSpec], TaskSpec | None]:
        """The worker handed back ``task_ids`` (its answer to REVOKE ``revoke_id``).

        Returns the tasks it handed back that were still queued on it (now removed
        from its queue), and its current task when that is among them: promoted to
        running when its predecessor ended, but handed back before it started, so it
        runs nowhere and the worker is free. Tasks taken back at the deadline are not
        returned again.
        """
        pending = worker.revokes.pop(revoke_id, None)
        returned = set(task_ids)
        if pending is not None and pending.reclaimed:
            returned -= pending.reclaimed  # taken back when it did not answer in time
        handed_back = [s for s in worker.queued if s.task_id in returned]
        for spec in handed_back:
            worker.queued.remove(spec)
        current = worker.task
        if current is None or current.task_id not in returned:
            current = None
        return handed_back, current

    def claim(self, worker: WorkerRecord, task_id: int) -> bool:
        """May the worker run this task sent ahead? (It cannot drain its own socket.)

        Yes while it is still the worker's; from then on it is never taken back.
        """
        spec = worker.task
        if spec is None or spec.task_id != task_id:
            spec = next((s for s in worker.queued if s.task_id == task_id), None)
        if spec is None:
            return False
        spec.claimed = True
        return True

    def overdue(self, now: float) -> list[WorkerRecord]:
        """Workers with a REVOKE unanswered past its deadline (step 2 of the handshake)."""
        return [
            worker
            for worker in self._registry.workers.values()
            if worker.revokes
            and any(p.reclaimed is None and p.deadline <= now for p in worker.revokes.values())
        ]

    def reclaim(self, worker: WorkerRecord, now: float) -> list[TaskSpec]:
        """Take back what is still queued on ``worker`` after an unanswered REVOKE.

        The caller has read everything the worker wrote so far (its task ends promote
        the tasks it may have started) and checked the REVOKE left the outbox. Returns
        the tasks taken back, removed from the worker's queue.
        """
        taken: list[TaskSpec] = []
        for pending in worker.revokes.values():
            if pending.reclaimed is not None or pending.deadline > now:
                continue
            ids = pending.task_ids
            mine = [s for s in worker.queued if s.task_id in ids and not s.claimed]
            pending.reclaimed = {s.task_id for s in mine}
            taken.extend(mine)
        if taken:
            for spec in taken:
                worker.queued.remove(spec)
            log.warning(
                "worker pid %d did not answer within %.2f s (stopped or stuck in native "
                "code?); running %d task(s) queued on it elsewhere",
                worker.pid,
                self.timeout_s,
                len(taken),
            )
        return taken

    def next_due(self) -> None:
        """After every reclaim: each may have sent REVOKEs to workers seen before it."""
        self.due = min(
            (
                p.deadline
                for w in self._registry.workers.values()
                for p in w.revokes.values()
                if p.reclaimed is None
            ),
            default=math.inf,
        )
