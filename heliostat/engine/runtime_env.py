"""A job's code in its workers: ``runtime_env`` working_dir and py_modules, as Ray does it.

What ``init(runtime_env={"working_dir": d, "py_modules": [m, ...]})`` means here:

1. At ``init()`` each path is packed into a zip archive named by its SHA-256
   (:mod:`heliostat.storage.packages`: default excludes such as ``.git`` and
   ``__pycache__``, plus ``runtime_env["excludes"]``; at most 100 MiB of files per
   package, as Ray). A path that cannot be packed fails ``init()`` before anything
   starts.
2. Each archive is checked against its digest and unpacked into the node's cache: on
   one node, ``packages/`` in the session directory (removed by ``shutdown()``, like
   every file of a session); a cluster node uses its own cache
   (:func:`heliostat.cluster.packages.node_cache`).
3. Workers start with the copies first on ``sys.path`` (the working_dir's, then the
   py_modules' in order) and, with a working_dir, in the working_dir's copy as their
   current directory (:func:`enter_working_dir`). As in Ray, the driver's current
   directory is then *not* added to their path: they see the snapshot, not the original.

So the driver's edits after ``init()`` are not seen by workers, even workers started
later; the next ``init()`` packs the directory again. The driver itself runs where it
was started; only its tasks and actors move.

When a worker cannot import a module that the function, class or arguments it was
sent refer to, :func:`module_not_on_node` turns the ``ModuleNotFoundError`` into a
:class:`~heliostat.exceptions.ModuleNotOnNodeError` that names the module and the node,
and says how to ship it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import site
import socket
import sys
import sysconfig
from types import ModuleType
from typing import TYPE_CHECKING, Final

from heliostat.exceptions import ModuleNotOnNodeError
from heliostat.storage.packages import InstalledCode

if TYPE_CHECKING:
    from heliostat.engine.records import InstalledJob

__all__ = [
    "WORKING_DIR_ENV",
    "code_env",
    "enter_working_dir",
    "module_not_on_node",
    "note_boot_modules",
    "use_code",
]

WORKING_DIR_ENV: Final = "HELIOSTAT_WORKING_DIR"
"""Set in a worker's environment to the directory it must run in (a working_dir copy)."""


def code_env(code: InstalledCode, inherited: list[str]) -> tuple[list[str], dict[str, str]]:
    """The import path and environment entries for workers running ``code``.

    Args:
        code: the job's installed packages.
        inherited: the rest of the workers' import path (the driver's), in order.

    Returns:
        The workers' import path (the packages first, duplicates dropped) and the
        variables to set (the working directory, when there is one).
    """
    paths = list(dict.fromkeys([*code.import_paths, *inherited]))
    env = {WORKING_DIR_ENV: code.working_dir} if code.working_dir is not None else {}
    return paths, env


def enter_working_dir() -> None:
    """In a new worker: move into the job's working_dir copy, if it has one.

    The fork server was started with ``python -m``, which put the directory it was
    started in (the driver's) first on ``sys.path``, ahead of ``PYTHONPATH``; that
    entry goes too, so that the copy, not the original, is what imports find.
    A copy that cannot be entered is reported on stderr and the worker goes on in the
    old directory: a worker that died at start would only be started again.
    """
    target = os.environ.get(WORKING_DIR_ENV)
    if not target:
        return
    origin = os.getcwd()
    try:
        os.chdir(target)
    except OSError as exc:
        print(
            f"heliostat worker: cannot enter the working_dir copy {target}: {exc}",
            file=sys.stderr,
        )
        return
    if sys.path and sys.path[0] in (origin, ""):
        del sys.path[0]


def module_not_on_node(
    exc: ModuleNotFoundError, *, what: str, task: str, node_id: str
) -> ModuleNotOnNodeError:
    """The error for a task whose code or arguments need a module this node lacks.

    Args:
        exc: what unpickling raised.
        what: what was being loaded ("the function", "the arguments").
        task: the task's (or actor method's) name.
        node_id: this node's id, as ``nodes()`` shows it.
    """
    module = exc.name or str(exc)
    hostname = socket.gethostname()
    message = (
        f"Task {task!r} cannot run on node {node_id} (host {hostname}): {what} refers to "
        f"module {module!r}, which cannot be imported there. If it is one of your own "
        "modules, ship it with the job: init(runtime_env={'working_dir': '.'}) for the "
        "project directory, or runtime_env={'py_modules': [path_or_module]}. Install a "
        "third-party package on every node instead."
    )
    return ModuleNotOnNodeError(message, module=module, node_id=node_id, hostname=hostname)


_cwd_before_code: str | None = None  # where the worker ran before a job's working_dir
_env_before_code: dict[str, str | None] = {}  # what a job's env_vars replaced (None: unset)


def use_code(code: InstalledJob | None) -> None:
    """In a worker, before a task: take on the environment its job shipped, or none.

    A node's workers serve the tasks of every job that forwards work to it; a task
    from another node's job carries that job's installed packages (import paths first
    on ``sys.path``, its working_dir copy as the current directory) and its
    ``env_vars``, set for the task and put back as they were before the next task of
    another job. A task without them (None) runs where and as the worker started.

    Each job sees its own modules, as if it had workers of its own (Ray keeps workers
    per job): when the job changes, the modules the last one imported from its own
    code (its packages; for the worker's own job, its directories on ``sys.path``
    that are not the interpreter's or installed packages) leave ``sys.modules``, and
    a shipped job's paths leave ``sys.path``; they are put back as they were when
    that job's next task comes. So two jobs that ship a ``utils.py`` each import
    their own, and a module of a job that read an env var when it was imported read
    that job's value. Installed packages, and heliostat itself, are shared by all
    jobs, as on any Python machine.
    """
    global _cwd_before_code
    _restore_env()
    if code != _namespaces.active:
        _namespaces.switch(code)
    if code is None:
        if _cwd_before_code is not None:
            os.chdir(_cwd_before_code)
            _cwd_before_code = None
        return
    _paths, working_dir, env = code  # the paths: switch() put them first
    if working_dir and os.getcwd() != working_dir:
        if _cwd_before_code is None:
            _cwd_before_code = os.getcwd()
        os.chdir(working_dir)
    for name, value in env:
        _env_before_code[name] = os.environ.get(name)
        os.environ[name] = value


class _Namespaces:
    """The modules of each job a worker has run, all but the active job's put aside.

    ``boot`` (the modules loaded when the worker started: heliostat's own, the
    standard library's) never move; ``own_paths`` are the worker's own job's code
    directories (taken at the first switch: its ``sys.path`` then, less the
    interpreter's and the installed packages' directories).
    """

    def __init__(self) -> None:
        self.active: InstalledJob | None = None
        self.boot: frozenset[str] | None = None
        self.own_paths: tuple[str, ...] | None = None
        self.aside: dict[InstalledJob | None, dict[str, ModuleType]] = {}

    def note_boot(self) -> None:
        """At worker start: what is loaded now belongs to no job."""
        self.boot = frozenset(sys.modules)

    def paths_of(self, code: InstalledJob | None) -> tuple[str, ...]:
        if code is not None:
            return tuple(code[0])
        if self.own_paths is None:
            shared = _shared_dirs()
            self.own_paths = tuple(
                p for p in sys.path if p and not any(_under(p, d) for d in shared)
            )
        return self.own_paths

    def switch(self, code: InstalledJob | None) -> None:
        """Put the active job's modules (and shipped paths) aside; bring ``code``'s back.

        The worker's own paths stay on ``sys.path`` (behind a shipped job's): they may
        hold packages installed in development mode, which other imports need.
        """
        old = self.active
        old_dirs = tuple(os.path.abspath(p) + os.sep for p in self.paths_of(old))
        boot = self.boot or frozenset()
        leaving: dict[str, ModuleType] = {}
        for name, module in list(sys.modules.items()):
            if name in boot or name == "heliostat" or name.startswith("heliostat."):
                continue
            where = getattr(module, "__file__", None)
            if where and os.path.abspath(where).startswith(old_dirs):
                leaving[name] = module
                del sys.modules[name]
        self.aside[old] = leaving
        new_paths = tuple(code[0]) if code is not None else ()
        if old is not None:
            for path in old[0]:
                if path not in new_paths:
                    with contextlib.suppress(ValueError):
                        sys.path.remove(path)
        for path in reversed(new_paths):
            if not sys.path or sys.path[0] != path:
                with contextlib.suppress(ValueError):
                    sys.path.remove(path)
                sys.path.insert(0, path)
        sys.modules.update(self.aside.pop(code, {}))
        importlib.invalidate_caches()
        self.active = code


def _shared_dirs() -> tuple[str, ...]:
    """Directories whose modules every job shares: the interpreter's, installed packages'."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            dirs.add(sysconfig.get_paths()[key])
    with contextlib.suppress(AttributeError):
        dirs.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        dirs.add(site.getusersitepackages())
    return tuple(os.path.realpath(d) for d in dirs if d)


def _under(path: str, directory: str) -> bool:
    """Whether ``path`` (resolved here) is ``directory`` (resolved already) or inside it."""
    path = os.path.realpath(path)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


_namespaces = _Namespaces()
note_boot_modules = _namespaces.note_boot


def _restore_env() -> None:
    """Put back the variables the last job's env_vars changed."""
    for name, value in _env_before_code.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _env_before_code.clear()
