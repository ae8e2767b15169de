"""What the node manager's pure parts take in and give out: events and instructions.

The node manager is split the way dask splits its worker (``worker_state_machine.py``):
the modules that *decide* (``dispatch.py``, ``task_table.py``, ``object_directory.py``,
``actor_directory.py``, ``worker_registry.py``) never touch a socket, a process or a
signal. Something happened (an *event*: a task finished, a worker exited); they update
their tables and say what should be done about it (an *instruction*: run this task on
that worker, take back these tasks, kill this process, start a worker). Only
``node_loop.py`` carries instructions out. A network transport later replaces the loop,
not the decisions, and the decisions are tested without any process (tests/unit).

Instructions for one worker are queued in that worker's ``WorkerRecord.outbox``, in
order, because their order on the wire matters (an ``EXECUTE`` sent ahead must reach
the worker before the ``REVOKE`` that asks for it back). Effects that are not messages
(signals, spawns, the driver's unmapping) are queued in :attr:`Outbox.effects`. The loop
drains both at the end of a batch, after every message of the batch has been handled:
that is also when signals must go, after the message they draw attention to.

Why instructions carry records (``WorkerRecord``, ``TaskSpec``) rather than ids: the
loop needs the connection and the task's fields to encode a message, and looking them up
again by id would cost a dict lookup per message on the hottest path. The records stay
owned by the pure side; the loop only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heliostat.engine.records import ActorRecord, TaskSpec, WorkerRecord

__all__ = [
    "EXIT",
    "PEER_EFFECTS",
    "ActorReady",
    "CallActor",
    "CancelCall",
    "CancelRemote",
    "CreateActor",
    "Disconnect",
    "Effect",
    "Execute",
    "Exit",
    "ForwardTask",
    "Kill",
    "LogLines",
    "Message",
    "Outbox",
    "PeerEffect",
    "Poke",
    "PullObject",
    "PushValues",
    "ReleaseAt",
    "Reply",
    "ReportTask",
    "Revoke",
    "Spawn",
    "StreamItem",
    "TaskDone",
    "TaskFailed",
    "Unmap",
    "UnmapDriver",
    "WireValue",
    "WorkerExited",
    "WorkerLost",
    "WorkerOutput",
    "WorkerSpawned",
]


# --------------------------------------------------------------------------- events --


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDone:
    """A worker finished a task; ``results`` are (id, kind, payload, contained, size)."""

    worker: WorkerRecord
    task_id: int
    results: list[tuple[int, int, Any, tuple[int, ...], int]]
    started: float
    finished: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed:
    """A task raised (``payload``: the pickled error) or was interrupted."""

    worker: WorkerRecord
    task_id: int
    payload: bytes
    retryable: bool
    interrupted: bool
    started: float
    finished: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorReady:
    """An actor's constructor returned (``error`` None) or raised (pickled error)."""

    worker: WorkerRecord
    actor_id: int
    error: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpawned:
    """The fork server started the process for worker ``index``."""

    index: int
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerExited:
    """The fork server reaped process ``pid`` with exit status ``code``."""

    pid: int
    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLost:
    """A worker's connection closed (it may not have been reaped yet)."""

    worker: WorkerRecord


# --------------------------------------------------------------- instructions: wire --


@dataclass(frozen=True, slots=True, kw_only=True)
class Execute:
    """Run ``spec`` on the worker; ``ahead``: queued behind its current task."""

    spec: TaskSpec
    fn_bytes: bytes | None  # the function's code, the first time this worker needs it
    resolved: list[Any]  # (id, kind, data) per top-level argument
    ahead: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CallActor:
    """Run actor call ``spec`` on the actor's worker."""

    spec: TaskSpec
    resolved: list[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateActor:
    """Run ``actor``'s constructor on the worker dedicated to it."""

    actor: ActorRecord
    cls_bytes: bytes | None
    resolved: list[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Revoke:
    """Ask for tasks sent ahead back (answered by the ``returned`` verb)."""

    task_ids: list[int]
    revoke_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelCall:
    """Cancel an actor call: dropped if not started, its coroutine cancelled if async."""

    task_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unmap:
    """Let go of these shared-memory segments (freed or spilled)."""

    object_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit:
    """Exit now (the worker is no longer needed, or its actor is gone)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The answer to a worker's request ``request_id``."""

    request_id: int
    ok: bool
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOutput:
    """Lines a worker wrote (``origin``: the node that ran it, "" for this one), to
    print: sent to an attached driver whose job the task belongs to (a message), or
    printed where this node prints its workers' output (an effect: its own driver,
    or its log file)."""

    stream: str
    task_name: str
    pid: int
    text: str
    origin: str


Message = (
    Execute | CallActor | CreateActor | Revoke | CancelCall | Unmap | Exit | Reply | WorkerOutput
)

EXIT = Exit()  # no fields: one instance serves every worker


# ------------------------------------------------------------- instructions: effects --


@dataclass(frozen=True, slots=True, kw_only=True)
class Kill:
    """Send ``signal`` to a worker's process (cancel, force cancel, kill an actor)."""

    worker: WorkerRecord
    signal: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Poke:
    """SIGUSR1, after its messages are written: a worker busy in Python reads them now."""

    worker: WorkerRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Spawn:
    """Ask the fork server for a new worker process with this index."""

    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmapDriver:
    """The driver (same process) lets go of these segments too."""

    object_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """The worker is dead: stop watching its socket and close it."""

    worker: WorkerRecord


# ------------------------------------------- instructions: effects for other nodes --
# Decided by ``peers.py``; carried out by the cluster link (``node_link.py``).


@dataclass(frozen=True, slots=True)
class WireValue:
    """One object's value between nodes.

    ``kind`` INLINE or ERROR: ``payload`` is the value. SHM: the value is ``size``
    bytes to pull (``payload`` is None) from the store of node ``at``, or of the sender
    when ``at`` is 0; either way the sender keeps it for the receiver until the
    receiver's :class:`ReleaseAt`.
    """

    object_id: int
    kind: int
    payload: bytes | None
    size: int
    contained: tuple[int, ...]
    at: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardTask:
    """Run ``spec`` on node ``node``; ``values`` are its arguments (and nested refs)."""

    node: int
    spec: TaskSpec
    fn_bytes: bytes | None  # the pickled function, the first time this node gets it
    values: tuple[WireValue, ...]
    pending: tuple[int, ...]  # nested refs whose values follow (PushValues)
    code: tuple[str, ...] = ()  # URIs of the job's code packages (runtime_env)
    env: tuple[tuple[str, str], ...] = ()  # the job's env_vars (runtime_env)
    actor_options: Any = None  # an actor's creation: its ActorOptions


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportTask:
    """Tell the owner ``node`` that its task ended, with the returned values."""

    node: int
    task_id: int
    outcome: str
    started: float
    finished: float
    values: tuple[WireValue, ...]
    pending: tuple[int, ...]  # nested refs whose values follow (PushValues)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLines:
    """Lines a worker here wrote for task ``task_id`` (or actor ``actor_id``), which
    node ``node`` owns: it prints them at the driver of the job."""

    node: int
    task_id: int
    actor_id: int
    stream: str
    task_name: str
    pid: int
    text: str
    origin: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamItem:
    """Item ``index`` of the streaming generator task ``stream_id`` of ``node``, which
    runs here: ``values[0]`` is the item, the rest the refs inside it."""

    node: int
    stream_id: int
    index: int
    values: tuple[WireValue, ...]
    pending: tuple[int, ...]  # nested refs whose values follow (PushValues)


@dataclass(frozen=True, slots=True, kw_only=True)
class PushValues:
    """Values ``node`` was promised (nested refs) that are ready now."""

    node: int
    values: tuple[WireValue, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PullObject:
    """Copy object ``object_id`` (``size`` bytes) from node ``node`` into our store."""

    node: int
    object_id: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseAt:
    """We no longer need ``node`` to keep these objects for us (we have our copies, or
    let go of our refs): it may drop them."""

    node: int
    object_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRemote:
    """Cancel task ``task_id``, forwarded to ``node``."""

    node: int
    task_id: int
    force: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorStarted:
    """Tell ``node`` that the constructor of its actor ``actor_id`` ended here, or
    (``died``) that the actor's process died since."""

    node: int
    actor_id: int
    error: bytes | None  # the constructor's exception, pickled; None: it is alive
    died: str = ""  # how the actor's process died (then ``error`` is None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorControl:
    """Kill (``kill``) or let go of (the owner dropped it) actor ``actor_id`` on ``node``."""

    node: int
    actor_id: int
    kill: bool
    no_restart: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorRefs:
    """Handles to these actors are inside what follows on the stream to ``node``:
    ``refs`` pairs each actor's id with the index of the node that owns it, so that
    ``node`` sends its calls there."""

    node: int
    refs: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorBorrow:
    """Tell ``node``, the owner of actor ``actor_id``, that node ``borrower`` was sent
    ``delta`` handle transfers of it (``delta`` > 0, said by the sender), or let go of
    ``-delta`` of them (said by the borrower, when its last handle went)."""

    node: int
    actor_id: int
    borrower: int
    delta: int


# ------------------------------------------- instructions: questions for the head --
# Decided by ``actor_directory.py`` (cluster-wide actor names); carried out by the
# cluster link, which asks the head and hands the answer back to
# ``ActorDirectory.head_answer(req, ok, value)`` (``req`` 0: no answer wanted).


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimName:
    """Claim (namespace, name) at the head for actor ``actor_id``, owned by this node.

    Answer: None (claimed) or the ``cluster.names.NamedActor`` that holds the name.
    """

    req: int
    namespace: str
    name: str
    actor_id: int
    class_name: str
    methods: dict[str, int]
    detached: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupName:
    """Which actor has this name? Answer: a ``NamedActor``, or None."""

    req: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseName:
    """The actor ``actor_id`` of this node is dead for good: free its name (no answer)."""

    namespace: str
    name: str
    actor_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ListNames:
    """The named actors of ``namespace`` (None: all). Answer: a list of ``NamedActor``."""

    req: int
    namespace: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallCode:
    """Install these code packages (URIs at the head) on this node, for an attached
    driver's job. Answer: (import paths, working directory or "")."""

    req: int
    uris: tuple[str, ...]


HeadEffect = ClaimName | LookupName | ReleaseName | ListNames | InstallCode
HEAD_EFFECTS = (ClaimName, LookupName, ReleaseName, ListNames, InstallCode)


PeerEffect = (
    ForwardTask
    | ReportTask
    | StreamItem
    | LogLines
    | PushValues
    | PullObject
    | ReleaseAt
    | CancelRemote
    | ActorStarted
    | ActorControl
    | ActorRefs
    | ActorBorrow
)
PEER_EFFECTS = (
    ForwardTask,
    ReportTask,
    StreamItem,
    LogLines,
    PushValues,
    PullObject,
    ReleaseAt,
    CancelRemote,
    ActorStarted,
    ActorControl,
    ActorRefs,
    ActorBorrow,
)


Effect = Kill | Poke | Spawn | UnmapDriver | Disconnect | WorkerOutput | PeerEffect | HeadEffect


class Outbox:
    """Instructions decided and not yet carried out; only ``node_loop.py`` drains it.

    ``dirty`` lists, once each, the workers whose ``outbox`` is not empty (invariant:
    a worker is in ``dirty`` exactly when its outbox has messages).
    """

    __slots__ = ("dirty", "effects")

    def __init__(self) -> None:
        self.dirty: list[WorkerRecord] = []
        self.effects: list[Effect] = []

    def send(self, worker: WorkerRecord, message: Message) -> None:
        outbox = worker.outbox
        if not outbox:
            self.dirty.append(worker)
        outbox.append(message)

    def effect(self, effect: Effect) -> None:
        self.effects.append(effect)

    @property
    def pending(self) -> bool:
        return bool(self.dirty or self.effects)
