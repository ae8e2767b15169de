"""The driver's runtime: one object with an explicit lifecycle.

``init()`` creates a :class:`Runtime` (session directory, node manager, fork server)
and makes it current; ``shutdown()`` ends it. Module-level helpers reach the current
core client through :func:`current_client`, which fails with
:class:`~heliostat.exceptions.NotInitializedError` when there is none. Inside a worker
process the current client is the worker's (set by :func:`attach_worker`), so the same
``hs.get`` works in tasks.

Files of a session: ``/tmp/heliostat-{session}-*/`` (the node manager's socket, spill
files) and ``/dev/shm/heliostat-{session}-*`` (object segments). ``shutdown`` removes
them; if the driver dies without shutting down, the fork server removes them.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import psutil

from heliostat.engine.core import CoreClient, DriverClient
from heliostat.engine.ids import IdMinter
from heliostat.engine.node_manager import NodeConfig, NodeManager
from heliostat.engine.object_ref import set_process_tracker
from heliostat.engine.shm import SHM_DIR, session_glob
from heliostat.exceptions import NotInitializedError

__all__ = [
    "Runtime",
    "attach_worker",
    "current_client",
    "current_runtime",
    "default_object_store_memory",
    "session_dirs",
    "set_current",
    "sweep_stale_sessions",
]

log = logging.getLogger("heliostat")

_lock = threading.Lock()
_runtime: Runtime | None = None
_client: CoreClient | None = None


def default_object_store_memory() -> int:
    """30% of physical memory (as Ray), capped by what ``/dev/shm`` can hold."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        physical = 8 << 30
    limit = int(physical * 0.3)
    with contextlib.suppress(OSError):
        stat = os.statvfs(str(SHM_DIR))
        limit = min(limit, int(stat.f_bavail * stat.f_frsize * 0.9))
    return max(limit, 64 << 20)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Workers import user modules by name: give them the driver's import path.
    paths = [p for p in sys.path if p]
    if os.getcwd() not in paths:
        paths.insert(0, os.getcwd())
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # One thread per worker for numeric libraries unless the user decided (Ray does this).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def session_dirs() -> Iterator[tuple[str, str, int]]:
    """``(directory, session, driver pid)`` of every session directory on this machine.

    A session is named ``{driver pid in hex}-{token}``; its directory is
    ``{tmp}/heliostat-{session}-{mkdtemp suffix}``.
    """
    for directory in glob.glob(os.path.join(tempfile.gettempdir(), "heliostat-*-*-*")):
        parts = os.path.basename(directory).split("-")
        try:
            pid = int(parts[1], 16)
        except (IndexError, ValueError):
            continue
        yield directory, f"{parts[1]}-{parts[2]}", pid


def sweep_stale_sessions() -> list[str]:
    """Remove the files of sessions whose driver process no longer exists.

    Normally the fork server cleans up after a dead driver; if both were killed at
    once (a process-group kill), their temp dir and shared-memory segments would stay.
    Session names start with the driver's pid in hex, which is all this needs.

    Returns:
        The sessions removed.
    """
    removed = []
    for directory, session, pid in session_dirs():
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        for path in glob.glob(os.path.join(str(SHM_DIR), session_glob(session))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(session)
    if removed:
        log.info("removed files of %d stale session(s): %s", len(removed), ", ".join(removed))
    return removed


class Runtime:
    """A local node and the driver's connection to it."""

    def __init__(
        self,
        *,
        num_cpus: float | None,
        resources: dict[str, float] | None,
        object_store_memory: int | None,
        namespace: str | None,
        max_workers: int | None = None,
        storage: str | None = None,
    ) -> None:
        cpus = float(num_cpus) if num_cpus is not None else float(os.cpu_count() or 1)
        if cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {num_cpus}")
        extra = dict(resources or {})
        if "CPU" in extra:
            raise ValueError("Give CPUs with num_cpus=, not resources={'CPU': ...}.")
        self.session = f"{os.getpid():x}-{secrets.token_hex(3)}"
        self.session_dir = tempfile.mkdtemp(prefix=f"heliostat-{self.session}-")
        self.namespace = namespace or "default"
        self.storage = storage  # workflow checkpoint URL (None: the default)
        self.config = NodeConfig(
            session=self.session,
            session_dir=self.session_dir,
            socket_path=os.path.join(self.session_dir, "node.sock"),
            spill_dir=os.path.join(self.session_dir, "spill"),
            num_cpus=cpus,
            resources=extra,
            object_store_memory=int(object_store_memory or default_object_store_memory()),
            max_workers=max_workers or max(32, 8 * int(max(cpus, 1))),
            env=_worker_env(),
        )
        self.manager = NodeManager(
            self.config,
            driver_unmap=self._unmap,
            driver_drain=self._drain,
            log_sink=self._print_log,
        )
        self.client = DriverClient(
            manager=self.manager,
            minter=IdMinter(0, 0),
            session=self.session,
            namespace=self.namespace,
        )
        self._closed = False

    def start(self) -> None:
        sweep_stale_sessions()
        self.manager.start()

    def _unmap(self, ids: list[int]) -> None:
        self.client.mappings.drop(ids)

    def _drain(self) -> None:
        tracker = self.client.tracker
        if tracker.has_pending():
            tracker.drain()

    @staticmethod
    def _print_log(stream: str, task_name: str, pid: int, text: str) -> None:
        out = sys.stderr if stream == "stderr" else sys.stdout
        prefix = f"({task_name} pid={pid}) " if task_name else f"(pid={pid}) "
        with contextlib.suppress(Exception):
            out.write("".join(prefix + line + "\n" for line in text.split("\n")))
            out.flush()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.tracker.closed = True
        self.client.closed = True
        self.manager.stop()
        self.client.mappings.clear()
        for path in glob.glob(os.path.join(str(SHM_DIR), session_glob(self.session))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        shutil.rmtree(self.session_dir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return self.manager.cluster_info()


def set_current(runtime: Runtime | None) -> None:
    global _runtime, _client
    with _lock:
        _runtime = runtime
        _client = runtime.client if runtime is not None else None
        set_process_tracker(_client.tracker if _client is not None else None)


def attach_worker(client: CoreClient) -> None:
    """Make a worker's client current in its process (called once at worker start)."""
    global _client
    _client = client


def current_client() -> CoreClient:
    client = _client
    if client is None or client.closed:
        raise NotInitializedError(
            "heliostat is not initialized: call heliostat.init() first "
            "(or this call came after heliostat.shutdown())."
        )
    return client


def current_runtime() -> Runtime | None:
    return _runtime


def _shutdown_at_exit() -> None:
    runtime = _runtime
    if runtime is not None:
        set_current(None)
        runtime.shutdown()


atexit.register(_shutdown_at_exit)
