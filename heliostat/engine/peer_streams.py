"""Streaming generators between nodes: the stream half of
:class:`~heliostat.engine.peers.Peers` (pure).

A generator task runs wherever a task may. On the node that runs it, each new item is
relayed to the node that owns the task (:meth:`PeerStreams.relay_item`: a
``StreamItem`` on the ordered peer stream, ahead of the task's report), so the
caller's ``next()`` returns while the generator still runs there; a large item stays
where it was made until something reads it, as a result does. The owner's
``StreamState`` decides what is new (:meth:`PeerStreams.on_stream_item`), as for a
local task: a retry on another node replays the generator, and the items it had
yielded already are dropped, with the refs inside them (:attr:`unwanted`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from heliostat.engine.node_instructions import Outbox, StreamItem, WireValue
from heliostat.engine.object_table import ObjectEntry, ObjKind
from heliostat.engine.records import PEER_INDEX_BASE, WorkerRecord
from heliostat.engine.streams import StreamState

if TYPE_CHECKING:
    from heliostat.engine.object_directory import ObjectDirectory

__all__ = ["PeerStreams"]


class PeerStreams:
    """Stream items between nodes (mixed into ``Peers``, which provides the attributes
    and methods declared here)."""

    _out: Outbox
    _objects: ObjectDirectory
    procs: dict[int, WorkerRecord]
    # node -> ids it will push that nobody here wants: refs inside stream items we
    # dropped (on_stream_item), released at the node when they come.
    unwanted: dict[int, set[int]]

    if TYPE_CHECKING:  # provided by Peers

        def _receive(
            self, index: int, values: list[WireValue], pending: list[int], *, lazy: bool = False
        ) -> list[int]: ...
        def _adopt(self, index: int, created: list[int]) -> None: ...
        def _release_pulled(self, index: int, values: list[WireValue]) -> None: ...
        def _send_values(
            self, index: int, proc: WorkerRecord, entries: list[ObjectEntry]
        ) -> tuple[list[WireValue], list[int]]: ...

    # ------------------------------------------------------------------ owner side --

    def on_stream_item(
        self, index: int, stream_id: int, item: int, values: list[WireValue], pending: list[int]
    ) -> None:
        """Node ``index`` runs our streaming task ``stream_id``, which yielded ``item``:
        the caller holds it from now on (a large one stays there until read)."""
        objects = self._objects
        if values and objects.rebuilding(values[0].object_id) is not None:
            # A re-run yields a lost item again, under the id the caller holds.
            self._adopt(index, self._receive(index, values, pending, lazy=True))
            return
        found = objects.accepting(stream_id, item) if values else None
        if found is None:
            # A replay of a retry, or the caller let go: the node need not keep it,
            # nor the refs inside it that it will push later.
            self._release_pulled(index, values)
            entries = objects.entries
            later = [oid for oid in pending if oid not in entries]
            if later:
                self.unwanted.setdefault(index, set()).update(later)
            return
        stream, owner = found
        object_id = values[0].object_id
        if object_id not in objects.entries:
            objects.table.create(object_id, owner, None)
        self._adopt(index, self._receive(index, values, pending, lazy=True))
        objects.add_item(stream, object_id)

    def drop_unwanted(
        self, index: int, unwanted: set[int], values: list[WireValue]
    ) -> list[WireValue]:
        """``values`` less those nobody here wants (nested in a dropped stream item, and
        in those), which node ``index`` is told to let go of."""
        entries = self._objects.entries
        kept: list[WireValue] = []
        dropped: list[WireValue] = []
        for value in values:  # a value comes before the refs inside it
            if value.object_id in unwanted and value.object_id not in entries:
                unwanted.discard(value.object_id)
                unwanted.update(cid for cid in value.contained if cid not in entries)
                dropped.append(value)
            else:
                kept.append(value)
        if not unwanted:
            del self.unwanted[index]
        self._release_pulled(index, dropped)
        return kept

    # --------------------------------------------------------------- executor side --

    def relay_item(
        self,
        stream: StreamState,
        stream_id: int,
        item: int,
        object_id: int,
        kind: int,
        payload: Any,
        contained: tuple[int, ...],
        size: int,
    ) -> None:
        """A task a peer forwarded here yielded ``item``: send it to its caller's node
        (held here for that node until pulled, when it is large)."""
        index = stream.owner - PEER_INDEX_BASE
        proc = self.procs.get(index)
        objects = self._objects
        table = objects.table
        if proc is None or not stream.accepts(item):  # a replay of a retry here
            table.discard_payload(ObjKind(kind), payload)
            return
        stream.add(object_id)  # only to know what is new: nobody waits here
        entry = objects.store_item(proc, object_id, kind, payload, contained, size)
        values, pending = self._send_values(index, proc, [entry])
        self._out.effect(
            StreamItem(
                node=index,
                stream_id=stream_id,
                index=item,
                values=tuple(values),
                pending=tuple(pending),
            )
        )
        table.release(proc, object_id)  # sent inline, or held again until pulled
