"""``heliostat workflow ...``: list, inspect, resume, cancel and delete workflow runs.

Every sub-command goes through the public ``heliostat.workflow`` API. An unknown id or
step is bad input (exit 2). ``resume`` and ``resume-all`` start a local node and run;
the others only read or write the lineage database.

What a person looks at, and where:

* ``list``: one line per run (id, status, start, duration, steps done, the schedule
  it came from), from the runs' rows alone: no step and no DAG is read, so it stays
  fast with many runs. (The one exception is the API's: a RUNNING run whose driver
  died is reconciled to RESUMABLE the first time anything reads it.)
* ``status ID``: the run; for a run that NEEDS_ATTENTION, its in-doubt steps and the
  two ``resolve`` commands that settle each.
* ``show ID``: its steps in a table; ``show ID STEP``: every attempt of one step, with
  its times, worker, outcome and full traceback.
* ``logs ID [STEP]``: what the steps printed, attempt by attempt.

Times are shown in UTC, and say so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from heliostat.cli._status import StatusLines
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
    format_utc,
    parse_value,
    print_json,
    print_table,
    start_runtime,
    summarize_value,
    to_jsonable,
)
from heliostat.cli.run import add_runtime_flags, execute_workflow

if TYPE_CHECKING:
    from heliostat.storage.states import WorkflowStatus
    from heliostat.workflows.lineage import AttemptRecord, StepRecord, WorkflowRecord
    from heliostat.workflows.step import StepLogs

__all__ = ["register"]

_STATUSES = "PENDING, RUNNING, SUCCESSFUL, FAILED, RESUMABLE, CANCELED, NEEDS_ATTENTION"


def register(sub: Any) -> None:
    group = sub.add_parser(
        "workflow",
        help="list, inspect, resume, cancel and delete workflow runs",
        description="Workflow runs in the lineage database (HELIOSTAT_DB_URL, else "
        "SQLite under HELIOSTAT_HOME). Times are in UTC.",
    )
    cmds = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = cmds.add_parser(
        "list",
        help="workflow runs, newest first: status, start, duration, steps, schedule",
        description="Workflow runs, newest first: id, status, when it started (UTC), how "
        "long it ran (a running one: so far), steps done of all, and the schedule it "
        "came from (blank: started by hand).",
    )
    p.add_argument(
        "--status",
        action="append",
        default=None,
        metavar="S",
        help=f"only runs in this status (repeatable): {_STATUSES}",
    )
    p.add_argument("--search", default=None, metavar="TEXT", help="only runs whose id has TEXT")
    p.add_argument("--limit", type=int, default=50, help="show at most N runs (default 50; 0: all)")
    add_json_flag(p)
    p.set_defaults(func=_cmd_list)

    p = cmds.add_parser(
        "status", help="a run's status, timings and error (and how to settle in-doubt steps)"
    )
    p.add_argument("workflow_id", metavar="ID")
    add_json_flag(p)
    p.set_defaults(func=_cmd_status)

    p = cmds.add_parser(
        "show",
        help="a run's steps; with STEP, every attempt of that step with its traceback",
        description="Without STEP: the run and a table of its steps (state, attempts, "
        "timings, error). With STEP: each attempt of that step: when it was queued, "
        "started and finished, how long it ran and waited, on which worker, how it "
        "ended, and the full traceback of a failed one.",
    )
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("task_id", metavar="STEP", nargs="?", default=None, help="one step's task id")
    add_json_flag(p)
    p.set_defaults(func=_cmd_show)

    p = cmds.add_parser(
        "logs",
        help="what a run's steps printed (stdout and stderr), attempt by attempt",
        description="What each attempt of the run's steps printed, stdout and stderr "
        "interleaved as written, under a header naming the step, the attempt, how it "
        "ended and when it started. Each attempt keeps the last megabyte it printed; "
        "the header says when the start is cut.",
    )
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("task_id", metavar="STEP", nargs="?", default=None, help="only this step")
    p.add_argument(
        "--attempt", type=int, default=None, metavar="N", help="only attempt N (1 is the first)"
    )
    add_json_flag(p)
    p.set_defaults(func=_cmd_logs)

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


def _seconds(start: dt.datetime | None, finish: dt.datetime | None) -> float | None:
    if start is None or finish is None:
        return None
    return (finish - start).total_seconds()


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


def _run_seconds(record: WorkflowRecord, now: dt.datetime) -> float | None:
    """How long the run (its latest start) took; a running one: so far."""
    if record.started_at is None:
        return None
    if record.finished_at is not None:
        return _seconds(record.started_at, record.finished_at)
    if str(record.status) == "RUNNING":
        return max(0.0, (now - _utc(record.started_at)).total_seconds())
    return None  # RESUMABLE: its driver stopped at a time the lineage does not keep


def _summary_json(record: WorkflowRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "workflow_id": record.workflow_id,
        "status": str(record.status),
        "name": record.name,
        "schedule": record.schedule,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_s": _run_seconds(record, now),
        "steps_done": record.steps_done,
        "steps_total": record.steps_total,
        "resume_count": record.resume_count,
        "error": record.error,
    }


def _cmd_list(args: argparse.Namespace) -> int:
    statuses = _parse_statuses(args.status)
    if args.limit < 0:
        raise CliError("--limit must be 0 (all) or more")
    from heliostat.workflows.api import list_records

    # One more than asked for: enough to tell whether more exist.
    runs = list_records(
        statuses, limit=args.limit + 1 if args.limit else None, search=args.search or None
    )
    shown = runs if args.limit == 0 else runs[: args.limit]
    now = dt.datetime.now(dt.UTC)
    if args.json:
        print_json([_summary_json(r, now) for r in shown])
    elif not runs:
        matching = f" with {args.search!r} in the id" if args.search else ""
        sys.stderr.write(f"no workflow runs{matching}\n")
    else:
        print_table(
            ["id", "status", "started (UTC)", "duration", "steps", "schedule"],
            [
                (
                    r.workflow_id,
                    str(r.status),
                    format_time(r.started_at or r.created_at),
                    format_duration(_run_seconds(r, now)),
                    f"{r.steps_done}/{r.steps_total}",
                    r.schedule or "",
                )
                for r in shown
            ],
        )
    if len(shown) < len(runs) and not args.json:
        sys.stderr.write("(more runs exist; --limit 0 shows all)\n")
    return EXIT_OK


def _in_doubt(record: WorkflowRecord) -> list[StepRecord]:
    steps = (s for s in record.steps.values() if str(s.status) == "IN_DOUBT")
    return sorted(steps, key=lambda s: (s.position, s.task_id))


def _record_json(record: WorkflowRecord) -> dict[str, Any]:
    return {
        "workflow_id": record.workflow_id,
        "status": str(record.status),
        "schedule": record.schedule,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_s": _run_seconds(record, dt.datetime.now(dt.UTC)),
        "resume_count": record.resume_count,
        "error": record.error,
        "metadata": record.metadata,
        "output_task_id": record.output_task_id,
        "steps": len(record.steps),
        "in_doubt": [s.task_id for s in _in_doubt(record)],
    }


def _step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "task_id": step.task_id,
        "name": step.name,
        "status": str(step.status),
        "attempts": step.attempts,
        "idempotent": step.idempotent,
        "idempotency_key": step.idempotency_key,
        "queued_at": step.queued_at,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "duration_s": step.duration,
        "error": error_line(step.error, limit=1000) or None,
        "error_type": step.error_type,
        "has_output": step.checkpoint is not None,
        "metadata": step.metadata,
    }


def _attempt_json(attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "status": str(attempt.status),
        "worker": attempt.worker,
        "queued_at": attempt.queued_at,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "duration_s": attempt.duration,
        "queue_s": attempt.queue_seconds,
        "error": attempt.error,
        "error_type": attempt.error_type,
        "traceback": attempt.traceback or None,
    }


def _rows(rows: Iterable[tuple[str, str]], indent: str = "") -> None:
    for key, value in rows:
        print(f"{indent}{key + ':':10} {value}")


def _print_record(record: WorkflowRecord) -> None:
    counts: dict[str, int] = {}
    for step in record.steps.values():
        counts[str(step.status)] = counts.get(str(step.status), 0) + 1
    step_summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    rows = [
        ("workflow", record.workflow_id),
        ("status", str(record.status)),
        ("steps", f"{len(record.steps)}" + (f" ({step_summary})" if step_summary else "")),
        ("created", format_utc(record.created_at)),
        ("started", format_utc(record.started_at)),
        ("finished", format_utc(record.finished_at)),
        ("duration", format_duration(_run_seconds(record, dt.datetime.now(dt.UTC)))),
        ("resumed", f"{record.resume_count} time(s)"),
    ]
    if record.schedule:
        rows.insert(2, ("schedule", record.schedule))
    in_doubt = _in_doubt(record)
    if str(record.status) == "NEEDS_ATTENTION" and not in_doubt:
        # Its error names steps that have been resolved since: say what is left to do.
        rows.append(("next", f"resume it: heliostat workflow resume {record.workflow_id}"))
    elif record.error and not in_doubt:
        rows.append(("error", first_line(record.error, limit=500)))
    _rows(rows)
    if in_doubt:
        _print_in_doubt(record.workflow_id, in_doubt)


def _resolve_commands(workflow_id: str, task_id: str) -> list[str]:
    command = f"heliostat workflow resolve {workflow_id} {task_id}"
    return [
        f"{command} --result VALUE   (it did its work: VALUE is its output)",
        f"{command} --rerun          (it did not: run it again)",
    ]


def _print_in_doubt(workflow_id: str, steps: list[StepRecord]) -> None:
    """Which steps are in doubt, and the commands that settle them, then resume."""
    print()
    print(
        f"in doubt:  {', '.join(s.task_id for s in steps)}: interrupted by a crash, "
        "it may or may not have done its work"
    )
    for step in steps:
        key = f" (its idempotency key: {step.idempotency_key})" if step.idempotency_key else ""
        print(f"check what {step.task_id} did{key}, then settle it with one of")
        for command in _resolve_commands(workflow_id, step.task_id):
            print(f"  {command}")
    print(f"then resume it: heliostat workflow resume {workflow_id}")


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
    if args.task_id is not None:
        return _show_step(record, args.task_id, as_json=args.json)
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
                format_duration(s.duration),
                error_line(s.error, limit=80),
            )
            for s in steps
        ],
    )
    failed = [s.task_id for s in steps if str(s.status) in ("FAILED", "IN_DOUBT")]
    if failed:
        print(
            f"\nattempts and tracebacks: heliostat workflow show {record.workflow_id} "
            f"{failed[0]}; what the steps printed: heliostat workflow logs {record.workflow_id}"
        )
    return EXIT_OK


def _show_step(record: WorkflowRecord, task_id: str, *, as_json: bool) -> int:
    from heliostat import workflow

    # Unknown step: WorkflowNotFoundError naming the known ones (exit 2).
    attempts: list[AttemptRecord] = workflow.attempts(record.workflow_id, task_id)
    step = record.steps.get(task_id)
    if step is None:  # added by a continuation between the two reads
        step = _describe(record.workflow_id).steps[task_id]
    if as_json:
        doc = _step_json(step)
        doc["workflow_id"] = record.workflow_id
        doc["attempt_history"] = [_attempt_json(a) for a in attempts]
        print_json(doc)
        return EXIT_OK
    key = f" (idempotency key {step.idempotency_key})" if step.idempotency_key else ""
    kind = (
        "idempotent: run again after a crash"
        if step.idempotent
        else ("not idempotent: in doubt after a crash")
    )
    rows = [
        ("step", f"{step.task_id} (function {step.name})" if step.name else step.task_id),
        ("workflow", f"{record.workflow_id} ({record.status})"),
        ("state", f"{step.status} after {len(attempts)} attempt(s)"),
        ("kind", kind + key),
    ]
    if step.error:
        rows.append(("error", first_line(step.error, limit=500)))
    _rows(rows)
    for attempt in attempts:
        print()
        _print_attempt(attempt)
    if str(step.status) == "IN_DOUBT":
        _print_in_doubt(record.workflow_id, [step])
    if attempts:
        print(f"\nwhat it printed: heliostat workflow logs {record.workflow_id} {task_id}")
    return EXIT_OK


def _print_attempt(attempt: AttemptRecord) -> None:
    print(f"attempt {attempt.attempt}: {attempt.status}")
    queued = attempt.queue_seconds
    rows = [
        ("worker", attempt.worker or "-"),
        ("queued", format_utc(attempt.queued_at)),
        (
            "started",
            format_utc(attempt.started_at)
            + (f" (after {format_duration(queued)} in the queue)" if queued is not None else ""),
        ),
        ("finished", format_utc(attempt.finished_at)),
        ("ran", format_duration(attempt.duration)),
    ]
    if attempt.error:
        rows.append(("error", first_line(attempt.error, limit=1000)))
    _rows(rows, indent="  ")
    if attempt.traceback:
        print("  traceback:")
        for line in attempt.traceback.rstrip("\n").splitlines():
            print(f"    {line}")


def _attempt_header(task_id: str, number: int, attempt: AttemptRecord | None) -> str:
    """``--- check, attempt 2: FAILED, started 2026-11-21 01:40:49 UTC, ran 0.12 s ---``."""
    parts = [f"{task_id}, attempt {number}"]
    if attempt is not None:
        parts[0] += f": {attempt.status}"
        if attempt.started_at is not None:
            parts.append(f"started {format_utc(attempt.started_at)}")
        elif attempt.queued_at is not None:
            parts.append(f"queued {format_utc(attempt.queued_at)}, never reported its start")
        if attempt.duration is not None:
            parts.append(f"ran {format_duration(attempt.duration)}")
    return f"--- {', '.join(parts)} ---"


def _cmd_logs(args: argparse.Namespace) -> int:
    from heliostat import workflow

    if args.attempt is not None and args.attempt < 1:
        raise CliError("--attempt must be 1 or more")
    wid, task_id = args.workflow_id, args.task_id
    # Attempts first: a log row is written with its attempt's end, so every log read
    # after has its attempt here (one of an attempt ending in between gets a bare header).
    attempts: list[AttemptRecord] = workflow.attempts(wid, task_id)  # unknown id/step: exit 2
    printed: list[tuple[str, int, StepLogs]] = workflow.logs(wid, task_id)
    texts = {(t, n): got for t, n, got in printed}
    by_key = {(a.task_id, a.attempt): a for a in attempts}
    # Grouped by step, steps in the order they first ran, attempts in order.
    first_run: dict[str, int] = {}
    for key in [*by_key, *texts]:
        first_run.setdefault(key[0], len(first_run))
    keys = sorted({*by_key, *texts}, key=lambda k: (first_run[k[0]], k[1]))
    if args.attempt is not None:
        made = sorted({n for _t, n in keys})
        keys = [k for k in keys if k[1] == args.attempt]
        if not keys:
            which = f"step {task_id!r} has" if task_id else "no step has"
            tried = f" (attempts made: {', '.join(map(str, made))})" if made else ""
            raise CliError(f"workflow {wid!r}: {which} no attempt {args.attempt}{tried}")
    if args.json:
        print_json([_log_json(k, by_key.get(k), texts.get(k)) for k in keys])
        return EXIT_OK
    if not keys:
        what = f"step {task_id!r} of workflow {wid!r}" if task_id else f"workflow {wid!r}"
        sys.stderr.write(f"heliostat: {what} has not run yet\n")
        return EXIT_OK
    # Without STEP, attempts that succeeded and printed nothing are one line at the end.
    silent = []
    if task_id is None and args.attempt is None:
        silent = [k for k in keys if k not in texts and str(by_key[k].status) == "SUCCESSFUL"]
        keys = [k for k in keys if k not in silent]
    out = sys.stdout
    for n, key in enumerate(keys):
        if n:
            out.write("\n")
        attempt = by_key.get(key)
        out.write(_attempt_header(key[0], key[1], attempt) + "\n")
        out.write(_log_text(texts.get(key), attempt))
    if silent:
        names = [t if n == 1 else f"{t} (attempt {n})" for t, n in silent]
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        out.write(("\n" if keys else "") + f"printed nothing: {', '.join(names[:20])}{more}\n")
    out.flush()
    return EXIT_OK


def _log_text(got: StepLogs | None, attempt: AttemptRecord | None) -> str:
    """What an attempt printed, ending with a newline, or why there is nothing."""
    if got is None:
        status = str(attempt.status) if attempt else ""
        if status == "RUNNING":
            return "(still running: what it prints is kept when it ends)\n"
        if status == "INTERRUPTED":
            return "(nothing kept: it was interrupted before it reported back)\n"
        return "(it printed nothing)\n"
    text = got.text if got.text.endswith("\n") or not got.text else got.text + "\n"
    if got.truncated:
        cut = got.size - len(got.text)
        text = (
            f"[the start is cut: it printed {got.size:,} characters, "
            f"the first {cut:,} are not kept]\n" + text
        )
    return text


def _log_json(
    key: tuple[str, int], attempt: AttemptRecord | None, got: StepLogs | None
) -> dict[str, Any]:
    return {
        "task_id": key[0],
        "attempt": key[1],
        "status": str(attempt.status) if attempt else None,
        "started_at": attempt.started_at if attempt else None,
        "finished_at": attempt.finished_at if attempt else None,
        "text": got.text if got else None,
        "size": got.size if got else 0,
        "truncated": got.truncated if got else False,
    }


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

    lines = StatusLines(sys.stderr)
    results: list[dict[str, Any]] = []
    interrupted = False
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        start_runtime(args.num_cpus)
        try:
            started = workflow.resume_all(include_failed=args.include_failed)
            if not started:
                lines.line("heliostat: no workflow to resume")
            for workflow_id, _ref in started:
                lines.line(f"heliostat: resuming workflow {workflow_id!r}")
            for workflow_id, ref in started:
                error = None
                try:
                    hs.get(ref)
                except WorkflowError as exc:
                    error = exc
                record = _describe(workflow_id)
                why = _why_not_done(record, error) if error is not None else None
                status = str(record.status)
                results.append({"workflow_id": workflow_id, "status": status, "error": why})
                if not args.json:
                    print(f"workflow {workflow_id}: {status}" + (f" ({why})" if why else ""))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            hs.shutdown()
    if args.json:
        print_json(results)
    if interrupted:
        lines.line("heliostat: interrupted; the unfinished workflows are resumable")
        return EXIT_INTERRUPTED
    return EXIT_OK if all(r["status"] == "SUCCESSFUL" for r in results) else EXIT_FAILED


def _why_not_done(record: WorkflowRecord, error: BaseException) -> str:
    """One line on why a resumed run did not succeed (a NEEDS_ATTENTION error's first
    line stops mid-sentence: its commands follow)."""
    in_doubt = [s.task_id for s in _in_doubt(record)]
    if in_doubt:
        return (
            f"in doubt: {', '.join(in_doubt)}; 'heliostat workflow status "
            f"{record.workflow_id}' says how to settle it"
        )
    return first_line(str(error), limit=500)


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

    wid, task_id = args.workflow_id, args.task_id
    value = None if args.rerun else parse_value(args.result)
    try:
        if args.rerun:
            workflow.resolve(wid, task_id, rerun=True)
        else:
            workflow.resolve(wid, task_id, result=value)
    except ValueError as exc:  # the step is not in doubt
        raise CliError(str(exc)) from None
    if args.rerun:
        print(f"step {task_id} of workflow {wid}: resolved; it runs again when the run resumes")
    else:
        print(f"step {task_id} of workflow {wid}: resolved; its output is {summarize_value(value)}")
    others = _in_doubt(_describe(wid))
    if others:
        print(f"still in doubt: {', '.join(s.task_id for s in others)}; settle each first:")
        for step in others:
            for command in _resolve_commands(wid, step.task_id):
                print(f"  {command}")
        print(f"then resume it: heliostat workflow resume {wid}")
    else:
        print(f"resume it: heliostat workflow resume {wid}")
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
