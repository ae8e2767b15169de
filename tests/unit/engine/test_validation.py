"""Pure checks of option types and call signatures (``engine/validation.py``)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from heliostat.engine.validation import (
    ArgChecker,
    check_bool,
    check_int,
    check_number,
    check_resources,
    check_str,
    method_checker,
)


def plain(a: int, b: int = 2) -> None: ...


def varargs(a: int, *rest: int, flag: bool = False, **extra: Any) -> None: ...


def kwonly(a: int, *, b: int) -> None: ...


@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    [
        (plain, (1,), {}),
        (plain, (1, 2), {}),
        (plain, (), {"a": 1}),
        (plain, (1,), {"b": 3}),
        (varargs, (1, 2, 3, 4), {"flag": True, "other": 5}),
        (kwonly, (1,), {"b": 2}),
    ],
)
def test_calls_that_fit_pass(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    checker = ArgChecker.for_callable(fn, "f.remote()")
    assert checker is not None
    checker.check(args, kwargs)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "problem"),
    [
        (plain, (1, 2, 3), {}, "too many positional"),
        (plain, (), {}, "missing a required argument: 'a'"),
        (plain, (1,), {"c": 1}, "unexpected keyword argument 'c'"),
        (plain, (1,), {"a": 1}, "multiple values for argument 'a'"),
        (varargs, (), {}, "missing a required argument: 'a'"),
        (kwonly, (1,), {}, "missing a required argument: 'b'"),
    ],
)
def test_calls_that_do_not_fit_raise_type_error_naming_the_call(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], problem: str
) -> None:
    checker = ArgChecker.for_callable(fn, "f.remote()")
    assert checker is not None
    with pytest.raises(TypeError, match=rf"^f\.remote\(\): .*{problem}"):
        checker.check(args, kwargs)


def test_calls_that_plainly_fit_skip_binding() -> None:
    class Spy(inspect.Signature):
        binds = 0

        def bind(self, *args: Any, **kwargs: Any) -> inspect.BoundArguments:
            Spy.binds += 1
            return super().bind(*args, **kwargs)

    sig = inspect.signature(plain)
    checker = ArgChecker(Spy(list(sig.parameters.values())), "f.remote()")
    checker.check((1,), {})
    checker.check((1, 2), {})
    checker.check((1,), {"b": 2})
    checker.check((), {"b": 2, "a": 1})
    assert Spy.binds == 0
    with pytest.raises(TypeError):
        checker.check((1,), {"a": 2})
    assert Spy.binds == 1  # only a call that may not fit is bound (for the message)


def positional_then_star(a: int, b: int = 0, *rest: int) -> None: ...


def test_positional_calls_of_a_star_args_signature_skip_binding() -> None:
    # The shape of a workflow step's call, and of Ray's ``def f(*xs)``: checked by count.
    class Spy(inspect.Signature):
        binds = 0

        def bind(self, *args: Any, **kwargs: Any) -> inspect.BoundArguments:
            Spy.binds += 1
            return super().bind(*args, **kwargs)

    sig = inspect.signature(positional_then_star)
    checker = ArgChecker(Spy(list(sig.parameters.values())), "f.remote()")
    checker.check((1,), {})
    checker.check(tuple(range(50)), {})
    assert Spy.binds == 0
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        checker.check((), {})
    checker.check((1,), {"b": 2})  # keywords: bound, and fine
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        checker.check((1,), {"c": 2})
    assert Spy.binds == 3


def test_unreadable_signature_gives_no_checker() -> None:
    assert ArgChecker.for_callable(object(), "x") is None  # type: ignore[arg-type]


class Methods:
    def normal(self, x: int) -> None: ...

    @staticmethod
    def static(x: int) -> None: ...

    @classmethod
    def klass(cls, x: int) -> None: ...

    def star(*args: Any) -> None: ...


@pytest.mark.parametrize("name", ["normal", "static", "klass"])
def test_method_checker_leaves_out_self_and_cls(name: str) -> None:
    checker = method_checker(Methods, name, f"M.{name}.remote()")
    assert checker is not None
    checker.check((1,), {})
    with pytest.raises(TypeError, match=rf"M\.{name}\.remote\(\)"):
        checker.check((1, 2), {})


def test_method_checker_accepts_anything_for_star_args() -> None:
    checker = method_checker(Methods, "star", "M.star.remote()")
    assert checker is not None
    checker.check((1, 2, 3), {})


def test_int_option_refuses_bool_and_float_with_type_error() -> None:
    for bad in (True, 1.0, "1", None):
        with pytest.raises(TypeError, match="'max_retries' of f must be an int, got"):
            check_int("max_retries", bad, what="f", minimum=-1)
    with pytest.raises(ValueError, match=">= -1"):
        check_int("max_retries", -2, what="f", minimum=-1)
    assert check_int("max_retries", -1, what="f", minimum=-1) == -1


def test_number_option_type_then_range() -> None:
    assert check_number("num_cpus", None, what="f") is None
    assert check_number("num_cpus", 0.5, what="f") == 0.5
    for bad in (True, "2", [1]):
        with pytest.raises(TypeError, match="'num_cpus' of f must be a number"):
            check_number("num_cpus", bad, what="f")
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="num_cpus"):
            check_number("num_cpus", bad, what="f")


def test_str_and_bool_options() -> None:
    assert check_str("name", None, what="f") is None
    assert check_str("name", "x", what="f") == "x"
    with pytest.raises(TypeError, match="'name' of f must be a str, got int"):
        check_str("name", 3, what="f")
    assert check_bool("get_if_exists", False, what="f") is False
    for bad in ("false", 0, None):
        with pytest.raises(TypeError, match="must be a bool"):
            check_bool("get_if_exists", bad, what="f")


def test_resources_option() -> None:
    assert check_resources(None, what="f") is None
    assert check_resources({"db": 1}, what="f") == {"db": 1}
    with pytest.raises(TypeError, match="must be a dict"):
        check_resources(["db"], what="f")
    with pytest.raises(TypeError, match="str keys"):
        check_resources({1: 1}, what="f")
    with pytest.raises(TypeError, match=r"resources\['db'\]"):
        check_resources({"db": "1"}, what="f")
    with pytest.raises(ValueError, match=r"resources\['db'\]"):
        check_resources({"db": -1}, what="f")


def test_a_wrapper_is_checked_by_its_own_signature() -> None:
    import functools

    def inner(a: int) -> None: ...

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> None: ...

    checker = ArgChecker.for_callable(wrapper, "w.remote()")
    assert checker is not None
    checker.check((1, 2, 3), {"env": 1})  # the wrapper takes anything
