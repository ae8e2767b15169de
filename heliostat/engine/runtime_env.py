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
import os
import socket
import sys
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
    another job (a library that read a variable when it was imported keeps what it
    read, as it would in any long-lived worker). A task without them (None) runs where
    and as the worker started.
    """
    global _cwd_before_code
    _restore_env()
    if code is None:
        if _cwd_before_code is not None:
            os.chdir(_cwd_before_code)
            _cwd_before_code = None
        return
    paths, working_dir, env = code
    for path in reversed(paths):
        if not sys.path or sys.path[0] != path:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)
            sys.path.insert(0, path)
    if working_dir and os.getcwd() != working_dir:
        if _cwd_before_code is None:
            _cwd_before_code = os.getcwd()
        os.chdir(working_dir)
    for name, value in env:
        _env_before_code[name] = os.environ.get(name)
        os.environ[name] = value


def _restore_env() -> None:
    """Put back the variables the last job's env_vars changed."""
    for name, value in _env_before_code.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _env_before_code.clear()
