"""The per-process core client: what the public API calls in a driver or a worker.

:class:`CoreClient` holds what every process needs (an id minter, a ref tracker, the
cache of mapped segments) and implements ``submit``, ``put``, ``get``, ``wait`` and the
rest on top of two transport hooks, ``_post`` (fire and forget) and ``_call`` (request
and wait for the reply). :class:`DriverClient` implements the hooks as direct calls into
the node manager running in the same process; the worker's client (``worker.py``)
sends messages over its socket. Either way the node manager sees the same verbs.
"""

from __future__ import annotations

import _thread
import itertools
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

from heliostat.engine.ids import IdMinter, format_id
from heliostat.engine.node_manager import NodeManager
from heliostat.engine.object_ref import ObjectRef, RefTracker
from heliostat.engine.records import ActorOptions, TaskKind, TaskSpec, WorkerRecord
from heliostat.engine.serialization import (
    INLINE_THRESHOLD,
    SerializedValue,
    deserialize,
    serialize,
)
from heliostat.engine.shm import MappingCache, create_segment, segment_path
from heliostat.exceptions import GetTimeoutError, HeliostatError, SerializationError
from heliostat.scheduler import ResourceSet

__all__ = ["CoreClient", "DriverClient", "Future", "PreparedArgs", "load_value"]

_INLINE, _SHM, _ERROR = 1, 2, 4
_EMPTY_ARGS = pickle.dumps(((), {}), protocol=5)

# (payload, ref positions, ref ids, nested ref ids, refs to keep alive until submitted)
PreparedArgs = tuple[bytes, tuple[Any, ...], tuple[int, ...], tuple[int, ...], list[ObjectRef]]


class Future:
    """A one-shot reply slot; ``set`` may be called from any thread, once."""

    __slots__ = ("_lock", "ok", "value")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self.ok: bool | None = None
        self.value: Any = None

    def set(self, ok: bool, value: Any) -> None:
        self.ok = ok
        self.value = value
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        if self.ok is not None:
            return True
        return self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0))

    def done(self) -> bool:
        return self.ok is not None


def load_value(mappings: MappingCache, object_id: int, kind: int, data: Any) -> Any:
    """Rebuild a value from what the node manager sent. Raises stored errors.

    Raises:
        FileNotFoundError: the segment vanished (the caller asks the manager again).
    """
    if kind == _INLINE:
        return deserialize(data)
    if kind == _SHM:
        view = mappings.get(object_id)
        if view is None:
            view = mappings.open(object_id, data)
        return deserialize(view)
    if kind == _ERROR:
        raise pickle.loads(data)
    raise HeliostatError(f"unexpected object kind {kind} for {format_id(object_id)}")


class CoreClient:
    """Task submission and object access for one process; transport left to subclasses."""

    def __init__(self, *, minter: IdMinter, session: str, namespace: str) -> None:
        self.minter = minter
        self.session = session
        self.namespace = namespace
        self.tracker = RefTracker(self._report_release)
        self.mappings = MappingCache()
        self._registered: set[bytes] = set()
        self._req_ids = itertools.count(1)
        self.closed = False
        self.actor_id = 0  # the actor this process hosts (a worker's, once created)

    # --- transport hooks -----------------------------------------------------------

    def _post(self, verb: str, *args: Any) -> None:
        raise NotImplementedError

    def _call(self, verb: str, *args: Any, timeout: float | None = None, req_id: int = 0) -> Any:
        raise NotImplementedError

    def _submit_spec(self, spec: TaskSpec) -> None:
        raise NotImplementedError

    def _create_actor_spec(self, spec: TaskSpec, options: ActorOptions) -> None:
        raise NotImplementedError

    def _report_release(self, ids: list[int]) -> None:
        self._post("release", ids)

    def _call_async(
        self, verb: str, args: tuple[Any, ...], on_reply: Callable[[bool, Any], None]
    ) -> None:
        """Send a request; ``on_reply(ok, value)`` runs later on an internal thread.

        The callback must only hand the reply over (to an event loop, a queue): in the
        driver it runs with the node manager's lock held.
        """
        raise NotImplementedError

    def cancel_async(self, req_id: int) -> None:
        """Give up a request made with :meth:`_call_async` (its waiter is dropped)."""
        self._post("forget", req_id)

    def next_request_id(self) -> int:
        """A fresh request id (for ``get``/``wait`` requests made with ``_call_async``)."""
        return next(self._req_ids)

    # --- functions ------------------------------------------------------------------

    def register_function(self, fn_id: bytes, data: Callable[[], bytes]) -> None:
        """Make sure the node manager has the pickled function or class ``fn_id``."""
        if fn_id not in self._registered:
            self._post("register_function", fn_id, data())
            self._registered.add(fn_id)

    # --- arguments ------------------------------------------------------------------

    def prepare_args(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str,
        describe: Callable[[Any], str],
    ) -> PreparedArgs:
        """Serialize call arguments; top-level refs become positions to resolve.

        Returns (payload, ref positions, ref ids, ids of refs nested inside values).
        """
        if not args and not kwargs:
            return _EMPTY_ARGS, (), (), (), []
        positions: list[Any] = []
        ids: list[int] = []
        keep: list[ObjectRef] = []
        for i, value in enumerate(args):
            if type(value) is ObjectRef:
                positions.append(i)
                ids.append(value.id)
        for key, value in kwargs.items():
            if type(value) is ObjectRef:
                positions.append(key)
                ids.append(value.id)
        if positions:
            args = tuple(None if type(a) is ObjectRef else a for a in args)
            kwargs = {k: (None if type(v) is ObjectRef else v) for k, v in kwargs.items()}
        try:
            ser = serialize((args, kwargs), what=f"the arguments of {what}")
        except SerializationError:
            self._raise_unpicklable(args, kwargs, what, describe)
            raise
        if ser.total_size > INLINE_THRESHOLD:
            # Large values go to the object store and travel as refs (as Ray does).
            args_list = list(args)
            taken = set(positions)  # a list lookup here made a wide fan-in quadratic
            for i, value in enumerate(args_list):
                if i in taken or value is None:
                    continue
                big = serialize(value, what=f"argument {i} of {what}")
                if big.total_size > INLINE_THRESHOLD // 4:
                    ref = self.put_serialized(big)
                    positions.append(i)
                    ids.append(ref.id)
                    args_list[i] = None
                    keep.append(ref)
            args = tuple(args_list)
            ser = serialize((args, kwargs), what=f"the arguments of {what}")
        return ser.to_bytes(), tuple(positions), tuple(ids), tuple(ser.contained), keep

    def _raise_unpicklable(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str,
        describe: Callable[[Any], str],
    ) -> None:
        for key, value in [*enumerate(args), *kwargs.items()]:
            try:
                serialize(value)
            except SerializationError as exc:
                raise SerializationError(
                    f"Cannot pass {describe(key)} of {what}: {exc.__cause__ or exc}"
                ) from exc.__cause__

    # --- tasks ----------------------------------------------------------------------

    def submit_task(
        self,
        *,
        fn_id: bytes,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        describe: Callable[[Any], str],
        num_returns: int,
        resources: ResourceSet,
        max_retries: int,
        retry_exceptions: Any,
        kind: TaskKind = TaskKind.NORMAL,
        actor_id: int = 0,
        method: str = "",
        generator: int = 0,
        max_calls: int = 0,
        strategy: Any = None,
    ) -> list[ObjectRef]:
        """Submit a task or actor call; returns one ref per return value.

        ``generator`` (``streams.STREAMING`` or ``streams.DYNAMIC``) makes it a generator
        task; ``num_returns`` is then 1 (its stream id). ``max_calls`` (0: no limit):
        how many calls of this function one worker runs before it exits.
        """
        tracker = self.tracker
        if tracker.has_pending():
            tracker.drain()
        payload, positions, arg_ids, contained, keep = self.prepare_args(
            args, kwargs, repr(name), describe
        )
        minter = self.minter
        return_ids = tuple(minter.next_block(num_returns)) if num_returns != 1 else (minter.next(),)
        spec = TaskSpec(
            task_id=minter.next(),
            kind=kind,
            name=name,
            fn_id=fn_id,
            args_payload=payload,
            ref_positions=positions,
            arg_ids=arg_ids,
            contained=contained,
            return_ids=return_ids,
            resources=resources,
            max_retries=max_retries,
            retry_exceptions=retry_exceptions,
            owner=minter.process_index,
            actor_id=actor_id,
            method=method,
            submitted_at=time.time(),
            generator=generator,
            max_calls=max_calls,
            strategy=strategy,
        )
        self._submit_spec(spec)
        del keep  # the spec pins the large arguments now
        return [ObjectRef(rid, tracker) for rid in return_ids]

    def create_actor(
        self,
        *,
        cls_id: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        describe: Callable[[Any], str],
        resources: ResourceSet,
        options: ActorOptions,
        strategy: Any = None,
    ) -> int:
        """Create an actor; returns its id (the caller wraps it in a handle)."""
        what = f"{options.class_name}.__init__"
        payload, positions, arg_ids, contained, keep = self.prepare_args(
            args, kwargs, what, describe
        )
        actor_id = self.minter.next()
        spec = TaskSpec(
            task_id=self.minter.next(),
            kind=TaskKind.ACTOR_CREATE,
            name=what,
            fn_id=cls_id,
            args_payload=payload,
            ref_positions=positions,
            arg_ids=arg_ids,
            contained=contained,
            return_ids=(),
            resources=resources,
            max_retries=0,
            retry_exceptions=False,
            owner=self.minter.process_index,
            actor_id=actor_id,
            submitted_at=time.time(),
            strategy=strategy,
        )
        self._create_actor_spec(spec, options)
        del keep  # the spec pins the large arguments now
        self.tracker.minted(actor_id)
        return actor_id

    # --- objects --------------------------------------------------------------------

    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` in the object store; returns its ref."""
        if type(value) is ObjectRef:
            raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself around.")
        if self.tracker.has_pending():
            self.tracker.drain()
        return self.put_serialized(serialize(value, what="the value passed to put()"))

    def put_serialized(self, ser: SerializedValue) -> ObjectRef:
        object_id = self.minter.next()
        kind, payload = self._store(object_id, ser)
        self._post("put", object_id, kind, payload, ser.total_size, tuple(ser.contained))
        return ObjectRef(object_id, self.tracker)

    def _store(self, object_id: int, ser: SerializedValue) -> tuple[int, Any]:
        """Inline bytes for a small value; a new shared-memory segment for a large one."""
        if ser.total_size <= INLINE_THRESHOLD:
            return _INLINE, ser.to_bytes()
        path = segment_path(self.session, object_id)
        self.mappings.adopt(object_id, create_segment(path, ser))
        return _SHM, path

    def promise(self) -> ObjectRef:
        """A ref whose value this process will provide later with :meth:`fulfill`.

        Used for results computed in the driver itself (a workflow run in a thread).
        """
        object_id = self.minter.next()
        self._post("promise", object_id)
        return ObjectRef(object_id, self.tracker)

    def fulfill(
        self, ref: ObjectRef, value: Any = None, error: BaseException | None = None
    ) -> None:
        """Provide the value (or the error to raise at get) of a :meth:`promise` ref."""
        if error is not None:
            payload = pickle.dumps(error, protocol=5)
            self._post("fulfill", ref.id, _ERROR, payload, 0, ())
            return
        ser = serialize(value, what="the promised value")
        kind, data = self._store(ref.id, ser)
        self._post("fulfill", ref.id, kind, data, ser.total_size, tuple(ser.contained))

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """Values of ``refs`` in order; raises the first stored error."""
        tracker = self.tracker
        if tracker.has_pending():
            tracker.drain()
        req_id = next(self._req_ids)
        ids = [r.id for r in refs]
        items = self._call("get", req_id, ids, timeout=timeout, req_id=req_id)
        out = []
        mappings = self.mappings
        for object_id, kind, data in items:
            try:
                out.append(load_value(mappings, object_id, kind, data))
            except FileNotFoundError:
                out.append(self._relocate(object_id, timeout))
        return out

    def _relocate(self, object_id: int, timeout: float | None) -> Any:
        """The segment we were told about is gone: ask again (restore or rebuild)."""
        for _ in range(3):
            req_id = next(self._req_ids)
            items = self._call("locate", req_id, object_id, timeout=timeout, req_id=req_id)
            _oid, kind, data = items[0]
            try:
                return load_value(self.mappings, object_id, kind, data)
            except FileNotFoundError:
                continue
        raise HeliostatError(f"object {format_id(object_id)} keeps moving; giving up")

    def wait(
        self,
        refs: Sequence[ObjectRef],
        num_returns: int,
        timeout: float | None,
        fetch_local: bool = True,
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """Ready and not ready refs; ``fetch_local``: a value made on another node of a
        cluster is ready once it has been pulled to this node (as in Ray)."""
        if self.tracker.has_pending():
            self.tracker.drain()
        req_id = next(self._req_ids)
        ids = [r.id for r in refs]
        try:
            ready_ids = self._call(
                "wait", req_id, ids, num_returns, fetch_local, timeout=timeout, req_id=req_id
            )
        except GetTimeoutError:
            # wait() is answered with what is ready now, then.
            req_id = next(self._req_ids)
            ready_ids = self._call("wait", req_id, ids, 0, fetch_local, timeout=None, req_id=req_id)
        ready_set = set(ready_ids)
        ready: list[ObjectRef] = []
        not_ready: list[ObjectRef] = []
        for ref in refs:
            if ref.id in ready_set and len(ready) < num_returns:
                ready.append(ref)
            else:
                not_ready.append(ref)
        return ready, not_ready

    def on_ready(self, ref: ObjectRef, callback: Callable[[ObjectRef], None]) -> None:
        """Call ``callback(ref)`` once ``ref`` is ready (a value or an error).

        O(1) per ref, unlike repeated ``wait`` calls over a growing list: the durable
        executor watches thousands of steps this way. The callback runs on the node
        manager's thread with its lock held: it must only hand the ref over.
        """
        raise NotImplementedError("on_ready() is available in the driver only")

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> bool:
        return bool(self._call("cancel", ref.id, force, recursive))

    def kill_actor(self, actor_id: int, no_restart: bool) -> None:
        self._call("kill_actor", actor_id, no_restart)

    def get_actor(self, name: str, namespace: str) -> tuple[int, str, dict[str, int]]:
        result: tuple[int, str, dict[str, int]] = self._call("get_actor", name, namespace)
        return result

    def list_named_actors(self, namespace: str | None) -> list[tuple[str, str]]:
        """(namespace, name) of the live named actors of ``namespace`` (None: all)."""
        found: list[tuple[str, str]] = self._call("list_named_actors", namespace)
        return [(str(ns), str(name)) for ns, name in found]

    def cluster_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._call("cluster_info")
        return info

    def mirror_lease_beacon(self, node_index: int, beacon: str, timeout: float) -> str:
        """The local path of a copy of node ``node_index``'s lease beacon ``beacon``,
        kept up to date by this node until :meth:`release_lease_beacon`
        (``engine/beacon_mirror.py``); raises ClusterError when it cannot be had."""
        path: str = self._call("mirror_beacon", node_index, beacon, timeout=timeout)
        return path

    def release_lease_beacon(self, path: str) -> None:
        """This process no longer watches the beacon copy at ``path``."""
        self._post("unmirror_beacon", path)

    def task_events(self) -> list[Any]:
        events: list[Any] = self._call("timeline")
        return events


class DriverClient(CoreClient):
    """The driver's client: requests are method calls on the in-process node manager."""

    def __init__(
        self, *, manager: NodeManager, minter: IdMinter, session: str, namespace: str
    ) -> None:
        super().__init__(minter=minter, session=session, namespace=namespace)
        self._manager = manager
        self._proc: WorkerRecord = manager.driver

    def _post(self, verb: str, *args: Any) -> None:
        self._manager.handle(self._proc, verb, args, None)

    def _report_release(self, ids: list[int]) -> None:
        self._manager.release(self._proc, ids)

    def _submit_spec(self, spec: TaskSpec) -> None:
        if spec.kind is TaskKind.NORMAL:
            self._manager.check_feasible(spec.resources)
        self._manager.submit(self._proc, spec)

    def _create_actor_spec(self, spec: TaskSpec, options: ActorOptions) -> None:
        self._manager.create_actor(self._proc, spec, options)

    def _call_async(
        self, verb: str, args: tuple[Any, ...], on_reply: Callable[[bool, Any], None]
    ) -> None:
        self._manager.handle(self._proc, verb, args, on_reply)

    def on_ready(self, ref: ObjectRef, callback: Callable[[ObjectRef], None]) -> None:
        req_id = next(self._req_ids)
        # Ready means made: a value on another node is not pulled here for this.
        self._manager.handle(
            self._proc, "wait", (req_id, [ref.id], 1, False), lambda ok, value: callback(ref)
        )

    def _call(self, verb: str, *args: Any, timeout: float | None = None, req_id: int = 0) -> Any:
        fut = Future()
        self._manager.handle(self._proc, verb, args, fut.set)
        if not fut.wait(timeout):
            if req_id:
                self._manager.handle(self._proc, "forget", (req_id,), None)
            if not fut.done():
                raise GetTimeoutError(f"{verb}() timed out after {timeout} s.")
        if not fut.ok:
            raise fut.value
        return fut.value
