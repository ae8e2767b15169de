"""The object directory: waiters, pins, lost values (no processes)."""

from __future__ import annotations

import pickle
from typing import Any

from heliostat.engine.node_instructions import TaskDone, UnmapDriver
from heliostat.engine.object_table import ObjKind
from heliostat.exceptions import ObjectLostError

INLINE = int(ObjKind.INLINE)
ERROR = int(ObjKind.ERROR)


class Answers:
    """A reply callback that records what it was given."""

    def __init__(self) -> None:
        self.got: list[tuple[bool, Any]] = []

    def __call__(self, ok: bool, value: Any) -> None:
        self.got.append((ok, value))


def _put(node, object_id: int, payload: bytes = b"x", kind: int = INLINE) -> None:
    node.state.verbs["put"](node.state.driver, None, object_id, kind, payload, 0, ())


def test_get_of_a_ready_value_answers_at_once(make_node) -> None:
    node = make_node()
    _put(node, 7, b"seven")
    answers = Answers()
    node.state.verbs["get"](node.state.driver, answers, 1, [7])
    assert answers.got == [(True, [(7, INLINE, b"seven")])]


def test_get_waits_for_a_promise_and_a_worker_gives_its_cpu_back(make_node) -> None:
    node = make_node()
    worker = node.add_worker()
    node.state.verbs["promise"](node.state.driver, None, 9)
    answers = Answers()
    before = node.state.node.available.get("CPU")
    worker.task, worker.held = None, None  # a worker without a task blocks no CPU
    node.state.verbs["get"](worker, answers, 3, [9])
    assert answers.got == [] and worker.blocked == 1
    assert (worker.index, 3) in node.state.objects.waiters
    node.state.verbs["fulfill"](node.state.driver, None, 9, INLINE, b"nine", 0, ())
    assert answers.got == [(True, [(9, INLINE, b"nine")])]
    assert worker.blocked == 0 and not node.state.objects.waiters
    assert node.state.node.available.get("CPU") == before


def test_get_fails_fast_on_the_first_error(make_node) -> None:
    node = make_node()
    node.state.verbs["promise"](node.state.driver, None, 1)
    node.state.verbs["promise"](node.state.driver, None, 2)
    answers = Answers()
    node.state.verbs["get"](node.state.driver, answers, 5, [1, 2])
    error = pickle.dumps(ValueError("first"))
    node.state.verbs["fulfill"](node.state.driver, None, 2, ERROR, error, 0, ())
    assert answers.got == [(True, [(2, ERROR, error)])]  # 1 is still pending


def test_wait_answers_once_enough_are_ready(make_node) -> None:
    node = make_node()
    for oid in (1, 2, 3):
        node.state.verbs["promise"](node.state.driver, None, oid)
    answers = Answers()
    node.state.verbs["wait"](node.state.driver, answers, 5, [1, 2, 3], 2)
    node.state.verbs["fulfill"](node.state.driver, None, 3, INLINE, b"", 0, ())
    assert answers.got == []
    node.state.verbs["fulfill"](node.state.driver, None, 1, INLINE, b"", 0, ())
    assert answers.got == [(True, [1, 3])]


def test_a_forgotten_get_is_not_answered(make_node) -> None:
    node = make_node()
    node.state.verbs["promise"](node.state.driver, None, 1)
    answers = Answers()
    node.state.verbs["get"](node.state.driver, answers, 5, [1])
    node.state.verbs["forget"](node.state.driver, None, 5)
    node.state.verbs["fulfill"](node.state.driver, None, 1, INLINE, b"", 0, ())
    assert answers.got == []


def test_get_of_an_unknown_object_is_an_object_lost_error(make_node) -> None:
    node = make_node()
    answers = Answers()
    node.state.verbs["get"](node.state.driver, answers, 1, [12345])
    ((ok, error),) = answers.got
    assert not ok and isinstance(error, ObjectLostError)


def test_a_task_pins_its_argument_until_it_ends(make_node, make_spec) -> None:
    node = make_node()
    worker = node.add_worker()
    _put(node, 77)
    entry = node.state.objects.entries[77]
    spec = make_spec(args=(77,))
    node.state.submit(node.state.driver, spec)
    assert entry.count == 2  # the driver's ref and the task's pin
    node.state.verbs["release"](node.state.driver, None, [77])
    assert entry.kind is ObjKind.INLINE  # pinned: still there
    node.state.task_done(
        TaskDone(
            worker=worker,
            task_id=spec.task_id,
            results=[(spec.return_ids[0], INLINE, b"", (), 0)],
            started=0.0,
            finished=0.0,
        )
    )
    assert entry.count == 0 and entry.kind is not ObjKind.INLINE


def test_a_lost_put_value_becomes_object_lost_error(make_node) -> None:
    node = make_node()
    _put(node, 5)
    entry = node.state.objects.entries[5]
    node.state.objects.lost(entry)  # put() has no lineage: it cannot be rebuilt
    assert entry.kind is ObjKind.ERROR
    error = pickle.loads(entry.payload)
    assert isinstance(error, ObjectLostError) and "put()" in str(error)


def test_a_missing_segment_is_found_lost_by_locate(make_node, tmp_path) -> None:
    node = make_node()
    _put(node, 5)
    entry = node.state.objects.entries[5]
    entry.kind, entry.path = ObjKind.SHM, str(tmp_path / "gone")
    answers = Answers()
    node.state.verbs["locate"](node.state.driver, answers, 1, 5)
    ((ok, values),) = answers.got
    assert ok and values[0][1] == ERROR
    assert isinstance(pickle.loads(values[0][2]), ObjectLostError)


def test_freeing_a_segment_unmaps_it_in_the_driver(make_node, tmp_path) -> None:
    node = make_node()
    path = tmp_path / "seg"
    path.write_bytes(b"\0" * 64)
    node.state.verbs["put"](node.state.driver, None, 5, int(ObjKind.SHM), str(path), 64, ())
    node.effects()
    node.state.verbs["release"](node.state.driver, None, [5])
    assert UnmapDriver(object_ids=(5,)) in node.effects()


def test_a_lost_value_says_why_it_cannot_be_rebuilt(make_spec) -> None:
    from heliostat.engine.object_table import why_not_rebuilt
    from heliostat.engine.records import TaskKind

    assert "put()" in why_not_rebuilt(None) and "generator" in why_not_rebuilt(None)
    once = make_spec(max_retries=0, name="load")
    assert why_not_rebuilt(once) == "its task 'load' has max_retries=0"
    call = make_spec(kind=TaskKind.ACTOR_CALL, actor_id=7, max_retries=3, name="Counter.add")
    assert "actor call 'Counter.add'" in why_not_rebuilt(call)
    spent = make_spec(max_retries=2, name="load")
    spent.reconstructions = 2
    assert why_not_rebuilt(spent) == "its task 'load' was re-run 2 times already (max_retries=2)"
