"""``@remote`` functions: options, validation, and the submit path.

A :class:`RemoteFunction` wraps a plain function. Its options are validated once (at
decoration or ``.options()``), turned into a ready-made ``ResourceSet``, and the
function is pickled once per process, on first use, and identified by a hash of its
bytes; workers receive those bytes once and cache the function. ``.remote()`` then
costs serializing the arguments and one message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from heliostat.engine.dag import FunctionNode
from heliostat.engine.generators import ObjectRefGenerator
from heliostat.engine.runtime import client_or_auto_init
from heliostat.engine.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    check_strategy,
    refuse_affinity,
)
from heliostat.engine.serialization import cloudpickle_dumps, dumps_function
from heliostat.engine.streams import STREAMING, is_generator_function, parse_num_returns
from heliostat.engine.validation import (
    ArgChecker,
    check_int,
    check_number,
    check_resources,
    check_str,
)
from heliostat.scheduler import ResourceSet

__all__ = [
    "TASK_OPTION_NAMES",
    "WORKFLOW_OPTIONS_KEY",
    "RemoteFunction",
    "TaskOptions",
    "describe_argument",
    "task_options",
]

# ``workflow.options(...)`` returns ``{WORKFLOW_OPTIONS_KEY: {...}}`` for ``.options(**...)``;
# the engine keeps the dict and the workflow compiler reads it.
WORKFLOW_OPTIONS_KEY = "_workflow"

TASK_OPTION_NAMES = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "resources",
        "max_retries",
        "retry_exceptions",
        "num_returns",
        "name",
        "scheduling_strategy",
        "memory",
        "max_calls",
        WORKFLOW_OPTIONS_KEY,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """Validated options of a remote function."""

    resources: ResourceSet
    num_returns: int = 1  # or streams.STREAMING / streams.DYNAMIC
    max_retries: int = 3
    retry_exceptions: bool | bytes = False  # bytes: a pickled tuple of exception classes
    name: str = ""
    scheduling_strategy: Any = None
    max_calls: int = 0  # calls of this function one worker runs before it exits (0: any)
    workflow: tuple[tuple[str, Any], ...] = ()
    raw: tuple[tuple[str, Any], ...] = ()


def _check_unknown(given: dict[str, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for {what}; "
            f"known options: {', '.join(sorted(known))}."
        )


def _resources(raw: dict[str, Any], default_cpus: float, what: str = "") -> ResourceSet:
    what = what or "a remote function"
    check_number("num_cpus", raw.get("num_cpus"), what=what)
    check_number("num_gpus", raw.get("num_gpus"), what=what)
    check_number("memory", raw.get("memory"), what=what)
    extra = dict(check_resources(raw.get("resources"), what=what) or {})
    num_gpus = raw.get("num_gpus")
    if num_gpus:
        extra["GPU"] = num_gpus
    if raw.get("memory"):  # bytes, counted against the node's ``memory`` as in Ray
        extra["memory"] = raw["memory"]
    return ResourceSet.from_request(raw.get("num_cpus"), extra, default_cpus=default_cpus)


def _retry_exceptions(value: Any) -> bool | bytes:
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(c, type) and issubclass(c, BaseException) for c in value
    ):
        return cloudpickle_dumps(tuple(value))
    raise TypeError(
        f"retry_exceptions must be a bool or a list of exception classes, got {value!r}."
    )


def _max_calls(raw: dict[str, Any], what: str) -> int:
    """``max_calls`` as Ray reads it: None or 0 is no limit, except for GPU tasks.

    A function that asks for GPUs and does not say gets ``max_calls=1``, as in Ray: its
    worker exits after each call, so GPU memory a library keeps is given back.
    """
    value = raw.get("max_calls")
    if value is None:
        return 1 if raw.get("num_gpus") else 0
    return check_int("max_calls", value, what=what, minimum=0)


def task_options(raw: dict[str, Any], *, what: str) -> TaskOptions:
    """Validate task options (from ``@remote(...)`` or ``.options(...)``)."""
    _check_unknown(raw, TASK_OPTION_NAMES, what)
    num_returns = parse_num_returns(raw.get("num_returns"), what=what, generator=False)
    max_retries = check_int("max_retries", raw.get("max_retries", 3), what=what, minimum=-1)
    check_str("name", raw.get("name"), what=what)
    strategy = raw.get("scheduling_strategy")
    check_strategy(strategy, what)
    return TaskOptions(
        resources=_resources(raw, 1.0, what),
        num_returns=num_returns,
        max_retries=max_retries,
        retry_exceptions=_retry_exceptions(raw.get("retry_exceptions", False)),
        name=raw.get("name") or "",
        scheduling_strategy=strategy,
        max_calls=_max_calls(raw, what),
        workflow=tuple(sorted((raw.get(WORKFLOW_OPTIONS_KEY) or {}).items())),
        raw=tuple(sorted(raw.items(), key=lambda kv: kv[0])),
    )


def describe_argument(fn: Callable[..., Any], key: Any) -> str:
    """``argument 'rows' (position 0)`` for error messages."""
    if isinstance(key, str):
        return f"argument {key!r}"
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return f"argument {key}"
    if key < len(params) and params[key].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return f"argument {params[key].name!r} (position {key})"
    return f"argument {key}"


class _Code:
    """A function's pickled bytes and id, computed once per process and shared by copies."""

    __slots__ = ("target", "fn_id", "data", "what", "checker")

    def __init__(self, target: Any, what: str) -> None:
        self.target = target
        self.what = what
        self.fn_id = b""
        self.data = b""
        # Checks ``.remote()`` arguments against the signature (None: unreadable).
        self.checker: ArgChecker | None = None

    def ensure(self) -> bytes:
        if not self.fn_id:
            data = dumps_function(self.target, what=self.what)
            self.data = data
            self.fn_id = hashlib.blake2b(data, digest_size=16).digest()
        return self.fn_id

    def payload(self) -> bytes:
        return self.data


class RemoteFunction:
    """A function that runs as a task: call ``.remote(...)`` to get ObjectRefs."""

    def __init__(
        self, fn: Callable[..., Any], options: TaskOptions, code: _Code | None = None
    ) -> None:
        if is_generator_function(fn) and not any(k == "num_returns" for k, _ in options.raw):
            options = dataclasses.replace(options, num_returns=STREAMING)  # as in Ray
        self._fn = fn
        self._options = options
        if code is None:
            code = _Code(fn, f"remote function {fn.__qualname__!r}")
            code.checker = ArgChecker.for_callable(fn, f"{fn.__qualname__}.remote()")
        self._code = code
        self._name = options.name or fn.__qualname__
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "remote_function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", __name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote function {self._name!r} cannot be called directly; "
            f"use {self.__name__}.remote(...) to run it as a task."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a task; returns an ObjectRef (a list of them if num_returns > 1).

        Raises:
            TypeError: the arguments do not fit the function's signature.
        """
        code = self._code
        checker = code.checker
        if checker is not None:
            checker.check(args, kwargs)
        client = client_or_auto_init()
        fn_id = code.fn_id or code.ensure()
        client.register_function(fn_id, code.payload)
        opts = self._options
        if isinstance(opts.scheduling_strategy, NodeAffinitySchedulingStrategy):
            refused = refuse_affinity(client, opts.scheduling_strategy, opts.resources, self._name)
            if refused is not None:
                return _failed_refs(client, refused, opts.num_returns)
        if opts.num_returns < 0:
            return self._remote_generator(client, fn_id, args, kwargs)
        refs = client.submit_task(
            fn_id=fn_id,
            name=self._name,
            args=args,
            kwargs=kwargs,
            describe=self._describe,
            num_returns=opts.num_returns,
            resources=opts.resources,
            max_retries=opts.max_retries,
            retry_exceptions=opts.retry_exceptions,
            max_calls=opts.max_calls,
            strategy=opts.scheduling_strategy,
        )
        return refs[0] if opts.num_returns == 1 else refs

    def _remote(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Ray's older submit form: ``f._remote(args=[...], kwargs={...}, num_cpus=2)``.

        The same as ``f.options(**options).remote(*args, **kwargs)``.
        """
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def _remote_generator(
        self, client: Any, fn_id: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Submit a generator task: an ObjectRefGenerator (streaming) or one ref (dynamic)."""
        opts = self._options
        (ref,) = client.submit_task(
            fn_id=fn_id,
            name=self._name,
            args=args,
            kwargs=kwargs,
            describe=self._describe,
            num_returns=1,
            resources=opts.resources,
            max_retries=opts.max_retries,
            retry_exceptions=opts.retry_exceptions,
            generator=opts.num_returns,
            max_calls=opts.max_calls,
            strategy=opts.scheduling_strategy,
        )
        return ObjectRefGenerator(ref) if opts.num_returns == STREAMING else ref

    def bind(self, *args: Any, **kwargs: Any) -> FunctionNode:
        """A lazy call: a graph node to ``execute()`` or run as a durable workflow."""
        return FunctionNode(self, args, kwargs)

    @property
    def task_name(self) -> str:
        return self._name

    def _describe(self, key: Any) -> str:
        return describe_argument(self._fn, key)

    def options(self, **overrides: Any) -> RemoteFunction:
        """A copy with some options changed (same code, validated now).

        Raises:
            ValueError: ``max_calls`` given: as in Ray, it belongs to the function
                (``@remote(max_calls=...)``), not to one call.
        """
        if "max_calls" in overrides:
            raise ValueError(
                f"max_calls cannot be changed in .options() of remote function "
                f"{self._name!r} (as in Ray): set it in @remote(max_calls=...)."
            )
        merged = dict(self._options.raw)
        merged.update(overrides)
        options = task_options(merged, what=f"remote function {self._fn.__qualname__!r}")
        # Fixed when the function was decorated (the GPU default included), as in Ray.
        options = dataclasses.replace(options, max_calls=self._options.max_calls)
        return RemoteFunction(self._fn, options, self._code)

    @property
    def task_options(self) -> TaskOptions:
        return self._options

    @property
    def underlying_function(self) -> Callable[..., Any]:
        return self._fn

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_remote_function, (self._fn, dict(self._options.raw)))

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"


def _failed_refs(client: Any, error: BaseException, num_returns: int) -> Any:
    """Refs that raise ``error`` at ``get()``: a task that cannot be scheduled."""
    refs = []
    for _ in range(num_returns):
        ref = client.promise()
        client.fulfill(ref, error=error)
        refs.append(ref)
    return refs[0] if num_returns == 1 else refs


def _rebuild_remote_function(fn: Callable[..., Any], raw: dict[str, Any]) -> RemoteFunction:
    return RemoteFunction(fn, task_options(raw, what=f"remote function {fn.__qualname__!r}"))
