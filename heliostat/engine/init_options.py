"""Validating ``init()``'s keywords: Ray's names, checked before anything starts.

A Ray script passes ``ray.init`` keywords that a local heliostat node either honours
(``num_cpus``, ``num_gpus``, ``namespace``, ``logging_level``, ``log_to_driver``,
``runtime_env`` env vars and paths, ``_temp_dir`` ...) or has no use for (the
dashboard, ``job_config``, ``_system_config`` ...). This module decides which is which,
as a pure function: :func:`check_init_options` takes the keywords and returns an
:class:`InitOptions` record, or raises ``TypeError`` for a value of the wrong type and
``ValueError`` for a value heliostat cannot honour. The names that have no effect
here are listed in ``InitOptions.without_effect`` so ``init()`` can say so in one
debug log line; a keyword that Ray does not have either is a ``TypeError``, as Python
raises for any unknown keyword.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from heliostat.storage.packages import CodeSources, code_sources

__all__ = [
    "DEFAULT_LOGGING_FORMAT",
    "INIT_KEYWORDS_WITHOUT_EFFECT",
    "RAY_PRIVATE_INIT_KEYWORDS",
    "RUNTIME_ENV_KEYS",
    "InitOptions",
    "check_init_options",
    "parse_logging_level",
]

DEFAULT_LOGGING_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"

# Ray's private ``_name`` keywords of ``ray.init`` (passed through its ``**kwargs``).
# ``_temp_dir`` means something here; the rest configure parts of Ray that a local
# heliostat node does not have.
RAY_PRIVATE_INIT_KEYWORDS = frozenset(
    {
        "_cgroup_path",
        "_cluster_id",
        "_driver_object_store_memory",
        "_enable_object_reconstruction",
        "_include_log_monitor",
        "_load_code_from_local",
        "_memory",
        "_metrics_export_port",
        "_node_ip_address",
        "_node_name",
        "_plasma_directory",
        "_redis_password",
        "_skip_env_hook",
        "_system_config",
        "_temp_dir",
        "_tracing_startup_hook",
    }
)

# Keywords (public or private) accepted for compatibility that change nothing here.
INIT_KEYWORDS_WITHOUT_EFFECT = frozenset(
    {
        "dashboard_host",
        "dashboard_port",
        "enable_resource_isolation",
        "include_dashboard",
        "job_config",
        "labels",
        "logging_config",
        "system_reserved_cpu",
        "system_reserved_memory",
    }
    | (RAY_PRIVATE_INIT_KEYWORDS - {"_temp_dir"})
)

# What a node does with a ``runtime_env``: ``env_vars`` are set in every worker;
# ``working_dir`` and ``py_modules`` (local paths) are packed, less ``excludes``, and
# the copies put on the workers' import path (see ``engine/runtime_env.py``).
RUNTIME_ENV_KEYS = frozenset({"env_vars", "working_dir", "py_modules", "excludes", "config"})

_LEVEL_NAMES = frozenset({"CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG"})


@dataclass(frozen=True, slots=True, kw_only=True)
class InitOptions:
    """``init()``'s keywords, checked: what the runtime must do with them.

    Attributes:
        gpus: GPUs the node offers (``num_gpus``); 0 adds no GPU resource.
        logging_level: the level for the ``heliostat`` logger, or None to leave it.
        logging_format: the format of the handler ``init`` installs (with a level).
        log_to_driver: print workers' stdout/stderr in the driver.
        env_vars: set in every worker's environment (``runtime_env["env_vars"]``).
        code: the code to ship to the workers (``working_dir``, ``py_modules``,
            ``excludes``), checked but not yet packed.
        temp_dir: where the session directory goes (``_temp_dir``), or None.
        without_effect: the keywords given that change nothing here, sorted.
    """

    gpus: float = 0.0
    logging_level: int | None = None
    logging_format: str = DEFAULT_LOGGING_FORMAT
    log_to_driver: bool = True
    env_vars: dict[str, str] = field(default_factory=dict)
    code: CodeSources = field(default_factory=CodeSources)
    temp_dir: str | None = None
    without_effect: tuple[str, ...] = ()


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_bool(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bool):
        raise TypeError(f"init(): {name} must be a bool, not {_type_name(value)} ({value!r}).")


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"init(): {name} must be a number, not {_type_name(value)} ({value!r}).")
    if value < 0:
        raise ValueError(f"init(): {name} must be >= 0, got {value!r}.")
    return float(value)


def parse_logging_level(value: Any) -> int:
    """A logging level from an int (``logging.DEBUG``) or a name (``"debug"``).

    Raises:
        TypeError: neither an int nor a str.
        ValueError: a name that is not a logging level.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"init(): logging_level must be an int or a level name, not {_type_name(value)} "
            f"({value!r})."
        )
    if isinstance(value, int):
        return value
    name = value.strip().upper()
    if name not in _LEVEL_NAMES:
        raise ValueError(
            f"init(): logging_level {value!r} is not a logging level "
            f"(use one of {', '.join(sorted(_LEVEL_NAMES))})."
        )
    level = logging.getLevelName(name)
    assert isinstance(level, int)
    return level


def _check_runtime_env(runtime_env: Any) -> tuple[dict[str, str], CodeSources]:
    if runtime_env is None:
        return {}, CodeSources()
    if not isinstance(runtime_env, dict):
        raise TypeError(f"init(): runtime_env must be a dict, not {_type_name(runtime_env)}.")
    unsupported = sorted(set(runtime_env) - RUNTIME_ENV_KEYS)
    if unsupported:
        raise ValueError(
            f"init(): runtime_env keys {', '.join(map(repr, unsupported))} are not supported "
            "by heliostat (it supports env_vars, working_dir, py_modules and excludes); "
            "install packages into the driver's environment instead."
        )
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        raise TypeError("init(): runtime_env['env_vars'] must be a dict of str to str.")
    _check_runtime_env_config(runtime_env.get("config"))
    return dict(env_vars), code_sources(runtime_env, where="init()")


def _check_runtime_env_config(config: Any) -> None:
    """Ray's ``RuntimeEnvConfig`` keys: checked, and without effect here (the code is
    packed and installed during ``init()`` itself, so there is nothing to time out or
    to defer)."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise TypeError(f"init(): runtime_env['config'] must be a dict, not {_type_name(config)}.")
    unknown = sorted(set(config) - {"setup_timeout_seconds", "eager_install"})
    if unknown:
        raise ValueError(
            f"init(): runtime_env['config'] keys {', '.join(map(repr, unknown))} are unknown "
            "(Ray's are setup_timeout_seconds and eager_install)."
        )
    timeout = config.get("setup_timeout_seconds", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise TypeError(
            "init(): runtime_env['config']['setup_timeout_seconds'] must be an int, not "
            f"{_type_name(timeout)}."
        )
    _check_bool("runtime_env['config']['eager_install']", config.get("eager_install", True))


def check_init_options(
    *,
    num_gpus: Any = None,
    logging_level: Any = None,
    logging_format: Any = None,
    configure_logging: Any = True,
    log_to_driver: Any = None,
    runtime_env: Any = None,
    local_mode: Any = False,
    extra: dict[str, Any] | None = None,
) -> InitOptions:
    """Check the Ray keywords of ``init()`` beyond those the runtime takes directly.

    Args:
        num_gpus: GPUs the node offers.
        logging_level: level of the ``heliostat`` logger (int or name); None leaves it.
        logging_format: format of the log handler installed with a level.
        configure_logging: False leaves logging alone (level and format unused).
        log_to_driver: whether workers' output is printed in the driver (default True).
        runtime_env: ``env_vars``, ``working_dir``, ``py_modules`` and ``excludes`` are
            supported; Ray's ``config`` keys are checked and have no effect.
        local_mode: Ray's deprecated serial mode; only False is supported.
        extra: the other keywords given, by name (public compatibility names and
            Ray's private ``_name`` keywords).

    Returns:
        The checked options.

    Raises:
        TypeError: an unknown keyword, or a value of the wrong type.
        ValueError: a value heliostat cannot honour (``local_mode=True``, a remote URI).
    """
    extra = dict(extra or {})
    unknown = sorted(set(extra) - INIT_KEYWORDS_WITHOUT_EFFECT - {"_temp_dir"})
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s) {', '.join(unknown)}.")
    gpus = 0.0 if num_gpus is None else _check_number("num_gpus", num_gpus)
    _check_bool("configure_logging", configure_logging)
    _check_bool("log_to_driver", log_to_driver, optional=True)
    _check_bool("local_mode", local_mode)
    if local_mode:
        raise ValueError(
            "init(local_mode=True) is not supported (Ray deprecated it too): tasks always "
            "run in worker processes; debug a function by calling it directly."
        )
    level = None if logging_level is None else parse_logging_level(logging_level)
    if logging_format is not None and not isinstance(logging_format, str):
        raise TypeError(f"init(): logging_format must be a str, not {_type_name(logging_format)}.")
    if not configure_logging:
        level = None
    for name in ("include_dashboard",):
        if name in extra:
            _check_bool(name, extra[name], optional=True)
    if extra.get("dashboard_host") is not None and not isinstance(extra["dashboard_host"], str):
        raise TypeError("init(): dashboard_host must be a str.")
    port = extra.get("dashboard_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise TypeError(f"init(): dashboard_port must be an int, not {_type_name(port)}.")
    for name in ("_system_config", "labels"):
        if extra.get(name) is not None and not isinstance(extra[name], dict):
            raise TypeError(f"init(): {name} must be a dict, not {_type_name(extra[name])}.")
    temp_dir = extra.pop("_temp_dir", None)
    if temp_dir is not None:
        if not isinstance(temp_dir, (str, os.PathLike)):
            raise TypeError(f"init(): _temp_dir must be a path, not {_type_name(temp_dir)}.")
        temp_dir = os.fspath(temp_dir)
    env_vars, code = _check_runtime_env(runtime_env)
    return InitOptions(
        gpus=gpus,
        logging_level=level,
        logging_format=logging_format or DEFAULT_LOGGING_FORMAT,
        log_to_driver=True if log_to_driver is None else log_to_driver,
        env_vars=env_vars,
        code=code,
        temp_dir=temp_dir,
        without_effect=tuple(sorted(extra)),
    )
