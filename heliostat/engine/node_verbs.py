"""The requests a node manager answers: the verbs half of ``NodeState`` (pure).

Every process that talks to its node (a driver, a worker, an attached driver) sends
requests: a verb, its arguments and, when it waits for an answer, a ``reply``
callback. ``NodeState.verbs`` maps each verb to its ``_v_<verb>`` method here, which
decides on it against the node's parts (objects, tasks, actors, dispatch, peers) under
the node lock, and answers through ``reply`` (at once, or later: a ``get`` waits for
its values).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from heliostat.engine.actor_directory import no_such_actor_error
from heliostat.engine.node_instructions import InstallCode, Kill
from heliostat.engine.object_directory import Reply
from heliostat.engine.records import (
    PEER_INDEX_BASE,
    ActorOptions,
    ActorState,
    TaskKind,
    TaskSpec,
    TaskState,
    WorkerRecord,
    WorkerState,
    spec_from_wire,
)
from heliostat.engine.task_table import DONE_STATES

if TYPE_CHECKING:
    from heliostat.engine.actor_directory import ActorDirectory
    from heliostat.engine.dispatch import Dispatch
    from heliostat.engine.node_instructions import Outbox
    from heliostat.engine.object_directory import ObjectDirectory
    from heliostat.engine.peers import Peers
    from heliostat.engine.task_table import TaskTable

__all__ = ["NodeVerbs"]


class NodeVerbs:
    """The ``_v_*`` request handlers, mixed into ``NodeState`` (whose parts they use)."""

    if TYPE_CHECKING:  # provided by NodeState
        out: Outbox
        objects: ObjectDirectory
        tasks: TaskTable
        actors: ActorDirectory
        dispatch: Dispatch
        peers: Peers | None

        def create_actor(
            self,
            proc: WorkerRecord,
            spec: TaskSpec,
            options: ActorOptions,
            reply: Reply | None = None,
        ) -> None: ...

    # ----------------------------------------------------- verbs (requests) --

    def _v_register_function(
        self, proc: WorkerRecord, reply: Reply | None, fn_id: bytes, data: bytes
    ) -> None:
        self.tasks.functions.setdefault(fn_id, data)

    def _v_set_job(
        self,
        proc: WorkerRecord,
        reply: Reply,
        uris: tuple[str, ...],
        env_vars: tuple[tuple[str, str], ...],
    ) -> None:
        """An attached driver's runtime_env: its code packages (URIs at the head) and
        env_vars. The packages are installed on this node first (off the node lock);
        then every task and actor the driver submits carries them (``_inherit_job``),
        here as a forwarded job's tasks do, and wherever they are forwarded."""
        if self.peers is None or proc.state is not WorkerState.DRIVER:
            reply(False, ValueError("set_job is for a driver attached to a cluster node"))
            return
        uris = tuple(str(u) for u in uris)
        env = tuple((str(k), str(v)) for k, v in env_vars)

        def then(ok: bool, installed: Any) -> None:
            if not ok:
                reply(False, installed)
                return
            paths, working_dir = installed
            proc.job = (uris, env)
            proc.job_code = (paths, working_dir, env)
            reply(True, None)

        if not uris:
            then(True, ((), ""))
            return
        self.actors.ask_head(lambda req: InstallCode(req=req, uris=uris), then)

    def _v_submit(self, proc: WorkerRecord, reply: Reply | None, fields: tuple[Any, ...]) -> None:
        spec = spec_from_wire(fields, proc.index)
        self.tasks.note_child(proc, spec)
        _inherit_job(proc, spec)
        self.dispatch.submit(proc, spec)

    def _v_put(
        self,
        proc: WorkerRecord,
        reply: Reply | None,
        object_id: int,
        kind: int,
        payload: Any,
        size: int,
        contained: tuple[int, ...],
    ) -> None:
        self.objects.table.create(object_id, proc, None)
        self.objects.fulfill(object_id, kind, payload, size, contained)

    def _v_promise(self, proc: WorkerRecord, reply: Reply | None, object_id: int) -> None:
        self.objects.table.create(object_id, proc, None)

    def _v_fulfill(
        self,
        proc: WorkerRecord,
        reply: Reply | None,
        object_id: int,
        kind: int,
        payload: Any,
        size: int,
        contained: tuple[int, ...],
    ) -> None:
        self.objects.fulfill(object_id, kind, payload, size, contained)

    def _v_release(self, proc: WorkerRecord, reply: Reply | None, ids: list[int]) -> None:
        objects = self.objects
        table = objects.table
        actors = self.actors
        known = actors.actors
        borrowed = actors.borrowed
        for ident in ids:
            if ident in known or ident in borrowed:
                actors.release(proc, ident)
            else:
                table.release(proc, ident)
        if objects.streams:
            objects.streams_released(ids)

    def _v_get(self, proc: WorkerRecord, reply: Reply, req_id: int, ids: list[int]) -> None:
        self.objects.await_ids(proc, req_id, ids, len(set(ids)), reply, True)

    def _v_wait(
        self,
        proc: WorkerRecord,
        reply: Reply,
        req_id: int,
        ids: list[int],
        num_returns: int,
        fetch_local: bool = True,
    ) -> None:
        self.objects.await_ids(proc, req_id, ids, num_returns, reply, False, fetch_local)

    def _v_forget(self, proc: WorkerRecord, reply: Reply | None, req_id: int) -> None:
        self.objects.forget(proc, req_id)

    def _v_locate(self, proc: WorkerRecord, reply: Reply, req_id: int, object_id: int) -> None:
        """A reader could not open a segment we gave it: find or rebuild the object."""
        self.objects.locate(object_id)
        self.objects.await_ids(proc, req_id, [object_id], 1, reply, True)

    def _v_returned(
        self, proc: WorkerRecord, reply: Reply | None, task_ids: list[int], revoke_id: int
    ) -> None:
        self.dispatch.returned(proc, task_ids, revoke_id)

    def _v_claim(self, proc: WorkerRecord, reply: Reply, task_id: int) -> None:
        reply(True, self.dispatch.revokes.claim(proc, task_id))

    def _v_cancel(
        self, proc: WorkerRecord, reply: Reply, object_id: int, force: bool, recursive: bool = True
    ) -> None:
        entry = self.objects.entries.get(object_id)
        spec = entry.lineage if entry is not None else None
        if spec is None or spec.state in DONE_STATES:
            reply(True, False)
            return
        if spec.kind is TaskKind.ACTOR_CALL and force:
            reply(False, ValueError("force=True is not supported for actor tasks; use kill()"))
            return
        # Descendants are collected before the task is cancelled (that forgets them).
        descendants = self.tasks.descendants(spec) if recursive else []
        cancelled = self._cancel(spec, force)
        for child in descendants:
            if child.state not in DONE_STATES:
                self._cancel(child, force and child.kind is not TaskKind.ACTOR_CALL)
        reply(True, cancelled)

    def _cancel(self, spec: TaskSpec, force: bool) -> bool:
        """Cancel one unfinished task; False if it can no longer be cancelled."""
        tasks = self.tasks
        if spec.kind is TaskKind.ACTOR_CALL:
            actor = self.actors.actors.get(spec.actor_id)
            if actor is not None and spec in actor.queue:
                actor.queue.remove(spec)
                tasks.cancel_unstarted(spec)
                return True
            if actor is not None and actor.worker is not None and spec.task_id in actor.inflight:
                # Sent: the worker drops it if not started, or cancels its coroutine
                # on an async actor; a running call of a sync actor goes on (as Ray).
                spec.cancel_requested = "soft"
                self.actors.cancel_call(actor.worker, spec)
                return True
            if self.peers is not None and spec.remote_node:
                # Sent to the node the actor lives on, or (a borrowed actor) to its
                # owner: that node cancels it as it would a call of its own.
                borrowed = self.actors.borrowed.get(spec.actor_id) if actor is None else None
                if (actor is not None and spec.task_id in actor.inflight) or (
                    borrowed is not None and spec.task_id in borrowed.inflight
                ):
                    return self.peers.cancel(spec, False)
            return False
        if spec.state in (TaskState.WAITING, TaskState.READY):
            if spec.state is TaskState.READY:
                queue = self.dispatch.ready.get(spec.resources)
                if queue is not None and spec in queue:
                    queue.remove(spec)
            tasks.cancel_unstarted(spec)
            return True
        if spec.remote_node and self.peers is not None:
            return self.peers.cancel(spec, force)
        worker = spec.worker
        if worker is None or not worker.pid:
            return False
        if spec in worker.queued:  # sent ahead, not started: ask for it back
            spec.cancel_requested = "soft"
            self.dispatch.revokes.ask(worker, [spec.task_id])
            return True
        spec.cancel_requested = "force" if force else "soft"
        self.out.effect(Kill(worker=worker, signal=signal.SIGKILL if force else signal.SIGINT))
        return True

    def _v_create_actor(
        self, proc: WorkerRecord, reply: Reply, fields: tuple[Any, ...], options: ActorOptions
    ) -> None:
        spec = spec_from_wire(fields, proc.index)
        _inherit_job(proc, spec)
        self.create_actor(proc, spec, options, reply)

    def _v_get_actor(self, proc: WorkerRecord, reply: Reply, name: str, namespace: str) -> None:
        actor = self.actors.lookup(name, namespace)
        if actor is None:
            if self.peers is not None:  # names are cluster-wide: the head knows
                self.actors.lookup_cluster(proc, name, namespace, reply)
                return
            reply(False, no_such_actor_error(name, namespace))
            return
        self.actors.hold(proc, actor)  # adopted by the handle the caller builds
        reply(True, (actor.actor_id, actor.class_name, actor.methods))

    def _v_list_named_actors(self, proc: WorkerRecord, reply: Reply, namespace: str | None) -> None:
        """(namespace, name) of every live named actor, cluster-wide when joined."""
        self.actors.list_names(namespace, reply)

    def _v_kill_actor(
        self, proc: WorkerRecord, reply: Reply | None, actor_id: int, no_restart: bool
    ) -> None:
        actor = self.actors.actors.get(actor_id)
        killed = False
        if (
            actor is not None
            and actor.state is not ActorState.DEAD
            and actor.creation.owner >= PEER_INDEX_BASE
            and self.peers is not None
        ):
            # Hosted here for the node that owns it: the owner is told first (it records
            # the kill, frees the name, does not restart it); with no_restart the actor
            # also ends here at once, so that calls this node's processes send after the
            # kill fail, in order. (A restarting kill is the owner's alone to carry out.)
            killed = self.actors.kill_hosted(actor, no_restart)
            if killed and no_restart:
                self.actors.kill(actor, no_restart)
        elif actor is not None and actor.state is not ActorState.DEAD:
            self.actors.kill(actor, no_restart)
            killed = True
        elif actor is None and actor_id in self.actors.borrowed:  # its owner kills it
            killed = self.actors.kill_borrowed(self.actors.borrowed[actor_id], no_restart)
        if reply is not None:
            reply(True, killed)

    def _v_exiting(self, proc: WorkerRecord, reply: Reply, reason: str) -> None:
        """A worker is about to exit on purpose (user code raised SystemExit)."""
        proc.exit_status = reason
        reply(True, None)

    def _v_exit_actor(self, proc: WorkerRecord, reply: Reply, actor_id: int) -> None:
        """The actor in ``proc`` calls ``exit_actor()``: it exits and is not restarted."""
        actor = proc.actor
        if actor is None or actor.actor_id != actor_id:
            reply(False, TypeError("exit_actor() can only be called inside an actor."))
            return
        self.actors.exit_requested(actor)
        reply(True, None)

    def _v_context_info(self, proc: WorkerRecord, reply: Reply, task_id: int) -> None:
        """What ``get_runtime_context()`` asks about the caller: its actor and resources."""
        actor = proc.actor
        spec = self.tasks.tasks.get(task_id) if task_id else None
        if actor is not None:
            resources = actor.resources
        elif spec is not None:
            resources = spec.resources
        else:
            resources = None
        reply(
            True,
            {
                "actor_name": actor.name if actor is not None else "",
                "actor_namespace": actor.namespace if actor is not None else "",
                "restarts": actor.restarts if actor is not None else 0,
                "resources": resources.to_dict() if resources is not None else {},
            },
        )

    def _v_timeline(self, proc: WorkerRecord, reply: Reply) -> None:
        reply(True, self.tasks.events.events())

    def _v_gen_item(
        self,
        proc: WorkerRecord,
        reply: Reply | None,
        stream_id: int,
        index: int,
        object_id: int,
        kind: int,
        payload: Any,
        contained: tuple[int, ...],
        size: int,
    ) -> None:
        stream = self.objects.streams.get(stream_id)
        item = (index, object_id, kind, payload, contained, size)
        if stream is not None and stream.owner >= PEER_INDEX_BASE and self.peers is not None:
            self.peers.relay_item(stream, stream_id, *item)  # its caller is on that node
            return
        self.objects.gen_item(stream_id, *item)

    def _v_gen_next(self, proc: WorkerRecord, reply: Reply, stream_id: int, index: int) -> None:
        self.objects.gen_next(proc, reply, stream_id, index)


def _inherit_job(proc: WorkerRecord, spec: TaskSpec) -> None:
    """A task or actor submitted from a worker belongs to the job of what that worker
    runs (its actor, or its task), as Ray's nested tasks inherit their parent's
    runtime_env: on a node that is not the job's own, it takes that job's packages and
    env_vars, here and wherever it is forwarded."""
    parent = proc.actor.creation if proc.actor is not None else proc.task
    if parent is not None:
        if parent.job is not None:
            spec.job, spec.code = parent.job, parent.code
    elif proc.job is not None:  # an attached driver with a runtime_env of its own
        spec.job, spec.code = proc.job, proc.job_code
