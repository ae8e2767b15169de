"""``await ref`` and ``ref.future()``: waiting for a ref without blocking a thread.

``hs.get`` blocks its thread. In asyncio code that would stall the event loop, so an
:class:`~heliostat.engine.object_ref.ObjectRef` is also awaitable (``await ref``,
``asyncio.gather(*refs)``), and ``ref.future()`` returns a
``concurrent.futures.Future`` (wrap it with ``asyncio.wrap_future``, or call
``.result()`` from any thread).

Both send the node manager a ``get`` request whose reply comes through a callback
(``CoreClient._call_async``) instead of a waiting thread. That callback runs where the
reply arrives: in the driver, on the node manager's thread with its lock held; in a
worker, on the thread reading the socket. So it only hands the reply over:

* ``await``: to the awaiting coroutine's loop (``call_soon_threadsafe``); the value is
  unpickled in the coroutine, like ``get`` does in its caller.
* ``future()``: to a small resolver thread that unpickles the value and completes the
  future there, so the future's callbacks never run under the node manager's lock.

A cancelled ``await`` withdraws its request (``cancel_async``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from heliostat.engine.core import CoreClient, load_value
from heliostat.engine.object_ref import ObjectRef, install_async_support
from heliostat.engine.runtime import current_client

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

__all__ = ["await_ref", "ref_future"]


def _decode(client: CoreClient, items: list[Any]) -> Any:
    """The value of a one-ref ``get`` reply (raises the stored error)."""
    object_id, kind, data = items[0]
    try:
        return load_value(client.mappings, object_id, kind, data)
    except FileNotFoundError:
        return client._relocate(object_id, None)


def deliver(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], ok: bool, value: Any
) -> None:
    """From any thread: settle ``future`` on ``loop`` with a reply (value or error).

    A future already done (cancelled) is left alone; a closed loop drops the reply.
    """

    def settle() -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
        loop.call_soon_threadsafe(settle)


async def _await(ref: ObjectRef) -> Any:
    # asyncio and concurrent.futures are imported where used: at module level they
    # would cost every ``import heliostat`` (and every worker) ~20 ms.
    import asyncio

    client = current_client()
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def on_reply(ok: bool, value: Any) -> None:
        deliver(loop, future, ok, value)

    req_id = client.next_request_id()
    client._call_async("get", (req_id, [ref.id]), on_reply)
    try:
        items = await future
    except asyncio.CancelledError:
        client.cancel_async(req_id)
        raise
    return _decode(client, items)


def await_ref(ref: ObjectRef) -> Generator[Any, None, Any]:
    """What ``ObjectRef.__await__`` returns: waits on the running loop, then loads."""
    return _await(ref).__await__()


class _Resolver:
    """One daemon thread per process that completes ``ref.future()`` futures.

    It exits after a few idle seconds and is started again on demand.
    """

    _IDLE_S = 5.0

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._queued = 0

    def put(
        self, client: CoreClient, future: concurrent.futures.Future[Any], ok: bool, value: Any
    ) -> None:
        with self._lock:
            self._queued += 1
            self._queue.put((client, future, ok, value))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="heliostat-futures", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                client, future, ok, value = self._queue.get(timeout=self._IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._queued == 0:
                        self._thread = None
                        return
                continue
            with self._lock:
                self._queued -= 1
            if not future.set_running_or_notify_cancel():
                continue  # cancelled by its user meanwhile
            try:
                result = _decode(client, value) if ok else None
            except BaseException as exc:  # the task's error, delivered through the future
                future.set_exception(exc)
                continue
            if ok:
                future.set_result(result)
            else:
                future.set_exception(value)


_resolver = _Resolver()


def ref_future(ref: ObjectRef) -> concurrent.futures.Future[Any]:
    """A ``concurrent.futures.Future`` completed with the ref's value (or its error)."""
    import concurrent.futures

    client = current_client()
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    req_id = client.next_request_id()

    def on_reply(ok: bool, value: Any) -> None:
        _resolver.put(client, future, ok, value)

    client._call_async("get", (req_id, [ref.id]), on_reply)
    return future


install_async_support(await_ref, ref_future)
