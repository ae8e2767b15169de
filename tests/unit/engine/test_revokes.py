"""The revoke handshake's decisions (``engine/revokes.py``), without processes.

The worker is a record; what the node would send it is read back from the outbox.
Time is passed in as ``now``, so deadlines are tested without waiting.
"""

from __future__ import annotations

import math
import time

from heliostat.engine.node_instructions import Poke, Revoke
from heliostat.engine.revokes import Revokes


def _setup(make_node, make_spec, queued: int = 3, timeout_s: float = 0.2):
    node = make_node()
    worker = node.add_worker()
    node.reset()
    revokes = Revokes(node.state.out, node.state.registry, timeout_s=timeout_s)
    specs = [make_spec() for _ in range(queued)]
    worker.queued.extend(specs)
    return node, worker, revokes, specs


def test_asking_sends_a_revoke_and_a_poke_and_sets_the_deadline(make_node, make_spec) -> None:
    node, worker, revokes, specs = _setup(make_node, make_spec)
    before = time.monotonic()
    revokes.ask_queued(worker)
    (revoke,) = node.sent(worker)
    assert isinstance(revoke, Revoke) and revoke.task_ids == [s.task_id for s in specs]
    assert [type(e) for e in node.effects()] == [Poke]
    (pending,) = worker.revokes.values()
    assert pending.task_ids == frozenset(revoke.task_ids) and pending.reclaimed is None
    assert before + 0.2 <= pending.deadline == revokes.due <= time.monotonic() + 0.2
    # One REVOKE at a time per worker: asking again while it is unanswered sends nothing.
    revokes.ask_queued(worker)
    assert node.sent(worker) == [] and len(worker.revokes) == 1


def test_an_answer_takes_the_listed_tasks_off_the_worker(make_node, make_spec) -> None:
    node, worker, revokes, specs = _setup(make_node, make_spec)
    revokes.ask(worker, [s.task_id for s in specs])
    (revoke,) = node.sent(worker)
    # The worker had started the first one: it hands back the other two only.
    handed_back, current = revokes.answered(
        worker, [specs[1].task_id, specs[2].task_id], revoke.revoke_id
    )
    assert handed_back == specs[1:] and current is None
    assert list(worker.queued) == specs[:1] and not worker.revokes


def test_a_promoted_task_handed_back_is_reported_as_the_current_one(make_node, make_spec) -> None:
    node, worker, revokes, specs = _setup(make_node, make_spec, queued=2)
    revokes.ask(worker, [s.task_id for s in specs])
    (revoke,) = node.sent(worker)
    # Its predecessor ended, so the node promoted the first queued task to running,
    # but the worker had handed it back before starting it.
    worker.task = worker.queued.popleft()
    handed_back, current = revokes.answered(worker, [s.task_id for s in specs], revoke.revoke_id)
    assert current is specs[0] and handed_back == specs[1:]


def test_claims_hold_for_the_workers_own_tasks_only(make_node, make_spec) -> None:
    _node, worker, revokes, specs = _setup(make_node, make_spec, queued=2)
    worker.task = specs[0]
    worker.queued.popleft()
    assert revokes.claim(worker, specs[0].task_id) and specs[0].claimed
    assert revokes.claim(worker, specs[1].task_id) and specs[1].claimed
    assert not revokes.claim(worker, make_spec().task_id)


def test_an_unanswered_revoke_gives_back_unclaimed_tasks_at_its_deadline(
    make_node, make_spec
) -> None:
    node, worker, revokes, specs = _setup(make_node, make_spec)
    revokes.ask(worker, [s.task_id for s in specs])
    (revoke,) = node.sent(worker)
    due = revokes.due
    assert revokes.overdue(due - 0.01) == []
    assert revokes.reclaim(worker, due - 0.01) == []  # not yet: nothing taken
    assert revokes.claim(worker, specs[0].task_id)  # the worker asked to run this one
    assert revokes.overdue(due) == [worker]
    taken = revokes.reclaim(worker, due)
    assert taken == specs[1:] and list(worker.queued) == specs[:1]
    # Taken back once: the same deadline takes nothing more, and the worker is no
    # longer overdue; the next deadline is none.
    assert revokes.overdue(due + 1) == [] and revokes.reclaim(worker, due + 1) == []
    revokes.next_due()
    assert revokes.due == math.inf
    # The worker's late answer lists the tasks taken back: they are not handed back twice.
    late, current = revokes.answered(worker, [s.task_id for s in specs[1:]], revoke.revoke_id)
    assert late == [] and current is None and not worker.revokes


def test_the_next_deadline_is_the_earliest_unanswered_one(make_node, make_spec) -> None:
    node = make_node(max_workers=2)
    first, second = node.add_worker(), node.add_worker()
    revokes = Revokes(node.state.out, node.state.registry, timeout_s=0.5)
    first.queued.append(make_spec())
    second.queued.append(make_spec())
    revokes.ask_queued(first)
    revokes.timeout_s = 0.1
    revokes.ask_queued(second)
    (early,) = second.revokes.values()
    (late,) = first.revokes.values()
    assert early.deadline < late.deadline
    revokes.next_due()
    assert revokes.due == early.deadline
    revokes.reclaim(second, early.deadline)
    revokes.next_due()
    assert revokes.due == late.deadline
