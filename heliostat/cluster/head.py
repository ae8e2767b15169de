"""The head's control plane: the membership machine driven by gRPC calls and a clock.

:class:`HeadService` is the thin I/O layer around the pure
:class:`~heliostat.cluster.membership.Membership`: it stamps each call with the time,
feeds the machine under one lock, and carries out the instructions that come back:

* state changes (joined, suspect, dead, left) are logged and handed to a writer
  thread that saves them to the node table in SQL, in order, so a slow database never
  holds up a heartbeat;
* a rejected heartbeat becomes ``NOT_FOUND`` for the node (which then registers again);
* a node that died or left loses the actor names it owned
  (:class:`~heliostat.cluster.names.NameRegistry`, the cluster's named actors, also
  written to SQL by the writer thread).

A ticker thread feeds :class:`~heliostat.cluster.membership.Tick` every
:data:`TICK_INTERVAL` seconds, which is how silent nodes are found out.

:class:`HeadServer` puts the service on a gRPC server with the token interceptor
(:mod:`heliostat.cluster.auth`) and optional TLS, and stops it all in order. The same
server carries the ``Packages`` service: the code packages drivers upload and nodes
download, kept by :class:`~heliostat.cluster.package_store.PackageStore`.

Times: the machine runs on :func:`time.monotonic` (a wall clock that jumps would kill
nodes); the views and the SQL rows carry wall-clock times, converted at this edge.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass

import grpc

from heliostat.cluster import membership as ms
from heliostat.cluster.auth import TokenInterceptor
from heliostat.cluster.local import cluster_dir
from heliostat.cluster.names import NamedActor, NameRegistry
from heliostat.cluster.object_locations import ObjectLocations, ObjectPlace, StoreDelta
from heliostat.cluster.package_store import MAX_PACKAGE_BYTES, PackageStore
from heliostat.cluster.rpc import (
    ClusterInfo,
    ClusterTotals,
    HeartbeatAck,
    JobView,
    NodeView,
    RegisterAck,
    Registration,
    RpcRefusal,
    WorkflowStores,
    add_names_servicer,
    add_package_servicer,
    add_servicer,
)
from heliostat.storage.cluster_names import NameRow, NameTableStore
from heliostat.storage.cluster_nodes import NodeRow, NodeTableStore

__all__ = ["TICK_INTERVAL", "HeadServer", "HeadService", "TlsFiles"]

log = logging.getLogger("heliostat.cluster")

TICK_INTERVAL = 0.1
"""Seconds between two checks for silent nodes (adds at most this to detection)."""

_WRITE_RETRIES = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key, for the head's gRPC port."""

    cert: str
    key: str


class HeadService:
    """The head's node and job tables behind a lock; see the module docstring.

    Args:
        cluster_id: the cluster's public id.
        version: heliostat's version, reported to clients.
        store: where the node table is persisted (``None``: in memory only).
        name_store: where the actor names are persisted (``None``: in memory only).
        timing: heartbeat and silence thresholds.
        clock: monotonic seconds (injected by tests).
        wall: Unix seconds (injected by tests).
        package_dir: where uploaded code packages are kept (default
            ``$HELIOSTAT_HOME/cluster/packages``, created on the first upload).
        max_package_bytes: the largest package accepted.
        workflow_stores: where the cluster's workflows keep their state, published to
            drivers that join (``None``: nothing is published; drivers use their own).
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        version: str,
        store: NodeTableStore | None = None,
        name_store: NameTableStore | None = None,
        timing: ms.Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        package_dir: str | os.PathLike[str] | None = None,
        max_package_bytes: int = MAX_PACKAGE_BYTES,
        workflow_stores: WorkflowStores | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self._workflow_stores = workflow_stores
        self.packages = PackageStore(
            package_dir if package_dir is not None else cluster_dir() / "packages",
            max_bytes=max_package_bytes,
        )
        self.version = version
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._store = store
        self.started_at = wall()
        now = clock()
        recovered = [self._record_of(row, now) for row in (store.load() if store else [])]
        if recovered:
            live = sum(1 for n in recovered if n.state in ms.LIVE_STATES)
            log.info("recovered %d node(s) from the node table, %d alive", len(recovered), live)
        self._membership = ms.Membership(timing=timing, nodes=recovered, now=now)
        self._name_store = name_store
        self._objects = ObjectLocations()  # where objects are stored (eventual)
        self._names = NameRegistry(_named(row) for row in (name_store.load() if name_store else []))
        stale = self._names.keep_only({n.node_id for n in recovered if n.state in ms.LIVE_STATES})
        if len(self._names) or stale:
            log.info(
                "recovered %d actor name(s); forgot %d whose owner is gone",
                len(self._names),
                len(stale),
            )
        self._writes: queue.Queue[Callable[[], None] | None] = queue.Queue()
        if stale and name_store is not None:
            self._writes.put(_deleting(name_store, stale))
        self._jobs: dict[str, JobView] = {}
        self._job_seq = itertools.count(1)
        self._writer = threading.Thread(target=self._write_loop, name="hs-head-writer", daemon=True)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="hs-head-ticker", daemon=True)
        self._writer.start()
        self._ticker.start()

    @property
    def timing(self) -> ms.Timing:
        return self._membership.timing

    # --- clock conversion at the edge

    def _to_wall(self, at: float | None, now: float, wall_now: float) -> float | None:
        return None if at is None else wall_now - (now - at)

    def _record_of(self, row: NodeRow, now: float) -> ms.NodeRecord:
        wall_now = self._wall()

        def clock_of(when: dt.datetime | None) -> float | None:
            return None if when is None else now - (wall_now - when.timestamp())

        registered = clock_of(row.registered_at)
        assert registered is not None
        return ms.NodeRecord(
            node_id=row.node_id,
            address=row.address,
            hostname=row.hostname,
            pid=row.pid,
            is_head=row.is_head,
            state=row.state,
            incarnation=row.incarnation,
            total=dict(row.resources),
            available={},
            registered_at=registered,
            last_heartbeat_at=clock_of(row.last_heartbeat_at),
            last_seen=now,
        )

    def _row_of(self, node: ms.NodeRecord, now: float, wall_now: float) -> NodeRow:
        def stamp(at: float | None) -> dt.datetime | None:
            wall_at = self._to_wall(at, now, wall_now)
            return None if wall_at is None else dt.datetime.fromtimestamp(wall_at, dt.UTC)

        registered = stamp(node.registered_at)
        assert registered is not None
        return NodeRow(
            node_id=node.node_id,
            address=node.address,
            hostname=node.hostname,
            pid=node.pid,
            is_head=node.is_head,
            state=node.state,
            incarnation=node.incarnation,
            resources=dict(node.total),
            registered_at=registered,
            last_heartbeat_at=stamp(node.last_heartbeat_at),
            updated_at=dt.datetime.fromtimestamp(wall_now, dt.UTC),
        )

    # --- feeding the machine

    def _handle(self, event: ms.Event) -> list[ms.Instruction]:
        with self._lock:
            instructions = self._membership.handle(event)
            now, wall_now = event.now, self._wall()
            rows = [
                self._row_of(i.node, now, wall_now)
                for i in instructions
                if not isinstance(
                    i, ms.HeartbeatAccepted | ms.HeartbeatRejected | ms.RegistrationRefused
                )
            ]
            if rows and self._store is not None:
                # Under the lock: rows reach SQL in machine order.
                self._writes.put(functools.partial(self._store.save, rows))
            departed = [
                i.node.node_id for i in instructions if isinstance(i, ms.NodeDead | ms.NodeLeft)
            ]
            for node_id in departed:
                self._objects.node_gone(node_id)
            gone = [name for node_id in departed for name in self._names.node_gone(node_id)]
            if gone:
                log.info(
                    "forgot %d actor name(s) of a node that is gone: %s",
                    len(gone),
                    ", ".join(f"{e.namespace}/{e.name}" for e in gone[:10]),
                )
                if self._name_store is not None:
                    self._writes.put(_deleting(self._name_store, gone))
        for instruction in instructions:
            _log_instruction(instruction)
        return instructions

    def _tick_loop(self) -> None:
        seq = itertools.count(1)
        while not self._stop.wait(TICK_INTERVAL):
            try:
                self._handle(ms.Tick(now=self._clock(), cause_id=f"tick-{next(seq)}"))
            except Exception:  # a bug; keep ticking so liveness still works
                log.exception("the head's membership tick failed")

    def _write_loop(self) -> None:
        while True:
            write = self._writes.get()
            if write is None:
                return
            for attempt in range(_WRITE_RETRIES):
                try:
                    write()
                    break
                except Exception as exc:
                    if attempt == _WRITE_RETRIES - 1:
                        log.error(
                            "could not save a change of the node table or the actor names: "
                            "%s; a restarted head will not know of it",
                            exc,
                        )
                    else:
                        time.sleep(0.2 * 2**attempt)  # back off: the database may be restarting

    # --- HeadHandler

    def register_node(self, registration: Registration, *, cause_id: str) -> RegisterAck:
        instructions = self._handle(
            ms.NodeRegistered(
                node_id=registration.node_id,
                address=registration.address,
                hostname=registration.hostname,
                pid=registration.pid,
                total=registration.total,
                available=registration.available,
                is_head=registration.is_head,
                now=self._clock(),
                cause_id=cause_id,
            )
        )
        for instruction in instructions:
            if isinstance(instruction, ms.RegistrationRefused):
                holder = instruction.holder
                raise RpcRefusal(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"node id {registration.node_id} is held by a live node "
                    f"({holder.address}, pid {holder.pid} on {holder.hostname}); pick another",
                )
        alive = next(i for i in instructions if isinstance(i, ms.NodeAlive))
        timing = self.timing
        return RegisterAck(
            cluster_id=self.cluster_id,
            incarnation=alive.node.incarnation,
            heartbeat_interval=timing.heartbeat_interval,
            dead_after=timing.dead_after,
        )

    def heartbeat(
        self,
        node_id: str,
        available: Mapping[str, float],
        *,
        cause_id: str,
        incarnation: int = 0,
        objects: StoreDelta | None = None,
    ) -> HeartbeatAck:
        event = ms.HeartbeatReceived(
            node_id=node_id,
            available=available,
            now=self._clock(),
            incarnation=incarnation,
            cause_id=cause_id,
        )
        for instruction in self._handle(event):
            if isinstance(instruction, ms.HeartbeatRejected):
                raise RpcRefusal(
                    grpc.StatusCode.NOT_FOUND,
                    f"node {node_id}: {instruction.reason}; register again",
                )
            if isinstance(instruction, ms.HeartbeatAccepted):
                with self._lock:  # a rejected heartbeat's report is not taken
                    complete = self._objects.apply(node_id, objects or StoreDelta(added={}))
                return HeartbeatAck(
                    incarnation=instruction.incarnation,
                    objects_wanted=objects is not None and not complete,
                )
        raise AssertionError("a heartbeat produced no answer")  # pragma: no cover

    def deregister_node(self, node_id: str, *, cause_id: str) -> None:
        self._handle(ms.NodeDeregistered(node_id=node_id, now=self._clock(), cause_id=cause_id))

    def list_nodes(self) -> list[NodeView]:
        with self._lock:
            now, wall_now = self._clock(), self._wall()
            return [
                _view(n, now, wall_now, self._to_wall, self._objects.node_summary(n.node_id))
                for n in self._membership.nodes()
            ]

    def locate_objects(self, object_ids: list[int], limit: int) -> tuple[list[ObjectPlace], int]:
        with self._lock:
            if object_ids:
                return self._objects.locate(object_ids), len(self._objects)
            return self._objects.listing(limit or 1000)

    def cluster_resources(self) -> ClusterTotals:
        with self._lock:
            res = self._membership.resources()
        return ClusterTotals(total=res.total, available=res.available)

    def cluster_info(self) -> ClusterInfo:
        with self._lock:
            alive = self._membership.alive_count()
        return ClusterInfo(
            cluster_id=self.cluster_id,
            version=self.version,
            started_at=self.started_at,
            nodes_alive=alive,
        )

    def workflow_stores(self) -> WorkflowStores | None:
        return self._workflow_stores

    def register_job(self, entrypoint: str, hostname: str, pid: int) -> str:
        with self._lock:
            job_id = f"{next(self._job_seq):04d}-{secrets.token_hex(3)}"
            self._jobs[job_id] = JobView(
                job_id=job_id,
                entrypoint=entrypoint,
                hostname=hostname,
                pid=pid,
                started_at=self._wall(),
                finished_at=None,
            )
        log.info("job %s registered: %s (pid %d on %s)", job_id, entrypoint, pid, hostname)
        return job_id

    def finish_job(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise RpcRefusal(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
            if job.finished_at is None:
                self._jobs[job_id] = JobView(
                    job_id=job.job_id,
                    entrypoint=job.entrypoint,
                    hostname=job.hostname,
                    pid=job.pid,
                    started_at=job.started_at,
                    finished_at=self._wall(),
                )

    def list_jobs(self) -> list[JobView]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at)

    # --- NameHandler

    def claim_name(self, entry: NamedActor) -> NamedActor | None:
        with self._lock:
            holder = self._names.claim(entry)
            if holder is None and self._name_store is not None:
                self._writes.put(functools.partial(self._name_store.put, _name_row(entry)))
        if holder is None:
            log.info(
                "actor name %s/%s -> %x, owned by node %s",
                entry.namespace,
                entry.name,
                entry.actor_id,
                entry.owner,
            )
        return holder

    def lookup_name(self, namespace: str, name: str) -> NamedActor | None:
        with self._lock:
            return self._names.lookup(namespace, name)

    def release_name(self, namespace: str, name: str, actor_id: int) -> bool:
        with self._lock:
            gone = self._names.release(namespace, name, actor_id)
            if gone is not None and self._name_store is not None:
                self._writes.put(_deleting(self._name_store, [gone]))
        if gone is not None:
            log.info("actor name %s/%s released", namespace, name)
        return gone is not None

    def list_names(self, namespace: str | None) -> list[NamedActor]:
        with self._lock:
            return self._names.list(namespace)

    def close(self) -> None:
        """Stop ticking and write what is queued (waits for the database)."""
        self._stop.set()
        self._ticker.join(timeout=5)
        self._writes.put(None)
        self._writer.join(timeout=30)


def _named(row: NameRow) -> NamedActor:
    return NamedActor(
        namespace=row.namespace,
        name=row.name,
        actor_id=row.actor_id,
        owner=row.owner_node_id,
        class_name=row.class_name,
        methods=dict(row.methods),
        detached=row.detached,
    )


def _name_row(entry: NamedActor) -> NameRow:
    return NameRow(
        namespace=entry.namespace,
        name=entry.name,
        actor_id=entry.actor_id,
        owner_node_id=entry.owner,
        class_name=entry.class_name,
        methods=dict(entry.methods),
        detached=entry.detached,
    )


def _deleting(store: NameTableStore, gone: list[NamedActor]) -> Callable[[], None]:
    keys = [e.key for e in gone]
    return lambda: store.delete(keys)


def _view(
    node: ms.NodeRecord,
    now: float,
    wall_now: float,
    to_wall: Callable[[float | None, float, float], float | None],
    objects: tuple[int, int] = (0, 0),
) -> NodeView:
    registered = to_wall(node.registered_at, now, wall_now)
    assert registered is not None
    return NodeView(
        node_id=node.node_id,
        address=node.address,
        hostname=node.hostname,
        pid=node.pid,
        state=node.state,
        total=dict(node.total),
        available=dict(node.available),
        incarnation=node.incarnation,
        registered_at=registered,
        last_heartbeat_at=to_wall(node.last_heartbeat_at, now, wall_now),
        silent_for=node.silent_for(now),
        is_head=node.is_head,
        objects=objects[0],
        object_bytes=objects[1],
    )


def _log_instruction(instruction: ms.Instruction) -> None:
    if isinstance(instruction, ms.NodeAlive):
        node = instruction.node
        how = "rejoined" if instruction.rejoined else "is alive"
        log.info(
            "node %s %s (%s, pid %d, incarnation %d, resources %s) [%s]",
            node.node_id,
            how,
            node.address,
            node.pid,
            node.incarnation,
            dict(node.total),
            instruction.cause_id,
        )
    elif isinstance(instruction, ms.NodeSuspect):
        log.info(
            "node %s is suspect: silent for %.2f s",
            instruction.node.node_id,
            instruction.silent_for,
        )
    elif isinstance(instruction, ms.NodeDead):
        log.warning(
            "node %s (%s) is dead: silent for %.2f s",
            instruction.node.node_id,
            instruction.node.address,
            instruction.silent_for,
        )
    elif isinstance(instruction, ms.NodeLeft):
        log.info("node %s left the cluster", instruction.node.node_id)
    elif isinstance(instruction, ms.RegistrationRefused):
        holder = instruction.holder
        log.warning(
            "refused a registration as node %s, held by a live node (%s, pid %d on %s) [%s]",
            instruction.node_id,
            holder.address,
            holder.pid,
            holder.hostname,
            instruction.cause_id,
        )
    elif isinstance(instruction, ms.HeartbeatRejected):
        log.info(
            "heartbeat of node %s refused (%s) [%s]",
            instruction.node_id,
            instruction.reason,
            instruction.cause_id,
        )


class HeadServer:
    """The head's gRPC server: :class:`HeadService` behind the token interceptor.

    Args:
        service: the control plane to serve.
        token: the cluster token every call must carry.
        host: the address to bind (default loopback only).
        port: the port (0: a free one; :attr:`port` says which).
        tls: serve TLS with this certificate and key.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        service: HeadService,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsFiles | None = None,
        max_workers: int = 16,
    ) -> None:
        self.service = service
        self.host = host
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="hs-head-rpc"),
            interceptors=[TokenInterceptor(token)],
            options=[("grpc.so_reuseport", 0)],
        )
        add_servicer(self._server, service)
        add_package_servicer(self._server, service.packages)
        add_names_servicer(self._server, service)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if tls is not None:
            with open(tls.key, "rb") as fh:
                key = fh.read()
            with open(tls.cert, "rb") as fh:
                cert = fh.read()
            credentials = grpc.ssl_server_credentials([(key, cert)])
            bound = self._server.add_secure_port(target, credentials)
        else:
            bound = self._server.add_insecure_port(target)
        if not bound:
            raise OSError(f"cannot listen on {target}")
        self.port = bound
        self.tls = tls is not None
        self._server.start()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving (calls in flight get ``grace`` seconds), then close the service."""
        with contextlib.suppress(Exception):
            self._server.stop(grace).wait(grace + 1)
        self.service.close()
