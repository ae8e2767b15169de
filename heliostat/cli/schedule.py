"""``heliostat schedule ...`` (define and inspect schedules) and ``heliostat scheduler``.

The schedule commands are a shell over ``heliostat.workflows.schedules``, which
validates everything (cron strings, time zones, targets) before it writes: a refused
``schedule add`` leaves nothing behind, and exits 2 with the reason.

``heliostat scheduler`` is the daemon that fires scheduled runs: it starts a local
node, runs the trigger loop until SIGTERM or SIGINT, then stops the loop and the node
and exits 0. Its runs have deterministic ids (``{schedule}@{logical time}``), so two
daemons, or a restarted one, never start one interval twice.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from heliostat.cli._status import Progress, StatusHandler, StatusLines
from heliostat.cli._util import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    add_json_flag,
    first_line,
    format_time,
    parse_kwarg,
    print_json,
    print_table,
    start_runtime,
)

if TYPE_CHECKING:
    from heliostat.workflows.schedules import ScheduleInfo, ScheduleRun

__all__ = ["register"]


def register(sub: Any) -> None:
    group = sub.add_parser(
        "schedule",
        help="define, inspect, pause and trigger workflow schedules",
        description="Schedules start a workflow run per cron tick or fixed interval; "
        "'heliostat scheduler' fires them.",
    )
    cmds = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = cmds.add_parser(
        "add",
        help="create a schedule (or replace one, with --replace)",
        description="Create a schedule that runs MODULE:FUNCTION's DAG on a cron "
        "schedule or a fixed interval. The function is called with the run's logical "
        "time and the --kwarg values, and returns the DAG.",
        epilog="example: heliostat schedule add nightly --cron '0 3 * * *' --tz "
        "Europe/Berlin --target pipelines.etl:build --kwarg region=eu",
    )
    p.add_argument("name", metavar="NAME")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="a cron expression: '0 * * * *'")
    when.add_argument("--every", metavar="INTERVAL", help="a fixed interval: 30s, 15m, 2h, 1d")
    p.add_argument(
        "--target", required=True, metavar="MODULE:FUNCTION", help="returns the DAG to run"
    )
    p.add_argument(
        "--tz", default="UTC", metavar="ZONE", help="IANA time zone of the cron (default UTC)"
    )
    p.add_argument(
        "--catchup",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after downtime, run every missed interval (oldest first), not only the latest",
    )
    p.add_argument(
        "--max-active-runs", type=int, default=1, metavar="N", help="runs at once (default 1)"
    )
    p.add_argument("--paused", action="store_true", help="create it paused")
    p.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="K=V",
        help="keyword argument for the target (repeatable; V read as JSON when it parses)",
    )
    p.add_argument("--start", metavar="TIME", help="first fire time allowed (ISO 8601)")
    p.add_argument("--end", metavar="TIME", help="last fire time allowed (ISO 8601)")
    p.add_argument("--replace", action="store_true", help="replace a schedule of that name")
    add_json_flag(p)
    p.set_defaults(func=_cmd_add)

    p = cmds.add_parser("list", help="every schedule with its next fire time")
    add_json_flag(p)
    p.set_defaults(func=_cmd_list)

    p = cmds.add_parser("show", help="a schedule, its next 5 fire times and recent runs")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--runs", type=int, default=10, metavar="N", help="recent runs (default 10)")
    add_json_flag(p)
    p.set_defaults(func=_cmd_show)

    for action, text in (
        ("pause", "stop firing a schedule (runs in progress go on)"),
        ("resume", "fire a paused schedule again"),
        ("remove", "delete a schedule (its past runs stay)"),
    ):
        p = cmds.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(func=_cmd_change, change=action)

    p = cmds.add_parser(
        "trigger",
        help="start a run now, outside the schedule",
        description="Fire a manual run of the schedule now (its own workflow id, "
        "NAME@manual-TIME). Without --wait the run is recorded and a running "
        "'heliostat scheduler' starts it; with --wait it runs in this process.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--wait", action="store_true", help="run it here on a local node and wait for the end"
    )
    p.add_argument(
        "--num-cpus", type=float, default=None, help="CPUs of the local node (with --wait)"
    )
    add_json_flag(p)
    p.set_defaults(func=_cmd_trigger)

    p = cmds.add_parser("next", help="the next fire times of a schedule")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", type=int, default=5, metavar="N", help="how many (default 5)")
    add_json_flag(p)
    p.set_defaults(func=_cmd_next)

    p = sub.add_parser(
        "scheduler",
        help="run the scheduler daemon: fire scheduled runs until SIGTERM or Ctrl-C",
        description="Start a local node and fire every schedule's runs when they are "
        "due, until SIGTERM or SIGINT; then stop cleanly (exit 0).",
    )
    p.add_argument(
        "--num-cpus", type=float, default=None, help="CPUs of the local node (default: all)"
    )
    p.set_defaults(func=_cmd_scheduler)


def _schedules() -> Any:
    from heliostat.workflows import schedules

    return schedules


# --- rendering -----------------------------------------------------------------------


def _zone(name: str) -> dt.tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CliError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from None


def _local(when: dt.datetime | None, zone: str) -> str:
    """``2026-03-08 03:00 EDT (07:00 UTC)``: the schedule's zone first, then UTC."""
    if when is None:
        return "-"
    aware = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    try:
        tz = _zone(zone)
    except CliError:
        tz = dt.UTC
    local = aware.astimezone(tz)
    utc = aware.astimezone(dt.UTC)
    text = local.strftime("%Y-%m-%d %H:%M:%S %Z")
    return text if local.utcoffset() == dt.timedelta(0) else f"{text} ({utc:%H:%M} UTC)"


def _every_text(interval: Any) -> str:
    if isinstance(interval, dt.timedelta):
        seconds = int(interval.total_seconds())
    elif isinstance(interval, (int, float)):
        seconds = int(interval)
    else:
        return str(interval)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"every {seconds // size}{unit}"
    return f"every {seconds}s"


def _when(info: ScheduleInfo) -> str:
    return f"cron {info.cron}" if info.cron else _every_text(info.interval)


def _print_info(info: ScheduleInfo) -> None:
    rows = [
        ("schedule", info.name),
        ("runs", f"{_when(info)} ({info.timezone})"),
        ("target", info.target),
        ("kwargs", ", ".join(f"{k}={v!r}" for k, v in (info.kwargs or {}).items()) or "-"),
        ("state", "paused" if info.paused else "active"),
        ("catchup", "yes" if info.catchup else "no (latest missed interval only)"),
        ("max active", str(info.max_active_runs)),
        ("window", f"{_local(info.start, info.timezone)} .. {_local(info.end, info.timezone)}"),
        ("last tick", _local(info.last_logical_time, info.timezone)),
        ("next fire", _local(info.next_fire_time, info.timezone)),
        ("created", format_time(info.created_at) + " UTC"),
    ]
    for key, value in rows:
        print(f"{key + ':':12} {value}")


def _print_runs(runs: Sequence[ScheduleRun], zone: str) -> None:
    if not runs:
        print("no runs yet")
        return
    print_table(
        ["logical time", "kind", "workflow", "status", "error"],
        [
            (
                _local(r.logical_time, zone),
                str(r.kind),
                r.workflow_id,
                str(r.status) if r.status is not None else "not started",
                first_line(r.error, limit=80),
            )
            for r in runs
        ],
    )


# --- commands ------------------------------------------------------------------------


def _parse_time(text: str | None, zone: str, option: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option}: {text!r} is not an ISO 8601 time (2026-11-21T03:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=_zone(zone))


def _cmd_add(args: argparse.Namespace) -> int:
    if args.max_active_runs < 1:
        raise CliError("--max-active-runs must be 1 or more")
    kwargs = dict(parse_kwarg(item) for item in args.kwarg)
    start = _parse_time(args.start, args.tz, "--start")
    end = _parse_time(args.end, args.tz, "--end")
    info = _schedules().create(
        args.name,
        args.target,
        cron=args.cron,
        every=args.every,
        timezone=args.tz,
        kwargs=kwargs,
        catchup=args.catchup,
        max_active_runs=args.max_active_runs,
        paused=args.paused,
        start=start,
        end=end,
        replace=args.replace,
    )
    if args.json:
        print_json(info.to_json())
        return EXIT_OK
    state = "paused" if info.paused else f"next run {_local(info.next_fire_time, info.timezone)}"
    print(f"schedule {info.name}: {_when(info)} ({info.timezone}) -> {info.target}; {state}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    infos = _schedules().list_all()
    if args.json:
        print_json([info.to_json() for info in infos])
        return EXIT_OK
    if not infos:
        sys.stderr.write("no schedules ('heliostat schedule add' creates one)\n")
        return EXIT_OK
    print_table(
        ["name", "schedule", "tz", "state", "next fire", "target"],
        [
            (
                i.name,
                _when(i),
                i.timezone,
                "paused" if i.paused else "active",
                _local(i.next_fire_time, i.timezone) if not i.paused else "-",
                i.target,
            )
            for i in infos
        ],
    )
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    schedules = _schedules()
    info = schedules.get(args.name)
    upcoming = schedules.next_fire_times(args.name, n=5)
    runs = schedules.runs(args.name, limit=max(args.runs, 0))
    if args.json:
        doc = dict(info.to_json())
        doc["next_fire_times"] = upcoming
        doc["runs"] = [r.to_json() for r in runs]
        print_json(doc)
        return EXIT_OK
    _print_info(info)
    print("\nnext fire times:")
    for when in upcoming:
        print(f"  {_local(when, info.timezone)}")
    if not upcoming:
        print("  none" + (" (paused)" if info.paused else ""))
    print("\nrecent runs:")
    _print_runs(runs, info.timezone)
    return EXIT_OK


def _cmd_change(args: argparse.Namespace) -> int:
    schedules = _schedules()
    if args.change == "pause":
        schedules.pause(args.name)
        print(f"schedule {args.name}: paused")
    elif args.change == "resume":
        schedules.resume(args.name)
        print(f"schedule {args.name}: active")
    else:
        schedules.delete(args.name)
        print(f"schedule {args.name}: removed")
    return EXIT_OK


def _cmd_trigger(args: argparse.Namespace) -> int:
    schedules = _schedules()
    if not args.wait:
        workflow_id = schedules.trigger(args.name)
        if args.json:
            print_json({"schedule": args.name, "workflow_id": workflow_id, "status": None})
        else:
            print(f"schedule {args.name}: recorded manual run {workflow_id}")
            sys.stderr.write(
                "heliostat: a running 'heliostat scheduler' starts it within seconds; "
                "'--wait' runs it here instead\n"
            )
        return EXIT_OK
    return _trigger_and_wait(args)


_TERMINAL = ("SUCCESSFUL", "FAILED", "CANCELED", "NEEDS_ATTENTION")
_POLL_S = 0.2  # how often --wait reads the run's record


def _trigger_and_wait(args: argparse.Namespace) -> int:
    """Start the manual run in this process and wait for the workflow to end.

    The run goes on in this process's workflow thread; this thread reads its record
    every :data:`_POLL_S` seconds for the status and the progress line.
    """
    import time

    import heliostat as hs
    from heliostat import workflow

    schedules = _schedules()
    schedules.get(args.name)  # an unknown name: exit 2 before a node starts
    lines = StatusLines(sys.stderr)
    # With --json, stdout holds the document only: the steps' output goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect:
        start_runtime(args.num_cpus)
        try:
            workflow_id = schedules.trigger(args.name)
            lines.line(f"heliostat: schedule {args.name}: running workflow {workflow_id!r}")
            progress = Progress(workflow_id, lines)
            status = "PENDING"
            try:
                while status not in _TERMINAL:
                    time.sleep(_POLL_S)  # the run goes on in this process's workflow thread
                    try:  # the run's row only (its counters): no steps, no DAG
                        record = workflow.describe(workflow_id, steps=False)
                    except KeyError:  # not recorded yet
                        continue
                    status = str(record.status)
                    progress(record.steps_done, record.steps_total, 0)
            finally:
                progress.close()
        except KeyboardInterrupt:
            lines.line("heliostat: interrupted; the run is resumable")
            return EXIT_INTERRUPTED
        finally:
            hs.shutdown()
    error = workflow.describe(workflow_id).error
    if args.json:
        print_json({"schedule": args.name, "workflow_id": workflow_id, "status": status})
    else:
        print(f"schedule {args.name}: workflow {workflow_id} {status}")
        if error:
            print(f"error: {first_line(error, limit=500)}")
    return EXIT_OK if status == "SUCCESSFUL" else EXIT_FAILED


def _cmd_next(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise CliError("-n must be 1 or more")
    schedules = _schedules()
    info = schedules.get(args.name)
    times = schedules.next_fire_times(args.name, n=args.n)
    if args.json:
        print_json(times)
    else:
        for when in times:
            print(_local(when, info.timezone))
    return EXIT_OK


def _cmd_scheduler(args: argparse.Namespace) -> int:
    import logging
    import os

    import heliostat as hs

    schedules = _schedules()
    lines = StatusLines(sys.stderr)
    # heliostat's own INFO lines (runs fired, the loop's passes); others' warnings only.
    log_lines = StatusHandler(lines)
    log_lines.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[log_lines])
    logging.getLogger("heliostat").setLevel(logging.INFO)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            schedules.run_scheduler(stop)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
            stop.set()

    start_runtime(args.num_cpus)
    try:
        thread = threading.Thread(target=loop, name="heliostat-scheduler", daemon=True)
        thread.start()
        lines.line(f"heliostat scheduler: running (pid {os.getpid()}); SIGTERM stops it")
        # The main thread only waits, so the signal handlers run promptly.
        while thread.is_alive():
            thread.join(timeout=0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        hs.shutdown()
    if failure:
        exc = failure[0]
        lines.line(
            f"heliostat: error: the scheduler stopped: {type(exc).__name__}: {first_line(str(exc))}"
        )
        return EXIT_FAILED
    lines.line("heliostat scheduler: stopped")
    return EXIT_OK
