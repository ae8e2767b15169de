"""``heliostat run MODULE:FUNCTION [ARGS...]``: build a DAG and run it as a workflow.

The target is a function that returns a DAG (``f.bind(...)``); the command calls it
with the arguments given (``key=value`` pairs as keyword arguments, values read as
JSON when they parse), starts a local node and runs the DAG durably, showing its
progress on stderr (a line redrawn on a terminal, throttled plain lines in a log or a
pipe: see :mod:`heliostat.cli._status`). The final status goes to stdout; ``--json`` makes it a JSON
document.

The target is imported and called, and the DAG checked, *before* the node starts or
anything is recorded: a bad target leaves no trace in the lineage database.

Ctrl-C (or SIGTERM) stops the run: the node shuts down, the workflow's lease is
released, and the workflow is RESUMABLE (``heliostat workflow resume ID``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from heliostat.cli._status import Progress, StatusLines
from heliostat.cli._util import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    RUNTIME_HELP,
    CliError,
    add_json_flag,
    first_line,
    format_duration,
    import_target,
    parse_call_args,
    print_json,
    start_runtime,
    summarize_value,
    to_jsonable,
)

__all__ = ["add_runtime_flags", "execute_workflow", "register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a workflow: MODULE:FUNCTION returns the DAG",
        description="Import MODULE:FUNCTION, call it with ARGS to get a DAG built with "
        ".bind(), and run that DAG as a durable workflow on a local node. ARGS are "
        "positional values or key=value keyword arguments; values are read as JSON when "
        "they parse (3, true, [1,2]), else as strings. Options may come before or after "
        "the target; put -- before arguments that look like options. " + RUNTIME_HELP,
        epilog="example: heliostat run pipelines.etl:build day=2026-11-21 --id etl-1121",
    )
    p.add_argument("target", metavar="MODULE:FUNCTION", help="the function that returns a DAG")
    p.add_argument("call_args", metavar="ARGS", nargs=argparse.REMAINDER, help="its arguments")
    p.add_argument("--id", dest="workflow_id", default=None, help="the workflow id")
    add_json_flag(p)
    add_runtime_flags(p)
    p.set_defaults(func=_cmd_run)


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-cpus", type=float, default=None, help="CPUs of the local node (default: all)"
    )


# Options of `run` that may follow the target; argparse leaves them in ARGS.
_LATE_OPTIONS = {"--id": "workflow_id", "--num-cpus": "num_cpus"}


def _take_late_options(args: argparse.Namespace) -> list[str]:
    """Pull ``--id``, ``--json`` and ``--num-cpus`` out of ARGS (up to a ``--``)."""
    rest: list[str] = []
    items = list(args.call_args)
    while items:
        item = items.pop(0)
        if item == "--":
            rest.extend(items)
            break
        if item == "--json":
            args.json = True
            continue
        name, eq, value = item.partition("=")
        if name in _LATE_OPTIONS:
            if not eq:
                if not items:
                    raise CliError(f"argument {name}: expected one argument")
                value = items.pop(0)
            if name == "--num-cpus":
                try:
                    setattr(args, _LATE_OPTIONS[name], float(value))
                except ValueError:
                    raise CliError(f"argument --num-cpus: invalid float value: {value!r}") from None
            else:
                setattr(args, _LATE_OPTIONS[name], value)
            continue
        if item.startswith("--") and len(item) > 2 and "=" not in item:
            raise CliError(
                f"unrecognized option {item!r} (put -- before arguments of {args.target})"
            )
        rest.append(item)
    return rest


def _default_id(dag: Any) -> str:
    """``{output step's function}.{local time}.{6 hex}``, as ``workflow.run`` names one."""
    name = getattr(dag, "name", "workflow")
    return f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:6]}"


def _build_dag(target: str, call_args: list[str]) -> tuple[Any, int]:
    """Import the target, call it, check that it returned a DAG that compiles.

    Returns:
        The DAG and its number of steps.
    """
    fn = import_target(target)
    positional, keywords = parse_call_args(call_args)
    try:
        dag = fn(*positional, **keywords)
    except TypeError as exc:
        raise CliError(
            f"cannot call {target} with these arguments: {first_line(str(exc))}"
        ) from exc
    except Exception as exc:
        raise CliError(
            f"{target} raised {type(exc).__name__} while building the DAG: {first_line(str(exc))}"
        ) from exc
    from heliostat.engine.dag import DAGNode

    if not isinstance(dag, DAGNode):
        raise CliError(f"{target} returned {type(dag).__name__}, not a DAG built with .bind()")
    from heliostat import workflow

    # WorkflowDefinitionError (exit 2) before anything is recorded.
    compiled = workflow.compile_dag(dag)
    return dag, len(compiled.steps)


def _cmd_run(args: argparse.Namespace) -> int:
    call_args = _take_late_options(args)
    dag, total = _build_dag(args.target, call_args)
    from heliostat import workflow

    workflow_id = args.workflow_id or _default_id(dag)
    return execute_workflow(
        lambda progress: workflow.run(dag, workflow_id=workflow_id, on_progress=progress),
        workflow_id=workflow_id,
        total=total,
        as_json=args.json,
        num_cpus=args.num_cpus,
        verb="running",
    )


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C (KeyboardInterrupt) while the workflow runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while shutting down after an interrupt."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _error_summary(exc: BaseException) -> str:
    """What went wrong, in one line: the failing step's own error where there is one.

    A NEEDS_ATTENTION error is given whole: the commands that settle its in-doubt
    step follow its first line.
    """
    from heliostat.exceptions import WorkflowNeedsAttentionError

    if isinstance(exc, WorkflowNeedsAttentionError):
        return str(exc)
    cause = getattr(exc, "cause", None)
    task_id = getattr(exc, "task_id", "")
    if cause is not None and task_id:
        detail = getattr(cause, "cause_repr", "") or repr(cause)
        return first_line(f"step {task_id!r} raised {detail}", limit=500)
    return first_line(str(exc), limit=500)


def execute_workflow(
    start: Callable[[Progress], Any],
    *,
    workflow_id: str,
    total: int | None,
    as_json: bool,
    num_cpus: float | None,
    verb: str,
) -> int:
    """Start a local node, run ``start(progress)`` (a workflow run or resume), report.

    Prints the final status (stdout) and returns the exit status: 0 SUCCESSFUL, 1
    another end (FAILED, NEEDS_ATTENTION, CANCELED, held by another driver), 130 after
    Ctrl-C or SIGTERM, which leave the workflow resumable.
    """
    import heliostat as hs
    from heliostat import workflow
    from heliostat.exceptions import (
        WorkflowDefinitionError,
        WorkflowError,
        WorkflowNotFoundError,
    )

    lines = StatusLines(sys.stderr)
    progress = Progress(workflow_id, lines)
    of_steps = f" ({total} steps)" if total else ""
    lines.line(f"heliostat: {verb} workflow {workflow_id!r}{of_steps}")
    output: Any = None
    error: BaseException | None = None
    interrupted = False
    # With --json, stdout holds the document only: task output goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with redirect, _sigterm_interrupts():
        try:
            start_runtime(num_cpus)
            try:
                output = start(progress)
            except (WorkflowDefinitionError, WorkflowNotFoundError):
                raise  # bad input: main() reports it
            except WorkflowError as exc:
                error = exc
        except KeyboardInterrupt:
            interrupted = True
        finally:
            with _no_interrupts():
                progress.close()
                hs.shutdown()
    elapsed = progress.elapsed()
    steps = {"total": 0, "done": 0, "failed": 0}
    try:
        record = workflow.describe(workflow_id)
    except KeyError:  # interrupted before the workflow was recorded
        status = "NOT STARTED"
    else:
        status = str(record.status)
        states = [str(s.status) for s in record.steps.values()]
        steps = {
            "total": len(states),
            "done": states.count("SUCCESSFUL"),
            "failed": states.count("FAILED"),
        }
    steps_line = f"{steps['done']}/{steps['total']} steps done, {steps['failed']} failed"
    if interrupted:
        lines.line(
            f"heliostat: interrupted; workflow {workflow_id!r} is {status}"
            + (
                f": resume it with 'heliostat workflow resume {workflow_id}'"
                if status == "RESUMABLE"
                else ""
            )
        )
    if as_json:
        doc: dict[str, Any] = {
            "workflow_id": workflow_id,
            "status": status,
            "duration_s": round(elapsed, 3),
            "steps": steps,
            "error": _error_summary(error) if error is not None else None,
        }
        if error is None and not interrupted:
            doc["output"] = to_jsonable(output)
            doc["output_repr"] = summarize_value(output)
        print_json(doc)
    elif not interrupted:
        print(f"workflow {workflow_id}: {status} after {format_duration(elapsed)} ({steps_line})")
        if error is None:
            print(f"output: {summarize_value(output)}")
        else:
            print(f"error: {_error_summary(error)}")
            if status == "FAILED":
                print(f"fix it, then: heliostat workflow resume {workflow_id}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if error is None else EXIT_FAILED
