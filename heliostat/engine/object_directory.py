"""The node's object directory: values, who waits for them, pins, lost values (pure).

:class:`~heliostat.engine.object_table.ObjectTable` keeps the entries themselves
(counts, memory, spilling). This module adds what happens *around* a value:

- **Waiters.** A ``get`` or ``wait`` that cannot be answered yet becomes a
  :class:`Waiter` on every pending entry it needs; a task whose arguments are pending
  waits the same way (the entry's ``waiters`` list holds both kinds). Setting a value
  advances each of them. A ``get`` fails fast: the first error it sees answers it.
- **Pins and holds.** A task pins its arguments and the refs inside them until it ends;
  a process *holds* the refs it received. Ids inside a value may name an actor (a
  handle passed around): those go to the actor directory's handle counts instead.
- **Lost values.** A value whose segment vanished, or that was freed while a reader
  still wanted it, is rebuilt from lineage (``hooks.reconstruct``) or replaced by an
  ``ObjectLostError``.
- **Values on other nodes.** In a cluster an entry may be ``REMOTE``: ready (a task
  that takes it is ready, ``wait(fetch_local=False)`` counts it), but its bytes are on
  another node. A reader here (a ``get``, a ``wait`` that fetches, a task or actor
  call that runs here) asks ``remote.fetch`` to pull it and waits like any waiter on a
  pending value; :meth:`ObjectDirectory.localized` answers them once it is here.
- **Streams.** Items of streaming generator tasks (``streams.py``).

Nothing here writes to a socket: answers go through the ``reply`` callback the caller
gave (the loop's callback queues a :class:`~heliostat.engine.node_instructions.Reply`),
and unmapping is queued as instructions.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from typing import Any, Protocol

from heliostat.engine.ids import IdMinter, format_id
from heliostat.engine.node_instructions import Outbox, Unmap, UnmapDriver
from heliostat.engine.object_table import ObjectEntry, ObjectTable, ObjKind, why_not_rebuilt
from heliostat.engine.records import (
    PEER_INDEX_BASE,
    ActorRecord,
    TaskSpec,
    TaskState,
    WorkerRecord,
)
from heliostat.engine.shm import segment_path
from heliostat.engine.streams import StreamState
from heliostat.engine.worker_registry import WorkerRegistry
from heliostat.exceptions import ObjectLostError, TaskCancelledError

__all__ = [
    "ActorHandles",
    "DirectoryHooks",
    "ObjectDirectory",
    "RemoteValues",
    "Reply",
    "Waiter",
    "error_payload",
]

log = logging.getLogger("heliostat.engine")

Reply = Callable[[bool, Any], None]

_ERROR = int(ObjKind.ERROR)


def error_payload(exc: BaseException) -> bytes:
    return pickle.dumps(exc, protocol=5)


class DirectoryHooks(Protocol):
    """What the directory needs from the task side (``dispatch.Dispatch``)."""

    def dependency_ready(self, spec: TaskSpec) -> None: ...
    def reconstruct(self, entry: ObjectEntry) -> bool: ...
    def block(self, proc: WorkerRecord) -> None: ...
    def unblock(self, proc: WorkerRecord) -> None: ...


class RemoteValues(Protocol):
    """Pulls values that live on other nodes (``peers.Peers``)."""

    def fetch(self, entry: ObjectEntry) -> None: ...


class ActorHandles(Protocol):
    """Handle counts of actors (``actor_directory.ActorDirectory``)."""

    actors: dict[int, ActorRecord]
    borrowed: dict[int, Any]  # actors other nodes own (cluster_actors.BorrowedActor)

    def pin(self, actor: Any) -> None: ...
    def unpin(self, actor: Any) -> None: ...
    def hold(self, proc: WorkerRecord, actor: Any) -> None: ...


class Waiter:
    """A pending get or wait: answered when ``need`` more of its ids are ready."""

    __slots__ = ("proc", "req_id", "ids", "need", "reply", "is_get", "done", "fetch")

    def __init__(
        self,
        proc: WorkerRecord,
        req_id: int,
        ids: list[int],
        need: int,
        reply: Reply,
        is_get: bool,
        fetch: bool = False,
    ) -> None:
        self.proc = proc
        self.req_id = req_id
        self.ids = ids
        self.need = need
        self.reply = reply
        self.is_get = is_get
        self.done = False  # answered (or forgotten): later progress is ignored
        # A REMOTE value counts once it is pulled here (gets, waits with fetch_local),
        # or (False) as soon as it is made, wherever (a push to a peer waits so).
        self.fetch = fetch


class ObjectDirectory:
    """Values of one node and everything waiting on them. Called under the node lock."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        session: str,
        limit: int,
        spill_dir: str,
        own_ids: IdMinter,
        registry: WorkerRegistry,
    ) -> None:
        self._out = outbox
        self._session = session
        self._workers = registry.workers
        self._proc_of = registry.proc_of
        self.table = ObjectTable(
            limit=limit,
            spill_dir=spill_dir,
            unmap=self._unmap,
            on_unhandled_error=log_unhandled_error,
            unpin_other=self._unpin_actor,
        )
        self.entries = self.table.entries
        self.waiters: dict[tuple[int, int], Waiter] = {}  # by (process index, request id)
        self.streams: dict[int, StreamState] = {}  # by stream id (streams.py)
        self._own_ids = own_ids
        # Wired by the node manager once every part exists (they call each other).
        self.hooks: DirectoryHooks
        self.handles: ActorHandles
        self.remote: RemoteValues | None = None  # set when the node joins a cluster

    # ------------------------------------------------------------- values --

    def fulfill(
        self, object_id: int, kind: int, payload: Any, size: int, contained: tuple[int, ...]
    ) -> None:
        """A promised value arrived (``put``, ``fulfill``); dropped if none is pending."""
        entry = self.entries.get(object_id)
        if entry is None or entry.kind is not ObjKind.PENDING:
            self.table.discard_payload(ObjKind(kind), payload)
            return
        if kind == int(ObjKind.SHM):
            self.table.make_room(size)
        self.set_value(entry, ObjKind(kind), payload, size, contained)

    def set_value(
        self, entry: ObjectEntry, kind: ObjKind, payload: Any, size: int, contained: tuple[int, ...]
    ) -> None:
        if contained:
            # Handles to actors inside the value pin their actors (until the value is
            # freed: ``_unpin_actor``); they stay in ``contained`` so that a reader
            # of the value, or a node it is sent to, gets a hold on them too.
            handles = self.handles
            actors, borrowed = handles.actors, handles.borrowed
            for cid in contained:
                actor = actors.get(cid) or borrowed.get(cid)
                if actor is not None:
                    handles.pin(actor)
        self.table.set_value(entry, kind, payload, size, contained)
        self._wake(entry)

    def localized(self, entry: ObjectEntry, path: str) -> None:
        """The bytes of a REMOTE value were pulled to ``path``: its readers go on."""
        self.table.localize(entry, path)
        self._wake(entry)

    def fetch(self, entry: ObjectEntry) -> None:
        """Pull a REMOTE value here (once, however many readers ask)."""
        assert self.remote is not None, "a REMOTE value on a node outside a cluster"
        self.remote.fetch(entry)

    def _wake(self, entry: ObjectEntry) -> None:
        """The value of ``entry`` is set: advance the tasks and gets waiting on it.

        A value set as REMOTE (made on another node) is ready for a task (which pulls
        what it needs once it is about to run here) and for a wait that does not
        fetch; a get or a fetching wait starts its pull now and waits on.
        """
        waiters = entry.waiters
        if waiters:
            entry.waiters = None
            remote = entry.kind is ObjKind.REMOTE
            for waiter in waiters:
                if type(waiter) is TaskSpec:
                    if waiter.state is TaskState.WAITING:
                        waiter.pending_deps -= 1
                        if waiter.pending_deps == 0:
                            self.hooks.dependency_ready(waiter)
                elif remote and waiter.fetch and not waiter.done:
                    self.fetch(entry)
                    entry.waiters = [*(entry.waiters or ()), waiter]
                else:
                    self._progress(waiter, entry)

    def value_for(self, proc: WorkerRecord, entry: ObjectEntry) -> tuple[int, int, Any] | None:
        """What a reader needs to load ``entry``, or None if it must be rebuilt first.

        Adds a hold for ``proc`` on each ref inside the value (the reader adopts them).
        """
        kind = entry.kind
        if kind is ObjKind.SPILLED:
            if not self.table.restore(entry, segment_path(self._session, entry.id)):
                self.lost(entry)
                # Rebuilding (None: wait for it), or an ObjectLostError stored now.
                return self.value_for(proc, entry) if entry.kind is ObjKind.ERROR else None
            kind = ObjKind.SHM
        if kind is ObjKind.SHM:
            self.table.touch(entry)
            if proc.index:
                mapped = entry.mapped_by
                if mapped is None:
                    entry.mapped_by = {proc.index}
                else:
                    mapped.add(proc.index)
            data: Any = entry.path
        elif kind is ObjKind.INLINE:
            data = entry.payload
        elif kind is ObjKind.ERROR:
            data = entry.payload
            entry.error_seen = True  # a reader gets it: not an unhandled error
        elif kind is ObjKind.REMOTE:
            self.fetch(entry)  # the caller waits on the entry, as for a rebuild
            return None
        else:
            self.lost(entry)
            return self.value_for(proc, entry) if entry.kind is ObjKind.ERROR else None
        for cid in entry.contained:
            self.hold_any(proc, cid)
        return (entry.id, int(kind), data)

    def lost(self, entry: ObjectEntry) -> None:
        """A value is gone: rebuild it from lineage, or store ObjectLostError."""
        self.table.mark_lost(entry)
        if self.hooks.reconstruct(entry):
            log.info("rebuilding lost object %s from lineage", format_id(entry.id))
            return
        exc = ObjectLostError(
            f"Object {format_id(entry.id)} was lost and cannot be rebuilt: "
            f"{why_not_rebuilt(entry.lineage)}.",
            object_id=format_id(entry.id),
        )
        self.set_value(entry, ObjKind.ERROR, error_payload(exc), 0, ())

    def locate(self, object_id: int) -> None:
        """A reader could not open the segment we named: if it is gone, it is lost."""
        entry = self.entries.get(object_id)
        if entry is not None and entry.kind is ObjKind.SHM and not os.path.exists(entry.path):
            self.table.mark_lost(entry)

    def _unmap(self, entry: ObjectEntry) -> None:
        """Tell processes that mapped a segment to let go of it (freed or spilled)."""
        mapped, entry.mapped_by = entry.mapped_by, None
        ids = (entry.id,)
        if mapped:
            for index in mapped:
                worker = self._workers.get(index)
                if worker is not None and worker.conn is not None:
                    self._out.send(worker, Unmap(object_ids=ids))
        self._out.effect(UnmapDriver(object_ids=ids))  # the driver may have mapped it too

    # ------------------------------------------------------ pins and holds --

    def _actor(self, ident: int) -> Any:
        """The actor (ours, or one borrowed from another node) with this id, or None."""
        handles = self.handles
        return handles.actors.get(ident) or handles.borrowed.get(ident)

    def pin_any(self, ident: int) -> None:
        actor = self._actor(ident)
        if actor is not None:
            self.handles.pin(actor)
        else:
            self.table.pin(ident)

    def unpin_any(self, ident: int) -> None:
        actor = self._actor(ident)
        if actor is not None:
            self.handles.unpin(actor)
        else:
            self.table.unpin(ident)

    def _unpin_actor(self, ident: int) -> None:
        actor = self._actor(ident)
        if actor is not None:
            self.handles.unpin(actor)

    def hold_any(self, proc: WorkerRecord, ident: int) -> None:
        actor = self._actor(ident)
        if actor is not None:
            self.handles.hold(proc, actor)
        else:
            self.table.hold(proc, ident)

    # ------------------------------------------------------------ waiters --

    def await_ids(
        self,
        proc: WorkerRecord,
        req_id: int,
        ids: list[int],
        need: int,
        reply: Reply,
        is_get: bool,
        fetch: bool = True,
    ) -> None:
        """Answer a get (``is_get``) or wait now, or once ``need`` of ``ids`` are ready.

        A value on another node is pulled here first for a get, and for a wait that
        ``fetch``es (``wait(fetch_local=True)``, as Ray's); otherwise it is ready as is.
        """
        entries = self.entries
        fetch = fetch or is_get
        waiter = Waiter(proc, req_id, ids, need, reply, is_get, fetch)
        pending: list[ObjectEntry] = []
        ready = 0
        failed: ObjectEntry | None = None  # the first ready error, for a get
        seen: set[int] = set()
        for oid in ids:
            if oid in seen:
                continue
            seen.add(oid)
            entry = entries.get(oid)
            if entry is None:
                exc = ObjectLostError(
                    f"Object {format_id(oid)} does not exist (freed or never created).",
                    object_id=format_id(oid),
                )
                reply(False, exc)
                return
            if entry.kind is ObjKind.FREED:
                self.lost(entry)
            if entry.kind is ObjKind.PENDING:
                pending.append(entry)
            elif entry.kind is ObjKind.REMOTE and fetch:
                self.fetch(entry)
                pending.append(entry)
            else:
                ready += 1
                if failed is None and entry.kind is ObjKind.ERROR:
                    failed = entry
        waiter.need = need - ready
        if waiter.need <= 0:
            self._complete(waiter)
            return
        if is_get and failed is not None:
            # Fail fast, as Ray does: a get raises an error it already has at once,
            # whether or not the other refs ever become ready.
            waiter.done = True
            self._reply_error(waiter, failed)
            return
        for entry in pending:
            if entry.waiters is None:
                entry.waiters = [waiter]
            else:
                entry.waiters.append(waiter)
        self.waiters[(proc.index, req_id)] = waiter
        self.hooks.block(proc)

    def forget(self, proc: WorkerRecord, req_id: int) -> None:
        """The caller gave up on a get or wait (timeout)."""
        waiter = self.waiters.pop((proc.index, req_id), None)
        if waiter is not None and not waiter.done:
            waiter.done = True
            self.hooks.unblock(proc)

    def _progress(self, waiter: Waiter, entry: ObjectEntry) -> None:
        if waiter.done:
            return
        waiter.need -= 1
        if waiter.need > 0 and waiter.is_get and entry.kind is ObjKind.ERROR:
            # Fail fast: the other refs of this get need not be waited for.
            waiter.done = True
            self.waiters.pop((waiter.proc.index, waiter.req_id), None)
            self.hooks.unblock(waiter.proc)
            self._reply_error(waiter, entry)
            return
        if waiter.need <= 0:
            self.waiters.pop((waiter.proc.index, waiter.req_id), None)
            self.hooks.unblock(waiter.proc)
            self._complete(waiter)

    def _reply_error(self, waiter: Waiter, entry: ObjectEntry) -> None:
        """Answer a get with just the error of ``entry`` (the reader raises it)."""
        entry.error_seen = True
        waiter.reply(True, [(entry.id, _ERROR, entry.payload)])

    def _complete(self, waiter: Waiter) -> None:
        waiter.done = True
        entries = self.entries
        if not waiter.is_get:
            ready_ids = [
                oid
                for oid in waiter.ids
                if (e := entries.get(oid)) is not None
                and e.kind is not ObjKind.PENDING
                and not (waiter.fetch and e.kind is ObjKind.REMOTE)
            ]
            waiter.reply(True, ready_ids)
            return
        remote = {
            entry.id: entry
            for oid in waiter.ids
            if (entry := entries.get(oid)) is not None and entry.kind is ObjKind.REMOTE
        }
        if remote:
            # Made on other nodes again since (rebuilt): pull them all, then answer.
            waiter.done = False
            waiter.need = len(remote)
            for entry in remote.values():
                self.fetch(entry)
                entry.waiters = [*(entry.waiters or ()), waiter]
            self.waiters[(waiter.proc.index, waiter.req_id)] = waiter
            self.hooks.block(waiter.proc)
            return
        values = []
        for oid in waiter.ids:
            entry = entries.get(oid)
            if entry is None:
                exc = ObjectLostError(
                    f"Object {format_id(oid)} was freed.", object_id=format_id(oid)
                )
                values.append((oid, _ERROR, error_payload(exc)))
                continue
            item = self.value_for(waiter.proc, entry)
            if item is None:
                # Lost while we looked: wait again for the rebuild.
                waiter.done = False
                waiter.need = 1
                entry.waiters = (entry.waiters or []) + [waiter]
                self.waiters[(waiter.proc.index, waiter.req_id)] = waiter
                self.hooks.block(waiter.proc)
                return
            values.append(item)
        waiter.reply(True, values)

    # ------------------------------------------------------------ streams --

    def accepting(self, stream_id: int, index: int) -> tuple[StreamState, WorkerRecord] | None:
        """The stream and its caller, if item ``index`` of ``stream_id`` is wanted: not a
        retry's replay, not after the end, not for a caller that let go or is gone."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.accepts(index):
            return None
        owner = self._proc_of(stream.owner)
        return None if owner is None else (stream, owner)

    def add_item(self, stream: StreamState, object_id: int) -> None:
        """Store the next item of ``stream`` (its entry is set) and answer its waiters.

        When the task keeps lineage, the item's entry keeps the task's spec (as a
        return value does) and the spec notes the item's id, so that a lost item can be
        rebuilt by running the generator again (:meth:`rebuilding`).
        """
        spec = stream.lineage
        if spec is not None:
            entry = self.entries.get(object_id)
            if entry is not None and entry.lineage is None:
                entry.lineage = spec
                spec.live_returns += 1
                ids = spec.item_ids
                if type(ids) is tuple:
                    spec.item_ids = ids = list(ids)
                ids.append(object_id)
        for _index, waiting, answer in stream.add(object_id):
            self._answer_stream_waiter(waiting, answer, object_id)

    def rebuilding(self, object_id: int) -> ObjectEntry | None:
        """The entry of a lost generator item that a re-run now yields again under its
        old id (``TaskSpec.item_ids``), or None: the id is new or its value is here."""
        entry = self.entries.get(object_id)
        if entry is not None and entry.kind is ObjKind.PENDING and entry.lineage is not None:
            return entry
        return None

    def items_not_yielded(self, spec: TaskSpec, error: bytes | None = None) -> None:
        """A streaming generator task ended: its items still waiting for a value were
        not yielded again by this run. After a first run (the item was lost while the
        task still ran), they are rebuilt by another run; after a re-run, they get
        ``error`` (the run failed) or an ObjectLostError (it yielded fewer items)."""
        rebuilt = type(spec.item_ids) is tuple
        entries = self.entries
        for index, object_id in enumerate(spec.item_ids):
            entry = entries.get(object_id)
            if entry is None or entry.kind is not ObjKind.PENDING or entry.lineage is not spec:
                continue
            if not rebuilt and error is None:
                self.lost(entry)
                continue
            if error is None:
                exc = ObjectLostError(
                    f"Item {index} of generator task {spec.name!r} was lost, and the task's "
                    f"re-run to rebuild it ended without yielding it (a generator must "
                    f"yield the same items each run for them to be rebuilt).",
                    object_id=format_id(object_id),
                )
                error = error_payload(exc)
            self.set_value(entry, ObjKind.ERROR, error, 0, ())

    def gen_item(
        self,
        stream_id: int,
        index: int,
        object_id: int,
        kind: int,
        payload: Any,
        contained: tuple[int, ...],
        size: int,
    ) -> None:
        """A streaming generator yielded item ``index`` (streams.py, step 1)."""
        lost = self.rebuilding(object_id)
        if lost is not None:  # a re-run yields a lost item again
            if kind == int(ObjKind.SHM):
                self.table.make_room(size)
            self.set_value(lost, ObjKind(kind), payload, size, contained)
            return
        found = self.accepting(stream_id, index)
        if found is None:
            self.table.discard_payload(ObjKind(kind), payload)
            return
        stream, owner = found
        self.store_item(owner, object_id, kind, payload, contained, size)  # the caller's
        self.add_item(stream, object_id)

    def store_item(
        self,
        holder: WorkerRecord,
        object_id: int,
        kind: int,
        payload: Any,
        contained: tuple[int, ...],
        size: int,
    ) -> ObjectEntry:
        """The entry of a value a generator yielded, held by ``holder``."""
        if kind == int(ObjKind.SHM):
            self.table.make_room(size)
        entry = self.table.create(object_id, holder, None)
        self.set_value(entry, ObjKind(kind), payload, size, contained)
        return entry

    def gen_next(self, proc: WorkerRecord, reply: Reply, stream_id: int, index: int) -> None:
        """The id of item ``index`` of a stream, 0 at its end; waits until one is known."""
        stream = self.streams.get(stream_id)
        if stream is None:
            reply(True, 0)
            return
        found = stream.lookup(index)
        if found is not None:
            reply(True, found)
            return
        stream.waiters.append((index, proc.index, reply))
        self.hooks.block(proc)

    def _answer_stream_waiter(self, waiting: int, answer: Reply, object_id: int) -> None:
        """Answer a ``gen_next`` (``waiting``: the asking process) and unblock it."""
        proc = self._proc_of(waiting)
        if proc is not None:
            self.hooks.unblock(proc)
        answer(True, object_id)

    def end_stream(self, stream_id: int, error: bytes | None) -> None:
        """The generator task ended (streams.py, step 3): store its error as the last item."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.finished:
            return
        if stream.owner >= PEER_INDEX_BASE:
            # The caller is on another node, which stores the error item itself when it
            # hears that the task ended (``Peers.on_report``); nothing waits here.
            stream.finish()
            del self.streams[stream_id]
            return
        owner = self._proc_of(stream.owner)
        if error is not None and owner is not None and not stream.dropped:
            object_id = self._own_ids.next()
            entry = self.table.create(object_id, owner, None)
            self.set_value(entry, ObjKind.ERROR, error, 0, ())
            for _index, waiting, answer in stream.add(object_id):
                self._answer_stream_waiter(waiting, answer, object_id)
        for _index, waiting, answer in stream.finish():
            self._answer_stream_waiter(waiting, answer, 0)
        if stream.dropped:
            del self.streams[stream_id]

    def streams_released(self, ids: list[int]) -> None:
        """Step 4 of streams.py: a caller let go of a generator (its stream id is free)."""
        streams = self.streams
        entries = self.entries
        for ident in ids:
            stream = streams.get(ident)
            if stream is None or stream.dropped:
                continue
            entry = entries.get(ident)
            if entry is not None and entry.count > 0:
                continue
            owner = self._proc_of(stream.owner)
            for object_id in stream.drop():
                if owner is not None:
                    self.table.release(owner, object_id)
            if stream.finished:
                del streams[ident]


def log_unhandled_error(entry: ObjectEntry) -> None:
    """The last ref to a failed result is gone and no reader ever saw the error.

    Logged at ERROR, as Ray logs an "unhandled error" when such a ref is dropped,
    so a failure in a task nobody waited for does not pass silently.
    Cancellations are not reported: whoever cancelled the task knows.
    """
    spec = entry.lineage
    name = spec.name if spec is not None else "put()"
    try:
        exc = pickle.loads(entry.payload or b"")
    except Exception as load_error:  # the class may not load here: say so
        detail = f"(the error could not be loaded: {load_error!r})"
        kind = "error"
    else:
        if isinstance(exc, TaskCancelledError):
            return
        kind = type(exc).__name__
        detail = str(exc)
    log.error(
        "Unhandled error in task %r (its result %s was never retrieved): %s: %s",
        name,
        format_id(entry.id),
        kind,
        detail,
    )
