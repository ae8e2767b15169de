"""A worker's channel to its node manager: requests out, messages in (leader/follower).

Reading is done by whichever thread needs a message: the worker's idle main loop, or
a task that called ``get`` and waits for its reply. There is no separate reader
thread, so a task costs no thread switch in the worker. Replies that arrive for
another thread are handed over through a condition variable; tasks sent ahead wait in
:attr:`WorkerClient.inbox` until the worker takes them (:meth:`WorkerClient.take`,
which claims each one before it runs, so a revoke and a start never both happen).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import deque
from typing import Any

from heliostat.engine.core import CoreClient
from heliostat.engine.protocol import BlockingChannel, ConnectionClosed, Op
from heliostat.engine.records import ActorOptions, TaskSpec, spec_to_wire
from heliostat.exceptions import GetTimeoutError, HeliostatError

__all__ = ["WorkerClient"]

_AHEAD = 10  # index of the ``ahead`` flag in an EXECUTE message


class WorkerClient(CoreClient):
    """The core client of a worker process: requests travel over the socket."""

    def __init__(self, channel: BlockingChannel, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._chan = channel
        self._sock = sock
        self._cv = threading.Condition()
        self._reader_active = False
        self._slots: dict[int, Any] = {}  # a reply slot (list) or a callback
        self.inbox: deque[tuple[Any, ...]] = deque()
        self.exiting = False
        # Function code that arrived with a task we handed back (REVOKE).
        self.revoked_code: dict[bytes, bytes] = {}
        # Requests answered through a callback (``_call_async``) still unanswered, and
        # the thread that reads the socket for them when no other thread does.
        self._async_waiting = 0
        self._async_pump: threading.Thread | None = None
        # True when the main thread always reads the socket (an async actor's worker).
        self.main_reads = False
        # Cancels a running actor call (set by an async actor's executor).
        self.cancel_hook: Any = None

    # --- transport ------------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        self._chan.send([message])

    def _post(self, verb: str, *args: Any) -> None:
        self._chan.send([(Op.POST, verb, args)])

    def _submit_spec(self, spec: TaskSpec) -> None:
        self._chan.send([(Op.POST, "submit", (spec_to_wire(spec),))])

    def _create_actor_spec(self, spec: TaskSpec, options: ActorOptions) -> None:
        self._call("create_actor", spec_to_wire(spec), options)

    def _call(self, verb: str, *args: Any, timeout: float | None = None, req_id: int = 0) -> Any:
        rid = req_id or next(self._req_ids)
        slot: list[Any] = [False, None, None]
        self._slots[rid] = slot
        self._chan.send([(Op.REQUEST, rid, verb, args)])
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.pump_until(lambda: slot[0], deadline):
            self._slots.pop(rid, None)
            self._post("forget", rid)
            raise GetTimeoutError(f"{verb}() timed out after {timeout} s.")
        if not slot[1]:
            raise slot[2]
        return slot[2]

    def _call_async(self, verb: str, args: tuple[Any, ...], on_reply: Any) -> None:
        rid = next(self._req_ids)
        if verb in ("get", "wait"):
            rid = args[0]  # their request id is their first argument
        with self._cv:
            self._slots[rid] = on_reply
            self._async_waiting += 1
            start = not self.main_reads and self._async_pump is None
            if start:
                self._async_pump = threading.Thread(
                    target=self._pump_async, name="heliostat-async-reader", daemon=True
                )
        self._chan.send([(Op.REQUEST, rid, verb, args)])
        if start:
            assert self._async_pump is not None
            self._async_pump.start()

    def cancel_async(self, req_id: int) -> None:
        with self._cv:
            if callable(self._slots.pop(req_id, None)):
                self._async_waiting -= 1
        self._post("forget", req_id)

    def _pump_async(self) -> None:
        """Read the socket while requests made with ``_call_async`` wait (no other reader)."""
        while True:
            self.pump_until(lambda: self._async_waiting <= 0 or self.exiting, None)
            with self._cv:
                if self._async_waiting <= 0 or self.exiting:
                    self._async_pump = None
                    return

    def _cancel_call(self, task_id: int) -> None:
        """CANCEL_CALL: drop the call if it waits in the inbox, else ask the executor."""
        for message in list(self.inbox):
            if message[0] == Op.ACTOR_CALL and message[1] == task_id:
                try:
                    self.inbox.remove(message)
                except ValueError:
                    break  # taken by the main thread just now: it runs
                now = time.time()
                # send_soon: this may run in a signal handler that interrupted a send.
                self._chan.send_soon([(Op.TASK_FAILED, task_id, b"", False, True, now, now)])
                return
        if self.cancel_hook is not None:
            self.cancel_hook(task_id)

    def pump_now(self) -> None:
        """Read what has arrived, if no other thread is reading (from a signal handler).

        Lets the node manager reach a worker that is busy in user code: a REVOKE of
        tasks sent ahead is handled at once instead of after the running task.
        """
        cv = self._cv
        if not cv.acquire(blocking=False):
            return  # the reader is mid-dispatch; it will see the message
        try:
            if self._reader_active:
                return
            self._reader_active = True
        finally:
            cv.release()
        try:
            while select.select([self._sock], [], [], 0)[0]:
                self._read_and_dispatch()
        except ConnectionClosed:
            self.exiting = True
        finally:
            with cv:
                self._reader_active = False
                cv.notify_all()

    def take(self, reply: tuple[Any, ...] | None = None) -> tuple[Any, ...] | None:
        """Send ``reply`` (the last task's) and return the next inbox message to run.

        Returns None when the inbox is empty, or when a REVOKE read just now took its
        first message away.

        A task the node manager sent ahead (``EXECUTE`` with ``ahead`` set) may have
        been taken back by a manager that gave up waiting for a REVOKE answer (this
        worker was stopped) and run elsewhere; it must then not run here (the
        invariant and its proof: ``dispatch.py``). The end of the previous task
        (its reply, or our ``returned``) is what tells the manager that the next one
        starts, so before a task sent ahead runs:

        1. Everything we sent is written (``reply``, and frames a signal handler had
           to defer).
        2. Every message complete in the socket after that write is dispatched, so a
           REVOKE the manager wrote before it could read our write has removed the
           task from the inbox. A read that already found the socket empty since our
           last write is enough (``caught_up``): none needed after waiting for work.
        3. When another thread is the reader, ask the manager instead (``claim``):
           its answer comes after any such REVOKE, which that reader dispatches.

        The task runs only if it is still first in the inbox. As the reader, this
        thread alone changes the inbox (a SIGUSR1 handler backs off).
        """
        chan = self._chan
        inbox = self.inbox
        if reply is not None:
            chan.send([reply])
        if not inbox:
            return None
        message = inbox[0]
        if message[0] != Op.EXECUTE or not message[_AHEAD]:
            # Nothing to check (a REVOKE only removes tasks sent ahead, so this stays
            # first whatever a signal handler dispatches meanwhile).
            return inbox.popleft()
        return self._take_ahead(message)

    def _take_ahead(self, message: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Steps 1 and 2 of ``take`` for ``message``, first in the inbox: run it?"""
        cv = self._cv
        inbox = self.inbox
        chan = self._chan
        # The condition's lock taken directly: ``with cv`` costs microseconds a task.
        cv.acquire()
        if self._reader_active:
            try:
                return self._take_as_follower(message)
            finally:
                cv.release()
        self._reader_active = True  # a SIGUSR1 handler (pump_now) now backs off
        cv.release()
        try:
            if chan.has_deferred:
                chan.flush_deferred()
            if not chan.caught_up:
                self._drain()
            if not inbox or inbox[0] is not message:
                return None  # handed back: a REVOKE named it
            return inbox.popleft()
        except ConnectionClosed:
            self.exiting = True
            inbox.append((Op.EXIT,))
            return None
        finally:
            cv.acquire()
            self._reader_active = False
            cv.notify_all()
            cv.release()

    def _take_as_follower(self, message: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Step 3 of ``take``: another thread reads the socket, so the manager decides.

        Called with the condition lock held; the reader needs it to dispatch.
        """
        inbox = self.inbox
        self._cv.release()  # let the reader dispatch the answer (and any REVOKE)
        try:
            granted = bool(self._call("claim", message[1]))
        except HeliostatError:  # the node manager went away
            granted = False
        finally:
            self._cv.acquire()
        if not inbox or inbox[0] is not message:
            return None  # handed back: a REVOKE named it
        inbox.popleft()
        if granted:
            return message
        self._keep_code(message)  # not ours any more (no REVOKE can have said so)
        return None

    def _keep_code(self, message: tuple[Any, ...]) -> None:
        """A task dropped unrun: keep the code that came with it (it will not come again)."""
        if message[3] is not None:
            self.revoked_code[message[2]] = message[3]

    def _drain(self) -> None:
        """Dispatch every message complete in the socket now (the caller is the reader)."""
        messages = self._chan.recv_ready()
        if messages:
            cv = self._cv
            cv.acquire()
            try:
                for message in messages:
                    self._dispatch(message)
            finally:
                cv.release()

    def pump_until(self, done: Any, deadline: float | None) -> bool:
        """Read and dispatch messages until ``done()`` or the deadline passes."""
        cv = self._cv
        while True:
            with cv:
                while True:
                    if done():
                        return True
                    if not self._reader_active:
                        # Take the reader role *before* the last look at done(): from
                        # here on a SIGUSR1 handler (pump_now) backs off, so it cannot
                        # move messages into the inbox behind our back and leave us
                        # blocked in recv with work waiting.
                        self._reader_active = True
                        if done():
                            self._reader_active = False
                            cv.notify_all()
                            return True
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    cv.wait(remaining)
            try:
                self._chan.flush_deferred()
                if self.tracker.has_pending():
                    self.tracker.drain()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return bool(done())
                if remaining is not None:
                    readable, _, _ = select.select([self._sock], [], [], remaining)
                    if not readable:
                        continue
                self._read_and_dispatch()
            except ConnectionClosed:
                self.exiting = True
                with cv:
                    self.inbox.append((Op.EXIT,))
                    for slot in self._slots.values():
                        if not slot[0]:
                            slot[:] = [True, False, HeliostatError("node manager went away")]
                return True
            finally:
                with cv:
                    self._reader_active = False
                    cv.notify_all()

    def _read_and_dispatch(self) -> None:
        """Read at least one frame (the caller holds the reader role) and route it."""
        messages = self._chan.recv()
        with self._cv:
            for message in messages:
                self._dispatch(message)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        op = message[0]
        if op == Op.REPLY:
            slot = self._slots.pop(message[1], None)
            if type(slot) is list:
                slot[:] = [True, message[2], message[3]]
            elif slot is not None:  # a callback of _call_async
                self._async_waiting -= 1
                slot(message[2], message[3])
        elif op == Op.UNMAP:
            self.mappings.drop(message[1])
        elif op == Op.REVOKE:
            _op, task_ids, revoke_id = message
            wanted = set(task_ids)
            inbox = self.inbox
            keep = [m for m in inbox if not (m[0] == Op.EXECUTE and m[1] in wanted)]
            returned = []
            for m in inbox:
                if m[0] == Op.EXECUTE and m[1] in wanted:
                    returned.append(m[1])
                    if m[3] is not None:  # the code came with it, and will not again
                        self.revoked_code[m[2]] = m[3]
            inbox.clear()
            inbox.extend(keep)
            # send_soon: this may run in a signal handler that interrupted a send.
            self._chan.send_soon([(Op.POST, "returned", (returned, revoke_id))])
        elif op == Op.CANCEL_CALL:
            self._cancel_call(message[1])
        else:
            self.inbox.append(message)
