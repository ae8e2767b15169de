"""Checks made at the API boundary: option types and call signatures.

Two kinds of bad input are refused before any work is submitted, as Ray refuses them:

* An option of the wrong *type* (``num_cpus="2"``, ``max_retries=1.5``,
  ``name=3``) raises ``TypeError`` naming the option and the type; a value of the
  right type that is out of range (``max_retries=-2``) raises ``ValueError``. A bool
  is never accepted where a number belongs, nor a string where a bool belongs.
* Arguments that do not fit the function (too many positional arguments, an unknown
  keyword, a required one missing) raise ``TypeError`` at ``.remote()`` instead of
  failing later inside the worker.

The signature check sits on the submit hot path, so :class:`ArgChecker` binds the
signature only when a cheap test cannot prove the call fine: for the common function
of plain positional-or-keyword parameters called positionally, the test is two
integer comparisons (``inspect.Signature.bind`` costs a few microseconds).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "ArgChecker",
    "check_bool",
    "check_int",
    "check_number",
    "check_resources",
    "check_str",
    "method_checker",
]


def _type_error(option: str, expected: str, value: Any, what: str) -> TypeError:
    return TypeError(
        f"Option {option!r} of {what} must be {expected}, got {type(value).__name__}: {value!r}."
    )


def check_int(option: str, value: Any, *, what: str, minimum: int) -> int:
    """An int option (bools refused) at least ``minimum``.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: it is below ``minimum``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(option, "an int", value, what)
    if value < minimum:
        raise ValueError(f"Option {option!r} of {what} must be >= {minimum}, got {value}.")
    return value


def check_number(option: str, value: Any, *, what: str) -> float | None:
    """A non-negative finite number option, or None (bools refused).

    Raises:
        TypeError: ``value`` is not an int or float.
        ValueError: it is negative or not finite.
    """
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _type_error(option, "a number", value, what)
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"Option {option!r} of {what} must be >= 0 and finite, got {value}.")
    return value


def check_str(option: str, value: Any, *, what: str) -> str | None:
    """A string option, or None.

    Raises:
        TypeError: ``value`` is neither a str nor None.
    """
    if value is not None and not isinstance(value, str):
        raise _type_error(option, "a str", value, what)
    return value


def check_bool(option: str, value: Any, *, what: str) -> bool:
    """A bool option: exactly True or False (``"false"`` is refused).

    Raises:
        TypeError: ``value`` is not a bool.
    """
    if not isinstance(value, bool):
        raise _type_error(option, "a bool", value, what)
    return value


def check_resources(value: Any, *, what: str) -> Mapping[str, Any] | None:
    """The ``resources`` option: a dict of names to numbers, or None.

    Raises:
        TypeError: not a dict, a name that is not a str, or a quantity not a number.
        ValueError: a negative or non-finite quantity.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _type_error("resources", "a dict", value, what)
    for name, quantity in value.items():
        if not isinstance(name, str):
            raise TypeError(
                f"Option 'resources' of {what} must have str keys, "
                f"got {type(name).__name__}: {name!r}."
            )
        check_number(f"resources[{name!r}]", quantity, what=what)
    return value


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ArgChecker:
    """Checks that ``(args, kwargs)`` fit a signature; cheap when they plainly do.

    ``check`` raises ``TypeError`` (the message of ``Signature.bind``, prefixed with
    the call's name) when the arguments do not fit. ObjectRefs stand for their values
    and count like any other argument.
    """

    __slots__ = ("_sig", "_what", "_min_pos", "_max_pos", "_index", "_required")

    def __init__(self, sig: inspect.Signature, what: str) -> None:
        self._sig = sig
        self._what = what
        params = list(sig.parameters.values())
        # The fast path applies when every parameter is positional (no *args, no
        # keyword-only, no **kwargs): a positional-only call then fits exactly when
        # its length lies between the required count and the parameter count.
        # Keywords are checked by name then (``_index``: name -> position), unless a
        # parameter is positional-only.
        self._index: dict[str, int] | None = None
        if (
            params
            and params[-1].kind is inspect.Parameter.VAR_POSITIONAL
            and all(p.kind in _POSITIONAL for p in params[:-1])
        ):
            # ``f(a, b, *rest)``: a positional call fits when it fills the required
            # parameters; any number may follow. Keyword calls go through bind.
            fixed = params[:-1]
            self._min_pos = sum(1 for p in fixed if p.default is inspect.Parameter.empty)
            self._max_pos = sys.maxsize
            params = fixed
        elif all(p.kind in _POSITIONAL for p in params):
            self._min_pos = sum(1 for p in params if p.default is inspect.Parameter.empty)
            self._max_pos = len(params)
            if all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
                self._index = {p.name: i for i, p in enumerate(params)}
        else:
            self._min_pos, self._max_pos = 1, 0  # never satisfied: always bind
        # Names of the required parameters, in order (they precede those with defaults).
        self._required = tuple(p.name for p in params[: self._min_pos])

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` if the call would fail to bind."""
        n = len(args)
        if not kwargs:
            if self._min_pos <= n <= self._max_pos:
                return
        elif self._index is not None and n <= self._max_pos and self._keywords_fit(n, kwargs):
            return
        try:
            self._sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self._what}: {exc}") from None

    def _keywords_fit(self, n: int, kwargs: dict[str, Any]) -> bool:
        """Do ``kwargs`` name parameters after the first ``n``, covering the required?"""
        index = self._index
        assert index is not None
        for name in kwargs:
            position = index.get(name, -1)
            if position < n:  # unknown, or given positionally already
                return False
        # Required parameters come first: those past the positional ones need keywords.
        for name in self._required[n:]:
            if name not in kwargs:
                return False
        return True

    @classmethod
    def for_callable(cls, fn: Callable[..., Any], what: str) -> ArgChecker | None:
        """A checker for ``fn``, or None when its signature cannot be read (builtins)."""
        try:
            # Not through ``__wrapped__``: a wrapper (a workflow step's, a decorator's)
            # is what gets called, with its own arguments.
            sig = inspect.signature(fn, follow_wrapped=False)
        except (TypeError, ValueError):
            return None
        return cls(sig, what)


def method_checker(cls: type, name: str, what: str) -> ArgChecker | None:
    """A checker for method ``name`` of ``cls`` called on an instance (no ``self``)."""
    try:
        static = inspect.getattr_static(cls, name)
        if isinstance(static, (staticmethod, classmethod)):
            sig = inspect.signature(getattr(cls, name), follow_wrapped=False)
        else:
            sig = inspect.signature(static, follow_wrapped=False)
            params = list(sig.parameters.values())
            if params and params[0].kind in _POSITIONAL:
                sig = sig.replace(parameters=params[1:])
            elif not params or params[0].kind is not inspect.Parameter.VAR_POSITIONAL:
                return None  # not a method we understand: let the call itself decide
    except (AttributeError, TypeError, ValueError):
        return None
    return ArgChecker(sig, what)
