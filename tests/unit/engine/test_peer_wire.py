"""Peer messages survive the wire: each effect, encoded (``encode_effect``), serialized,
parsed and applied (``apply_envelope``), reaches the node state with every field as
it was sent, empty ones included."""

from __future__ import annotations

from typing import Any

import pytest

from heliostat.cluster.v1 import node_pb2
from heliostat.engine.node_instructions import (
    ForwardTask,
    LogLines,
    PushValues,
    ReportTask,
    StreamItem,
    WireValue,
)
from heliostat.engine.peer_wire import apply_envelope, encode_effect
from heliostat.engine.records import spec_to_wire

SHM, INLINE = 2, 1
BIG = (3 << 64) | 77  # ids use all 80 bits
VALUES = (
    WireValue(BIG, INLINE, b"\x80\x05K\x01.", 5, (), 0),
    WireValue(BIG + 1, SHM, None, 1 << 20, (BIG + 2, BIG + 3), 4),
    WireValue(BIG + 4, INLINE, b"", 0, (), 0),
)


class _Recorder:
    """Stands in for NodeState (and its peers): records what it is handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.peers = self
        self.actors = self

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def _through_the_wire(effect: Any, code: dict | None = None) -> tuple[str, tuple[Any, ...]]:
    raw = node_pb2.DeliverRequest(messages=[encode_effect(effect)]).SerializeToString()
    (envelope,) = node_pb2.DeliverRequest.FromString(raw).messages
    state = _Recorder()
    apply_envelope(state, 9, envelope, code or {})
    (call,) = state.calls
    return call


@pytest.mark.parametrize("values", [(), VALUES])
def test_a_report_arrives_whole(values) -> None:
    effect = ReportTask(
        node=9,
        task_id=BIG,
        outcome="ok",
        started=1.5,
        finished=2.5,
        values=values,
        pending=(BIG + 5,),
    )
    name, args = _through_the_wire(effect)
    assert name == "on_report"
    assert args == (9, BIG, "ok", 1.5, 2.5, list(values), [BIG + 5])


def test_a_forwarded_task_arrives_whole(make_spec) -> None:
    spec = make_spec(args=(BIG,))
    effect = ForwardTask(
        node=9,
        spec=spec,
        fn_bytes=b"code",
        values=VALUES,
        pending=(BIG + 6,),
        code=("pkg://a", "pkg://b"),
        env=(("A", "1"), ("B", "2")),
        actor_options={"name": "x"},
    )
    installed = (("/cache/a",), "")
    name, args = _through_the_wire(effect, {("pkg://a", "pkg://b"): installed})
    assert name == "peer_forward"
    fields, fn, values, pending, job, code, options = args[1:]
    assert fields == spec_to_wire(spec) and fn == b"code" and values == list(VALUES)
    assert pending == [BIG + 6] and options == {"name": "x"} and code == installed
    assert job == (("pkg://a", "pkg://b"), (("A", "1"), ("B", "2")))


def test_a_bare_forwarded_task_arrives_with_nothing_added(make_spec) -> None:
    spec = make_spec()
    effect = ForwardTask(node=9, spec=spec, fn_bytes=None, values=(), pending=())
    _name, args = _through_the_wire(effect)
    assert args[1:] == (spec_to_wire(spec), None, [], [], None, None, None)


def test_stream_items_pushes_and_log_lines_arrive_whole() -> None:
    item = StreamItem(node=9, stream_id=BIG, index=3, values=VALUES[:1], pending=())
    assert _through_the_wire(item) == ("on_stream_item", (9, BIG, 3, list(VALUES[:1]), []))
    push = PushValues(node=9, values=VALUES)
    assert _through_the_wire(push) == ("on_values", (9, list(VALUES)))
    log = LogLines(
        node=9,
        task_id=BIG,
        actor_id=0,
        stream="stderr",
        task_name="t",
        pid=42,
        text="a\nb",
        origin="n",
    )
    assert _through_the_wire(log) == (
        "peer_output",
        (9, BIG, 0, "stderr", "t", 42, "a\nb", "n"),
    )
