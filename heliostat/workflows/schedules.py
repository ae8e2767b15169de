"""The ``heliostat.schedules`` API: run a workflow on a cron or interval schedule.

A schedule names a target, a ``module:function`` that takes the run's logical time and
returns a DAG::

    # etl/jobs.py
    @hs.remote
    def extract(day): ...

    def nightly(logical_time, region="eu"):
        return load.bind(transform.bind(extract.bind(logical_time.date().isoformat())))

    from heliostat import schedules
    schedules.create("nightly", "etl.jobs:nightly", cron="0 2 * * *",
                     timezone="Europe/Berlin", kwargs={"region": "eu"})

The scheduler daemon (``heliostat scheduler``, or :func:`run_scheduler`) fires each
interval as ``workflow.run_async(dag, workflow_id="nightly@2026-11-21T01:00:00Z")``:
the id is the schedule's name and the interval's logical time in UTC, so no interval
runs twice, whatever restarts or how many schedulers run. See
:mod:`heliostat.scheduler.cron` for the daylight-saving rule and
:mod:`heliostat.workflows.triggers` for the loop.

Schedules live in the workflows' database (``HELIOSTAT_DB_URL``, default SQLite under
``HELIOSTAT_HOME``); these functions need no runtime, except :func:`trigger` to start
the run in this process and :func:`run_scheduler`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import threading
from typing import Any

from heliostat.engine.runtime import current_client, current_runtime
from heliostat.exceptions import InvalidScheduleError
from heliostat.scheduler.cron import (
    ScheduleSpec,
    manual_run_id,
    parse_every,
    validate_schedule_name,
)
from heliostat.storage.db import default_db_url
from heliostat.workflows import api
from heliostat.workflows.schedule_store import ScheduleInfo, ScheduleRun, ScheduleStore
from heliostat.workflows.triggers import (
    Clock,
    SystemClock,
    TriggerLoop,
    build_dag,
    check_target_signature,
    load_target,
)

__all__ = [
    "ScheduleInfo",
    "ScheduleRun",
    "create",
    "delete",
    "get",
    "list_all",
    "make_loop",
    "next_fire_times",
    "pause",
    "resume",
    "run_scheduler",
    "runs",
    "trigger",
]

log = logging.getLogger("heliostat.schedules")

_lock = threading.Lock()
_stores: dict[str, ScheduleStore] = {}


def _store() -> ScheduleStore:
    url = default_db_url()
    with _lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = ScheduleStore.open(url)
        return store


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_kwargs(name: str, kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidScheduleError(
            f"kwargs of schedule {name!r} must be a dict with string keys, got {kwargs!r}.",
            schedule=name,
        )
    if "logical_time" in kwargs:
        raise InvalidScheduleError(
            f"kwargs of schedule {name!r} may not set 'logical_time': the scheduler passes it.",
            schedule=name,
        )
    try:
        text = json.dumps(kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidScheduleError(
            f"kwargs of schedule {name!r} must be JSON values (they are stored in SQL): {exc}.",
            schedule=name,
        ) from None
    loaded: dict[str, Any] = json.loads(text)  # what the target will receive
    return loaded


def create(
    name: str,
    target: str,
    *,
    cron: str | None = None,
    every: dt.timedelta | float | str | None = None,
    timezone: str = "UTC",
    kwargs: dict[str, Any] | None = None,
    catchup: bool = False,
    max_active_runs: int = 1,
    paused: bool = False,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    replace: bool = False,
) -> ScheduleInfo:
    """Create a schedule, or redefine one with ``replace=True``.

    Everything is validated before anything is written: the name, the cron string or
    interval, the time zone, the bounds, the kwargs (JSON values), and the target (it
    must import, be callable, and accept ``logical_time=`` and the kwargs).

    A new schedule first fires at its first fire time after now, or, given a ``start``,
    at the first one from ``start`` on (a start in the past with ``catchup=True``
    backfills from there; with ``catchup=False`` only the latest missed interval runs).
    Redefining a schedule keeps what it already fired (its cursor): no interval runs
    again, and a changed timing takes effect from now, without backfill. Every option
    is taken from this call, ``paused`` included.

    Args:
        name: letters, digits, ``_ . -`` (it is part of the runs' workflow ids).
        target: ``module:function`` returning the run's DAG; called as
            ``function(logical_time=<aware UTC datetime>, **kwargs)``.
        cron: a five-field cron expression (or ``@hourly``, ``@daily``, ...), read on
            the wall clock of ``timezone``.
        every: an interval instead of a cron: a timedelta, seconds, or ``"15m"``,
            ``"1h"``, ``"1d"``, ``"1h30m"``; whole seconds. Fire times are
            ``start + k * every`` (from the Unix epoch without a start), in UTC.
        timezone: IANA time zone of the cron expression (and of naive start/end).
        kwargs: extra keyword arguments for the target (JSON values).
        catchup: after downtime or a pause, fire every missed interval (oldest first)
            rather than only the latest.
        max_active_runs: runs of this schedule that may be active (PENDING, RUNNING,
            RESUMABLE) at once; further intervals wait for a slot.
        paused: create it paused.
        start: no fire time before this instant (inclusive).
        end: no fire time after this instant (inclusive).
        replace: redefine an existing schedule of this name.

    Returns:
        The stored schedule.

    Raises:
        InvalidScheduleError: a bad name, cron string, interval, time zone, bounds,
            kwargs or ``max_active_runs``.
        ScheduleTargetError: the target cannot be imported or called that way.
        ScheduleExistsError: the name is taken and ``replace`` is False.
    """
    validate_schedule_name(name)
    interval = parse_every(every) if every is not None else None
    if interval is not None and (interval.microseconds or interval < dt.timedelta(seconds=1)):
        raise InvalidScheduleError(
            f"Schedule {name!r}: the interval must be a whole number of seconds, got {every!r}.",
            schedule=name,
        )
    try:
        spec = ScheduleSpec(cron=cron, interval=interval, timezone=timezone, start=start, end=end)
    except InvalidScheduleError as exc:
        raise InvalidScheduleError(f"Schedule {name!r}: {exc}", schedule=name) from None
    if isinstance(max_active_runs, bool) or not isinstance(max_active_runs, int):
        raise InvalidScheduleError(
            f"Schedule {name!r}: max_active_runs must be an integer, got {max_active_runs!r}.",
            schedule=name,
        )
    if max_active_runs < 1:
        raise InvalidScheduleError(
            f"Schedule {name!r}: max_active_runs must be at least 1, got {max_active_runs}.",
            schedule=name,
        )
    checked_kwargs = _check_kwargs(name, kwargs)
    fn = load_target(target, schedule=name)
    check_target_signature(fn, target, checked_kwargs, schedule=name)
    return _store().upsert(
        name=name,
        target=target,
        spec=spec,
        kwargs=checked_kwargs,
        catchup=bool(catchup),
        max_active_runs=max_active_runs,
        paused=bool(paused),
        now=_now(),
        replace=replace,
    )


def list_all() -> list[ScheduleInfo]:
    """Every schedule, by name."""
    return _store().list_all()


def get(name: str) -> ScheduleInfo:
    """The schedule named ``name``.

    Raises:
        ScheduleNotFoundError: there is none (the message lists the known names).
    """
    return _store().get(name)


def pause(name: str) -> ScheduleInfo:
    """Pause a schedule: it fires nothing until :func:`resume`. Runs in flight go on.

    Raises:
        ScheduleNotFoundError: there is no such schedule.
    """
    return _store().set_paused(name, True, now=_now())


def resume(name: str) -> ScheduleInfo:
    """Resume a paused schedule. The intervals it missed while paused follow its catch-up
    option: all of them, oldest first (``catchup=True``), or only the latest.

    Raises:
        ScheduleNotFoundError: there is no such schedule.
    """
    return _store().set_paused(name, False, now=_now())


def delete(name: str) -> None:
    """Delete a schedule and its run records. The runs' workflows are kept.

    Raises:
        ScheduleNotFoundError: there is no such schedule.
    """
    _store().delete(name)


def trigger(name: str) -> str:
    """Fire a manual run of the schedule now; returns its workflow id.

    The run gets an id of its own, ``{name}@manual-{UTC time}``, and ``logical_time``
    = now, so it never takes a scheduled interval's place. With a runtime in this
    process (``hs.init()``), the DAG is built first (a target that fails to give one
    raises here and nothing is recorded) and the run starts here with
    ``workflow.run_async``; it runs in this process, so wait for it
    (``workflow.get_status`` / ``get_output``) before exiting, or a running scheduler
    daemon resumes it once this process is gone. Without a runtime the run is only
    recorded, as a request, and this process may exit at once: a running scheduler
    daemon starts it at its next pass, within
    :data:`~heliostat.workflows.triggers.POLL_INTERVAL`, or a daemon started later at
    its first pass.

    Raises:
        ScheduleNotFoundError: there is no such schedule.
        ScheduleTargetError: (with a runtime) the target gave no DAG.
        WorkflowDefinitionError: (with a runtime) the DAG cannot run.
    """
    store = _store()
    info = store.get(name)
    at = _now()
    workflow_id = manual_run_id(name, at)
    if current_runtime() is None:
        store.record_manual(name, at=at, workflow_id=workflow_id)
        log.info("schedule %r: recorded manual run %s (no runtime here)", name, workflow_id)
        return workflow_id
    dag = build_dag(info.target, logical_time=at, kwargs=info.kwargs, schedule=name)
    current_client()  # the runtime is still there: fail before recording anything
    # Taken by this process: no scheduler starts it too.
    run = store.record_manual(name, at=at, workflow_id=workflow_id, taken_at=_now())
    try:
        api.run_async(
            dag,
            workflow_id=workflow_id,
            metadata={
                "schedule": name,
                "logical_time": at.isoformat(),
                "kind": str(run.kind),
            },
        )
    except Exception as exc:
        store.mark_started([(workflow_id, _now(), f"{type(exc).__name__}: {exc}")])
        raise
    store.mark_started([(workflow_id, _now(), None)])
    log.info("schedule %r: started manual run %s", name, workflow_id)
    return workflow_id


def next_fire_times(name: str, n: int = 5) -> list[dt.datetime]:
    """The next ``n`` logical times the schedule will fire, oldest first (UTC).

    Intervals already due but not fired yet (the scheduler is down, the schedule is
    paused or at ``max_active_runs``) come first: every one of them if the schedule
    catches up, else only the latest.

    Raises:
        ScheduleNotFoundError: there is no such schedule.
    """
    info = _store().get(name)
    nxt = info.next_fire_time
    if nxt is None or n <= 0:
        return []
    spec = info.spec()
    now = _now()
    if nxt > now:
        return [nxt, *spec.next_fire_times(nxt, n - 1)]
    due: list[dt.datetime]
    if info.catchup:
        due = list(itertools.islice(itertools.chain([nxt], spec.fire_times_between(nxt, now)), n))
    else:
        latest = spec.latest_fire_time(now)
        due = [latest] if latest is not None else []
    return [*due, *spec.next_fire_times(now, n - len(due))][:n]


def runs(name: str, limit: int = 20) -> list[ScheduleRun]:
    """The schedule's latest runs, newest logical time first, with their workflow status.

    Raises:
        ScheduleNotFoundError: there is no such schedule.
    """
    return _store().runs(name, limit=limit)


def make_loop(*, clock: Clock | None = None) -> TriggerLoop:
    """A trigger loop over this process's schedule store (the one this API writes to, so
    changes made here wake it at once). Starting runs needs a runtime."""
    return TriggerLoop(_store(), clock=clock if clock is not None else SystemClock())


def run_scheduler(stop: threading.Event) -> None:
    """Run the scheduler daemon's loop in this thread until ``stop`` is set.

    ``heliostat scheduler`` calls ``hs.init()``, installs SIGTERM/SIGINT handlers that
    set ``stop``, and calls this. Scheduled runs execute in this process's runtime.

    Raises:
        NotInitializedError: no runtime (call ``hs.init()`` first).
    """
    current_client()
    loop = make_loop()
    done = threading.Event()

    def watch() -> None:  # relay `stop` to the loop (which sleeps on its own event)
        while not stop.wait(1.0):
            if done.is_set():
                return
        loop.stop()

    watcher = threading.Thread(target=watch, name="heliostat-scheduler-stop", daemon=True)
    watcher.start()
    try:
        loop.run_forever()
    finally:
        done.set()
        loop.stop()
        loop.close()
