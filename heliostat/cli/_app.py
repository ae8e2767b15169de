"""The ``heliostat`` parser and the one place that turns errors into exit codes.

Each command group registers its sub-commands (``register(sub)``) with a handler
taking the parsed arguments and returning the exit status. :func:`main` runs the
handler and maps what it raises: :class:`~heliostat.cli._util.CliError` and the
heliostat errors that mean "you asked for something that does not exist or cannot
be" (an unknown workflow or schedule, a bad cron string or DAG) exit 2; other
heliostat errors exit 1. Every error is one line on stderr.
"""

from __future__ import annotations

import os
import sys
import traceback

from heliostat.cli import cluster, db, misc, run, runtime, schedule, ui, workflow
from heliostat.cli._util import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    CliError,
    CommandParser,
    Handler,
    first_line,
)

__all__ = ["build_parser", "main"]

_BAD_INPUT_ERRORS = (
    "WorkflowNotFoundError",
    "WorkflowNotResumableError",  # resume of an unknown id: bad input, as not-found is
    "WorkflowDefinitionError",
    "InvalidScheduleError",
    "ScheduleNotFoundError",
    "ScheduleExistsError",
    "StorageError",
    "ClusterAuthError",  # a wrong token: the user's input
)


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="heliostat",
        description="heliostat: distributed tasks and durable workflows, from the shell.",
        epilog="Exit status: 0 ok, 1 the command ran and failed, 2 bad input.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(sub)
    workflow.register(sub)
    schedule.register(sub)
    runtime.register(sub)
    db.register(sub)
    ui.register(sub)
    cluster.register(sub)
    misc.register(sub)
    return parser


def _error_code(exc: BaseException) -> int | None:
    """The exit status of a heliostat error, or ``None`` for anything else."""
    from heliostat.exceptions import HeliostatError

    if not isinstance(exc, HeliostatError):
        return None
    names = {cls.__name__ for cls in type(exc).__mro__}
    return EXIT_BAD_INPUT if names.intersection(_BAD_INPUT_ERRORS) else EXIT_FAILED


def _message(exc: BaseException) -> str:
    # KeyError subclasses would print their message quoted.
    text = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return first_line(str(text), limit=1000) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``heliostat`` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # As with ``python -m``: the current directory is importable, for targets and for
    # the functions a stored workflow refers to. The installed script lacks it.
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    handler: Handler = args.func
    try:
        return handler(args)
    except CliError as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"heliostat: error: {exc.message}\n")
        return exc.code
    except KeyboardInterrupt:
        sys.stderr.write("\nheliostat: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `heliostat workflow list | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        code = _error_code(exc)
        if code is None:
            hint = "" if args.debug else " (run with --debug for the traceback)"
            sys.stderr.write(f"heliostat: error: {type(exc).__name__}: {_message(exc)}{hint}\n")
            return EXIT_FAILED
        sys.stderr.write(f"heliostat: error: {_message(exc)}\n")
        return code
