"""The remote traceback a user reads starts at the user's code, not heliostat's."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from heliostat.engine.worker import format_remote_traceback

# Stand-ins for heliostat-internal callers (the worker loop that catches a task's
# error, a workflow step's wrapper): code whose module is under ``heliostat.``, with a
# file name that cannot be confused with this test's.
_INTERNAL = compile(
    "def run(fn, *args):\n"
    "    return fn(*args)\n"
    "def catch(fn, *args):\n"
    "    try:\n"
    "        fn(*args)\n"
    "    except BaseException as exc:\n"
    "        return exc\n"
    "    raise AssertionError('expected an exception')\n",
    "<heliostat-internal>",
    "exec",
)


def _internal(module: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"__name__": module}
    exec(_INTERNAL, namespace)
    return namespace[name]  # type: ignore[no-any-return]


def _internal_caller(module: str) -> Callable[..., Any]:
    return _internal(module, "run")


def _user_task(mapping: dict[str, int]) -> int:
    return mapping["missing"]


def _caught(fn: Callable[..., Any], *args: Any) -> BaseException:
    """Run ``fn`` under a heliostat-internal catcher, as the worker's ``_execute`` does."""
    exc: BaseException = _internal("heliostat.engine.worker", "catch")(fn, *args)
    return exc


def test_leading_heliostat_frames_are_dropped() -> None:
    worker = _internal_caller("heliostat.engine.worker")
    step = _internal_caller("heliostat.workflows.step")
    exc = _caught(worker, step, _user_task, {})
    text = format_remote_traceback(exc)
    assert "<heliostat-internal>" not in text
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    line = _user_task.__code__.co_firstlineno + 1
    assert lines[1] == f'  File "{__file__}", line {line}, in _user_task'
    assert lines[-1] == "KeyError: 'missing'"


def test_heliostat_frames_after_the_first_user_frame_are_kept() -> None:
    worker = _internal_caller("heliostat.engine.worker")
    inner = _internal_caller("heliostat.engine.api")

    def user(mapping: dict[str, int]) -> int:
        return inner(_user_task, mapping)

    text = format_remote_traceback(_caught(worker, user, {}))
    assert text.count("<heliostat-internal>") == 1  # the inner one, after user code
    assert text.splitlines()[1].endswith(", in user")
    assert text.index("in user") < text.index("<heliostat-internal>")


def test_a_module_merely_named_like_heliostat_is_user_code() -> None:
    not_ours = _internal_caller("heliostat_extras.jobs")
    text = format_remote_traceback(_caught(not_ours, _user_task, {}))
    assert text.count("<heliostat-internal>") == 1  # the catcher goes, not_ours stays
    assert text.splitlines()[1].startswith('  File "<heliostat-internal>", line 2, in run')


def test_without_user_frames_the_whole_traceback_is_kept() -> None:
    worker = _internal_caller("heliostat.engine.worker")
    exc = _caught(worker, int, "not a number")
    text = format_remote_traceback(exc)
    assert text == "".join(traceback.format_exception(exc))
    assert text.splitlines()[1].startswith('  File "<heliostat-internal>"')
