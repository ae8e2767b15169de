"""``heliostat workflow ...``: list, inspect, resume, cancel and delete workflow runs.

Every sub-command goes through the public ``heliostat.workflow`` API. An unknown id is
bad input (exit 2). ``resume`` and ``resume-all`` start a local node and run; the
others only read or write the lineage database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import TYPE_CHECKING, Any

from heliostat.cli._util import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    add_json_flag,
    error_line,
    first_line,
    format_duration,
    format_time,
    parse_value,
    print_json,
    print_table,
    summarize_value,
    to_jsonable,
)
from heliostat.cli.run import add_runtime_flags, execute_workflow

if TYPE_CHECKING:
    from heliostat.storage.states import WorkflowStatus
    from heliostat.workflows.lineage import StepRecord, WorkflowRecord

__all__ = ["register"]

_STATUSES = "PENDING, RUNNING, SUCCESSFUL, FAILED, RESUMABLE, CANCELED, NEEDS_ATTENTION"


def register(sub: Any) -> None:
    group = sub.add_parser(
        "workflow",
        help="list, inspect, resume, cancel and delete workflow runs",
        description="Workflow runs in the lineage database (HELIOSTAT_DB_URL, else "
        "SQLite under HELIOSTAT_HOME).",
    )
    cmds = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = cmds.add_parser("list", help="workflow runs, newest first")
    p.add_argument(
        "--status",
        action="append",
        default=None,
        metavar="S",
        help=f"only runs in this status (repeatable): {_STATUSES}",
    )
    p.add_argument("--limit", type=int, default=50, help="show at most N runs (default 50; 0: all)")
    add_json_flag(p)
    p.set_defaults(func=_cmd_list)

    p = cmds.add_parser("status", help="a run's status, timings and error")
    p.add_argument("workflow_id", metavar="ID")
    add_json_flag(p)
    p.set_defaults(func=_cmd_status)

    p = cmds.add_parser("show", help="a run's steps: state, attempts, timings, errors")
    p.add_argument("workflow_id", metavar="ID")
    add_json_flag(p)
    p.set_defaults(func=_cmd_show)

    p = cmds.add_parser("output", help="the stored output of a run, or of one of its steps")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--task", default=None, metavar="T", help="the step's task id")
    add_json_flag(p)
    p.set_defaults(func=_cmd_output)

    p = cmds.add_parser(
        "resume", help="resume a failed or interrupted run on a local node (committed steps stay)"
    )
    p.add_argument("workflow_id", metavar="ID")
    add_json_flag(p)
    add_runtime_flags(p)
    p.set_defaults(func=_cmd_resume)

    p = cmds.add_parser(
        "resume-all", help="resume every run whose driver is gone (and failed ones, if asked)"
    )
    p.add_argument("--include-failed", action="store_true", help="resume FAILED runs too")
    add_json_flag(p)
    add_runtime_flags(p)
    p.set_defaults(func=_cmd_resume_all)

    p = cmds.add_parser("cancel", help="cancel a run: its driver stops it")
    p.add_argument("workflow_id", metavar="ID")
    p.set_defaults(func=_cmd_cancel)

    p = cmds.add_parser(
        "resolve",
        help="settle an in-doubt step after checking what it did, then resume the run",
        description=(
            "A non-idempotent step interrupted by a crash is IN_DOUBT: it may or may not "
            "have done its work. Check, then give its result (--result, a JSON value or "
            "a string) or have it run again (--rerun); `heliostat workflow resume ID` "
            "goes on from there."
        ),
    )
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("task_id", metavar="STEP")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--result", metavar="VALUE", help="the step did its work: its output")
    how.add_argument("--rerun", action="store_true", help="the step did not: run it again")
    p.set_defaults(func=_cmd_resolve)

    p = cmds.add_parser("delete", help="forget a run: its lineage and its checkpoints")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=_cmd_delete)


# --- reading -----------------------------------------------------------------------


def _parse_statuses(values: list[str] | None) -> list[WorkflowStatus] | None:
    if not values:
        return None
    from heliostat.storage.states import WorkflowStatus

    out = []
    for value in values:
        for item in value.split(","):
            try:
                out.append(WorkflowStatus(item.strip().upper()))
            except ValueError:
                raise CliError(f"unknown status {item!r} (one of {_STATUSES})") from None
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    statuses = _parse_statuses(args.status)
    if args.limit < 0:
        raise CliError("--limit must be 0 (all) or more")
    from heliostat import workflow

    # One more than asked for: enough to tell whether more exist.
    runs = workflow.list_all(statuses, limit=args.limit + 1 if args.limit else None)
    shown = runs if args.limit == 0 else runs[: args.limit]
    if args.json:
        print_json([{"workflow_id": wid, "status": str(status)} for wid, status in shown])
    elif not runs:
        sys.stderr.write("no workflow runs\n")
    else:
        print_table(["id", "status"], [(wid, str(status)) for wid, status in shown])
    if len(shown) < len(runs) and not args.json:
        sys.stderr.write("(more runs exist; --limit 0 shows all)\n")
    return EXIT_OK


def _seconds(start: dt.datetime | None, finish: dt.datetime | None) -> float | None:
    if start is None or finish is None:
        return None
    return (finish - start).total_seconds()


def _record_json(record: WorkflowRecord) -> dict[str, Any]:
    return {
        "workflow_id": record.workflow_id,
        "status": str(record.status),
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_s": _seconds(record.started_at, record.finished_at),
        "resume_count": record.resume_count,
        "error": record.error,
        "metadata": record.metadata,
        "output_task_id": record.output_task_id,
        "steps": len(record.steps),
    }


def _step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "task_id": step.task_id,
        "name": step.name,
        "status": str(step.status),
        "attempts": step.attempts,
        "idempotent": step.idempotent,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "duration_s": _seconds(step.started_at, step.finished_at),
        "error": error_line(step.error, limit=1000) or None,
        "has_output": step.checkpoint is not None,
        "metadata": step.metadata,
    }


def _print_record(record: WorkflowRecord) -> None:
    counts: dict[str, int] = {}
    for step in record.steps.values():
        counts[str(step.status)] = counts.get(str(step.status), 0) + 1
    step_summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    rows = [
        ("workflow", record.workflow_id),
        ("status", str(record.status)),
        ("steps", f"{len(record.steps)}" + (f" ({step_summary})" if step_summary else "")),
        ("created", format_time(record.created_at) + " UTC"),
        ("started", format_time(record.started_at)),
        ("finished", format_time(record.finished_at)),
        ("duration", format_duration(_seconds(record.started_at, record.finished_at))),
        ("resumed", f"{record.resume_count} time(s)"),
    ]
    if record.error:
        rows.append(("error", first_line(record.error, limit=500)))
    for key, value in rows:
        print(f"{key + ':':10} {value}")


def _describe(workflow_id: str) -> WorkflowRecord:
    from heliostat import workflow

    record: WorkflowRecord = workflow.describe(workflow_id)
    return record


def _cmd_status(args: argparse.Namespace) -> int:
    record = _describe(args.workflow_id)
    if args.json:
        print_json(_record_json(record))
    else:
        _print_record(record)
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    record = _describe(args.workflow_id)
    steps = sorted(record.steps.values(), key=lambda s: (s.position, s.task_id))
    if args.json:
        doc = _record_json(record)
        doc["steps"] = [_step_json(s) for s in steps]
        print_json(doc)
        return EXIT_OK
    _print_record(record)
    print()
    print_table(
        ["step", "state", "attempts", "started", "finished", "duration", "error"],
        [
            (
                s.task_id,
                str(s.status),
                s.attempts,
                format_time(s.started_at),
                format_time(s.finished_at),
                format_duration(_seconds(s.started_at, s.finished_at)),
                error_line(s.error, limit=80),
            )
            for s in steps
        ],
    )
    return EXIT_OK


def _cmd_output(args: argparse.Namespace) -> int:
    from heliostat import workflow

    record = _describe(args.workflow_id)
    task_id = args.task or record.output_task_id or ""
    step = record.steps.get(task_id)
    if step is None:
        known = ", ".join(sorted(record.steps)[:20])
        raise CliError(f"workflow {args.workflow_id!r} has no step {task_id!r} (known: {known})")
    if step.checkpoint is None:
        what = f"step {task_id!r}" if args.task else "it"
        raise CliError(
            f"workflow {args.workflow_id!r} is {record.status} and {what} has no stored output "
            f"(step {task_id!r} is {step.status})",
            code=EXIT_FAILED,
        )
    value = workflow.get_output(args.workflow_id, task_id=args.task)
    if args.json:
        jsonable = to_jsonable(value)
        if jsonable is None and value is not None:
            raise CliError(
                f"the output is a {type(value).__name__}, which JSON cannot represent; "
                "drop --json to see it",
                code=EXIT_FAILED,
            )
        print_json(jsonable)
    elif isinstance(value, str):
        print(value)
    else:
        import pprint

        text = str(value) if hasattr(value, "num_rows") else pprint.pformat(value)
        print(text)
    return EXIT_OK


# --- acting ------------------------------------------------------------------------


def _cmd_resume(args: argparse.Namespace) -> int:
    from heliostat import workflow

    record = _describe(args.workflow_id)  # unknown id: exit 2 before a node starts
    if str(record.status) == "SUCCESSFUL":
        value = workflow.get_output(args.workflow_id)
        if args.json:
            print_json(
                {
                    "workflow_id": args.workflow_id,
                    "status": "SUCCESSFUL",
                    "output": to_jsonable(value),
                    "output_repr": summarize_value(value),
                    "error": None,
                }
            )
        else:
            print(f"workflow {args.workflow_id}: already SUCCESSFUL")
            print(f"output: {summarize_value(value)}")
        return EXIT_OK
    if str(record.status) == "CANCELED":
        raise CliError(f"workflow {args.workflow_id!r} was cancelled; it cannot be resumed")
    return execute_workflow(
        lambda progress: workflow.resume(args.workflow_id, on_progress=progress),
        workflow_id=args.workflow_id,
        total=len(record.steps),
        as_json=args.json,
        num_cpus=args.num_cpus,
        verb="resuming",
    )


def _cmd_resume_all(args: argparse.Namespace) -> int:
    import contextlib

    import heliostat as hs
    from heliostat import workflow
    from heliostat.exceptions import WorkflowError

    results: list[dict[str, Any]] = []
    interrupted = False
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        hs.init(num_cpus=args.num_cpus)
        try:
            started = workflow.resume_all(include_failed=args.include_failed)
            if not started:
                sys.stderr.write("heliostat: no workflow to resume\n")
            for workflow_id, _ref in started:
                sys.stderr.write(f"heliostat: resuming workflow {workflow_id!r}\n")
            for workflow_id, ref in started:
                error = None
                try:
                    hs.get(ref)
                except WorkflowError as exc:
                    error = first_line(str(exc), limit=500)
                status = str(workflow.get_status(workflow_id))
                results.append({"workflow_id": workflow_id, "status": status, "error": error})
                if not args.json:
                    print(f"{workflow_id}: {status}" + (f" ({error})" if error else ""))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            hs.shutdown()
    if args.json:
        print_json(results)
    if interrupted:
        sys.stderr.write("heliostat: interrupted; the unfinished workflows are resumable\n")
        return EXIT_INTERRUPTED
    return EXIT_OK if all(r["status"] == "SUCCESSFUL" for r in results) else EXIT_FAILED


def _cmd_cancel(args: argparse.Namespace) -> int:
    from heliostat import workflow

    before = workflow.get_status(args.workflow_id)
    if str(before) in ("SUCCESSFUL", "CANCELED"):
        print(f"workflow {args.workflow_id}: already {before}; nothing to cancel")
        return EXIT_OK
    workflow.cancel(args.workflow_id)
    note = " (its driver stops it within a second)" if str(before) == "RUNNING" else ""
    print(f"workflow {args.workflow_id}: CANCELED{note}")
    return EXIT_OK


def _cmd_resolve(args: argparse.Namespace) -> int:
    from heliostat import workflow

    try:
        if args.rerun:
            workflow.resolve(args.workflow_id, args.task_id, rerun=True)
        else:
            workflow.resolve(args.workflow_id, args.task_id, result=parse_value(args.result))
    except ValueError as exc:  # the step is not in doubt
        raise CliError(str(exc)) from None
    what = "will run again" if args.rerun else "has its result"
    print(
        f"step {args.task_id} of {args.workflow_id} {what}; "
        f"resume with: heliostat workflow resume {args.workflow_id}"
    )
    return EXIT_OK


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _cmd_delete(args: argparse.Namespace) -> int:
    from heliostat import workflow

    status = workflow.get_status(args.workflow_id)  # unknown id: exit 2
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("deleting needs confirmation: pass --yes")
        if not _confirm(f"Delete workflow {args.workflow_id!r} ({status}) and its checkpoints?"):
            sys.stderr.write("heliostat: not deleted\n")
            return EXIT_FAILED
    workflow.delete(args.workflow_id)
    print(f"workflow {args.workflow_id}: deleted")
    return EXIT_OK
