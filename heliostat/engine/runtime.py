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

If both die at once (a process-group kill), the next ``init()`` on the machine sweeps
what they left. A name alone proves nothing (a user's ``HELIOSTAT_HOME`` may well be
called ``/tmp/heliostat-2026-11-21``), so the sweep deletes a directory only when all
of these hold:

1. It is a real directory, not a symlink (opened with ``O_NOFOLLOW``; nothing is
   followed or deleted through a link).
2. It holds the marker heliostat writes when it creates a session directory
   (:data:`SESSION_MARKER`: a magic line and the session name), and that name matches
   the directory's name. The directory is made by ``mkdtemp``, mode 0700.
3. It belongs to the current user (``st_uid`` of the opened directory).
4. The driver pid in the session name is not a running process.

Shared-memory segments are unlinked only for sessions that passed these checks, and
only the regular files of the current user among them.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from heliostat._process import process_running
from heliostat.engine.core import CoreClient, DriverClient
from heliostat.engine.ids import IdMinter
from heliostat.engine.node_manager import NodeConfig, NodeManager
from heliostat.engine.object_ref import set_process_tracker
from heliostat.engine.runtime_env import WORKING_DIR_ENV, code_env
from heliostat.engine.shm import SHM_DIR, session_glob
from heliostat.engine.worker_output import print_worker_output
from heliostat.exceptions import NotInitializedError
from heliostat.storage.packages import CodeSources, InstalledCode, PackageCache, build_sources

if TYPE_CHECKING:
    from heliostat.engine.attach import AttachedRuntime

__all__ = [
    "SESSION_MARKER",
    "Runtime",
    "SessionDir",
    "attach_worker",
    "client_or_auto_init",
    "close_extensions",
    "create_session_dir",
    "current_client",
    "current_runtime",
    "default_memory",
    "default_object_store_memory",
    "is_stale",
    "read_session_dir",
    "session_dirs",
    "set_auto_init",
    "set_current",
    "sweep_stale_sessions",
]

log = logging.getLogger("heliostat")

_lock = threading.Lock()
_runtime: Runtime | AttachedRuntime | None = None
_client: CoreClient | None = None
_auto_init: Callable[[], None] | None = None
_auto_init_lock = threading.Lock()  # two threads' first calls start one runtime


def default_object_store_memory() -> int:
    """30% of physical memory (as Ray), capped by what ``/dev/shm`` can hold."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        physical = 8 << 30
    limit = int(physical * 0.3)
    with contextlib.suppress(OSError):
        fs = os.statvfs(str(SHM_DIR))
        limit = min(limit, int(fs.f_bavail * fs.f_frsize * 0.9))
    return max(limit, 64 << 20)


def default_memory(object_store_memory: int) -> int:
    """The node's ``memory`` resource: memory available now, less the object store.

    As Ray computes it: ``memory=`` requests of tasks and actors are counted against
    it when they are scheduled (a logical resource: nothing measures what they use).
    """
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        available = 8 << 30
    return max(int(available) - object_store_memory, 0)


def _worker_env(
    env_vars: dict[str, str] | None = None, code: InstalledCode | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(env_vars or {})  # runtime_env={"env_vars": ...}
    env.pop(WORKING_DIR_ENV, None)  # only ever this runtime's own working_dir copy
    # Workers import user modules by name: give them the driver's import path, after
    # the copies of runtime_env's working_dir and py_modules. With a working_dir the
    # driver's current directory is left out, as Ray leaves it out: workers must find
    # the copy, not the original the driver may go on editing.
    inherited = [p for p in sys.path if p]
    code = code or InstalledCode()
    if code.working_dir is None and os.getcwd() not in inherited:
        inherited.insert(0, os.getcwd())
    paths, code_vars = code_env(code, inherited)
    env.update(code_vars)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # One thread per worker for numeric libraries unless the user decided (Ray does this).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


# The file inside a session directory that says heliostat made it (see the module
# docstring): the magic line, then the session name.
SESSION_MARKER = "heliostat-session"
_MARKER_MAGIC = "heliostat session directory v1"
_MARKER_MAX = 256
# ``{driver pid in hex}-{token}``: also keeps glob characters out of the shm sweep.
_SESSION_NAME = re.compile(r"[0-9a-f]{1,16}-[0-9a-f]{6}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDir:
    """A directory that heliostat created for a session (its marker checked)."""

    path: str
    session: str
    pid: int  # the driver's pid, from the session name
    uid: int  # the directory's owner


def create_session_dir(session: str, *, parent: str | None = None) -> str:
    """Create the directory of a new session (mode 0700) with its marker inside.

    Args:
        session: the session's name, ``{driver pid in hex}-{token}``.
        parent: where to create it (default: the temp dir, where the sweep looks).

    Returns:
        The directory's path, ``{parent}/heliostat-{session}-{random}``.
    """
    directory = tempfile.mkdtemp(prefix=f"heliostat-{session}-", dir=parent)
    fd = os.open(
        os.path.join(directory, SESSION_MARKER),
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
        0o600,
    )
    try:
        os.write(fd, f"{_MARKER_MAGIC}\n{session}\n".encode())
    finally:
        os.close(fd)
    return directory


def read_session_dir(path: str) -> SessionDir | None:
    """The session ``path`` belongs to, or None unless heliostat created it.

    Never follows a symlink: ``path`` itself and its marker are opened with
    ``O_NOFOLLOW``, and the owner is read from the opened directory.
    """
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # gone, a symlink (ELOOP), not a directory, not ours to open
        return None
    try:
        uid = os.fstat(dir_fd).st_uid
        fd = os.open(SESSION_MARKER, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, _MARKER_MAX)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    lines = data.decode("ascii", "replace").split("\n")
    if len(lines) < 2 or lines[0] != _MARKER_MAGIC:
        return None
    session = lines[1]
    if not _SESSION_NAME.fullmatch(session):
        return None
    if not os.path.basename(path).startswith(f"heliostat-{session}-"):
        return None  # a marker copied or moved into another directory
    return SessionDir(path=path, session=session, pid=int(session.split("-")[0], 16), uid=uid)


def session_dirs() -> Iterator[SessionDir]:
    """Every session directory on this machine that heliostat created.

    A session is named ``{driver pid in hex}-{token}``; its directory is
    ``{tmp}/heliostat-{session}-{mkdtemp suffix}`` and holds the marker. Other
    entries whose names look alike are skipped.
    """
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "heliostat-*-*-*")):
        found = read_session_dir(path)
        if found is not None:
            yield found


def is_stale(
    found: SessionDir, *, uid: int, own_pid: int, pid_alive: Callable[[int], bool]
) -> bool:
    """Whether the sweep may delete ``found``: ours, and its driver is gone.

    Args:
        found: a directory :func:`read_session_dir` accepted (marker checked).
        uid: the current user; another user's session is never touched.
        own_pid: this process (its own sessions are live by definition).
        pid_alive: whether a pid is a running process.
    """
    return found.uid == uid and found.pid != own_pid and not pid_alive(found.pid)


def _unlink_segments(session: str, uid: int) -> None:
    """Remove the shared-memory segments of a swept session: our regular files only."""
    for path in glob.glob(os.path.join(str(SHM_DIR), session_glob(session))):
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                os.unlink(path)
        except FileNotFoundError:
            pass


def sweep_stale_sessions() -> list[str]:
    """Remove the files of sessions whose driver process no longer exists.

    Normally the fork server cleans up after a dead driver; if both were killed at
    once (a process-group kill), their temp dir and shared-memory segments would stay.
    Only directories heliostat created, owned by this user, of a dead driver are
    removed (see the module docstring); anything else is left alone.

    Returns:
        The sessions removed.
    """
    removed = []
    uid = os.getuid()
    own_pid = os.getpid()
    for found in session_dirs():
        if not is_stale(found, uid=uid, own_pid=own_pid, pid_alive=process_running):
            continue
        _unlink_segments(found.session, uid)
        # rmtree never follows a symlink inside (it works on file descriptors), and the
        # top was checked to be a real directory.
        shutil.rmtree(found.path, ignore_errors=True)
        removed.append(found.session)
    if removed:
        log.info("removed files of %d stale session(s): %s", len(removed), ", ".join(removed))
    return removed


class Closeable(Protocol):
    """A service a higher layer attaches to the runtime (``Runtime.extensions``)."""

    def close(self) -> None:
        """Release what it holds; called once, by ``shutdown``."""
        ...


def close_extensions(extensions: dict[str, Any]) -> None:
    """Close a runtime's extensions, newest first, and forget them; one failing to
    close is logged and does not keep the others open."""
    for name, extension in reversed(list(extensions.items())):
        try:
            extension.close()
        except Exception:
            log.warning("closing %s failed", name, exc_info=True)
    extensions.clear()


def _drop_log(stream: str, task_name: str, pid: int, text: str) -> None:
    """The log sink of ``init(log_to_driver=False)``: workers' output is not printed."""


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
        num_gpus: float = 0.0,
        log_to_driver: bool = True,
        env_vars: dict[str, str] | None = None,
        code: CodeSources | None = None,
        temp_dir: str | None = None,
        node_index: int = 0,
    ) -> None:
        cpus = float(num_cpus) if num_cpus is not None else float(os.cpu_count() or 1)
        if cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {num_cpus}")
        extra = dict(resources or {})
        if "CPU" in extra:
            raise ValueError("Give CPUs with num_cpus=, not resources={'CPU': ...}.")
        if "GPU" in extra:
            raise ValueError("Give GPUs with num_gpus=, not resources={'GPU': ...}.")
        if num_gpus:
            extra["GPU"] = float(num_gpus)
        store_bytes = int(object_store_memory or default_object_store_memory())
        extra.setdefault("memory", default_memory(store_bytes))
        # Packed before anything is created: a working_dir that cannot be shipped
        # (too big, unreadable) fails init() with nothing to clean up.
        packages = build_sources(code) if code is not None else []
        self.session = f"{os.getpid():x}-{secrets.token_hex(3)}"
        self.session_dir = create_session_dir(self.session, parent=temp_dir)
        try:
            # runtime_env's code, installed for this session only (engine/runtime_env.py).
            cache = PackageCache(os.path.join(self.session_dir, "packages"))
            self.package_uris = tuple(package.uri for package, _ in packages)
            self.code = InstalledCode.of(
                self.package_uris, [cache.install(p.uri, data) for p, data in packages]
            )
        except BaseException:
            shutil.rmtree(self.session_dir, ignore_errors=True)
            raise
        # Set by the ``heliostat`` command for the runtime it starts: a user's init()
        # then returns it instead of failing (see ``api.init``).
        self.started_by_cli = False
        self.namespace = namespace or "default"
        self.storage = storage  # workflow checkpoint URL (None: the default)
        self.config = NodeConfig(
            session=self.session,
            session_dir=self.session_dir,
            socket_path=os.path.join(self.session_dir, "node.sock"),
            spill_dir=os.path.join(self.session_dir, "spill"),
            num_cpus=cpus,
            resources=extra,
            object_store_memory=store_bytes,
            max_workers=max_workers or max(32, 8 * int(max(cpus, 1))),
            env=_worker_env(env_vars, self.code),
            node_index=node_index,
        )
        self.manager = NodeManager(
            self.config,
            driver_unmap=self._unmap,
            driver_drain=self._drain,
            log_sink=print_worker_output if log_to_driver else _drop_log,
        )
        self.client = DriverClient(
            manager=self.manager,
            minter=IdMinter(node_index, 0),
            session=self.session,
            namespace=self.namespace,
        )
        self._closed = False
        # Services of the layers above (the workflow stores and lease keeper), opened
        # on first use and closed by shutdown, newest first.
        self.extensions: dict[str, Closeable] = {}

    def start(self) -> None:
        sweep_stale_sessions()
        self.manager.start()

    def _unmap(self, ids: list[int]) -> None:
        self.client.mappings.drop(ids)

    def _drain(self) -> None:
        tracker = self.client.tracker
        if tracker.has_pending():
            tracker.drain()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        close_extensions(self.extensions)
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


def set_current(runtime: Runtime | AttachedRuntime | None) -> None:
    global _runtime, _client
    with _lock:
        _runtime = runtime
        _client = runtime.client if runtime is not None else None
        set_process_tracker(_client.tracker if _client is not None else None)


def attach_worker(client: CoreClient) -> None:
    """Make a worker's client current in its process (called once at worker start)."""
    global _client
    _client = client


def set_auto_init(starter: Callable[[], None] | None) -> None:
    """Register how to start a runtime on first use (``api`` passes a plain ``init``)."""
    global _auto_init
    _auto_init = starter


def _auto_init_enabled() -> bool:
    """``HELIOSTAT_AUTO_INIT``: unset or ``1`` on, ``0`` off; anything else is refused."""
    value = os.environ.get("HELIOSTAT_AUTO_INIT", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"HELIOSTAT_AUTO_INIT must be 0 or 1, got {value!r}.")
    return value != "0"


def client_or_auto_init() -> CoreClient:
    """The current client; in a driver with none, start a runtime first (as Ray does).

    Used by the calls Ray starts a runtime for: ``.remote()``, ``put()``, ``get_actor()``.
    Setting ``HELIOSTAT_AUTO_INIT=0`` turns this off (Ray's ``RAY_ENABLE_AUTO_CONNECT``).
    """
    client = _client
    if client is not None and not client.closed:
        return client
    starter = _auto_init
    # Only a process with no client at all: a worker's closed client means its node
    # is going away, never that it should start one of its own.
    if client is None and starter is not None and _auto_init_enabled():
        with _auto_init_lock:
            if _client is None:
                starter()
    return current_client()


def current_client() -> CoreClient:
    client = _client
    if client is None or client.closed:
        raise NotInitializedError(
            "heliostat is not initialized: call heliostat.init() first "
            "(or this call came after heliostat.shutdown())."
        )
    return client


def current_runtime() -> Runtime | AttachedRuntime | None:
    return _runtime


def _shutdown_at_exit() -> None:
    runtime = _runtime
    if runtime is not None:
        set_current(None)
        runtime.shutdown()


atexit.register(_shutdown_at_exit)
