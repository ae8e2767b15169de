"""Values between nodes: the object half of :class:`~heliostat.engine.peers.Peers` (pure).

How large values live at the node that made them, and the chain of holds that keeps
every location handed out valid, is told in ``peers.py``. Here is the bookkeeping:
values sent with a task or report (small ones inline, large ones as a location),
received (stored, or recorded as REMOTE until read), pushed when they become ready
(refs nested in a value), pulled when a reader needs them (one pull per object at a
time), let go when the last reference goes, and forgotten when their node dies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heliostat.engine.ids import format_id
from heliostat.engine.node_instructions import (
    Outbox,
    PullObject,
    PushValues,
    ReleaseAt,
    WireValue,
)
from heliostat.engine.object_directory import ObjectDirectory, Waiter
from heliostat.engine.object_table import Location, ObjectEntry, ObjKind
from heliostat.engine.records import WorkerRecord

__all__ = ["PeerValues", "Pull"]

log = logging.getLogger("heliostat.engine")

_SHM = ObjKind.SHM


@dataclass(frozen=True, slots=True)
class Pull:
    """A copy of an object under way from node ``source`` into our store.

    ``keeper``: the node that keeps the object for us, told (ReleaseAt) once the copy
    is here. 0 for the pull of a REMOTE value (``location``: the one it was pulled
    for): its keeper keeps its hold until the entry is freed (:meth:`Peers.let_go`),
    since we may have told other nodes to pull from ``source`` meanwhile.

    One pull per object at a time (its bytes go to the object's one segment path): a
    record stays until the pull ends, even when the entry it was for is gone.
    """

    source: int
    keeper: int
    contained: tuple[int, ...]
    location: Location | None = None


class PeerValues:
    """Values between nodes (mixed into ``Peers``, which provides the attributes and
    methods declared here)."""

    _out: Outbox
    _objects: ObjectDirectory
    local_index: int
    pulls: dict[int, Pull]
    pull_count: int
    located: dict[int, set[int]]
    promised: dict[int, set[int]]

    if TYPE_CHECKING:  # provided by Peers

        def proc(self, index: int) -> WorkerRecord: ...
        def is_actor(self, ident: int) -> bool: ...

    def _forget_locations(self, index: int) -> None:
        """Node ``index`` is gone: values that lived there, or that it kept alive for
        us, are lost; they are rebuilt from lineage when a reader needs them (at once
        if one waits). Our own copies of them stay."""
        objects = self._objects
        entries = objects.entries
        for oid in self.located.pop(index, ()):
            entry = entries.get(oid)
            location = entry.remote if entry is not None else None
            if entry is None or location is None:
                continue
            if index not in (location.source, location.keeper):
                continue
            if entry.kind is not ObjKind.REMOTE:
                self.let_go(entry)  # the bytes are here too
                continue
            if entry.waiters:
                objects.lost(entry)
            else:
                objects.table.mark_lost(entry)

    def _add_value(
        self, proc: WorkerRecord, entry: Any, values: list[WireValue], pending: list[int]
    ) -> None:
        """The wire form of ``entry`` for peer ``proc``, or a promise if not ready."""
        kind = entry.kind
        if kind is ObjKind.PENDING or kind is ObjKind.FREED:
            pending.append(entry.id)
            return
        if kind is ObjKind.SHM or kind is ObjKind.SPILLED:
            # The peer pulls it; hold it for the peer until its ReleaseAt.
            self._objects.table.hold(proc, entry.id)
            values.append(WireValue(entry.id, int(_SHM), None, entry.size, entry.contained))
        elif kind is ObjKind.REMOTE:
            # The peer pulls it from the node that has it (no bytes move when that is
            # the peer itself). Our entry, and so our keeper's hold on it, stays for
            # the peer until its ReleaseAt.
            self._objects.table.hold(proc, entry.id)
            source = entry.remote.source if entry.remote is not None else 0
            values.append(WireValue(entry.id, int(_SHM), None, entry.size, entry.contained, source))
        else:
            if kind is ObjKind.ERROR:
                entry.error_seen = True
            values.append(
                WireValue(entry.id, int(kind), entry.payload, entry.size, entry.contained)
            )
        for cid in entry.contained:  # refs inside travel too
            inner = self._objects.entries.get(cid)
            if inner is not None:
                self._add_value(proc, inner, values, pending)

    def _send_values(
        self, index: int, proc: WorkerRecord, entries: list[ObjectEntry]
    ) -> tuple[list[WireValue], list[int]]:
        """The wire form of ``entries`` for node ``index`` (stand-in ``proc``): the
        values, and the ids of nested refs not ready yet (sent when they are)."""
        values: list[WireValue] = []
        pending: list[int] = []
        for entry in entries:
            self._add_value(proc, entry, values, pending)
        if pending:
            self.push_when_ready(index, pending)
        self.lend(index, (), values)
        return values, pending

    def push_when_ready(self, index: int, ids: list[int]) -> None:
        """Send node ``index`` the values of ``ids`` as each becomes ready."""
        objects = self._objects
        proc = self.proc(index)
        for oid in ids:
            entry = objects.entries.get(oid)
            if entry is None:
                continue
            objects.table.hold(proc, oid)  # kept until sent

            def reply(ok: bool, ready: Any, _oid: int = oid, _index: int = index) -> None:
                self._push(_index, _oid)

            waiter = Waiter(proc, next(self._req), [oid], 1, reply, False)
            if entry.kind is ObjKind.FREED:
                objects.lost(entry)
            if entry.kind is ObjKind.PENDING:
                entry.waiters = [*(entry.waiters or []), waiter]
            else:
                self._push(index, oid)

    def _push(self, index: int, oid: int) -> None:
        proc = self.procs.get(index)
        entry = self._objects.entries.get(oid)
        if proc is None or entry is None:
            return
        values: list[WireValue] = []
        pending: list[int] = []
        self._add_value(proc, entry, values, pending)
        self._objects.table.release(proc, oid)  # the hold of push_when_ready
        if pending:
            self.push_when_ready(index, pending)
        if values:
            self.lend(index, (), values)
            self._out.effect(PushValues(node=index, values=tuple(values)))

    def _release_pulled(self, index: int, values: list[WireValue]) -> None:
        ids = tuple(v.object_id for v in values if v.kind == int(_SHM))
        if ids:
            self._out.effect(ReleaseAt(node=index, object_ids=ids))

    def on_values(self, index: int, values: list[WireValue]) -> None:
        """Values node ``index`` promised us earlier."""
        promised = self.promised.get(index)
        if promised:
            for value in values:
                promised.discard(value.object_id)
        unwanted = self.unwanted.get(index)
        if unwanted:
            values = self.drop_unwanted(index, unwanted, values)
        self._adopt(index, self._receive(index, values, [], lazy=True))

    def _adopt(self, index: int, created: list[int]) -> None:
        """Nested refs that arrived inside our values: their containers hold them now."""
        proc = self.procs.get(index)
        if proc is None:
            return
        entries = self._objects.entries
        table = self._objects.table
        for oid in created:
            entry = entries.get(oid)
            if entry is not None and entry.count > 1:
                table.release(proc, oid)

    def _receive(
        self, index: int, values: list[WireValue], pending: list[int], *, lazy: bool = False
    ) -> list[int]:
        """Store values that arrived from node ``index`` (ours or copies of theirs).

        A large value is pulled at once (a forwarded task's arguments: the task needs
        them), or with ``lazy`` recorded as REMOTE, where it lives, until a reader
        here needs it (results reported to their owner, values pushed later).

        Returns the ids of the entries it created: copies held by the sender's
        stand-in until the task that needed them lets go (:meth:`finished`).
        """
        objects = self._objects
        entries = objects.entries
        table = objects.table
        proc = self.proc(index)
        release: list[int] = []
        created: list[int] = []
        for value in values:
            oid = value.object_id
            entry = entries.get(oid)
            if entry is None:
                entry = table.create(oid, proc, None)
                created.append(oid)
            large = value.kind == int(_SHM)
            under_way = self.pulls.get(oid) if large else None
            if entry.kind is not ObjKind.PENDING or (under_way is not None and under_way.keeper):
                if large:  # we have it (or it is on its way): the sender need not keep it
                    release.append(oid)
                continue
            if large:
                source = value.at or index
                if source == self.local_index:
                    # We keep whatever we told anyone to pull from here, so this is not
                    # expected; the sender is the only other place to ask.
                    source = index
                if under_way is not None and not lazy:
                    # The bytes of an earlier value of it are still coming (a pull for
                    # an entry since dropped): they serve this one.
                    self.pulls[oid] = Pull(under_way.source, index, value.contained)
                elif lazy:
                    for cid in value.contained:
                        if cid not in entries and not self.is_actor(cid):
                            table.create(cid, proc, None)
                            created.append(cid)
                    entry.remote = Location(source, index)
                    located = self.located
                    located.setdefault(source, set()).add(oid)
                    located.setdefault(index, set()).add(oid)
                    objects.set_value(entry, ObjKind.REMOTE, None, value.size, value.contained)
                else:
                    self.pulls[oid] = Pull(source, index, value.contained)
                    self.pull_count += 1
                    table.make_room(value.size)
                    self._out.effect(PullObject(node=source, object_id=oid, size=value.size))
                continue
            for cid in value.contained:
                if cid not in entries and not self.is_actor(cid):
                    table.create(cid, proc, None)
                    created.append(cid)
            objects.set_value(
                entry, ObjKind(value.kind), value.payload, value.size, value.contained
            )
        if release:
            self._out.effect(ReleaseAt(node=index, object_ids=tuple(release)))
        if pending:
            owed = self.promised.setdefault(index, set())
            for oid in pending:
                if oid not in entries:
                    table.create(oid, proc, None)
                    created.append(oid)
                owed.add(oid)
        return created

    def fetch(self, entry: ObjectEntry) -> None:
        """A reader here needs the bytes of a REMOTE value: pull them from where they
        are (once, however many readers ask)."""
        oid = entry.id
        location = entry.remote
        assert location is not None, "a REMOTE entry always says where it lives"
        if oid in self.pulls:
            return  # its bytes are on their way (for this location or an earlier one)
        self.pulls[oid] = Pull(location.source, 0, (), location)
        self.pull_count += 1
        self._objects.table.make_room(entry.size)
        self._out.effect(PullObject(node=location.source, object_id=oid, size=entry.size))

    def let_go(self, entry: ObjectEntry) -> None:
        """``entry`` is freed or lost (or its keeper died): its keeper may drop it."""
        location, entry.remote = entry.remote, None
        if location is None:
            return
        for index in (location.source, location.keeper):
            ids = self.located.get(index)
            if ids is not None:
                ids.discard(entry.id)
                if not ids:
                    del self.located[index]
        if location.keeper in self.nodes:
            self._out.effect(ReleaseAt(node=location.keeper, object_ids=(entry.id,)))

    def pulled(self, object_id: int, path: str, size: int) -> None:
        """A pull finished: the value is in our store at ``path``."""
        pull = self.pulls.pop(object_id, None)
        objects = self._objects
        entry = objects.entries.get(object_id)
        if pull is None:  # given up on (its node died): the entry was dealt with
            self._discard(object_id, path)
            return
        if not pull.keeper:
            if entry is not None and entry.kind is ObjKind.REMOTE:
                objects.localized(entry, path)  # (for an earlier location too: same bytes)
            else:
                self._discard(object_id, path)
            return
        if entry is None or entry.kind is not ObjKind.PENDING:
            self._discard(object_id, path)
        else:
            keeper = pull.keeper
            proc = self.procs.get(keeper)
            created = []
            for cid in pull.contained:
                if cid not in objects.entries and proc is not None and not self.is_actor(cid):
                    objects.table.create(cid, proc, None)
                    created.append(cid)
            objects.set_value(entry, ObjKind.SHM, path, size, pull.contained)
            self._adopt(keeper, created)
        if pull.keeper in self.nodes:
            self._out.effect(ReleaseAt(node=pull.keeper, object_ids=(object_id,)))

    def _discard(self, object_id: int, path: str) -> None:
        """Drop pulled bytes nobody wants, unless the object's entry lives there now."""
        entry = self._objects.entries.get(object_id)
        if entry is None or entry.path != path:
            self._objects.table.discard_payload(ObjKind.SHM, path)

    def pull_failed(self, object_id: int, reason: str) -> None:
        """A pull failed (the node died, or lost the object): rebuild it, or fail it."""
        pull = self.pulls.pop(object_id, None)
        if pull is None:
            return  # given up on already (its node died)
        log.warning(
            "could not copy object %s from node %s: %s",
            format_id(object_id),
            format_id(pull.source),
            reason,
        )
        entry = self._objects.entries.get(object_id)
        if pull.keeper and pull.keeper in self.nodes:
            self._out.effect(ReleaseAt(node=pull.keeper, object_ids=(object_id,)))
        if entry is None:
            return
        if entry.kind is ObjKind.REMOTE and entry.remote is not pull.location:
            # A pull for an earlier location of it (since let go of): try the new one.
            if entry.waiters:
                self.fetch(entry)
            return
        if entry.kind in (ObjKind.PENDING, ObjKind.REMOTE):
            self._objects.lost(entry)  # a REMOTE one's keeper is told (let_go)

    def on_release(self, index: int, ids: list[int]) -> None:
        """Node ``index`` no longer needs what we kept for it: drop our holds."""
        proc = self.procs.get(index)
        if proc is None:
            return
        table = self._objects.table
        for oid in ids:
            table.release(proc, oid)
