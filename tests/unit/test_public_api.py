"""The public surface: what ``heliostat`` exports, and the error hierarchy it promises."""

from __future__ import annotations
import __future__ as future_module

import pickle
import types

import pytest

import heliostat
import heliostat.engine
from heliostat import exceptions
from heliostat.exceptions import (
    ActorDiedError,
    HeliostatError,
    InvalidTransition,
    ObjectLostError,
    OwnerDiedError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

_TYPING_MODULES = {"typing", "typing_extensions", "collections.abc"}


def _public_names(module: types.ModuleType) -> list[str]:
    """Names a module defines or imports for users.

    Left out: _private names, submodules, ``from __future__`` features and typing
    helpers imported for annotations.
    """
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, future_module._Feature)
        and getattr(value, "__module__", None) not in _TYPING_MODULES
    )


@pytest.mark.parametrize(
    "module", [heliostat, heliostat.engine, exceptions], ids=lambda m: m.__name__
)
def test_all_is_sorted_and_lists_every_public_name(module) -> None:
    exported = list(module.__all__)
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))
    modules_exported = [n for n in exported if isinstance(getattr(module, n), types.ModuleType)]
    assert sorted(set(exported) - set(modules_exported)) == _public_names(module)


def test_every_exported_name_resolves() -> None:
    for name in heliostat.__all__:
        assert getattr(heliostat, name) is not None, name
    assert heliostat.exceptions is exceptions


def test_ray_compatible_core_names_are_exported() -> None:
    core = {
        "init",
        "shutdown",
        "is_initialized",
        "remote",
        "get",
        "put",
        "wait",
        "cancel",
        "kill",
        "get_actor",
        "nodes",
        "cluster_resources",
        "available_resources",
        "timeline",
        "ObjectRef",
        "exceptions",
        "method",
    }
    assert core <= set(heliostat.__all__)


# --- the error hierarchy ---------------------------------------------------------------------


def test_every_exported_error_derives_from_heliostat_error() -> None:
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, HeliostatError), name


def test_errors_that_are_also_builtin_errors() -> None:
    assert issubclass(exceptions.GetTimeoutError, TimeoutError)
    assert issubclass(exceptions.SerializationError, TypeError)
    assert issubclass(exceptions.InfeasibleResourcesError, ValueError)
    assert issubclass(ActorDiedError, exceptions.ActorError)
    assert issubclass(OwnerDiedError, ObjectLostError)


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (
            InvalidTransition("TaskSpec", "f#1", "READY", "DEAD"),
            ("kind", "ident", "start", "finish"),
        ),
        (TaskCancelledError("cancelled", task_name="load"), ("task_name",)),
        (WorkerCrashedError("died", task_name="load", pid=42), ("task_name", "pid")),
        (ActorDiedError("dead", actor_id="00ab", class_name="Counter"), ("actor_id", "class_name")),
        (ObjectLostError("lost", object_id="00cd"), ("object_id",)),
        (OwnerDiedError("owner died", object_id="00ef"), ("object_id",)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_errors_survive_pickling_with_their_fields(error, fields) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    for field in fields:
        assert getattr(back, field) == getattr(error, field)


class _Plain(Exception):
    pass


class _WithField(Exception):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class _TwoArgs(Exception):
    def __init__(self, left: int, right: int) -> None:
        super().__init__(left, right)
        self.left = left
        self.right = right


def _rebuilt(cause: BaseException) -> TaskError:
    err = TaskError("load_rows", "Traceback (most recent call last):\n  ...", cause, pid=7)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, TaskError)
    return back


def test_task_error_is_also_an_instance_of_its_cause() -> None:
    back = _rebuilt(_Plain("plain failure"))
    assert isinstance(back, _Plain)
    assert back.args == ("plain failure",)
    assert back.function_name == "load_rows"
    assert back.pid == 7
    assert "load_rows" in str(back) and "plain failure" in str(back)
    assert "Traceback" in str(back)


def test_task_error_of_builtin_cause() -> None:
    back = _rebuilt(KeyError("missing"))
    assert isinstance(back, KeyError)
    with pytest.raises(KeyError):
        raise back


def test_task_error_keeps_the_cause_fields() -> None:
    back = _rebuilt(_WithField("bad code", code=17))
    assert isinstance(back, _WithField)
    assert back.cause.code == 17
    assert back.code == 17


def test_task_error_of_cause_with_required_init_arguments() -> None:
    back = _rebuilt(_TwoArgs(1, 2))
    assert isinstance(back, _TwoArgs)
    assert back.args == (1, 2)
    assert (back.left, back.right) == (1, 2)


def test_task_error_without_a_mixable_cause_is_plain_task_error() -> None:
    back = _rebuilt(None)  # type: ignore[arg-type]
    assert type(back) is TaskError
    base = TaskError("f", "tb", SystemExit(3))
    assert base.as_instanceof_cause() is base


@pytest.mark.parametrize(
    "package", ["heliostat.storage", "heliostat.workflows", "heliostat.cluster"]
)
def test_lazy_exports_match_the_type_checking_imports_and_all(package: str) -> None:
    """The runtime list of lazy exports, the imports type checkers read and ``__all__``
    name the same things, and every one of them loads."""
    import ast
    import importlib
    import inspect

    module = importlib.import_module(package)
    tree = ast.parse(inspect.getsource(module))
    static: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                static.setdefault(imp.module, set()).update(a.name for a in imp.names)
    lazy = {mod: set(names) for mod, names in module._EXPORTS.items()}
    assert static == lazy
    eager = {name for name in module.__all__ if name in vars(module)}
    assert set(module.__all__) == eager | set().union(*lazy.values())
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018
