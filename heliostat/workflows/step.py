"""What runs in the worker for one workflow step.

The executor wraps each step function in a :class:`StepCall` and submits it as an
ordinary task with two returns: the step's *value* (left in the object store, where
the step's consumers read it without a trip through the driver) and a small
:class:`StepMeta` for the executor. When the step is checkpointed, the worker writes
the checkpoint itself (atomic, checksummed) before it returns, so the executor only
commits a row: the data never passes through the driver (DESIGN §9). The exception is a
small output of an idempotent step (at most ``INLINE_LIMIT`` bytes pickled): it comes
back inline, and the executor stores it in the step's SQL row with the COMMIT, so one
fsync makes both durable.

A step's inputs arrive as live values (the parent's ObjectRef, resolved by the
engine) or, after a resume, as :class:`~heliostat.storage.checkpoints.CheckpointRef`
records that the worker loads (and verifies) itself.

A step never fails as a task: :class:`StepCall` catches what the step raises and
reports it in :class:`StepMeta` (the exception's type, message and the worker's
traceback of the user's code, the exception itself pickled when it can be), with what
the step printed (stdout and stderr, the last ``CAPTURE_LIMIT`` characters) and when it really
started and finished executing. So every attempt's lineage is complete, and the
engine never retries a step behind the workflow's back. Only an interruption
(cancel) or the death of the worker ends the task without a ``StepMeta``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from heliostat.engine.api import get, put
from heliostat.engine.dag import DAGNode, map_leaves
from heliostat.engine.runtime import current_client
from heliostat.engine.serialization import cloudpickle_dumps
from heliostat.exceptions import CorruptCheckpointError, HeliostatError, StorageError
from heliostat.storage.checkpoints import CheckpointRef, CheckpointStore, decode_checkpoint
from heliostat.workflows.beacon import LeaseExpired, Watchdog
from heliostat.workflows.compile import Placeholder, StoredValue, Upstream
from heliostat.workflows.context import WorkflowContext, step_context

__all__ = [
    "CAPTURE_LIMIT",
    "Continuation",
    "ErrorInfo",
    "Failure",
    "StepCall",
    "StepEnv",
    "StepLogs",
    "StepMeta",
    "continuation",
    "resolve_arguments",
    "substitute",
]

CAPTURE_LIMIT = 1 << 20
"""Characters of a step's printed output kept (the last ones); the lineage stores as
many (``heliostat.storage.models.LOG_LIMIT``)."""


class Continuation:
    """A step's request to continue with more DAG (``workflow.continuation(dag)``)."""

    __slots__ = ("dag",)

    def __init__(self, dag: DAGNode) -> None:
        self.dag = dag

    def __reduce__(self) -> tuple[Any, ...]:
        return (Continuation, (self.dag,))


def continuation(dag: DAGNode) -> Any:
    """Return this from a step to replace its output with the output of ``dag``.

    Inside a workflow step it returns a :class:`Continuation`: the sub-DAG's steps
    become part of the workflow (ids prefixed by the step's id), are checkpointed like
    the others, and survive resume. Anywhere else (a task run by ``dag.execute()``, the
    driver) it runs ``dag`` as plain tasks and returns its value, as Ray does, so a
    function written for workflows also works in a DAG executed without them.

    Raises:
        TypeError: ``dag`` is not a DAG node.
    """
    if not isinstance(dag, DAGNode):
        raise TypeError(f"continuation() takes a DAG built with .bind(...), not {type(dag)}.")
    if step_context.get() is None:
        return get(dag.execute())
    return Continuation(dag)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepEnv:
    """Everything a step needs to know besides its arguments."""

    workflow_id: str
    task_id: str
    attempt: int
    idempotency_key: str
    checkpoint_url: str | None  # None: the step writes no checkpoint itself
    inline_limit: int  # outputs pickled this small go to SQL with the COMMIT (0: never)
    catch_exceptions: bool
    beacon: str | None = None  # a non-idempotent step's lease beacon (see beacon.py)
    beacon_node: int = 0  # the node whose session holds it (its driver's)
    fence_margin: float = 0.0

    def __reduce__(self) -> tuple[Any, ...]:
        # A plain tuple: a slots dataclass's default pickling walks fields() each
        # time, which the hot path of every step paid twice.
        return (
            _step_env,
            (
                self.workflow_id,
                self.task_id,
                self.attempt,
                self.idempotency_key,
                self.checkpoint_url,
                self.inline_limit,
                self.catch_exceptions,
                self.beacon,
                self.beacon_node,
                self.fence_margin,
            ),
        )


def _step_env(
    workflow_id: str,
    task_id: str,
    attempt: int,
    idempotency_key: str,
    checkpoint_url: str | None,
    inline_limit: int,
    catch_exceptions: bool,
    beacon: str | None,
    beacon_node: int,
    fence_margin: float,
) -> StepEnv:
    return StepEnv(
        workflow_id=workflow_id,
        task_id=task_id,
        attempt=attempt,
        idempotency_key=idempotency_key,
        checkpoint_url=checkpoint_url,
        inline_limit=inline_limit,
        catch_exceptions=catch_exceptions,
        beacon=beacon,
        beacon_node=beacon_node,
        fence_margin=fence_margin,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """An exception as lineage keeps it: its class, its message, the worker's traceback."""

    type_name: str
    message: str
    traceback: str

    @property
    def summary(self) -> str:
        """``KeyError: 'amount_usd'``: one line for listings."""
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    @staticmethod
    def of(exc: BaseException, tb: str = "") -> ErrorInfo:
        """The info of ``exc`` (``tb``: its formatted traceback, if known)."""
        cls = type(exc)
        module = cls.__module__
        name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not hide the error itself
            message = repr(exc)
        return ErrorInfo(type_name=name, message=message, traceback=tb)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepLogs:
    """What an attempt printed: the last ``CAPTURE_LIMIT`` characters, and how much."""

    text: str
    size: int
    truncated: bool


class Failure(StrEnum):
    """How a step's attempt failed, as :class:`StepCall` saw it."""

    RAISED = "raised"  # the step's code raised
    CORRUPT_INPUT = "corrupt input"  # an input checkpoint failed its checksum
    OUTPUT_NOT_STORED = "output not stored"  # it returned; its checkpoint failed
    NOT_STARTED = "not started"  # its driver's lease was not being renewed


@dataclass(frozen=True, slots=True, kw_only=True)
class StepMeta:
    """What the executor learns from a step's attempt."""

    checkpoint: CheckpointRef | None
    continuation: bool
    started: float  # time.time() when its code began; a float, not a datetime: an
    finished: float  # aware datetime pickles through Python code, ~10x slower
    worker: str
    logs: StepLogs | None = None
    failure: Failure | None = None
    error: ErrorInfo | None = None
    exception: bytes | None = None  # the exception, cloudpickled (None: it cannot be)
    corrupt_location: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:  # a plain tuple: see StepEnv.__reduce__
        return (
            _step_meta,
            (
                self.checkpoint,
                self.continuation,
                self.started,
                self.finished,
                self.worker,
                self.logs,
                self.failure,
                self.error,
                self.exception,
                self.corrupt_location,
            ),
        )


def _step_meta(
    checkpoint: CheckpointRef | None,
    continuation: bool,
    started: float,
    finished: float,
    worker: str,
    logs: StepLogs | None,
    failure: Failure | None,
    error: ErrorInfo | None,
    exception: bytes | None,
    corrupt_location: str | None,
) -> StepMeta:
    return StepMeta(
        checkpoint=checkpoint,
        continuation=continuation,
        started=started,
        finished=finished,
        worker=worker,
        logs=logs,
        failure=failure,
        error=error,
        exception=exception,
        corrupt_location=corrupt_location,
    )


_worker_id: tuple[int, str] | None = None


def _worker() -> str:
    """``host:pid`` of this process (asked of the system once per process)."""
    global _worker_id
    pid = os.getpid()
    if _worker_id is None or _worker_id[0] != pid:  # new, or a forked child
        _worker_id = (pid, f"{socket.gethostname()}:{pid}")
    return _worker_id[1]


class _Capture:
    """Keeps the last ``CAPTURE_LIMIT`` characters written to it, and a running total."""

    def __init__(self) -> None:
        self._chunks: deque[str] = deque()
        self._kept = 0
        self.size = 0
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            self.size += len(text)
            self._chunks.append(text)
            self._kept += len(text)
            while self._kept - len(self._chunks[0]) >= CAPTURE_LIMIT:
                self._kept -= len(self._chunks.popleft())

    def logs(self) -> StepLogs | None:
        if not self.size:
            return None
        text = "".join(self._chunks)[-CAPTURE_LIMIT:]
        return StepLogs(text=text, size=self.size, truncated=len(text) < self.size)


class _Tee:
    """A stdout/stderr stand-in: writes go on to the stream it wraps and to a capture.

    A plain object, not an ``io.TextIOBase``: an IO object closes (and flushes) itself
    when collected, which cost every step a flush of the worker's streams. Anything
    else a caller asks of a stream is the wrapped stream's answer.
    """

    __slots__ = ("_capture", "_inner")

    def __init__(self, inner: Any, capture: _Capture) -> None:
        self._inner = inner
        self._capture = capture

    def write(self, text: str) -> int:
        self._capture.add(text)
        return int(self._inner.write(text))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._inner.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` from the step function's frame on (not StepCall's)."""
    ours = (StepCall.__call__.__code__, StepCall.run_user.__code__)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code in ours:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _pickle_exception(exc: BaseException) -> bytes | None:
    try:
        return cloudpickle_dumps(exc)
    except Exception:  # an exception holding a lock, a socket...: keep its text only
        return None


_stores: dict[str, CheckpointStore] = {}


def checkpoint_store(url: str) -> CheckpointStore:
    """One store per URL per process (fsspec filesystems are cached anyway)."""
    store = _stores.get(url)
    if store is None:
        store = _stores[url] = CheckpointStore(
            url,
            source="the workflow's checkpoint storage (hs.init(storage=...) or HELIOSTAT_STORAGE)",
        )
    return store


def substitute(value: Any, outputs: dict[str, Any]) -> Any:
    """Replace ``Upstream`` placeholders (anywhere in lists, tuples, dicts) by values."""
    return map_leaves(value, Upstream, lambda up: outputs[up.task_id])


def resolve_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], outputs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A step's arguments as its function receives them, as Ray passes them.

    A placeholder that is an argument itself (an upstream step's output, or an
    ObjectRef the DAG was built with) becomes its value. One nested inside a list,
    tuple or dict becomes an ObjectRef of that value, for the step to ``get``: Ray
    resolves only top-level arguments, and Ray programs rely on that
    (``sum(ray.get(values))``). The value is put in the object store only then.
    """

    def top(value: Any) -> Any:
        if isinstance(value, Upstream):
            return outputs[value.task_id]
        if isinstance(value, StoredValue):
            return value.value
        if type(value) in (list, tuple, dict):
            return map_leaves(value, Placeholder, nested)
        return value

    def nested(value: Upstream | StoredValue) -> Any:
        if isinstance(value, Upstream):
            return put(outputs[value.task_id])
        return put(value.value)

    return tuple(top(a) for a in args), {k: top(v) for k, v in kwargs.items()}


class StepCall:
    """A step function wrapped to run inside its workflow context, in a worker."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(
        self,
        env: StepEnv,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_ids: tuple[str, ...],
        *parent_values: Any,
    ) -> tuple[Any, StepMeta]:
        started = time.time()
        worker = _worker()
        capture = _Capture()
        try:
            outputs = _load_inputs(env, parent_ids, parent_values)
        except CorruptCheckpointError as exc:
            return None, StepMeta(
                checkpoint=None,
                continuation=False,
                started=started,
                finished=time.time(),
                worker=worker,
                failure=Failure.CORRUPT_INPUT,
                error=ErrorInfo.of(exc, "".join(traceback.format_exception(exc))),
                exception=_pickle_exception(exc),
                corrupt_location=exc.location,
            )
        args, kwargs = resolve_arguments(args, kwargs, outputs)
        token = step_context.set(
            WorkflowContext(
                workflow_id=env.workflow_id,
                task_id=env.task_id,
                attempt=env.attempt,
                idempotency_key=env.idempotency_key,
            )
        )
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, capture), _Tee(stderr, capture)
        try:
            if env.beacon is not None:  # non-idempotent: stop with the lease
                with _lease_watchdog(env):
                    result = self.run_user(env, args, kwargs)
            else:
                result = self.run_user(env, args, kwargs)
        except LeaseExpired as exc:
            return None, StepMeta(
                checkpoint=None,
                continuation=False,
                started=started,
                finished=time.time(),
                worker=worker,
                failure=Failure.NOT_STARTED,
                error=ErrorInfo.of(exc),
            )
        except Exception as exc:  # the step's failure: reported, not raised
            return None, StepMeta(
                checkpoint=None,
                continuation=False,
                started=started,
                finished=time.time(),
                worker=worker,
                logs=_flushed(capture),
                failure=Failure.RAISED,
                error=ErrorInfo.of(exc, _user_traceback(exc)),
                exception=_pickle_exception(exc),
            )
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            step_context.reset(token)
        finished = time.time()
        is_continuation = isinstance(result, Continuation)
        ref = None
        if env.checkpoint_url is not None:
            store = checkpoint_store(env.checkpoint_url)
            try:
                # The executor fsyncs the directory once per group commit (before
                # COMMIT); a small output comes back inline and is committed in SQL.
                ref = store.write(
                    env.workflow_id,
                    env.task_id,
                    env.attempt,
                    result,
                    sync_dir=False,
                    inline_limit=env.inline_limit,
                )
            except StorageError as exc:
                return None, StepMeta(
                    checkpoint=None,
                    continuation=is_continuation,
                    started=started,
                    finished=finished,
                    worker=worker,
                    logs=capture.logs(),
                    failure=Failure.OUTPUT_NOT_STORED,
                    error=ErrorInfo.of(exc, "".join(traceback.format_exception(exc))),
                    exception=_pickle_exception(exc),
                )
        meta = StepMeta(
            checkpoint=ref,
            continuation=is_continuation,
            started=started,
            finished=finished,
            worker=worker,
            logs=capture.logs(),
        )
        return result, meta

    def run_user(self, env: StepEnv, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the step function (its frame is where a user's traceback starts)."""
        if env.catch_exceptions:
            try:
                return (self.fn(*args, **kwargs), None)
            except Exception as exc:  # catch_exceptions hands the error to the caller
                return (None, exc)
        return self.fn(*args, **kwargs)


_MIRROR_WAIT_S = 5.0  # for a first copy of a lease beacon of another node


@contextlib.contextmanager
def _lease_watchdog(env: StepEnv) -> Iterator[None]:
    """Run a non-idempotent step under a watchdog of its driver's lease.

    On the driver's own node the worker watches the driver's beacon file; on another
    node, a copy its node manager keeps up to date (``engine/beacon_mirror.py``). A
    copy that cannot be had means the lease cannot be followed: the step does not
    start (``LeaseExpired``), as when the driver stopped renewing.
    """
    assert env.beacon is not None
    what = f"step {env.task_id!r}"
    client = current_client()
    if env.beacon_node == client.minter.node_index:
        with Watchdog(env.beacon, env.fence_margin, what=what):
            yield
        return
    try:
        path = client.mirror_lease_beacon(
            env.beacon_node, os.path.basename(env.beacon), _MIRROR_WAIT_S
        )
    except HeliostatError as exc:
        raise LeaseExpired(
            f"{what}: its driver's lease cannot be followed from this node ({exc}), so the "
            "step does not start."
        ) from exc
    try:
        with Watchdog(path, env.fence_margin, what=what):
            yield
    finally:
        client.release_lease_beacon(path)


def _flushed(capture: _Capture) -> StepLogs | None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: the capture has what it got
            continue
    return capture.logs()


def _load_inputs(
    env: StepEnv, parent_ids: tuple[str, ...], parent_values: tuple[Any, ...]
) -> dict[str, Any]:
    outputs = {}
    for task_id, value in zip(parent_ids, parent_values, strict=True):
        if isinstance(value, CheckpointRef):
            if value.data is not None:  # kept in SQL, handed over with the ref
                value = decode_checkpoint(value.location, value.checksum, value.format, value.data)
            else:
                value = checkpoint_store(env.checkpoint_url or value.store_url).read(value)
        outputs[task_id] = value
    return outputs
