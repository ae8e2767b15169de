"""Rebuilding a lost item of a streaming generator from lineage (streams.py), on one
node: the owner runs the generator again, which yields each item it yielded before
under the id the caller holds; the lost items are filled, the others dropped."""

from __future__ import annotations

import pickle

from heliostat.engine.node_instructions import Execute, TaskDone
from heliostat.engine.node_loop import encode
from heliostat.engine.object_table import ObjKind
from heliostat.engine.records import TaskState
from heliostat.engine.streams import STREAMING
from heliostat.exceptions import ObjectLostError

INLINE = int(ObjKind.INLINE)
ITEM_IDS = -1  # the last field of an EXECUTE message


def _start(node, make_spec, max_retries: int = 1):
    """Submit a streaming generator task; returns (spec, worker, stream id)."""
    worker = node.add_worker()
    spec = make_spec(max_retries=max_retries, name="gen")
    spec.generator = STREAMING
    node.state.submit(node.state.driver, spec)
    (execute,) = node.sent(worker)
    assert isinstance(execute, Execute) and encode(execute)[ITEM_IDS] == ()
    return spec, worker, spec.return_ids[0]


def _yield(node, worker, stream_id: int, index: int, object_id: int, value: bytes) -> None:
    node.state.verbs["gen_item"](
        worker, None, stream_id, index, object_id, INLINE, value, (), len(value)
    )


def _done(node, worker, spec) -> None:
    node.state.task_done(
        TaskDone(
            worker=worker,
            task_id=spec.task_id,
            results=[(spec.return_ids[0], INLINE, b"N.", (), 2)],
            started=1.0,
            finished=2.0,
        )
    )


def _rerun(node, worker) -> Execute:
    (execute,) = [m for m in node.sent(worker) if isinstance(m, Execute)]
    return execute


def test_a_lost_item_is_rebuilt_under_its_id_and_the_others_are_not_replaced(
    make_node, make_spec
) -> None:
    node = make_node()
    spec, worker, stream_id = _start(node, make_spec)
    first, second = 0xA1, 0xA2
    _yield(node, worker, stream_id, 0, first, b"one")
    _yield(node, worker, stream_id, 1, second, b"two")
    _done(node, worker, spec)
    entries = node.state.objects.entries
    assert entries[first].lineage is spec and entries[second].lineage is spec
    assert spec.live_returns == 3  # the stream id and both items keep the lineage

    node.state.objects.lost(entries[second])
    assert entries[second].kind is ObjKind.PENDING and spec.reconstructions == 1
    execute = _rerun(node, worker)
    assert execute.spec is spec and encode(execute)[ITEM_IDS] == (first, second)
    # The re-run yields both again: item 0 is still here (dropped), item 1 is filled.
    _yield(node, worker, stream_id, 0, first, b"ONE")
    _yield(node, worker, stream_id, 1, second, b"TWO")
    _done(node, worker, spec)
    assert entries[first].payload == b"one" and entries[second].payload == b"TWO"
    assert spec.state is TaskState.FINISHED


def test_an_item_the_re_run_does_not_yield_again_is_lost_with_the_reason(
    make_node, make_spec
) -> None:
    node = make_node()
    spec, worker, stream_id = _start(node, make_spec)
    first, second = 0xB1, 0xB2
    _yield(node, worker, stream_id, 0, first, b"one")
    _yield(node, worker, stream_id, 1, second, b"two")
    _done(node, worker, spec)
    node.state.objects.lost(node.state.objects.entries[second])
    _rerun(node, worker)
    _yield(node, worker, stream_id, 0, first, b"one")  # this time it stops after one
    _done(node, worker, spec)
    entry = node.state.objects.entries[second]
    assert entry.kind is ObjKind.ERROR
    error = pickle.loads(entry.payload)
    assert isinstance(error, ObjectLostError) and "Item 1 of generator task 'gen'" in str(error)


def test_an_item_lost_while_its_generator_runs_is_rebuilt_once_it_ends(
    make_node, make_spec
) -> None:
    node = make_node()
    spec, worker, stream_id = _start(node, make_spec)
    first = 0xC1
    _yield(node, worker, stream_id, 0, first, b"one")
    entries = node.state.objects.entries
    node.state.objects.lost(entries[first])  # the run is past item 0: it cannot fill it
    assert entries[first].kind is ObjKind.PENDING and spec.reconstructions == 0
    _yield(node, worker, stream_id, 1, 0xC2, b"two")
    _done(node, worker, spec)
    execute = _rerun(node, worker)  # a second run, which yields item 0 again
    assert encode(execute)[ITEM_IDS] == (first, 0xC2) and spec.reconstructions == 1
    _yield(node, worker, stream_id, 0, first, b"one")
    assert entries[first].payload == b"one"


def test_a_generator_without_retries_keeps_no_lineage_for_its_items(make_node, make_spec) -> None:
    node = make_node()
    spec, worker, stream_id = _start(node, make_spec, max_retries=0)
    _yield(node, worker, stream_id, 0, 0xD1, b"one")
    _done(node, worker, spec)
    entry = node.state.objects.entries[0xD1]
    assert entry.lineage is None and spec.item_ids == ()
    node.state.objects.lost(entry)
    error = pickle.loads(entry.payload)
    assert isinstance(error, ObjectLostError) and "max_retries=0" in str(error)


def test_a_re_run_started_on_another_worker_as_the_first_run_ends_keeps_its_worker(
    make_node, make_spec
) -> None:
    node = make_node(num_cpus=2)
    spec, worker, stream_id = _start(node, make_spec)
    other = node.add_worker()  # idle, with a CPU free: the re-run can start at once
    _yield(node, worker, stream_id, 0, 0xE1, b"one")
    node.state.objects.lost(node.state.objects.entries[0xE1])
    _done(node, worker, spec)
    rerun = [m for m in node.sent(worker) + node.sent(other) if isinstance(m, Execute)]
    assert [m.spec for m in rerun] == [spec]
    assert spec.state is TaskState.RUNNING and spec.worker is not None
