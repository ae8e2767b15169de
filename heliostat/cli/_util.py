"""What every command shares: the parser class, errors, argument values, output.

The conventions of the ``heliostat`` command, in one place:

* Exit codes: 0 it worked; 1 it ran and failed (a workflow ended FAILED, a runtime
  could not be reached); 2 bad input (a usage error, an unknown id, a malformed cron
  string, an unknown time zone, an unimportable target). 130 after Ctrl-C.
* Errors are one line on stderr, ``heliostat: error: ...``, with no traceback
  (``heliostat --debug ...`` prints it). A command checks its input before it writes
  anything, so a refused command leaves nothing half-done.
* ``--json`` prints one JSON document on stdout and nothing else there; progress and
  messages go to stderr.

This module imports only the standard library, so ``heliostat --help`` stays fast;
commands import heliostat's heavier modules inside their functions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CliError",
    "CommandParser",
    "Handler",
    "add_json_flag",
    "error_line",
    "first_line",
    "format_duration",
    "format_time",
    "format_utc",
    "import_target",
    "parse_call_args",
    "parse_kwarg",
    "parse_value",
    "print_json",
    "print_table",
    "summarize_value",
    "to_jsonable",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A command cannot go on: ``main`` prints ``heliostat: error: {message}``.

    ``code`` is the exit status: :data:`EXIT_BAD_INPUT` (the default) when the user
    asked for something impossible, :data:`EXIT_FAILED` when it was tried and failed.
    """

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``heliostat: error: ...``.

    argparse would print the usage block first and prefix the sub-command's name; a
    one-line message pointing at ``--help`` is what the other errors look like too.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"heliostat: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_BAD_INPUT)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (for scripts)"
    )


# --- argument values ---------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``3``, ``true``, ``[1, 2]``), else the
    string itself (``2026-11-21``, ``hello``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_call_args(items: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """Split ``["a", "n=3"]`` into positional and keyword arguments of a call.

    ``key=value`` (``key`` an identifier) is a keyword argument, anything else a
    positional one; each value goes through :func:`parse_value`.

    Raises:
        CliError: a keyword is given twice.
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and _IDENTIFIER.fullmatch(key):
            if key in kwargs:
                raise CliError(f"argument {key!r} is given twice")
            kwargs[key] = parse_value(value)
        else:
            args.append(parse_value(item))
    return args, kwargs


def parse_kwarg(item: str) -> tuple[str, Any]:
    """``k=v`` of an option such as ``--kwarg``; the value as :func:`parse_value` reads it."""
    key, sep, value = item.partition("=")
    if not sep or not _IDENTIFIER.fullmatch(key):
        raise CliError(f"expected KEY=VALUE with KEY an identifier, not {item!r}")
    return key, parse_value(value)


def import_target(target: str) -> Callable[..., Any]:
    """The function named by ``module:function`` (``function`` may be dotted).

    The current directory is importable, as with ``python -m``.

    Raises:
        CliError: the name is malformed, the module cannot be imported, the function
            does not exist or is not callable.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"target {target!r} is not of the form MODULE:FUNCTION")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r} (from {target!r}): {exc}") from exc
    except Exception as exc:  # the module itself raised while being imported
        raise CliError(
            f"importing {module_name!r} (from {target!r}) raised "
            f"{type(exc).__name__}: {first_line(str(exc))}"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"module {module_name!r} has no attribute {attr!r} (from {target!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise CliError(f"{target} is not callable ({article} {kind})")
    fn: Callable[..., Any] = obj
    return fn


# --- output ------------------------------------------------------------------------


def first_line(text: str | None, limit: int = 200) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters."""
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


_TASK_ERROR = re.compile(
    r"^(?:[\w.]+\.)?TaskError(?:\(\w+\))?: Task .*? failed in worker pid=\d+: "
)


def error_line(text: str | None, limit: int = 200) -> str:
    """The first line of a step's error, without the ``TaskError ... failed in worker``
    wrapper: ``ValueError('boom')``."""
    return first_line(_TASK_ERROR.sub("", first_line(text, limit=100_000)), limit=limit)


def _utc(when: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; heliostat stores UTC.
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def format_time(when: dt.datetime | None) -> str:
    """``2026-11-21 03:00:00`` in UTC, or ``-``."""
    return "-" if when is None else _utc(when).strftime("%Y-%m-%d %H:%M:%S")


def format_utc(when: dt.datetime | None) -> str:
    """``2026-11-21 03:00:00 UTC``, or ``-``: a time shown alone, saying its zone."""
    return "-" if when is None else format_time(when) + " UTC"


def format_duration(seconds: float | None) -> str:
    """``3.70 ms``, ``0.25 s``, ``12.3 s``, ``4m 05s``, ``2h 03m``; ``-`` for ``None``.

    Under 10 ms in milliseconds: a step's execution often is that short, and ``0.00 s``
    would say nothing.
    """
    if seconds is None:
        return "-"
    if 0 < seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def to_jsonable(value: Any) -> Any:
    """``value`` if it survives ``json.dumps`` as it is, else ``None``."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return value


def summarize_value(value: Any, limit: int = 200) -> str:
    """A one-line description of a workflow output, for humans."""
    shape = None
    if hasattr(value, "num_rows") and hasattr(value, "num_columns"):  # pyarrow.Table
        shape = (value.num_rows, value.num_columns)
    elif hasattr(value, "shape") and hasattr(value, "columns"):  # pandas.DataFrame
        shape = tuple(value.shape)
    if shape is not None and len(shape) == 2:
        kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
        return f"{kind} with {shape[0]} rows x {shape[1]} columns"
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _utc(value).isoformat()
    if isinstance(value, (dt.date, dt.timedelta)):
        return str(value)
    return repr(value)


def print_json(document: Any) -> None:
    """Print ``document`` as JSON on stdout (datetimes as ISO 8601 in UTC)."""
    sys.stdout.write(json.dumps(document, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows under upper-case headers, columns aligned."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = sys.stdout
    for n, row in enumerate(cells):
        if n == 0:
            row = [c.upper() for c in row]
        line = "  ".join(c.ljust(widths[i]) for i, c in enumerate(row))
        out.write(line.rstrip() + "\n")
    out.flush()


# What the commands that run workflows say about a runtime the user's code starts.
RUNTIME_HELP = (
    "If the target's module calls heliostat.init() when it is imported, the command "
    "runs the workflow on that runtime (then leave out --num-cpus: pass num_cpus to "
    "init() instead); a heliostat.init() called by pipeline code once the command's "
    "runtime is up returns that runtime (with a log line). Either way the command shuts "
    "the runtime down when it ends."
)


def start_runtime(num_cpus: float | None) -> None:
    """Start the command's local node, or adopt the one the user's module started.

    A pipeline module that calls ``heliostat.init()`` at import time (as Ray scripts
    do) has started a runtime before the command gets to it: the command then uses it
    rather than failing with "already initialized". The runtime is marked as the
    command's, so a later ``init()`` in user code returns it (``api.init``).

    Raises:
        CliError: ``--num-cpus`` was given but the module already chose the node.
    """
    import logging

    import heliostat as hs
    from heliostat.engine import current_runtime

    runtime = current_runtime()
    if runtime is None:
        runtime = hs.init(num_cpus=num_cpus)
    else:
        if num_cpus is not None:
            raise CliError(
                "--num-cpus cannot apply: the target's module already started the runtime "
                "with heliostat.init(); pass num_cpus to that init() or drop --num-cpus"
            )
        logging.getLogger("heliostat.cli").info(
            "using the runtime the target's module started with heliostat.init() (session %s)",
            runtime.session,
        )
    runtime.started_by_cli = True
