"""How peer messages look on the wire (pure): ``peers.py`` effects to ``node.proto``
messages and back.

:func:`encode_effect` turns what one node manager decided for another node (a task
forwarded, a report, values, releases, actor messages) into one ``Envelope``;
:func:`apply_envelope` hands a received one to the node state. No socket, thread or
lock here: ``node_link.py`` sends and receives the envelopes, and calls
:func:`apply_envelope` under the node lock.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from heliostat.cluster.transfer import id_bytes
from heliostat.cluster.v1 import node_pb2
from heliostat.engine.node_instructions import LogLines
from heliostat.engine.object_table import ObjKind
from heliostat.engine.peers import (
    ActorBorrow,
    ActorControl,
    ActorRefs,
    ActorStarted,
    CancelRemote,
    ForwardTask,
    PushValues,
    ReleaseAt,
    ReportTask,
    StreamItem,
    WireValue,
)
from heliostat.engine.records import spec_to_wire

__all__ = ["apply_envelope", "encode_effect"]


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


_SHM = int(ObjKind.SHM)

# The messages below are filled in place, field by field, and empty fields are left
# unset: building each message from keyword arguments (then copying it into its
# parent) cost about twice as much, per task, on both nodes (benchmarks/cluster.py).


def _add_values(field: Any, values: Sequence[WireValue]) -> None:
    """Append ``values`` to a repeated ``WireValue`` field."""
    add = field.add
    for v in values:
        wire = add()
        wire.object_id = id_bytes(v.object_id)
        wire.kind = v.kind
        if v.payload:
            wire.payload = v.payload
        if v.size:
            wire.size = v.size
        if v.contained:
            wire.contained.extend([id_bytes(c) for c in v.contained])
        if v.at:
            wire.at = v.at


def _values(messages: Sequence[Any]) -> list[WireValue]:
    out = []
    for m in messages:
        kind = m.kind
        contained = m.contained
        out.append(
            WireValue(
                int.from_bytes(m.object_id, "big"),
                kind,
                m.payload if kind != _SHM else None,
                m.size,
                tuple([int.from_bytes(c, "big") for c in contained]) if contained else (),
                m.at,
            )
        )
    return out


def _ids(field: Any) -> list[int]:
    return [int.from_bytes(raw, "big") for raw in field] if field else []


def encode_effect(effect: Any) -> node_pb2.Envelope:
    """The message for a peer effect (a spec's wire fields never change once sent)."""
    kind = type(effect)
    envelope = node_pb2.Envelope()
    if kind is ForwardTask:
        forward = envelope.forward
        forward.spec = pickle.dumps(spec_to_wire(effect.spec), protocol=5)
        if effect.fn_bytes:
            forward.function = effect.fn_bytes
        if effect.values:
            _add_values(forward.values, effect.values)
        if effect.pending:
            forward.pending.extend([id_bytes(p) for p in effect.pending])
        if effect.code:
            forward.code.extend(effect.code)
        if effect.env:
            forward.env_vars.update(dict(effect.env))
        if effect.actor_options is not None:
            forward.actor_options = pickle.dumps(effect.actor_options, protocol=5)
        return envelope
    if kind is ReportTask:
        report = envelope.report
        report.task_id = id_bytes(effect.task_id)
        report.outcome = effect.outcome
        report.started_at = effect.started
        report.finished_at = effect.finished
        if effect.values:
            _add_values(report.values, effect.values)
        if effect.pending:
            report.pending.extend([id_bytes(p) for p in effect.pending])
        return envelope
    if kind is StreamItem:
        item = envelope.item
        item.stream_id = id_bytes(effect.stream_id)
        item.index = effect.index
        _add_values(item.values, effect.values)
        if effect.pending:
            item.pending.extend([id_bytes(p) for p in effect.pending])
        return envelope
    if kind is LogLines:
        return node_pb2.Envelope(
            log=node_pb2.LogLines(
                task_id=id_bytes(effect.task_id),
                actor_id=id_bytes(effect.actor_id) if effect.actor_id else b"",
                stream=effect.stream,
                task_name=effect.task_name,
                pid=effect.pid,
                text=effect.text,
                origin=effect.origin,
            )
        )
    if kind is PushValues:
        _add_values(envelope.push.values, effect.values)
        return envelope
    if kind is ReleaseAt:
        return node_pb2.Envelope(
            release=node_pb2.ReleaseObjects(object_ids=[id_bytes(i) for i in effect.object_ids])
        )
    if kind is CancelRemote:
        return node_pb2.Envelope(
            cancel=node_pb2.CancelTask(task_id=id_bytes(effect.task_id), force=effect.force)
        )
    if kind is ActorStarted:
        return node_pb2.Envelope(
            actor_started=node_pb2.ActorStarted(
                actor_id=id_bytes(effect.actor_id), error=effect.error or b"", died=effect.died
            )
        )
    if kind is ActorControl:
        return node_pb2.Envelope(
            actor_control=node_pb2.ActorControl(
                actor_id=id_bytes(effect.actor_id), kill=effect.kill, no_restart=effect.no_restart
            )
        )
    if kind is ActorRefs:
        return node_pb2.Envelope(
            actor_refs=node_pb2.ActorRefs(
                actor_ids=[id_bytes(a) for a, _owner in effect.refs],
                owners=[owner for _a, owner in effect.refs],
            )
        )
    if kind is ActorBorrow:
        return node_pb2.Envelope(
            actor_borrow=node_pb2.ActorBorrow(
                actor_id=id_bytes(effect.actor_id), borrower=effect.borrower, delta=effect.delta
            )
        )
    raise TypeError(f"not a message for a peer: {effect!r}")


def apply_envelope(
    state: Any, index: int, envelope: node_pb2.Envelope, code: dict[tuple[str, ...], Any]
) -> None:
    """Hand one received message to the node state (under the node lock).

    ``code`` maps a forwarded task's package URIs to their installed form.
    """
    body = envelope.WhichOneof("body")
    peers = state.peers
    if body == "forward":
        msg = envelope.forward
        fields = pickle.loads(msg.spec)  # the token vouched for the sender
        uris = tuple(msg.code) if msg.code else ()
        env = tuple(sorted(msg.env_vars.items())) if msg.env_vars else ()
        state.peer_forward(
            index,
            fields,
            msg.function or None,
            _values(msg.values) if msg.values else [],
            _ids(msg.pending),
            (uris, env) if uris or env else None,
            code.get(uris),
            pickle.loads(msg.actor_options) if msg.actor_options else None,
        )
    elif body == "report":
        msg = envelope.report
        peers.on_report(
            index,
            int.from_bytes(msg.task_id, "big"),
            msg.outcome,
            msg.started_at,
            msg.finished_at,
            _values(msg.values),
            _ids(msg.pending),
        )
    elif body == "item":
        msg = envelope.item
        peers.on_stream_item(
            index,
            _int(msg.stream_id),
            msg.index,
            _values(msg.values),
            _ids(msg.pending),
        )
    elif body == "log":
        msg = envelope.log
        state.peer_output(
            index,
            _int(msg.task_id),
            _int(msg.actor_id) if msg.actor_id else 0,
            msg.stream,
            msg.task_name,
            msg.pid,
            msg.text,
            msg.origin,
        )
    elif body == "push":
        peers.on_values(index, _values(envelope.push.values))
    elif body == "release":
        peers.on_release(index, [_int(i) for i in envelope.release.object_ids])
    elif body == "cancel":
        state.peer_cancel(index, _int(envelope.cancel.task_id), envelope.cancel.force)
    elif body == "actor_started":
        msg = envelope.actor_started
        peers.on_actor_started(index, _int(msg.actor_id), msg.error or None, msg.died)
    elif body == "actor_control":
        msg = envelope.actor_control
        peers.on_actor_control(index, _int(msg.actor_id), msg.kill, msg.no_restart)
    elif body == "actor_refs":
        msg = envelope.actor_refs
        state.actors.borrow_refs(list(zip(map(_int, msg.actor_ids), msg.owners, strict=True)))
    elif body == "actor_borrow":
        msg = envelope.actor_borrow
        state.actors.on_borrow(_int(msg.actor_id), msg.borrower, msg.delta)
