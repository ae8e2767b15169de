"""The worker process: executes tasks and hosts actors.

A worker is forked by the fork server, connects to the node manager's socket and
registers. From then on its main thread alternates between reading messages and
running them: ``EXECUTE`` (a task), ``CREATE_ACTOR`` (become an actor) and
``ACTOR_CALL`` (a method call on the actor it hosts).

Reading is done by whichever thread needs a message (leader/follower), through the
worker's :class:`~heliostat.engine.worker_client.WorkerClient`.

Task output: ``sys.stdout`` and ``sys.stderr`` are replaced by writers that send lines
to the driver, tagged with the running task's name, before the task's result is sent,
so the driver prints them in order (as Ray prints ``(task pid=...) ...``).

Cancellation: the node manager sends SIGINT; the handler raises ``KeyboardInterrupt``
only while user code runs, and the task is reported as interrupted.

Errors: a task's exception travels back (pickled with cloudpickle, so classes defined
in the driver's ``__main__`` or in a function keep their identity; see
:func:`error_payload`) as a :class:`~heliostat.exceptions.TaskError`
whose remote traceback starts at the user's code: the leading frames of heliostat's own
machinery (``_execute``, ``_run_user``, a workflow step's wrapper) are cut, see
:func:`format_remote_traceback`.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from heliostat.engine import runtime as runtime_module
from heliostat.engine import task_context
from heliostat.engine.actor_exit import (
    EXIT_HANDLERS_TIMEOUT_S,
    TERMINATE_METHOD,
    ActorExit,
    exit_actor,
    forget_inherited_handlers,
    run_exit_handlers,
)
from heliostat.engine.async_actor import AsyncActorExecutor, is_async_class
from heliostat.engine.core import load_value
from heliostat.engine.generators import DynamicObjectRefGenerator
from heliostat.engine.ids import IdMinter, format_id
from heliostat.engine.object_ref import set_process_tracker
from heliostat.engine.protocol import BlockingChannel, Op
from heliostat.engine.records import function_key
from heliostat.engine.runtime_env import (
    enter_working_dir,
    module_not_on_node,
    note_boot_modules,
    use_code,
)
from heliostat.engine.serialization import (
    INLINE_THRESHOLD,
    cloudpickle_dumps,
    deserialize,
    loads_function,
    serialize,
)
from heliostat.engine.shm import segment_path, write_segment
from heliostat.engine.streams import STREAMING
from heliostat.engine.worker_client import WorkerClient
from heliostat.exceptions import HeliostatError, TaskError

__all__ = [
    "GeneratorSink",
    "error_payload",
    "format_remote_traceback",
    "run_worker",
]

_INLINE, _SHM = 1, 2
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the fork server dies (no orphans, ever)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before we asked
            os._exit(1)


def _is_heliostat_frame(tb: types.TracebackType) -> bool:
    name = tb.tb_frame.f_globals.get("__name__")
    return isinstance(name, str) and (name == "heliostat" or name.startswith("heliostat."))


def format_remote_traceback(exc: BaseException) -> str:
    """The traceback of a task's exception as the user should read it.

    Leading frames of heliostat's own modules (the worker loop, a workflow step's
    wrapper) are dropped, so the text starts at the first frame of user code; every
    frame from there on is kept, heliostat's included (a ``get`` inside the task). A
    frame belongs to heliostat when its module is ``heliostat`` or below it; functions
    pickled by value keep the globals name of the module they were defined in. When
    no frame is user code (the function could not be loaded, its result could not be
    pickled) the whole traceback is kept.
    """
    tb = exc.__traceback__
    first = tb
    while first is not None and _is_heliostat_frame(first):
        first = first.tb_next
    if first is not None:
        tb = first
    return "".join(traceback.format_exception(type(exc), exc, tb))


class _LineForwarder(io.TextIOBase):
    """A stdout/stderr replacement that sends complete lines to the driver."""

    def __init__(self, worker: Worker, stream: str) -> None:
        self._worker = worker
        self._stream = stream
        self._buf = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            if "\n" not in self._buf:
                return len(text)
            head, _, self._buf = self._buf.rpartition("\n")
        self._worker.send_log(self._stream, head)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            text, self._buf = self._buf, ""
        if text:
            self._worker.send_log(self._stream, text)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class Worker:
    """The main loop of a worker process."""

    def __init__(self, client: WorkerClient, index: int) -> None:
        self.client = client
        self.index = index
        self._functions: dict[bytes, Any] = {}
        self._used_code = False  # the last task ran with another job's packages
        self._actor: Any = None
        self._actor_name = ""
        self._pool: ThreadPoolExecutor | None = None
        self._async: AsyncActorExecutor | None = None
        self._in_user_code = False
        self._sigint_pending = False
        self.current_name = ""
        self._stdout = _LineForwarder(self, "stdout")
        self._stderr = _LineForwarder(self, "stderr")

    def send_log(self, stream: str, text: str) -> None:
        with contextlib.suppress(Exception):
            self.client.send((Op.LOG, stream, self.current_name or self._actor_name, text))

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._in_user_code:
            raise KeyboardInterrupt
        self._sigint_pending = True  # a generator task checks it before its next item

    def _on_poke(self, signum: int, frame: Any) -> None:
        self.client.pump_now()

    def loop(self) -> int:
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGUSR1, self._on_poke)
        sys.stdout = self._stdout
        sys.stderr = self._stderr
        client = self.client
        inbox = client.inbox
        reply: tuple[Any, ...] | None = None  # of the last task; take() sends it
        while True:
            while inbox or reply is not None:
                message = client.take(reply)
                reply = None
                if message is None:
                    continue
                op = message[0]
                if op == Op.EXECUTE:
                    reply = self._execute(message)
                elif op == Op.ACTOR_CALL:
                    if self._async is not None:
                        self._async.submit(message)
                    elif self._pool is not None:
                        self._pool.submit(self._actor_call, message)
                    else:
                        self._actor_call(message)
                elif op == Op.CREATE_ACTOR:
                    self._create_actor(message)
                elif op == Op.EXIT:
                    if self._async is not None:
                        self._async.stop()
                    if self._pool is not None:
                        self._pool.shutdown(wait=False, cancel_futures=True)
                    return 0
            client.pump_until(lambda: bool(inbox), None)

    # --- running code ---------------------------------------------------------------

    def _load_function(self, fn_id: bytes, fn_bytes: bytes | None, code: Any = None) -> Any:
        # Loaded once per job: the same bytes (a function pickled by reference, say
        # ``utils.f``) mean another job's module in another job (runtime_env.use_code).
        key = function_key(fn_id, code)
        fn = self._functions.get(key)
        if fn is None:
            if fn_bytes is None:
                fn_bytes = self.client.revoked_code.pop(fn_id, None)
            if fn_bytes is None:
                raise HeliostatError("the node manager sent no code for an unknown function")
            try:
                fn = loads_function(fn_bytes)
            except ModuleNotFoundError as exc:
                raise self._not_on_node(exc, "its function or class") from exc
            self._functions[key] = fn
        return fn

    def _not_on_node(self, exc: ModuleNotFoundError, what: str) -> BaseException:
        node_id = format_id(self.client.minter.node_index)
        return module_not_on_node(exc, what=what, task=self.current_name, node_id=node_id)

    def _arguments(
        self, payload: bytes, positions: tuple[Any, ...], resolved: list[Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        try:
            return self._load_arguments(payload, positions, resolved)
        except ModuleNotFoundError as exc:
            raise self._not_on_node(exc, "an argument") from exc

    def _load_arguments(
        self, payload: bytes, positions: tuple[Any, ...], resolved: list[Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = deserialize(payload)
        if positions:
            args = list(args)
            mappings = self.client.mappings
            for position, (object_id, kind, data) in zip(positions, resolved, strict=True):
                try:
                    value = load_value(mappings, object_id, kind, data)
                except FileNotFoundError:
                    value = self.client._relocate(object_id, None)
                if type(position) is int:
                    args[position] = value
                else:
                    kwargs[position] = value
        return args, kwargs

    def _results(self, name: str, return_ids: tuple[int, ...], result: Any) -> list[Any]:
        n = len(return_ids)
        if n == 1:
            values = [result]
        else:
            try:
                values = list(result)
            except TypeError:
                raise ValueError(
                    f"Task {name!r} has num_returns={n} but returned a "
                    f"{type(result).__name__}, not a sequence of {n} values."
                ) from None
            if len(values) != n:
                raise ValueError(
                    f"Task {name!r} has num_returns={n} but returned {len(values)} values."
                )
        out: list[tuple[int, int, Any, tuple[int, ...], int]] = []
        session = self.client.session
        for object_id, value in zip(return_ids, values, strict=True):
            ser = serialize(value, what=f"the return value of {name!r}")
            if ser.total_size <= INLINE_THRESHOLD:
                out.append(
                    (object_id, _INLINE, ser.to_bytes(), tuple(ser.contained), ser.total_size)
                )
            else:
                path = segment_path(session, object_id)
                write_segment(path, ser)
                out.append((object_id, _SHM, path, tuple(ser.contained), ser.total_size))
        return out

    def _error_payload(self, name: str, exc: BaseException) -> bytes:
        """The task's error, pickled for the node manager: see :func:`error_payload`."""
        return error_payload(name, exc)

    def _run_user(self, fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        self._in_user_code = True
        try:
            return fn(*args, **kwargs)
        finally:
            self._in_user_code = False

    def _execute(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        """Run a task; return its reply (``TASK_DONE`` or ``TASK_FAILED``), unsent."""
        (
            _op,
            task_id,
            fn_id,
            fn_bytes,
            payload,
            positions,
            resolved,
            return_ids,
            name,
            retry_exceptions,
            _ahead,
            generator,
            code,
            item_ids,
        ) = message
        if code is not None or self._used_code:
            use_code(code)  # a task from another node's job: its packages, or none
            self._used_code = code is not None
        self.current_name = name
        task_context.running.task_id = task_id
        started = time.time()
        reply: tuple[Any, ...]
        try:
            fn = self._load_function(fn_id, fn_bytes, code)
            args, kwargs = self._arguments(payload, positions, resolved)
            result = self._run_user(fn, args, kwargs)
            if generator:
                result = self.drive_generator(
                    generator, return_ids[0], name, result, item_ids=item_ids
                )
            results = self._results(name, return_ids, result)
            reply = (Op.TASK_DONE, task_id, results, started, time.time())
        except KeyboardInterrupt:
            reply = (Op.TASK_FAILED, task_id, b"", False, True, started, time.time())
        except SystemExit as exc:  # sys.exit() in a task: the worker exits, as in Ray
            self._exit_process(exc)
        except BaseException as exc:  # a task's failure is data, never the worker's death
            retryable = _should_retry(retry_exceptions, exc)
            reply = (
                Op.TASK_FAILED,
                task_id,
                self._error_payload(name, exc),
                retryable,
                False,
                started,
                time.time(),
            )
        self._stdout.flush()
        self._stderr.flush()
        self.current_name = ""
        return reply

    def _create_actor(self, message: tuple[Any, ...]) -> None:
        (
            _op,
            actor_id,
            cls_id,
            cls_bytes,
            payload,
            positions,
            resolved,
            label,
            max_concurrency,
            code,
        ) = message
        if code is not None:
            use_code(code)  # an actor of another node's job: its packages, for good
        self._actor_name = label
        self.current_name = f"{label}.__init__"
        task_context.set_actor(actor_id)
        try:
            cls = self._load_function(cls_id, cls_bytes, code)
            args, kwargs = self._arguments(payload, positions, resolved)
            self._actor = self._run_user(cls, args, kwargs)
            error = None
        except BaseException as exc:
            error = self._error_payload(self.current_name, exc)
        self._stdout.flush()
        self._stderr.flush()
        self.current_name = ""
        if error is None and is_async_class(type(self._actor)):
            self._async = AsyncActorExecutor(self, max_concurrency)
        elif error is None and max_concurrency > 1:
            self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="actor")
        if error is None:
            self.client.actor_id = actor_id
        self.client.send((Op.ACTOR_READY, actor_id, error))

    def _actor_call(self, message: tuple[Any, ...]) -> None:
        _op, task_id, method, payload, positions, resolved, return_ids, name, generator = message
        task_context.running.task_id = task_id
        started = time.time()
        threaded = self._pool is not None
        if not threaded:
            self.current_name = name
        reply: tuple[Any, ...]
        try:
            fn = self.actor_method(method)
            args, kwargs = self._arguments(payload, positions, resolved)
            result = fn(*args, **kwargs) if threaded else self._run_user(fn, args, kwargs)
            if generator:
                result = self.drive_generator(generator, return_ids[0], name, result)
            results = self._results(name, return_ids, result)
            reply = (Op.TASK_DONE, task_id, results, started, time.time())
        except KeyboardInterrupt:
            reply = (Op.TASK_FAILED, task_id, b"", False, True, started, time.time())
        except SystemExit as exc:  # sys.exit() or exit_actor(): the actor's process ends
            self._exit_process(exc)
        except BaseException as exc:
            reply = (
                Op.TASK_FAILED,
                task_id,
                self._error_payload(name, exc),
                False,
                False,
                started,
                time.time(),
            )
        if not threaded:
            self._stdout.flush()
            self._stderr.flush()
            self.current_name = ""
        self.client.send(reply)

    def actor_method(self, method: str) -> Any:
        """The bound method ``method`` of the hosted actor (``__ray_terminate__`` included)."""
        if method == TERMINATE_METHOD and not hasattr(self._actor, TERMINATE_METHOD):
            return exit_actor
        return getattr(self._actor, method)

    def _exit_process(self, exc: SystemExit) -> NoReturn:
        """User code raised SystemExit: end this worker process now, as Ray's worker does.

        Output written so far is sent first. The node manager sees the process exit:
        a task is retried or fails with WorkerCrashedError; an actor is restarted
        within max_restarts (not after exit_actor()), its calls fail with
        ActorDiedError. After ``exit_actor()`` (``__ray_terminate__`` included) the
        actor's ``atexit`` handlers run first, for a bounded time (actor_exit.py); on
        other exits they do not.
        """
        code = exc.code
        if code is not None and not isinstance(code, int):
            self._stderr.write(f"{code}\n")
            code = 1
        self._stdout.flush()
        self._stderr.flush()
        where = self.current_name or self._actor_name or "a task"
        with contextlib.suppress(Exception):  # the manager may be gone already
            self.client._call("exiting", f"{where} called sys.exit({code or 0})", timeout=5)
        if isinstance(exc, ActorExit):
            run_exit_handlers(EXIT_HANDLERS_TIMEOUT_S, self._stderr)
            self._stdout.flush()
            self._stderr.flush()
        os._exit(code or 0)

    # --- generator tasks (streams.py) -------------------------------------------------

    def drive_generator(
        self, mode: int, stream_id: int, name: str, gen: Any, *, item_ids: Sequence[int] = ()
    ) -> Any:
        """Run a generator task's generator to its end; returns the task's one value.

        Streaming: each value is reported as it is yielded and the value is None.
        Dynamic: the values are stored one by one and the value is a
        ``DynamicObjectRefGenerator`` of their refs, with an error ending it as one
        more ref that raises (as in Ray). Iterating runs user code, so a cancel
        (SIGINT) interrupts it. ``item_ids``: a re-run that rebuilds lost items
        yields item ``i`` under ``item_ids[i]`` (the id its caller holds).
        """
        if not isinstance(gen, Iterator):
            raise TypeError(
                f"{name!r} has num_returns={'streaming' if mode == STREAMING else 'dynamic'!r} "
                f"but returned a {type(gen).__name__}, not a generator."
            )
        stream = self.sink(mode, stream_id, name, item_ids)
        sentinel = object()
        self._sigint_pending = False
        while True:
            self._in_user_code = True
            try:
                if self._sigint_pending:  # cancelled while we stored the last item
                    self._sigint_pending = False
                    raise KeyboardInterrupt
                value = next(gen, sentinel)
            except Exception as exc:
                if mode == STREAMING:
                    raise
                stream.fail(exc)
                break
            finally:
                self._in_user_code = False
            if value is sentinel:
                break
            stream.put(value)
        return stream.result()

    def sink(
        self, mode: int, stream_id: int, name: str, item_ids: Sequence[int] = ()
    ) -> GeneratorSink:
        """Where the values of one generator task go."""
        return GeneratorSink(self, mode, stream_id, name, item_ids)

    def item_record(
        self, name: str, value: Any, object_id: int = 0
    ) -> tuple[int, int, Any, tuple[int, ...], int]:
        """Serialize one yielded value under ``object_id`` (0: a new id): (id, kind,
        payload, ...)."""
        result: tuple[int, int, Any, tuple[int, ...], int] = self._results(
            name, (object_id or self.client.minter.next(),), value
        )[0]
        return result


def error_payload(name: str, exc: BaseException) -> bytes:
    """A task's exception as the bytes a reader unpickles into a TaskError.

    The original exception travels with cloudpickle, so a class defined in the
    driver's ``__main__`` or inside a function keeps its identity (``except MyError``
    catches it, ``.cause`` is the instance). The payload is checked to load again;
    only an exception that cannot be pickled or unpickled (an unpicklable field, an
    ``__init__`` whose arguments differ from ``args``) is replaced by a TaskError
    without ``cause`` whose message names its type and text, with the traceback.
    """
    cause: BaseException | None = exc
    tb = format_remote_traceback(exc)
    if isinstance(exc, TaskError):
        cause = exc.cause
        tb = tb + "\nCaused by:\n" + exc.remote_traceback
    err = TaskError(name, tb, cause, pid=os.getpid())
    try:
        data = cloudpickle_dumps(err)
        pickle.loads(data)  # an error that fails to load at get would hide the real one
        return data
    except Exception as why:
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else "an error"
        note = f"{detail} (not picklable, so only its text is kept: {why!r})"
        plain = TaskError(name, tb, None, pid=os.getpid(), cause_repr=note)
        return pickle.dumps(plain, protocol=5)


class GeneratorSink:
    """Where one generator task's values go: reported one by one, or collected as refs."""

    def __init__(
        self,
        worker: Worker,
        mode: int,
        stream_id: int,
        name: str,
        item_ids: Sequence[int] = (),
    ) -> None:
        self._worker = worker
        self._mode = mode
        self._stream_id = stream_id
        self._name = name
        self._item_ids = item_ids  # ids to reuse, by index (a re-run's rebuild)
        self._index = 0
        self._refs: list[Any] = []

    def put(self, value: Any) -> None:
        """Report (streaming) or store (dynamic) the next yielded value."""
        worker = self._worker
        client = worker.client
        if self._mode == STREAMING:
            index = self._index
            known = self._item_ids
            oid, kind, payload, contained, size = worker.item_record(
                self._name, value, known[index] if index < len(known) else 0
            )
            client._post("gen_item", self._stream_id, index, oid, kind, payload, contained, size)
        else:
            ser = serialize(value, what=f"a value yielded by {self._name!r}")
            self._refs.append(client.put_serialized(ser))
        self._index += 1

    def fail(self, exc: BaseException) -> None:
        """A dynamic generator raised: its error becomes one more ref."""
        client = self._worker.client
        ref = client.promise()
        client.fulfill(ref, error=pickle.loads(self._worker._error_payload(self._name, exc)))
        self._refs.append(ref)

    def result(self) -> Any:
        """The task's value: None (streaming) or the refs (dynamic)."""
        if self._mode == STREAMING:
            return None
        return DynamicObjectRefGenerator(self._refs)


def _should_retry(retry_exceptions: Any, exc: BaseException) -> bool:
    if not retry_exceptions:
        return False
    if retry_exceptions is True:
        return isinstance(exc, Exception)
    try:
        classes = pickle.loads(retry_exceptions)
    except Exception:
        return False
    return isinstance(exc, tuple(classes))


def run_worker(config: dict[str, Any], index: int) -> int:
    """Entry point of a forked worker; returns the exit code."""
    _die_with_parent()
    note_boot_modules()  # what is loaded now is shared by every job (use_code)
    enter_working_dir()  # runtime_env's working_dir: run in the job's copy of it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(config["socket_path"])
    channel = BlockingChannel(sock)
    channel.send([(Op.REGISTER, index, os.getpid())])
    client = WorkerClient(
        channel,
        sock,
        minter=IdMinter(config["node_index"], index),
        session=config["session"],
        namespace=config.get("namespace", "default"),
    )
    set_process_tracker(client.tracker)
    runtime_module.attach_worker(client)
    forget_inherited_handlers()  # the parent's clean-up is not this worker's
    try:
        return Worker(client, index).loop()
    finally:
        client.tracker.closed = True
