"""The errors heliostat raises, in one hierarchy.

Every public error derives from :class:`HeliostatError`::

    HeliostatError
    ├── HeliostatInternalError          a bug in heliostat: please report it
    ├── NotInitializedError             an API call before init() / after shutdown()
    ├── InvalidTransition               a lifecycle edge the state table forbids
    ├── SerializationError (TypeError)  a value that cannot be pickled, named
    ├── InfeasibleResourcesError (ValueError)
    │                                   a request no node could ever satisfy
    ├── TaskError                       a task raised; also an instance of the cause
    ├── ModuleNotOnNodeError (ModuleNotFoundError)
    │                                   a task's code names a module its node lacks
    ├── PackageError (ValueError)       runtime_env code that cannot be packed (too big,
    │                                   wrong shape) or an archive that fails its checks
    ├── WorkerCrashedError              the worker process died and retries ran out
    ├── ActorError
    │   └── ActorDiedError              the actor is dead (killed, crashed, restarts spent)
    ├── GetTimeoutError (TimeoutError)  get() ran past its timeout
    ├── TaskCancelledError              the task was cancelled with cancel()
    ├── ObjectLostError                 an object's value is gone and cannot be rebuilt
    │   └── OwnerDiedError              ... because the process that owned it died
    ├── WorkflowError                   durable workflows
    │   ├── WorkflowDefinitionError (ValueError)
    │   │                               a DAG that cannot run: cycle, duplicate id, ...
    │   ├── WorkflowNotFoundError (KeyError)
    │   │   │                           no workflow (or step) with that id
    │   │   └── WorkflowOutputNotFoundError (ValueError)
    │   │                               get_output(): no such step, or no output yet
    │   ├── WorkflowLeaseError          another live driver runs this workflow
    │   ├── WorkflowCancelledError      the workflow was cancelled
    │   ├── WorkflowNeedsAttentionError a non-idempotent step is in doubt
    │   ├── WorkflowNotResumableError   resume() of a workflow that cannot be rebuilt
    │   └── WorkflowExecutionError      a step failed and the workflow with it
    │       └── WorkflowOutputFailedError (ValueError)
    │                                   get_output() of a workflow or step that failed
    ├── ScheduleError                   cron / interval schedules
    │   ├── InvalidScheduleError (ValueError)
    │   │   │                           a bad cron string, time zone, interval, name ...
    │   │   └── ScheduleTargetError     the target cannot be imported, called, or
    │   │                               returned no DAG
    │   ├── ScheduleNotFoundError (KeyError)
    │   │                               no schedule with that name
    │   └── ScheduleExistsError         create() of a name in use, without replace=True
    ├── ClusterError                    a cluster's head cannot be used
    │   ├── ClusterUnreachableError (ConnectionError)
    │   │                               nothing answers at the head's address
    │   └── ClusterAuthError (PermissionError)
    │                                   the head refused the cluster token
    ├── CorruptCheckpointError          a checkpoint is missing, fails its checksum or
    │                                   cannot be decoded
    └── StorageError                    the metadata database or checkpoint storage
        │                               cannot be used as it is (schema newer than this
        │                               heliostat, bad URL, disk full, read-only, no
        │                               filesystem for the URL, a bad secret key)
        └── UnauthenticatedDataError    stored data not signed with this installation's
                                        key: refused, never unpickled

Errors carry structured fields (ids, names) as attributes and survive pickling, so a
worker can raise one and the driver receives the same type with the same fields.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorDiedError",
    "ActorError",
    "ClusterAuthError",
    "ClusterError",
    "ClusterUnreachableError",
    "CorruptCheckpointError",
    "GetTimeoutError",
    "HeliostatError",
    "HeliostatInternalError",
    "InfeasibleResourcesError",
    "InvalidScheduleError",
    "InvalidTransition",
    "ModuleNotOnNodeError",
    "NotInitializedError",
    "ObjectLostError",
    "OwnerDiedError",
    "PackageError",
    "ScheduleError",
    "ScheduleExistsError",
    "ScheduleNotFoundError",
    "ScheduleTargetError",
    "SerializationError",
    "StorageError",
    "TaskCancelledError",
    "TaskError",
    "UnauthenticatedDataError",
    "WorkerCrashedError",
    "WorkflowCancelledError",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowLeaseError",
    "WorkflowNeedsAttentionError",
    "WorkflowNotFoundError",
    "WorkflowNotResumableError",
    "WorkflowOutputFailedError",
    "WorkflowOutputNotFoundError",
]


class HeliostatError(Exception):
    """Base class of every error heliostat raises on purpose."""


class HeliostatInternalError(HeliostatError):
    """A bug in heliostat itself, not in user code.

    If you see this, heliostat broke one of its own invariants. Please report it with
    the traceback; the state of the runtime after this error is undefined.
    """


class NotInitializedError(HeliostatError):
    """An API call that needs a runtime was made before ``init()`` or after ``shutdown()``."""


class InvalidTransition(HeliostatError):
    """A state machine was asked to take an edge its transition table does not allow."""

    def __init__(self, kind: str, ident: str, start: str, finish: str) -> None:
        self.kind = kind
        self.ident = ident
        self.start = start
        self.finish = finish
        super().__init__(f"{kind} {ident!r} cannot go from {start} to {finish}.")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.ident, self.start, self.finish))


class SerializationError(HeliostatError, TypeError):
    """A value could not be pickled; the message names which one and why."""


class InfeasibleResourcesError(HeliostatError, ValueError):
    """A task or actor asked for resources that no node in the cluster has at all."""


class GetTimeoutError(HeliostatError, TimeoutError):
    """``get()`` or ``wait()`` waited longer than its ``timeout``."""


class TaskCancelledError(HeliostatError):
    """The task that would have produced this object was cancelled."""

    def __init__(self, message: str = "The task was cancelled.", *, task_name: str = "") -> None:
        self.task_name = task_name
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_kw, (type(self), self.args, {"task_name": self.task_name}))


class WorkerCrashedError(HeliostatError):
    """The worker process running the task died, and its retries are spent."""

    def __init__(self, message: str, *, task_name: str = "", pid: int = 0) -> None:
        self.task_name = task_name
        self.pid = pid
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_kw,
            (type(self), self.args, {"task_name": self.task_name, "pid": self.pid}),
        )


class ActorError(HeliostatError):
    """Base class of actor failures."""


class ActorDiedError(ActorError):
    """The actor is dead: killed, crashed with no restarts left, or its constructor failed."""

    def __init__(self, message: str, *, actor_id: str = "", class_name: str = "") -> None:
        self.actor_id = actor_id
        self.class_name = class_name
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"actor_id": self.actor_id, "class_name": self.class_name}
        return (_rebuild_kw, (type(self), self.args, fields))


class ObjectLostError(HeliostatError):
    """An object's value is gone (memory or spill file lost) and cannot be rebuilt."""

    def __init__(self, message: str, *, object_id: str = "") -> None:
        self.object_id = object_id
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_kw, (type(self), self.args, {"object_id": self.object_id}))


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died, so the object died with it (fate sharing)."""


class TaskError(HeliostatError):
    """A task raised an exception.

    The error seen at ``get()`` is an instance of both ``TaskError`` and the class of
    the original exception (when that class can be subclassed), so
    ``except ValueError`` still catches a ``ValueError`` raised in a remote task.
    ``cause`` is the original exception (``None`` if it could not be pickled) and
    ``remote_traceback`` the traceback text as the worker formatted it.
    """

    def __init__(
        self,
        function_name: str,
        remote_traceback: str,
        cause: BaseException | None = None,
        *,
        pid: int = 0,
        cause_repr: str = "",
    ) -> None:
        self.function_name = function_name
        self.remote_traceback = remote_traceback
        self.cause = cause
        self.pid = pid
        self.cause_repr = cause_repr or (repr(cause) if cause is not None else "")
        # Not super(): in a dual class the next __init__ is the cause class's.
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        return (
            f"Task {self.function_name!r} failed in worker pid={self.pid}: {self.cause_repr}\n\n"
            f"Remote traceback:\n{self.remote_traceback.rstrip()}"
        )

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_task_error,
            (self.function_name, self.remote_traceback, self.cause, self.pid, self.cause_repr),
        )

    def as_instanceof_cause(self) -> TaskError:
        """Return an equivalent error that is also an instance of the cause's class.

        Falls back to ``self`` when the cause's class cannot be mixed in (it is not an
        ``Exception`` subclass, or its layout forbids multiple inheritance).
        """
        cause = self.cause
        if cause is None or isinstance(cause, TaskError) or not isinstance(cause, Exception):
            return self
        cls = _dual_class(type(cause))
        if cls is None:
            return self
        err: TaskError = cls.__new__(cls)  # type: ignore[call-overload]
        try:  # let the cause's class set its own fields (OSError.errno, ...)
            type(cause).__init__(err, *cause.args)
        except Exception:  # an __init__ with another signature: the copy below serves
            pass
        try:  # then the cause's instance fields win over constructor defaults
            err.__dict__.update(getattr(cause, "__dict__", {}))
        except (AttributeError, TypeError):
            pass
        TaskError.__init__(
            err,
            self.function_name,
            self.remote_traceback,
            cause,
            pid=self.pid,
            cause_repr=self.cause_repr,
        )
        err.args = cause.args
        return err


_DUAL_CLASSES: dict[type, type | None] = {}


def _dual_class(cause_cls: type) -> type | None:
    """A class deriving from both TaskError and ``cause_cls``, made once and cached."""
    if cause_cls in _DUAL_CLASSES:
        return _DUAL_CLASSES[cause_cls]
    try:
        dual: type | None = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {
                "__init__": TaskError.__init__,
                "__str__": TaskError.__str__,
                "__reduce__": TaskError.__reduce__,
                "__module__": __name__,
                "__qualname__": f"TaskError({cause_cls.__qualname__})",
            },
        )
    except TypeError:
        dual = None
    _DUAL_CLASSES[cause_cls] = dual
    return dual


def _rebuild_task_error(
    function_name: str,
    remote_traceback: str,
    cause: BaseException | None,
    pid: int,
    cause_repr: str,
) -> TaskError:
    base = TaskError(function_name, remote_traceback, cause, pid=pid, cause_repr=cause_repr)
    return base.as_instanceof_cause()


def _rebuild_kw(cls: type, args: tuple[Any, ...], fields: dict[str, Any]) -> BaseException:
    err: BaseException = cls(*args, **fields)
    return err


class ModuleNotOnNodeError(HeliostatError, ModuleNotFoundError):
    """A task's function, class or argument refers to a module the worker cannot import.

    Raised in the worker while it loads what the driver sent (not when the task's own
    code runs an ``import``), and seen at ``get()`` inside a :class:`TaskError`.
    ``module`` is the missing module; ``node_id`` and ``hostname`` say where it was
    missing. The usual cause: the module is one of the user's own, present on the
    driver's machine only; ``runtime_env={"working_dir": ...}`` or ``py_modules`` ship it.
    """

    def __init__(
        self, message: str, *, module: str = "", node_id: str = "", hostname: str = ""
    ) -> None:
        self.module = module
        self.node_id = node_id
        self.hostname = hostname
        super().__init__(message, name=module or None)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"module": self.module, "node_id": self.node_id, "hostname": self.hostname}
        return (_rebuild_kw, (type(self), self.args, fields))


class PackageError(HeliostatError, ValueError):
    """A ``working_dir`` / ``py_modules`` package cannot be built or installed.

    Raised by ``init()`` for code that cannot be shipped (over the size limit, not a
    directory, unreadable), and where an archive fails its checks (its bytes do not hash
    to its name, an entry would land outside it, it holds a link). The message names
    the path or package and, for size, the largest files.
    """


class WorkflowError(HeliostatError):
    """Base class of durable-workflow errors; ``workflow_id`` names the workflow."""

    def __init__(self, message: str, *, workflow_id: str = "", task_id: str = "") -> None:
        self.workflow_id = workflow_id
        self.task_id = task_id
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"workflow_id": self.workflow_id, "task_id": self.task_id}
        return (_rebuild_kw, (type(self), self.args, fields))


class WorkflowDefinitionError(WorkflowError, ValueError):
    """The DAG cannot run: a cycle, a duplicate task id, an unserializable argument."""


class WorkflowNotFoundError(WorkflowError, KeyError):
    """No workflow (or no step) with the given id exists."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WorkflowOutputNotFoundError(WorkflowNotFoundError, ValueError):
    """``get_output()`` names a step the workflow lacks, or one with no output yet.

    Also a ``ValueError``: Ray's ``workflow.get_output`` raises one in this case
    ("Cannot load output from task id ..."), so a ported ``except ValueError`` works.
    """


class WorkflowLeaseError(WorkflowError):
    """The workflow is held by another live driver; two drivers never run one workflow.

    Raised to a second taker (``holder_host``, ``holder_pid`` and ``holder_since`` name
    the driver that holds it), and to a driver that lost its lease while it ran
    (``fenced`` is True: another driver took the workflow over, so this one stopped
    without writing anything more).
    """

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str = "",
        task_id: str = "",
        holder_host: str = "",
        holder_pid: int = 0,
        holder_since: str = "",
        fenced: bool = False,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id, task_id=task_id)
        self.holder_host = holder_host
        self.holder_pid = holder_pid
        self.holder_since = holder_since
        self.fenced = fenced

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {
            "workflow_id": self.workflow_id,
            "task_id": self.task_id,
            "holder_host": self.holder_host,
            "holder_pid": self.holder_pid,
            "holder_since": self.holder_since,
            "fenced": self.fenced,
        }
        return (_rebuild_kw, (type(self), self.args, fields))


class WorkflowCancelledError(WorkflowError):
    """The workflow was cancelled before it finished."""


class WorkflowNeedsAttentionError(WorkflowError):
    """A non-idempotent step was interrupted and nothing may re-run it blindly."""


class WorkflowNotResumableError(WorkflowError):
    """``resume()`` cannot rebuild the workflow from its lineage (Ray's name).

    Raised, with the reason as ``__cause__``, for an id no workflow has and for a
    stored workflow whose DAG cannot be loaded (its code is gone, its row is not
    signed with this installation's key).
    """


class WorkflowExecutionError(WorkflowError):
    """A step failed (after its retries) and so did the workflow; ``cause`` is its error."""

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str = "",
        task_id: str = "",
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id, task_id=task_id)
        self.cause = cause

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"workflow_id": self.workflow_id, "task_id": self.task_id, "cause": self.cause}
        return (_rebuild_kw, (type(self), self.args, fields))


class WorkflowOutputFailedError(WorkflowExecutionError, ValueError):
    """``get_output()`` of a workflow (or step) that failed: it has no output.

    ``cause`` is the step's error, as :func:`~heliostat.workflow.run` raised it. Also a
    ``ValueError``, whatever the step raised: Ray's ``get_output`` of a failed workflow
    raises a ``ValueError`` ("Cannot load output ..."), not the step's exception, so
    ported code catches it with ``except ValueError``.
    """


class ScheduleError(HeliostatError):
    """Base class of schedule errors; ``schedule`` names the schedule (empty if none yet)."""

    def __init__(self, message: str, *, schedule: str = "") -> None:
        self.schedule = schedule
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_kw, (type(self), self.args, {"schedule": self.schedule}))


class InvalidScheduleError(ScheduleError, ValueError):
    """A schedule that cannot be: a malformed cron string, an unknown time zone, a
    non-positive interval, both or neither of cron and interval, a bad name, ...

    The message is one line naming the problem.
    """


class ScheduleTargetError(InvalidScheduleError):
    """A schedule's target ``module:function`` cannot be imported or called, raised, or
    returned something other than a DAG; ``target`` names it."""

    def __init__(self, message: str, *, schedule: str = "", target: str = "") -> None:
        self.target = target
        super().__init__(message, schedule=schedule)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"schedule": self.schedule, "target": self.target}
        return (_rebuild_kw, (type(self), self.args, fields))


class ScheduleNotFoundError(ScheduleError, KeyError):
    """No schedule with the given name exists."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ScheduleExistsError(ScheduleError):
    """A schedule with this name exists already; pass ``replace=True`` to edit it."""


class CorruptCheckpointError(HeliostatError):
    """A checkpoint cannot be trusted: it is missing, fails its checksum, or won't decode.

    ``location`` is the checkpoint's URL; ``expected_checksum`` the checksum recorded
    when it was written, ``actual_checksum`` the one of the bytes found (empty when the
    file is missing). The step that produced it must be re-run (or, if it is not
    idempotent, resolved by a person).
    """

    def __init__(
        self,
        message: str,
        *,
        location: str = "",
        expected_checksum: str = "",
        actual_checksum: str = "",
    ) -> None:
        self.location = location
        self.expected_checksum = expected_checksum
        self.actual_checksum = actual_checksum
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {
            "location": self.location,
            "expected_checksum": self.expected_checksum,
            "actual_checksum": self.actual_checksum,
        }
        return (_rebuild_kw, (type(self), self.args, fields))


class StorageError(HeliostatError):
    """The metadata database cannot be used as it is.

    For example its schema is at a revision this version of heliostat does not know
    (written by a newer heliostat), or its URL names no usable database.
    """


class UnauthenticatedDataError(StorageError):
    """Stored data failed its HMAC check, so heliostat refused to unpickle it.

    Pickled data read back from storage (a workflow's compiled DAG, a step's checkpoint
    record) is signed with the installation's secret key when it is written and
    verified before it is loaded. A mismatch means it was written under another key
    (drivers of one database that do not share ``HELIOSTAT_SECRET_KEY`` or the key
    file) or changed by someone who could write the database.

    ``what`` names the refused data (``"the compiled DAG of workflow 'etl'"``),
    ``origin`` where it was read from (the database, a table and row), and
    ``key_source`` where this process's key came from (the environment variable or
    the key file's path).
    """

    def __init__(
        self, message: str, *, what: str = "", origin: str = "", key_source: str = ""
    ) -> None:
        self.what = what
        self.origin = origin
        self.key_source = key_source
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"what": self.what, "origin": self.origin, "key_source": self.key_source}
        return (_rebuild_kw, (type(self), self.args, fields))


class ClusterError(HeliostatError):
    """The head of a cluster could not be used; ``address`` is where it was sought."""

    def __init__(self, message: str, *, address: str = "") -> None:
        self.address = address
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_kw, (type(self), self.args, {"address": self.address}))


class ClusterUnreachableError(ClusterError, ConnectionError):
    """Nothing answered at the head's address (not started, stopped, or wrong address)."""


class ClusterAuthError(ClusterError, PermissionError):
    """The head refused the call: no cluster token, or not its token."""


# --- Ray's exception names ------------------------------------------------------------
#
# ``import heliostat as ray`` keeps ``except ray.exceptions.RayActorError`` working: each
# name of Ray's ``ray.exceptions`` is either an alias of the heliostat class with the same
# meaning, or (where heliostat has none) a subclass of the nearest heliostat class, so an
# ``except`` clause written for Ray catches what heliostat raises. Ray's hierarchy is kept
# where it matters: ``ActorDiedError`` is a ``RayActorError``, ``GetTimeoutError`` a
# ``TimeoutError``, ``OwnerDiedError`` an ``ObjectLostError``, everything a ``RayError``.

RayError = HeliostatError
RayTaskError = TaskError
RayActorError = ActorError


class ActorUnavailableError(ActorError):
    """The actor cannot take calls now (Ray: it is restarting or unreachable); it may recover."""


class ActorUnschedulableError(ActorError):
    """The actor cannot be placed: its scheduling strategy names no usable node."""


class TaskUnschedulableError(HeliostatError):
    """The task cannot be placed: its scheduling strategy names no usable node.

    Raised at ``get()`` for a task whose ``NodeAffinitySchedulingStrategy`` names a node
    that does not exist, with ``soft=False``.
    """


class RaySystemError(HeliostatError):
    """heliostat's runtime failed underneath a call (Ray: the raylet was killed)."""


class LocalRayletDiedError(RaySystemError):
    """The node running the task died (Ray's name; the local node manager here)."""


class ObjectStoreFullError(HeliostatError):
    """The object store has no room for an object, even after spilling to disk."""


class OutOfDiskError(ObjectStoreFullError):
    """The local disk is too full to spill objects."""


class OutOfMemoryError(HeliostatError):
    """A task or actor was killed because the machine ran out of memory."""


class NodeDiedError(HeliostatError):
    """The node a task or actor ran on died."""


class ObjectFetchTimedOutError(ObjectLostError):
    """No copy of an object could be found in time."""


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """An object was freed while a reference to it still existed (a bug: please report)."""


class ObjectReconstructionFailedError(ObjectLostError):
    """An object was lost and re-running the task that made it failed."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """An object was lost and its task's retries for rebuilding it are spent."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """An object was lost and the record of how to rebuild it is gone."""


class PendingCallsLimitExceeded(HeliostatError):
    """An actor handle has more calls waiting than its ``max_pending_calls`` allows."""


class RuntimeEnvSetupError(HeliostatError):
    """A task's or actor's ``runtime_env`` could not be set up."""


class CrossLanguageError(HeliostatError):
    """An error raised by code in another language (never raised by heliostat)."""


class PlacementGroupsNotSupportedError(HeliostatError, NotImplementedError):
    """Placement groups (``ray.util.placement_group``) are not supported yet."""


class TaskPlacementGroupRemoved(HeliostatError):
    """The placement group a task was scheduled in was removed."""


class ActorPlacementGroupRemoved(HeliostatError):
    """The placement group an actor was scheduled in was removed."""


__all__ = sorted(
    [
        *__all__,
        "ActorPlacementGroupRemoved",
        "ActorUnavailableError",
        "ActorUnschedulableError",
        "CrossLanguageError",
        "LocalRayletDiedError",
        "NodeDiedError",
        "ObjectFetchTimedOutError",
        "ObjectReconstructionFailedError",
        "ObjectReconstructionFailedLineageEvictedError",
        "ObjectReconstructionFailedMaxAttemptsExceededError",
        "ObjectStoreFullError",
        "OutOfDiskError",
        "OutOfMemoryError",
        "PendingCallsLimitExceeded",
        "PlacementGroupsNotSupportedError",
        "RayActorError",
        "RayError",
        "RaySystemError",
        "RayTaskError",
        "ReferenceCountingAssertionError",
        "RuntimeEnvSetupError",
        "TaskPlacementGroupRemoved",
        "TaskUnschedulableError",
    ]
)
