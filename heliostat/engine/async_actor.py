"""Async actors: an actor class with an ``async def`` method runs its calls on one event loop.

As in Ray, a class with at least one coroutine (or async generator) method is an
*async actor*. Its worker starts one asyncio event loop on a thread of its own; every
call becomes a task on that loop, so many calls can wait (``await asyncio.sleep``,
``await ref``) at once while the main thread keeps reading the socket. Calls start in
the order they arrived; at most ``max_concurrency`` (1000 by default for async actors,
as in Ray) run at once, the rest wait for a slot on a semaphore. Plain ``def`` methods
of an async actor run on the loop thread too, blocking it while they run (as in Ray).

Cancelling a call (``cancel(ref)``): the node manager sends ``CANCEL_CALL``. A call not
started yet is dropped; a running one has its asyncio task cancelled, so the method
sees ``CancelledError`` at its current ``await``; either way the ref raises
``TaskCancelledError``. A call that catches the ``CancelledError`` and returns normally
keeps its value.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from typing import TYPE_CHECKING, Any

from heliostat.engine.protocol import Op
from heliostat.engine.streams import STREAMING

if TYPE_CHECKING:
    import asyncio

    from heliostat.engine.worker import Worker

__all__ = ["DEFAULT_ASYNC_MAX_CONCURRENCY", "AsyncActorExecutor", "is_async_class"]

DEFAULT_ASYNC_MAX_CONCURRENCY = 1000


def is_async_class(cls: type) -> bool:
    """Whether an actor class is an async actor: any ``async def`` method (as Ray decides)."""
    for _name, member in inspect.getmembers(cls):
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            return True
    return False


class AsyncActorExecutor:
    """Runs an async actor's calls as tasks on one event loop, on its own thread.

    ``submit`` and ``cancel`` are called from the worker's main thread; everything else
    runs on the loop thread.
    """

    def __init__(self, worker: Worker, max_concurrency: int) -> None:
        # asyncio is imported by the executors that need it, not with this module:
        # every ``import heliostat`` would pay ~15 ms for it.
        import asyncio

        self._worker = worker
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: dict[int, asyncio.Task[None]] = {}  # running calls, by task id
        # Calls whose cancel came before their call (they are dropped on arrival), and
        # calls cancelled while running. Touched on the loop thread only.
        self._cancel_early: set[int] = set()
        self._cancelled: set[int] = set()
        self._thread = threading.Thread(
            target=self._run_loop, name="heliostat-actor-loop", daemon=True
        )
        self._thread.start()
        worker.client.main_reads = True  # the main thread now only reads the socket
        worker.client.cancel_hook = self.cancel

    def _run_loop(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, message: tuple[Any, ...]) -> None:
        """Start an ``ACTOR_CALL`` on the loop (calls start in submission order)."""
        self._loop.call_soon_threadsafe(self._start, message)

    def cancel(self, task_id: int) -> None:
        """Cancel a call (from any thread, a signal handler included)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
            self._loop.call_soon_threadsafe(self._cancel, task_id)

    def stop(self) -> None:
        """Stop the loop (the worker is exiting); running calls are abandoned."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)

    def _start(self, message: tuple[Any, ...]) -> None:
        task_id = message[1]
        if task_id in self._cancel_early:
            self._cancel_early.discard(task_id)
            now = time.time()
            self._worker.client.send((Op.TASK_FAILED, task_id, b"", False, True, now, now))
            return
        task = self._loop.create_task(self._call(message))
        self._tasks[task_id] = task
        task.add_done_callback(functools.partial(self._never_ran, task_id))

    def _never_ran(self, task_id: int, _task: asyncio.Task[None]) -> None:
        """A call cancelled before its coroutine took a step sent no reply: send one."""
        if self._tasks.pop(task_id, None) is None:
            return  # ``_call`` ran and replied
        self._cancelled.discard(task_id)
        now = time.time()
        self._worker.client.send((Op.TASK_FAILED, task_id, b"", False, True, now, now))

    def _cancel(self, task_id: int) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            self._cancel_early.add(task_id)
            return
        self._cancelled.add(task_id)
        task.cancel()

    async def _call(self, message: tuple[Any, ...]) -> None:
        import asyncio

        _op, task_id, method, payload, positions, resolved, return_ids, name, generator = message
        worker = self._worker
        started = time.time()
        reply: tuple[Any, ...]
        try:
            async with self._slots:
                started = time.time()
                fn = worker.actor_method(method)
                args, kwargs = worker._arguments(payload, positions, resolved)
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                if generator:
                    if inspect.isasyncgen(result):
                        result = await self._drive_async(generator, return_ids[0], name, result)
                    else:
                        result = worker.drive_generator(generator, return_ids[0], name, result)
                results = worker._results(name, return_ids, result)
            reply = (Op.TASK_DONE, task_id, results, started, time.time())
        except SystemExit as exc:  # exit_actor() or sys.exit(): the actor's process ends
            worker._exit_process(exc)
        except asyncio.CancelledError as exc:
            if task_id in self._cancelled:
                reply = (Op.TASK_FAILED, task_id, b"", False, True, started, time.time())
            else:  # raised by the method itself: an ordinary error
                reply = self._failed(task_id, name, exc, started)
        except BaseException as exc:  # a call's failure is data, never the worker's death
            reply = self._failed(task_id, name, exc, started)
        finally:
            self._tasks.pop(task_id, None)
            self._cancelled.discard(task_id)
        worker.client.send(reply)

    def _failed(
        self, task_id: int, name: str, exc: BaseException, started: float
    ) -> tuple[Any, ...]:
        payload = self._worker._error_payload(name, exc)
        return (Op.TASK_FAILED, task_id, payload, False, False, started, time.time())

    async def _drive_async(self, mode: int, stream_id: int, name: str, agen: Any) -> Any:
        """An async generator method's values, reported or collected (worker.GeneratorSink)."""
        sink = self._worker.sink(mode, stream_id, name)
        while True:
            try:
                value = await agen.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                if mode == STREAMING:
                    raise
                sink.fail(exc)
                break
            sink.put(value)
        return sink.result()
