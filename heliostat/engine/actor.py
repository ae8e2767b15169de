"""Actors: ``@remote`` classes, their handles and method calls.

An :class:`ActorClass` wraps a user class; ``.remote(...)`` creates the actor (a
dedicated worker process runs the constructor) and returns an :class:`ActorHandle`.
``handle.method.remote(...)`` submits a call; calls from one caller (process) run in
submission order, and a call whose arguments are ready never waits behind another
caller's call whose arguments are not (as in Ray). Arguments are checked against the
method's signature at ``.remote()``. Handles are counted like object refs, wherever
they are (in processes, inside values, on other nodes of a cluster): when every
handle is gone, an unnamed actor exits once its queued calls are done (a named one
lives until ``kill`` or shutdown, as a detached Ray actor does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from heliostat.engine.actor_exit import TERMINATE_METHOD, exit_actor
from heliostat.engine.async_actor import DEFAULT_ASYNC_MAX_CONCURRENCY, is_async_class
from heliostat.engine.generators import ObjectRefGenerator
from heliostat.engine.ids import format_id
from heliostat.engine.object_ref import RefTracker, process_tracker
from heliostat.engine.records import ActorOptions, TaskKind
from heliostat.engine.remote_function import _Code, describe_argument
from heliostat.engine.runtime import client_or_auto_init, current_client
from heliostat.engine.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    check_strategy,
    refuse_affinity,
)
from heliostat.engine.serialization import note_ref
from heliostat.engine.streams import STREAMING, is_generator_function, parse_num_returns
from heliostat.engine.validation import (
    ArgChecker,
    check_bool,
    check_int,
    check_number,
    check_resources,
    check_str,
    method_checker,
)
from heliostat.exceptions import ActorUnschedulableError
from heliostat.scheduler import ResourceSet

__all__ = [
    "ACTOR_OPTION_NAMES",
    "ActorClass",
    "ActorHandle",
    "ActorMethod",
    "exit_actor",
    "method",
]

ACTOR_OPTION_NAMES = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "resources",
        "max_restarts",
        "max_task_retries",
        "max_concurrency",
        "name",
        "namespace",
        "lifetime",
        "get_if_exists",
        "scheduling_strategy",
        "memory",
    }
)

_NO_RESOURCES = ResourceSet()


def method(
    *, num_returns: int | str | None = None, concurrency_group: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate an actor method to set its options (``num_returns``), as in Ray.

    ``num_returns`` is a count, or ``"streaming"`` / ``"dynamic"`` for a generator
    method (a generator method streams by default).

    Raises:
        ValueError: ``concurrency_group`` given: concurrency groups are not supported
            yet (use the actor's ``max_concurrency``).
    """
    if concurrency_group is not None:
        raise ValueError(
            f"@method(concurrency_group={concurrency_group!r}): concurrency groups are not "
            "supported yet; set max_concurrency on the actor instead."
        )
    # 0 when not given: the method's kind decides (see _method_table).
    code = 0
    if num_returns is not None:
        code = parse_num_returns(num_returns, what="an actor method", generator=False)

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__heliostat_num_returns__ = code  # type: ignore[attr-defined]
        return fn

    return mark


def _method_checkers(cls: type, methods: dict[str, int]) -> dict[str, ArgChecker | None]:
    """One argument checker per remote method (None where the signature is unreadable)."""
    return {
        name: method_checker(cls, name, f"{cls.__qualname__}.{name}.remote()") for name in methods
    }


def _check_actor_options(options: dict[str, Any], what: str) -> None:
    """Refuse option values of the wrong type (TypeError) or out of range (ValueError)."""
    for key in ("num_cpus", "num_gpus", "memory"):
        check_number(key, options.get(key), what=what)
    check_resources(options.get("resources"), what=what)
    check_int("max_restarts", options.get("max_restarts", 0), what=what, minimum=-1)
    check_int("max_task_retries", options.get("max_task_retries", 0), what=what, minimum=-1)
    check_int("max_concurrency", options.get("max_concurrency", 1), what=what, minimum=1)
    check_str("name", options.get("name"), what=what)
    check_str("namespace", options.get("namespace"), what=what)
    check_str("lifetime", options.get("lifetime"), what=what)
    check_bool("get_if_exists", options.get("get_if_exists", False), what=what)


def _method_table(cls: type) -> dict[str, int]:
    table: dict[str, int] = {}
    for name, member in inspect.getmembers(cls):
        if callable(member) and (not name.startswith("__") or name == "__call__"):
            given = getattr(member, "__heliostat_num_returns__", 0)
            table[name] = given or (STREAMING if is_generator_function(member) else 1)
    table[TERMINATE_METHOD] = 1  # every actor has it, as in Ray (see actor_exit.py)
    return table


class ActorClass:
    """A class whose instances live in their own worker process."""

    def __init__(self, cls: type, options: dict[str, Any], code: _Code | None = None) -> None:
        if "max_calls" in options:
            raise ValueError(
                f"max_calls is an option of remote functions, not of actor class "
                f"{cls.__qualname__!r} (as in Ray): an actor's worker lives as long as it."
            )
        unknown = sorted(set(options) - ACTOR_OPTION_NAMES)
        if unknown:
            raise ValueError(
                f"Unknown option(s) {', '.join(map(repr, unknown))} for actor class "
                f"{cls.__qualname__!r}; known options: {', '.join(sorted(ACTOR_OPTION_NAMES))}."
            )
        _check_actor_options(options, f"actor class {cls.__qualname__!r}")
        self._cls = cls
        self._options = dict(options)
        if code is None:
            code = _Code(cls, f"actor class {cls.__qualname__!r}")
            code.checker = ArgChecker.for_callable(cls, f"{cls.__qualname__}.remote()")
        self._code = code
        self._methods = _method_table(cls)
        self._checkers = _method_checkers(cls, self._methods)
        extra = dict(options.get("resources") or {})
        if options.get("num_gpus"):
            extra["GPU"] = options["num_gpus"]
        if options.get("memory"):  # bytes held for the actor's life, as in Ray
            extra["memory"] = options["memory"]
        self._resources = ResourceSet.from_request(options.get("num_cpus"), extra, default_cpus=0)
        check_strategy(options.get("scheduling_strategy"), f"actor class {cls.__qualname__!r}")
        lifetime = options.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be 'detached' or None, got {lifetime!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor class {self._cls.__qualname__!r} cannot be instantiated directly; "
            f"use {self._cls.__name__}.remote(...)."
        )

    def __getattr__(self, name: str) -> Any:
        # ``MyActor.CONST`` (in the driver, or in a method of the actor, where the
        # name is this wrapper) reads the class attribute, as with Ray's actor class.
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(
                f"Actor class {cls.__qualname__!r} has no attribute {name!r}."
            ) from None

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        raise TypeError(
            f"Cannot subclass the actor class {self._cls.__qualname__!r}: inheriting from "
            "a @remote class is not allowed (as in Ray). Subclass the plain class and "
            f"decorate the subclass, e.g. remote(Sub) where Sub derives from "
            f"{self._cls.__qualname__}.underlying_class (or from the undecorated class)."
        )

    def options(self, **overrides: Any) -> ActorClass:
        merged = dict(self._options)
        merged.update(overrides)
        return ActorClass(self._cls, merged, self._code)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Create the actor; returns its handle at once (construction runs remotely).

        Raises:
            TypeError: the arguments do not fit the constructor's signature.
        """
        checker = self._code.checker
        if checker is not None:
            checker.check(args, kwargs)
        client = client_or_auto_init()
        opts = self._options
        name = opts.get("name") or ""
        namespace = opts.get("namespace") or client.namespace
        if name and opts.get("get_if_exists"):
            try:
                actor_id, class_name, methods = client.get_actor(name, namespace)
            except ValueError:
                pass
            else:
                return ActorHandle(actor_id, class_name, methods, client.tracker, adopt=True)
        strategy = opts.get("scheduling_strategy")
        if isinstance(strategy, NodeAffinitySchedulingStrategy):
            refused = refuse_affinity(client, strategy, self._resources, self._cls.__qualname__)
            if refused is not None:
                raise ActorUnschedulableError(str(refused).replace("Task", "Actor", 1))
        cls_id = self._code.ensure()
        client.register_function(cls_id, self._code.payload)
        try:
            actor_id = self._create(client, cls_id, args, kwargs, name, namespace, strategy)
        except ValueError:
            if not (name and opts.get("get_if_exists")):
                raise
            try:  # created meanwhile by another process (the name is taken): that one
                actor_id, class_name, methods = client.get_actor(name, namespace)
            except ValueError:
                pass
            else:
                return ActorHandle(actor_id, class_name, methods, client.tracker, adopt=True)
            raise
        handle = ActorHandle(
            actor_id, self._cls.__qualname__, self._methods, client.tracker, adopt=None
        )
        handle._checkers = self._checkers
        return handle

    def _create(
        self,
        client: Any,
        cls_id: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        namespace: str,
        strategy: Any,
    ) -> int:
        opts = self._options
        actor_id: int = client.create_actor(
            cls_id=cls_id,
            args=args,
            kwargs=kwargs,
            describe=lambda key: describe_argument(self._cls, key),
            resources=self._resources,
            options=ActorOptions(
                name=name,
                namespace=namespace,
                class_name=self._cls.__qualname__,
                max_restarts=opts.get("max_restarts", 0),
                max_concurrency=opts.get(
                    "max_concurrency",
                    DEFAULT_ASYNC_MAX_CONCURRENCY if is_async_class(self._cls) else 1,
                ),
                max_task_retries=opts.get("max_task_retries", 0),
                detached=opts.get("lifetime") == "detached",
                methods=self._methods,
            ),
            strategy=strategy,
        )
        return actor_id

    def _remote(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> ActorHandle:
        """Ray's older form: ``Cls._remote(args=[...], kwargs={...}, num_cpus=1)``.

        The same as ``Cls.options(**options).remote(*args, **kwargs)``.
        """
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    @property
    def underlying_class(self) -> type:
        return self._cls

    def __repr__(self) -> str:
        return f"<ActorClass {self._cls.__qualname__}>"


class ActorHandle:
    """A handle to a live actor; its attributes are the actor's remote methods."""

    def __init__(
        self,
        actor_id: int,
        class_name: str,
        methods: dict[str, int],
        tracker: RefTracker | None,
        *,
        adopt: bool | None,
    ) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        # Argument checkers by method; only the creator's handle has them (a handle
        # from get_actor() or unpickled leaves the check to the call itself).
        self._checkers: dict[str, ArgChecker | None] = {}
        self._tracker = tracker
        # adopt=None: the creator, already counted by create_actor.
        if tracker is not None and adopt is not None:
            if adopt:
                tracker.adopted(actor_id)
            else:
                tracker.minted(actor_id)

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods")
        if methods is None or name not in methods:
            raise AttributeError(
                f"Actor {self.__dict__.get('_class_name', '?')!r} has no method {name!r}."
            )
        return ActorMethod(self, name, methods[name], self.__dict__["_checkers"].get(name))

    def __dir__(self) -> list[str]:
        # The remote methods, for autocompletion (as a Ray handle lists them).
        return sorted({*super().__dir__(), *self.__dict__.get("_methods", ())})

    def __del__(self) -> None:
        tracker = self.__dict__.get("_tracker")
        if tracker is not None:
            tracker.died(self._actor_id)

    def __reduce__(self) -> tuple[Any, ...]:
        note_ref(self._actor_id)
        return (_rebuild_handle, (self._actor_id, self._class_name, self._methods))

    @property
    def actor_id(self) -> str:
        return format_id(self._actor_id)

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {format_id(self._actor_id)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: int, class_name: str, methods: dict[str, int]) -> ActorHandle:
    return ActorHandle(actor_id, class_name, methods, process_tracker(), adopt=True)


class ActorMethod:
    """``handle.method``: call ``.remote(...)`` to submit a call."""

    __slots__ = ("_handle", "_name", "_num_returns", "_checker", "_task_name")

    def __init__(
        self,
        handle: ActorHandle,
        name: str,
        num_returns: int,
        checker: ArgChecker | None = None,
        task_name: str | None = None,
    ) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._checker = checker
        self._task_name = task_name  # the calls' name (``options(name=)``), else Class.method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor method {self._name!r} cannot be called directly; use .{self._name}.remote(...)."
        )

    def options(
        self, *, num_returns: int | str | None = None, name: str | None = None
    ) -> ActorMethod:
        """A copy of this method with other call options: ``num_returns``, and ``name``
        (the calls' task name in the timeline, the dashboard and errors, as in Ray)."""
        what = f"actor method {self._name!r}"
        if num_returns is not None:
            num_returns = parse_num_returns(num_returns, what=what, generator=False)
        check_str("name", name, what=what)
        return ActorMethod(
            self._handle,
            self._name,
            num_returns or self._num_returns,
            self._checker,
            name or self._task_name,
        )

    def _remote(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Ray's older form: ``handle.method._remote(args=[...], kwargs={...}, num_returns=2)``.

        The same as ``handle.method.options(**options).remote(*args, **kwargs)``.
        """
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a call; returns an ObjectRef (a list of them if num_returns > 1).

        Raises:
            TypeError: the arguments do not fit the method's signature.
        """
        checker = self._checker
        if checker is not None:
            checker.check(args, kwargs)
        handle = self._handle
        client = current_client()
        generator = self._num_returns if self._num_returns < 0 else 0
        refs = client.submit_task(
            fn_id=b"",
            name=self._task_name or f"{handle._class_name}.{self._name}",
            args=args,
            kwargs=kwargs,
            describe=lambda key: f"argument {key}",
            num_returns=self._num_returns if not generator else 1,
            resources=_NO_RESOURCES,
            max_retries=0,
            retry_exceptions=False,
            kind=TaskKind.ACTOR_CALL,
            actor_id=handle._actor_id,
            method=self._name,
            generator=generator,
        )
        if generator == STREAMING:
            return ObjectRefGenerator(refs[0])
        return refs[0] if self._num_returns == 1 or generator else refs
