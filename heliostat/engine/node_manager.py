"""The node manager of one node: a lock, a lifecycle and a request surface.

It runs inside the driver process, on its own I/O thread, so a driver's submit or get
is a method call under a lock rather than a message (DESIGN §8). Workers talk to it
over Unix sockets (``protocol.py``).

The manager is three layers, so that deciding and doing are apart (the shape of dask's
``worker_state_machine.py``), and a network transport can later replace the doing:

- ``node_state.py`` and the parts it wires (``dispatch.py``, ``task_table.py``,
  ``object_directory.py``, ``actor_directory.py``, ``worker_registry.py``) decide. They
  take requests and typed events and queue typed instructions
  (``node_instructions.py``); no socket, signal or process in them.
- ``node_loop.py`` does: the selector, batching, the wire format, ``os.kill``, spawns.
- This module holds them together: the lock every piece of state lives under, start
  and stop, and :meth:`NodeManager.handle`, the one entry for a request *verb* with
  arguments and a ``reply(ok, value)`` callback. The driver calls it directly; a
  worker's ``REQUEST`` message becomes the same call with a reply that queues a
  ``REPLY``. So the request surface is one verb table, whoever calls.

Errors in a request: a ``HeliostatError`` a verb raises is the caller's answer (an
infeasible request, a lost object). Anything else escaping a verb (``KeyError``,
``TypeError``...) is a bug in heliostat: it is logged with its traceback and answered as
``HeliostatInternalError``, never passed off as the caller's own error.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from heliostat.engine.beacon_mirror import BeaconMirror
from heliostat.engine.events import TaskEvent
from heliostat.engine.ids import format_id
from heliostat.engine.node_loop import NodeLoop
from heliostat.engine.node_state import NodeState
from heliostat.engine.object_directory import Reply
from heliostat.engine.object_table import ObjKind
from heliostat.engine.records import ActorOptions, TaskSpec, WorkerRecord
from heliostat.engine.shm import SHM_DIR, SegmentPool, session_glob, unlink_quietly
from heliostat.engine.worker_pool import ForkServerClient
from heliostat.exceptions import ClusterError, HeliostatError, HeliostatInternalError
from heliostat.scheduler import ResourceSet

__all__ = ["NodeConfig", "NodeManager", "Reply"]

log = logging.getLogger("heliostat.engine")

_HEAD_ANSWER_TIMEOUT = 60.0  # seconds a named actor's creation waits for the head
_INTROSPECT_FINISHED = 1000  # finished tasks listed by ``heliostat list tasks``


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node manager needs to start."""

    session: str
    session_dir: str
    socket_path: str
    spill_dir: str
    num_cpus: float
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int
    max_workers: int
    node_index: int = 0
    idle_worker_timeout_s: float = 10.0
    # Tasks sent ahead to a busy worker (same resource shape), so it never waits a
    # round trip between two short tasks.
    pipeline_depth: int = 32
    # How long a worker may take to answer a REVOKE before the tasks still queued on
    # it are taken back and run elsewhere (it may be stopped; see dispatch.py).
    revoke_timeout_s: float = 0.2
    env: dict[str, str] = field(default_factory=dict)


class NodeManager:
    """Scheduler, object directory, actor directory and worker pool of one node.

    Every piece of state is in :attr:`state` and is touched only under ``_lock``.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        driver_unmap: Callable[[list[int]], None],
        driver_drain: Callable[[], None],
        log_sink: Callable[[str, str, int, str], None],
    ) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.state = NodeState(
            session=config.session,
            node_index=config.node_index,
            num_cpus=config.num_cpus,
            resources=config.resources,
            object_store_memory=config.object_store_memory,
            spill_dir=config.spill_dir,
            max_workers=config.max_workers,
            driver_pid=os.getpid(),
            idle_worker_timeout_s=config.idle_worker_timeout_s,
            pipeline_depth=config.pipeline_depth,
            revoke_timeout_s=config.revoke_timeout_s,
        )
        self.driver: WorkerRecord = self.state.driver
        self._verbs = self.state.verbs
        self._verbs["cluster_info"] = self._v_cluster_info
        self._verbs["mirror_beacon"] = self._v_mirror_beacon
        self._verbs["unmirror_beacon"] = self._v_unmirror_beacon
        # Set by the cluster's NodeLink while this node is in a cluster.
        self.beacon_mirror: BeaconMirror | None = None
        self._out = self.state.out
        self._pool = ForkServerClient(
            {
                "socket_path": config.socket_path,
                "session": config.session,
                "node_index": config.node_index,
                "shm_glob": os.path.join(str(SHM_DIR), session_glob(config.session)),
                "cleanup_dirs": [config.session_dir],
            },
            env=config.env,
        )
        self.loop = NodeLoop(
            self.state,
            self._lock,
            socket_path=config.socket_path,
            pool=self._pool,
            handle_request=self._handle_locked,
            introspect=self.introspect_locked,
            driver_unmap=driver_unmap,
            driver_drain=driver_drain,
            log_sink=log_sink,
            attach_facts=self._attach_facts,
        )
        # A file in this node's shared-memory directory that an attaching driver must
        # read back (``engine/attach.py``): proof that it maps the same /dev/shm.
        self.shm_probe = os.path.join(str(SHM_DIR), f"heliostat-{config.session}-probe")
        self.shm_nonce = secrets.token_hex(16)
        self._stopping = False
        self.started_at = time.time()
        # Called (under the lock; must not block) when a driver attaches: a cluster
        # node's link reads the head's node table at once (``engine/node_link.py``).
        self.on_driver_attached: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle --

    def start(self) -> None:
        """Listen, start the fork server and the first workers; does not wait for them."""
        fd = os.open(self.shm_probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, self.shm_nonce.encode())
        finally:
            os.close(fd)
        self.loop.listen()
        with self._lock:
            for _ in range(max(1, int(self.config.num_cpus))):
                self.state.registry.spawn(None)
            self.loop.flush()
        self.loop.start_thread()

    def stop(self) -> None:
        """Stop every worker and the fork server; remove the session's files."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self.state.stop()
            self.loop.flush()
        self.loop.stop()
        unlink_quietly(self.shm_probe)

    def _attach_facts(self, proc: WorkerRecord) -> dict[str, Any]:
        """What an attaching driver is told (called under the lock)."""
        if self.on_driver_attached is not None:
            self.on_driver_attached()
        config = self.config
        return {
            "index": proc.index,
            "node_index": config.node_index,
            "session": config.session,
            "session_dir": config.session_dir,
            "probe": self.shm_probe,
            "nonce": self.shm_nonce,
        }

    @property
    def pool_pid(self) -> int:
        return self._pool.pid

    # ------------------------------------------------------------------ requests --

    def handle(
        self, proc: WorkerRecord, verb: str, args: tuple[Any, ...], reply: Reply | None
    ) -> None:
        """Run one request verb for ``proc``; ``reply`` gets ``(ok, value)`` (maybe later)."""
        with self._lock:
            try:
                self._handle_locked(proc, verb, args, reply)
            finally:
                if self._out.pending:
                    self.loop.flush()

    def _handle_locked(
        self, proc: WorkerRecord, verb: str, args: tuple[Any, ...], reply: Reply | None
    ) -> None:
        handler = self._verbs.get(verb)
        if handler is None:
            error = HeliostatInternalError(f"unknown request {verb!r} from {proc.label()}")
            if reply is None:
                raise error
            reply(False, error)
            return
        try:
            handler(proc, reply, *args)
        except HeliostatError as exc:  # a verb's answer to its caller
            if reply is None:
                raise
            reply(False, exc)
        except Exception as exc:  # a bug here, not the caller's: say so
            log.exception(
                "heliostat internal error in request %r from %s; please report it",
                verb,
                proc.label(),
            )
            error = HeliostatInternalError(
                f"heliostat failed handling the request {verb!r} "
                f"({type(exc).__name__}: {exc}); this is a bug in heliostat, please report it."
            )
            if reply is None:
                raise error from exc
            reply(False, error)

    def submit(self, proc: WorkerRecord, spec: TaskSpec) -> None:
        """Submit a normal task or actor call (the driver's fast path)."""
        with self._lock:
            try:
                self.state.submit(proc, spec)
            finally:
                if self._out.pending:
                    self.loop.flush()

    def release(self, proc: WorkerRecord, ids: list[int]) -> None:
        self.handle(proc, "release", (ids,), None)

    def create_actor(self, proc: WorkerRecord, spec: TaskSpec, options: ActorOptions) -> None:
        """Create an actor (the driver's path); raises why it cannot be.

        In a cluster a named actor's name is claimed at the head first: this waits for
        that answer (the head's calls have their own deadline).
        """
        answer: list[Any] = []
        done = threading.Event()

        def reply(ok: bool, value: Any) -> None:
            answer[:] = [ok, value]
            done.set()

        with self._lock:
            try:
                self.state.create_actor(proc, spec, options, reply)
            finally:
                if self._out.pending:
                    self.loop.flush()
        if not done.wait(_HEAD_ANSWER_TIMEOUT):
            raise ClusterError(
                f"creating actor {options.class_name} ({options.name!r}): the cluster's head "
                f"did not answer within {_HEAD_ANSWER_TIMEOUT:.0f} s"
            )
        if not answer[0]:
            raise answer[1]

    def mark_driver_node(self) -> None:
        """This node is a driver's, joined to a cluster: it leaves with its driver, so
        the detached actors it creates are handed over to the nodes that host them."""
        with self._lock:
            if self.state.peers is not None:
                self.state.peers.driver_node = True

    # ------------------------------------------------------------------ the cluster --

    def attach_peers(self, sink: Callable[[Any], None] | None) -> None:
        """Join a cluster (``sink`` sends effects for other nodes) or leave it (None)."""
        with self._lock:
            if sink is not None and self.state.peers is None:
                self.state.join_cluster(self.config.node_index)
            self.loop.peer_sink = sink
            if sink is None and self.state.peers is not None:
                self.state.peers.leave()
                self.loop.flush()

    def set_code(self, uris: tuple[str, ...], env: tuple[tuple[str, str], ...] = ()) -> None:
        """This node's job's runtime_env, which tasks forwarded from here carry: its
        code packages (URIs at the head) and its env_vars."""
        with self._lock:
            if self.state.peers is not None:
                self.state.peers.code = uris
                self.state.peers.env = env

    def peer_event(self, event: Callable[[NodeState], None]) -> None:
        """Apply something another node said or did (``event(state)``), then flush."""
        with self._lock:
            if self.state.peers is None or self._stopping:
                return
            try:
                event(self.state)
            except Exception:
                log.exception("heliostat internal error handling a message from another node")
            finally:
                if self._out.pending:
                    self.loop.flush()

    def open_object(self, object_id: int, opener: Callable[[str], Any]) -> Any:
        """``opener(path)`` of the file holding an object's bytes here (its segment or
        spill file), under the lock so that it is not freed or moved meanwhile; None
        if the object is not here."""
        with self._lock:
            entry = self.state.objects.entries.get(object_id)
            if entry is None or entry.kind not in (ObjKind.SHM, ObjKind.SPILLED):
                return None
            try:
                return opener(entry.path)
            except FileNotFoundError:
                return None

    def use_segment_pool(self, pool: SegmentPool | None) -> None:
        """Keep freed segments in ``pool`` for pulls to reuse (None: unlink them)."""
        with self._lock:
            self.state.objects.table.pool = pool

    def stored_objects(self) -> dict[int, int]:
        """The objects this node's store holds (shared memory or spilled): id -> bytes."""
        with self._lock:
            return self.state.objects.table.stored()

    def check_feasible(self, resources: ResourceSet) -> None:
        """Raise InfeasibleResourcesError if no node could ever run this request."""
        self.state.dispatch.check_feasible(resources)

    def expire_revokes(self, now: float) -> None:
        """Take back tasks from workers that did not answer a REVOKE by ``now``."""
        with self._lock:
            self.loop.expire_revokes(now)
            self.loop.flush()

    # ------------------------------------------------------------ lease beacons --

    def _v_mirror_beacon(self, proc: WorkerRecord, reply: Reply, index: int, beacon: str) -> None:
        """A worker runs a step of node ``index``'s driver: a local copy of its lease
        beacon, answered once it holds a deadline (``engine/beacon_mirror.py``)."""
        mirror = self.beacon_mirror
        if mirror is None:
            raise ClusterError(
                f"node {format_id(self.config.node_index)} is not in a cluster: it cannot "
                f"follow the workflow lease of node {format_id(index)}'s driver"
            )

        def answer(ok: bool, value: Any) -> None:  # on the mirror's thread
            with self._lock:
                if self._stopping:
                    return
                reply(ok, value)
                if self._out.pending:
                    self.loop.flush()

        try:
            mirror.watch(proc.pid, index, beacon, answer)
        except ValueError as exc:
            raise ClusterError(str(exc)) from None

    def _v_unmirror_beacon(self, proc: WorkerRecord, reply: Reply | None, path: str) -> None:
        if self.beacon_mirror is not None:
            self.beacon_mirror.unwatch(proc.pid, path)
        if reply is not None:
            reply(True, None)

    # ------------------------------------------------------------------ reading --

    def _v_cluster_info(self, proc: WorkerRecord, reply: Reply) -> None:
        reply(True, self.cluster_info_locked())

    def cluster_info(self) -> dict[str, Any]:
        with self._lock:
            return self.cluster_info_locked()

    def cluster_info_locked(self) -> dict[str, Any]:
        state = self.state
        workers = state.registry.workers
        return {
            "node_id": format_id(self.config.node_index),
            "node_index": self.config.node_index,
            "address": "127.0.0.1",
            "session": self.config.session,
            "total": state.node.total.to_dict(),
            "available": state.node.available.to_dict(),
            "workers": state.registry.summary(),
            "actors": state.actors.summary(),
            "object_store": state.objects.table.stats(),
            "tasks_pending": sum(len(q) for q in state.dispatch.ready.values()),
            "tasks_running": sum(1 for w in workers.values() if w.task is not None),
            "started_at": self.started_at,
            # Live peer nodes of a cluster (0 on a node of its own).
            "cluster_peers": len(state.peers.nodes) if state.peers is not None else 0,
            # Objects this node copied from its peers since it started.
            "objects_pulled": state.peers.pull_count if state.peers is not None else 0,
        }

    def introspect_locked(self, what: str) -> Any:
        """A JSON-able snapshot for tools: ``status``, ``tasks``, ``actors`` or ``objects``."""
        state = self.state
        if what == "status":
            info = self.cluster_info_locked()
            counts: dict[str, int] = {}
            for spec in state.tasks.tasks.values():
                counts[str(spec.state)] = counts.get(str(spec.state), 0) + 1
            counts["FINISHED"] = len(state.tasks.events)  # the recent ones the ring keeps
            info.pop("actors")
            info.update(pid=os.getpid(), tasks=counts, actors=len(state.actors.actors))
            return info
        if what == "tasks":
            live = [
                {
                    "task_id": format_id(spec.task_id),
                    "name": spec.name,
                    "state": str(spec.state),
                    "attempt": spec.attempts,
                    "worker_pid": spec.worker.pid if spec.worker is not None else None,
                    "submitted_at": spec.submitted_at,
                    "started_at": spec.started_at or None,
                    "finished_at": None,
                }
                for spec in state.tasks.tasks.values()
            ]
            done = [
                {
                    "task_id": format_id(ev.task_id),
                    "name": ev.name,
                    "state": "FINISHED" if ev.outcome == "ok" else ev.outcome.upper(),
                    "attempt": ev.attempt,
                    "worker_pid": ev.worker_pid,
                    "submitted_at": ev.submitted,
                    "started_at": ev.started,
                    "finished_at": ev.finished,
                }
                for ev in state.tasks.events.events()[-_INTROSPECT_FINISHED:]
            ]
            return done + live
        if what == "actors":
            return state.actors.summary()
        if what == "objects":
            return state.live_objects()
        raise ValueError(f"unknown snapshot {what!r}; known: status, tasks, actors, objects")

    def task_events(self) -> list[TaskEvent]:
        with self._lock:
            return self.state.tasks.events.events()

    def object_stats(self) -> dict[str, int]:
        with self._lock:
            return self.state.objects.table.stats()

    def spill_object(self, object_id: int) -> bool:
        """Spill one object now (tests and the CLI use this to exercise restore)."""
        with self._lock:
            try:
                entry = self.state.objects.entries.get(object_id)
                if entry is None or entry.kind is not ObjKind.SHM:
                    return False
                self.state.objects.table.spill(entry)
                return True
            finally:
                if self._out.pending:
                    self.loop.flush()

    def object_location(self, object_id: int) -> tuple[str, str]:
        """(kind, path) of an object, for tests and diagnostics."""
        with self._lock:
            entry = self.state.objects.entries.get(object_id)
            if entry is None:
                return ("MISSING", "")
            return (entry.kind.name, entry.path)
