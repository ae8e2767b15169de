"""The node manager's records: tasks, workers and actors, with their state tables.

One record per entity (a :class:`TaskSpec` carries its state, attempts, worker and
timings), so nothing is kept in parallel dicts keyed by id. Records are mutable slotted
classes rather than frozen dataclasses: they live inside the node manager, change on
every event, and are created once per task on the hot path, where a frozen
dataclass's ``object.__setattr__`` per field is measurable.

States change only through :func:`transition`, which checks the edge against the
table next to each enum and raises :class:`~heliostat.exceptions.InvalidTransition`
otherwise.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from heliostat.exceptions import InvalidTransition
from heliostat.scheduler import ResourceSet

if TYPE_CHECKING:
    from heliostat.engine.protocol import PeerConnection

__all__ = [
    "ACTOR_TRANSITIONS",
    "PEER_INDEX_BASE",
    "TASK_TRANSITIONS",
    "WORKER_TRANSITIONS",
    "ActorOptions",
    "ActorRecord",
    "ActorState",
    "InstalledJob",
    "JobEnv",
    "PendingRevoke",
    "TaskKind",
    "TaskSpec",
    "TaskState",
    "WorkerRecord",
    "WorkerState",
    "function_key",
    "item_ids_to_send",
    "spec_from_wire",
    "spec_to_wire",
    "transition",
]


class TaskKind(enum.IntEnum):
    NORMAL = 0
    ACTOR_CREATE = 1
    ACTOR_CALL = 2


_TASK_KINDS: tuple[TaskKind, ...] = tuple(TaskKind)  # by number, without the enum call


class TaskState(enum.StrEnum):
    """Lifecycle of one task execution request."""

    WAITING = "WAITING"  # some top-level argument is not ready yet
    READY = "READY"  # arguments ready, queued for resources and a worker
    RUNNING = "RUNNING"  # sent to a worker
    FINISHED = "FINISHED"  # returns stored (values or errors)
    CANCELLED = "CANCELLED"


TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.WAITING: frozenset({TaskState.READY, TaskState.FINISHED, TaskState.CANCELLED}),
    # READY -> WAITING: an argument turned out lost at dispatch and is being rebuilt.
    TaskState.READY: frozenset(
        {TaskState.WAITING, TaskState.RUNNING, TaskState.FINISHED, TaskState.CANCELLED}
    ),
    # RUNNING -> READY is a retry (worker died or a retryable error).
    TaskState.RUNNING: frozenset({TaskState.READY, TaskState.FINISHED, TaskState.CANCELLED}),
    # FINISHED -> WAITING is lineage reconstruction of a lost return value.
    TaskState.FINISHED: frozenset({TaskState.WAITING}),
    TaskState.CANCELLED: frozenset(),
}


class WorkerState(enum.StrEnum):
    STARTING = "STARTING"  # forked, not registered yet
    IDLE = "IDLE"
    BUSY = "BUSY"  # running a normal task
    ACTOR = "ACTOR"  # dedicated to an actor for the rest of its life
    # Ran its last call of a ``max_calls`` function: told to exit, gets no more tasks.
    RETIRING = "RETIRING"
    # A driver process on this machine attached to the node (``engine/attach.py``):
    # it submits work and holds refs like a worker, and is never given a task.
    DRIVER = "DRIVER"
    DEAD = "DEAD"


WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset(
        {WorkerState.IDLE, WorkerState.ACTOR, WorkerState.DRIVER, WorkerState.DEAD}
    ),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.ACTOR, WorkerState.DEAD}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.RETIRING, WorkerState.DEAD}),
    WorkerState.ACTOR: frozenset({WorkerState.DEAD}),
    WorkerState.RETIRING: frozenset({WorkerState.DEAD}),
    WorkerState.DRIVER: frozenset({WorkerState.DEAD}),
    WorkerState.DEAD: frozenset(),
}


class ActorState(enum.StrEnum):
    PENDING = "PENDING"  # waiting for arguments, resources or a worker
    CREATING = "CREATING"  # constructor sent
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"  # its worker died; a new one is being made
    DEAD = "DEAD"


ACTOR_TRANSITIONS: dict[ActorState, frozenset[ActorState]] = {
    ActorState.PENDING: frozenset({ActorState.CREATING, ActorState.DEAD}),
    ActorState.CREATING: frozenset({ActorState.ALIVE, ActorState.RESTARTING, ActorState.DEAD}),
    ActorState.ALIVE: frozenset({ActorState.RESTARTING, ActorState.DEAD}),
    ActorState.RESTARTING: frozenset({ActorState.CREATING, ActorState.DEAD}),
    ActorState.DEAD: frozenset(),
}

_S = TypeVar("_S", TaskState, WorkerState, ActorState)

_TABLES: dict[type, dict[Any, frozenset[Any]]] = {
    TaskState: TASK_TRANSITIONS,
    WorkerState: WORKER_TRANSITIONS,
    ActorState: ACTOR_TRANSITIONS,
}


def transition(record: TaskSpec | WorkerRecord | ActorRecord, finish: _S) -> None:
    """Move ``record.state`` to ``finish`` if its table allows the edge."""
    start = record.state
    if finish not in _TABLES[type(finish)][start]:
        raise InvalidTransition(type(record).__name__, record.label(), str(start), str(finish))
    record.state = finish


PEER_INDEX_BASE = 1 << 30
"""A peer node's stand-in process index is ``PEER_INDEX_BASE + its node index``.

Worker indexes stay below ``1 << 24`` (the id layout's process bits), so a stand-in
never collides with a real process of the node (``peers.py``).
"""


# A job's runtime_env as it travels between nodes, and as a node installed it (see
# TaskSpec.job and TaskSpec.code).
JobEnv = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]
InstalledJob = tuple[tuple[str, ...], str, tuple[tuple[str, str], ...]]


class TaskSpec:
    """One task: what to run, with which arguments, where it stands.

    Invariant: ``pending_deps`` counts the entries of ``arg_ids`` that are not ready;
    the task enters the ready queue exactly when it reaches zero.
    """

    __slots__ = (
        "task_id",
        "kind",
        "name",
        "fn_id",
        "args_payload",
        "ref_positions",
        "arg_ids",
        "contained",
        "return_ids",
        "resources",
        "max_retries",
        "retry_exceptions",
        "attempts",
        "reconstructions",
        "owner",
        "actor_id",
        "method",
        "state",
        "worker",
        "pending_deps",
        "submitted_at",
        "started_at",
        "finished_at",
        "cancel_requested",
        "live_returns",
        "strategy",
        "claimed",
        "generator",
        "max_calls",
        "remote_node",
        "job",
        "code",
        "item_ids",
    )

    def __init__(
        self,
        *,
        task_id: int,
        kind: TaskKind,
        name: str,
        fn_id: bytes,
        args_payload: bytes,
        ref_positions: tuple[Any, ...],
        arg_ids: tuple[int, ...],
        contained: tuple[int, ...],
        return_ids: tuple[int, ...],
        resources: ResourceSet,
        max_retries: int,
        retry_exceptions: Any,
        owner: int,
        actor_id: int = 0,
        method: str = "",
        submitted_at: float = 0.0,
        strategy: Any = None,
        generator: int = 0,
        max_calls: int = 0,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.name = name
        self.fn_id = fn_id
        self.args_payload = args_payload
        self.ref_positions = ref_positions
        self.arg_ids = arg_ids
        self.contained = contained
        self.return_ids = return_ids
        self.resources = resources
        self.max_retries = max_retries
        self.retry_exceptions = retry_exceptions
        self.attempts = 0
        self.reconstructions = 0
        self.owner = owner
        self.actor_id = actor_id
        self.method = method
        self.state = TaskState.WAITING
        self.worker: WorkerRecord | None = None
        self.pending_deps = 0
        self.submitted_at = submitted_at
        self.started_at = 0.0
        self.finished_at = 0.0
        self.cancel_requested: str = ""  # "", "soft" or "force"
        self.live_returns = len(return_ids)
        self.strategy = strategy
        # Sent ahead to a worker that asked to run it (``claim``): from then on only
        # that worker may run it (see dispatch.py).
        self.claimed = False
        # 0, or ``streams.STREAMING`` / ``streams.DYNAMIC``: a generator task whose one
        # return id is its stream id (see streams.py).
        self.generator = generator
        # A worker runs at most this many calls of ``fn_id``, then exits (0: no limit).
        self.max_calls = max_calls
        self.remote_node = 0  # the peer node index running it (peers.py); 0: this node
        # The runtime_env of the job a task belongs to, when it is not this node's
        # own: (URIs of its code packages at the head, its env_vars as pairs). Set on
        # a task another node forwarded here, and inherited by the tasks and actors
        # it submits; it travels with them to other nodes.
        self.job: JobEnv | None = None
        # That job's environment as installed here, for the worker: (import paths,
        # working directory or "", env_vars pairs); None for this node's own tasks.
        self.code: InstalledJob | None = None
        # A streaming generator's items, by index (streams.py, rebuilding): at its
        # owner a list that grows as items are stored (when it keeps lineage); a tuple
        # once frozen for a re-run, which then yields each known item under its id.
        # Only a tuple travels (item_ids_to_send).
        self.item_ids: list[int] | tuple[int, ...] = ()

    def label(self) -> str:
        return f"{self.name}#{self.task_id:x}"


class WorkerRecord:
    """A worker process (or, with index 0, the driver) as the node manager sees it."""

    __slots__ = (
        "index",
        "pid",
        "conn",
        "state",
        "task",
        "blocked",
        "held",
        "known_functions",
        "holds",
        "actor",
        "outbox",
        "idle_since",
        "exit_status",
        "purpose",
        "queued",
        "revokes",
        "calls",
        "job",
        "job_code",
    )

    def __init__(self, index: int, pid: int = 0) -> None:
        self.index = index
        self.pid = pid
        self.conn: PeerConnection | None = None
        self.state = WorkerState.STARTING
        self.task: TaskSpec | None = None
        self.blocked = 0  # nesting depth of get/wait calls waiting in the manager
        self.held: ResourceSet | None = None  # resources the running task holds now
        self.known_functions: set[Any] = set()  # function_key()s sent to it
        self.holds: dict[int, int] = {}  # object or actor id -> holds by this process
        self.actor: ActorRecord | None = None
        # Instructions for this worker (node_instructions.Message) not sent yet.
        self.outbox: list[Any] = []
        self.idle_since = 0.0
        self.exit_status = ""
        self.purpose: ActorRecord | None = None  # an actor this new worker is made for
        # Tasks sent ahead to run after ``task`` (pipelining); they hold no resources
        # until they start, and go back to the ready queue if the worker blocks.
        self.queued: deque[TaskSpec] = deque()
        # REVOKEs sent and not answered yet, by revoke id. While one is pending no
        # task is sent ahead to this worker.
        self.revokes: dict[int, PendingRevoke] = {}
        # Calls started here of functions that have ``max_calls``, by function id.
        self.calls: dict[bytes, int] = {}
        # An attached driver's job (runtime_env), which its tasks and actors carry:
        # package URIs and env_vars, and the packages as installed here (set_job).
        self.job: JobEnv | None = None
        self.job_code: InstalledJob | None = None

    def label(self) -> str:
        return f"worker {self.index} (pid {self.pid})"


class PendingRevoke:
    """A REVOKE sent to a worker and not answered yet (the worker may be stopped)."""

    __slots__ = ("task_ids", "deadline", "reclaimed")

    def __init__(self, task_ids: frozenset[int], deadline: float) -> None:
        self.task_ids = task_ids
        self.deadline = deadline  # time.monotonic() after which unclaimed ones go back
        # None until the deadline passed; then the ids taken back without an answer
        # (the answer, when it comes, lists them too and is ignored for them).
        self.reclaimed: set[int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorOptions:
    """How an actor is created; travels from the creating process to the manager."""

    name: str
    namespace: str
    class_name: str
    max_restarts: int
    max_concurrency: int
    detached: bool
    methods: dict[str, int]  # method name -> num_returns, for handles from get_actor
    # Times a call in flight when the actor's process dies is run again on the
    # restarted actor (-1: no limit); 0 fails it with ActorDiedError.
    max_task_retries: int = 0
    # In a cluster: the node this creation is sent to owns the actor from now on
    # (a detached actor a driver's node created: it must not depend on that node).
    handover: bool = False


class ActorRecord:
    """An actor: its creation task, its worker, its queue of calls."""

    __slots__ = (
        "actor_id",
        "name",
        "namespace",
        "class_name",
        "creation",
        "state",
        "worker",
        "max_restarts",
        "restarts",
        "max_concurrency",
        "queue",
        "inflight",
        "holds",
        "death_cause",
        "detached",
        "resources",
        "out_of_scope",
        "methods",
        "max_task_retries",
        "remote_node",
        "lifetime_detached",
    )

    def __init__(
        self,
        *,
        actor_id: int,
        name: str,
        namespace: str,
        class_name: str,
        creation: TaskSpec,
        max_restarts: int,
        max_concurrency: int,
        detached: bool,
    ) -> None:
        self.actor_id = actor_id
        self.name = name
        self.namespace = namespace
        self.class_name = class_name
        self.creation = creation
        self.state = ActorState.PENDING
        self.worker: WorkerRecord | None = None
        self.max_restarts = max_restarts
        self.restarts = 0
        self.max_concurrency = max_concurrency
        self.queue: deque[TaskSpec] = deque()  # calls not sent yet, in submission order
        self.inflight: dict[int, TaskSpec] = {}  # calls sent to the worker
        self.holds = 0  # live handles, all processes together
        self.death_cause = ""
        self.detached = detached
        self.resources = creation.resources
        self.out_of_scope = False  # every handle is gone: exit once the queue drains
        self.methods: dict[str, int] = {}  # method name -> num_returns, for get_actor
        self.max_task_retries = 0  # see ActorOptions.max_task_retries
        self.remote_node = 0  # the peer node index it lives on (peers.py); 0: this node
        self.lifetime_detached = False  # lifetime="detached" (``detached`` also: named)

    def label(self) -> str:
        return f"{self.class_name}({self.name or hex(self.actor_id)})"


def spec_from_wire(fields: tuple[Any, ...], owner: int) -> TaskSpec:
    """Rebuild a spec from a worker's submit message."""
    (
        task_id,
        kind,
        name,
        fn_id,
        args_payload,
        ref_positions,
        arg_ids,
        contained,
        return_ids,
        resources,
        max_retries,
        retry_exceptions,
        actor_id,
        method,
        submitted_at,
        generator,
        max_calls,
        strategy,
        item_ids,
    ) = fields
    spec = TaskSpec(
        task_id=task_id,
        kind=_TASK_KINDS[kind],
        name=name,
        fn_id=fn_id,
        args_payload=args_payload,
        ref_positions=ref_positions,
        arg_ids=arg_ids,
        contained=contained,
        return_ids=return_ids,
        resources=resources,
        max_retries=max_retries,
        retry_exceptions=retry_exceptions,
        owner=owner,
        actor_id=actor_id,
        method=method,
        submitted_at=submitted_at,
        generator=generator,
        max_calls=max_calls,
        strategy=strategy,
    )
    spec.item_ids = item_ids
    return spec


def function_key(fn_id: bytes, code: InstalledJob | None) -> Any:
    """What a worker loads a function (or class) once for: its id within its job.

    The same id in two jobs (a function pickled by reference: ``utils.f``) names each
    job's own module, which a worker keeps apart (``runtime_env.use_code``).
    """
    return fn_id if code is None else (code, fn_id)


def item_ids_to_send(spec: TaskSpec) -> tuple[int, ...]:
    """The item ids a run of ``spec`` reuses: those frozen for a re-run, else none."""
    ids = spec.item_ids
    return ids if type(ids) is tuple else ()


def spec_to_wire(spec: TaskSpec) -> tuple[Any, ...]:
    """The tuple form of a spec, for a worker's submit message."""
    return (
        spec.task_id,
        int(spec.kind),
        spec.name,
        spec.fn_id,
        spec.args_payload,
        spec.ref_positions,
        spec.arg_ids,
        spec.contained,
        spec.return_ids,
        spec.resources,
        spec.max_retries,
        spec.retry_exceptions,
        spec.actor_id,
        spec.method,
        spec.submitted_at,
        spec.generator,
        spec.max_calls,
        spec.strategy,
        item_ids_to_send(spec),
    )
