"""The trigger loop: fire schedules' due intervals as durable workflow runs.

:class:`TriggerLoop` is what ``heliostat scheduler`` runs. Each pass (:meth:`TriggerLoop.
run_once`) claims the intervals that fell due in the schedule store (one transaction per
batch of schedules, see :mod:`heliostat.workflows.schedule_store`), then starts each
claimed run: it imports the schedule's ``module:function`` target, calls it with
``logical_time=`` (and the schedule's kwargs) to get a DAG, and starts
``workflow.run_async(dag, workflow_id=run_id)``. Which intervals fire is the pure
policy of :func:`heliostat.scheduler.cron.plan_fires` (catch-up, ``max_active_runs``).

Exactly once per interval. The workflow id of a run is a function of the schedule's name
and the interval's logical time (``nightly@2026-11-21T02:00:00Z``), and claiming an
interval is inserting a row that a unique constraint admits once. So two loops against
one database, a restarted loop, or an edited schedule never start an interval twice:

1. Claim (commit). A loop that loses the race for an interval gets a conflict and skips it.
2. Start the run, then record ``started_at`` (or the error, e.g. a target that returns
   no DAG; the run is then done and logged, and the loop goes on).
3. A loop that dies between 1 and 2 leaves a claimed, unstarted row. Every loop sweeps
   for those (:meth:`TriggerLoop.recover`, at start and every :data:`SWEEP_INTERVAL`)
   once they are older than :data:`STRANDED_GRACE` (so a live loop between 1 and 2 is
   not raced) and starts them under the same workflow id; should the first start have
   got through after all, the workflow's lease and id make the second a no-op. The same
   sweep resumes scheduled runs whose driver died (RESUMABLE, or RUNNING under a lease
   that is no longer live), as DESIGN §4 asks of the scheduler.

Manual runs. ``heliostat schedule trigger NAME`` in a shell (no runtime there) records a
request and exits; each pass takes the requests first
(:meth:`ScheduleStore.take_manual`: one conditional UPDATE, which admits one loop per
request) and starts them like claimed intervals, under their own ids
(``nightly@manual-...``). So a running loop starts a manual run within one poll of the
trigger, at once if the trigger went through this process's store. A request is not a
stranded claim: only a claim a loop took (an interval, or a taken request) and did not
start within the grace is one.

Sleeping. Between passes the loop sleeps until the earliest future fire time, but at
most :data:`POLL_INTERVAL` (5 s): no busy polling. It wakes at once when a schedule is
changed through the same store in this process (the API sets its event); a change made
by another process (``heliostat schedule add`` in a shell) is seen at the next poll, as
is a run slot freed by a finished run (``max_active_runs``). Each poll costs two indexed
queries. Time comes from an injected :class:`Clock`, so tests drive a :class:`FakeClock`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import inspect
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from heliostat.engine.dag import DAGNode
from heliostat.exceptions import ScheduleTargetError
from heliostat.scheduler.cron import FirePlan, ScheduleSpec, plan_fires
from heliostat.workflows import api
from heliostat.workflows.clock import Clock, FakeClock, SystemClock
from heliostat.workflows.schedule_store import (
    Claim,
    FiredRun,
    ScheduleInfo,
    ScheduleStore,
    StrandedRun,
)

__all__ = [
    "CLAIM_BATCH",
    "POLL_INTERVAL",
    "STARTING_GRACE",
    "STRANDED_GRACE",
    "SWEEP_INTERVAL",
    "Clock",
    "FakeClock",
    "SystemClock",
    "TriggerLoop",
    "build_dag",
    "check_target_signature",
    "load_target",
    "start_workflow_run",
]

log = logging.getLogger("heliostat.schedules")

POLL_INTERVAL = dt.timedelta(seconds=5)
"""Longest sleep between passes: how soon changes from other processes are seen."""

SWEEP_INTERVAL = dt.timedelta(seconds=30)
"""How often a running loop looks for stranded runs (claimed, never started)."""

STRANDED_GRACE = dt.timedelta(seconds=30)
"""A claimed run not started after this long is taken to be stranded by a dead loop."""

STARTING_GRACE = dt.timedelta(seconds=30)
"""A started run not yet visible as a workflow counts as active for this long (the
engine creates the workflow row moments after ``run_async`` returns)."""

CLAIM_BATCH = 500
"""Most schedules claimed in one transaction; one pass takes as many batches as needed."""


# --- targets ----------------------------------------------------------------------------


def load_target(target: str, *, schedule: str = "") -> Callable[..., Any]:
    """Import a ``module:function`` target (the function may be a dotted attribute path).

    Raises:
        ScheduleTargetError: the string is malformed, the module cannot be imported, the
            attribute is missing, or it is not callable.
    """
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise ScheduleTargetError(
            f"Invalid target {target!r}: expected 'module:function', e.g. 'etl.jobs:nightly'.",
            schedule=schedule,
            target=target,
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module raising at import time
        raise ScheduleTargetError(
            f"Cannot import module {module_name!r} of target {target!r}: "
            f"{type(exc).__name__}: {exc}",
            schedule=schedule,
            target=target,
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ScheduleTargetError(
                f"Target {target!r}: {module_name!r} has no attribute {attr_path!r}.",
                schedule=schedule,
                target=target,
            ) from None
    if not callable(obj):
        raise ScheduleTargetError(
            f"Target {target!r} is a {type(obj).__name__}, not a function.",
            schedule=schedule,
            target=target,
        )
    return obj  # type: ignore[no-any-return]


def check_target_signature(
    fn: Callable[..., Any], target: str, kwargs: dict[str, Any], *, schedule: str = ""
) -> None:
    """Check that ``fn(logical_time=..., **kwargs)`` is a valid call, without calling it.

    Raises:
        ScheduleTargetError: it is not (naming the target and why).
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: let the call tell
        return
    try:
        signature.bind(logical_time=None, **kwargs)
    except TypeError as exc:
        args = ", ".join(["logical_time", *kwargs])
        raise ScheduleTargetError(
            f"Target {target!r} cannot be called with the keyword arguments {args}: {exc}.",
            schedule=schedule,
            target=target,
        ) from None


def build_dag(
    target: str,
    *,
    logical_time: dt.datetime,
    kwargs: dict[str, Any] | None = None,
    schedule: str = "",
) -> DAGNode:
    """Call the target with ``logical_time`` (and ``kwargs``) and return the DAG it builds.

    Raises:
        ScheduleTargetError: the target cannot be loaded, raised, or returned something
            other than a DAG (``f.bind(...)``).
    """
    fn = load_target(target, schedule=schedule)
    try:
        dag = fn(logical_time=logical_time, **(kwargs or {}))
    except Exception as exc:
        raise ScheduleTargetError(
            f"Target {target!r} raised {type(exc).__name__}: {exc}",
            schedule=schedule,
            target=target,
        ) from exc
    if not isinstance(dag, DAGNode):
        raise ScheduleTargetError(
            f"Target {target!r} returned {type(dag).__name__}, not a DAG; it must return "
            "a workflow graph such as step.bind(...).",
            schedule=schedule,
            target=target,
        )
    return dag


def start_workflow_run(run: FiredRun) -> None:
    """Start one fired run as a durable workflow (the loop's default ``start_run``).

    Builds the DAG from the run's target and starts ``workflow.run_async`` with the
    run's deterministic id; the workflow's metadata records the schedule, the logical
    time and the kind of run. Needs a runtime (``hs.init()``).

    Raises:
        ScheduleTargetError: the target gave no DAG.
        WorkflowDefinitionError: the DAG cannot run.
        NotInitializedError: no runtime.
    """
    dag = build_dag(
        run.target, logical_time=run.logical_time, kwargs=run.kwargs, schedule=run.schedule
    )
    api.run_async(
        dag,
        workflow_id=run.workflow_id,
        metadata={
            "schedule": run.schedule,
            "logical_time": run.logical_time.isoformat(),
            "kind": str(run.kind),
        },
    )


def _resume_workflow(workflow_id: str) -> None:
    api.resume_async(workflow_id)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- the loop ---------------------------------------------------------------------------


class TriggerLoop:
    """Fires the due intervals of every schedule in a store, until stopped.

    Args:
        store: the schedule store (its database is the workflows' database).
        clock: the time source (default: :class:`SystemClock`).
        start_run: starts one fired run (default: :func:`start_workflow_run`); what it
            raises is recorded as that run's error and logged.
        resume_run: resumes the workflow of a scheduled run whose driver died (default:
            ``workflow.resume_async``); None to leave such runs alone.
        poll_interval / sweep_interval / stranded_grace / starting_grace / batch_size:
            see the module constants of the same names.

    Thread-safety: :meth:`stop` may be called from any thread (a signal handler's
    thread, say); :meth:`run_once`, :meth:`recover` and :meth:`run_forever` are meant
    for one thread.
    """

    def __init__(
        self,
        store: ScheduleStore,
        *,
        clock: Clock | None = None,
        start_run: Callable[[FiredRun], object] | None = None,
        resume_run: Callable[[str], object] | None = _resume_workflow,
        poll_interval: dt.timedelta = POLL_INTERVAL,
        sweep_interval: dt.timedelta = SWEEP_INTERVAL,
        stranded_grace: dt.timedelta = STRANDED_GRACE,
        starting_grace: dt.timedelta = STARTING_GRACE,
        batch_size: int = CLAIM_BATCH,
    ) -> None:
        self.store = store
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._start_run = start_run if start_run is not None else start_workflow_run
        self._resume_run = resume_run
        self._poll = poll_interval
        self._sweep = sweep_interval
        self._stranded_grace = stranded_grace
        self._starting_grace = starting_grace
        self._batch = batch_size
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._passes = itertools.count(1)
        # Validated specs by schedule name, with the updated_at they were built for:
        # building one parses the cron expression, which is too slow to do every tick.
        self._specs: dict[str, tuple[dt.datetime, ScheduleSpec]] = {}
        self._broken: dict[str, dt.datetime] = {}  # schedules whose plan failed, logged once
        store.subscribe(self._wake)

    # --- one pass --------------------------------------------------------------------

    def run_once(self) -> list[FiredRun]:
        """Fire everything due now: claim, start, record. Returns the runs fired.

        First takes and starts the manual runs people asked for (up to ``batch_size``;
        more wait for the next pass), then examines each due schedule once (in batches
        of ``batch_size``, one transaction each); intervals held back by
        ``max_active_runs`` stay due for a later pass.
        """
        now = self.clock.now()
        cause = f"pass-{next(self._passes)}"
        fired = self.store.take_manual(now, limit=self._batch, cause_id=cause)
        self._start(fired)
        after: tuple[dt.datetime, str] | None = None
        planner = self._planner(now)
        while True:
            claim = self.store.claim_due(
                now,
                planner=planner,
                limit=self._batch,
                after=after,
                starting_grace=self._starting_grace,
                cause_id=cause,
            )
            if claim.examined == 0:
                break
            self._report(claim, now)
            self._start(claim.fired)
            fired.extend(claim.fired)
            if claim.examined < self._batch:
                break
            after = claim.last_key
        return fired

    def _planner(self, now: dt.datetime) -> Callable[[ScheduleInfo, int], FirePlan]:
        def plan(info: ScheduleInfo, active: int) -> FirePlan:
            assert info.next_fire_time is not None  # the due query selects only these
            try:
                return plan_fires(
                    self._spec(info),
                    next_due=info.next_fire_time,
                    cursor=info.last_logical_time,
                    now=now,
                    catchup=info.catchup,
                    slots=info.max_active_runs - active,
                )
            except Exception:
                # A schedule the loop cannot plan (its zone vanished from tzdata, say)
                # must not stop the others: leave it due, say so once per definition.
                if self._broken.get(info.name) != info.updated_at:
                    self._broken[info.name] = info.updated_at
                    log.exception("schedule %r cannot be planned; it fires nothing", info.name)
                return FirePlan(
                    fire=(),
                    cursor=info.last_logical_time,
                    next_fire_at=info.next_fire_time,
                    waiting=False,
                    skipped=0,
                )

        return plan

    def _spec(self, info: ScheduleInfo) -> ScheduleSpec:
        cached = self._specs.get(info.name)
        if cached is not None and cached[0] == info.updated_at:
            return cached[1]
        spec = info.spec()
        self._specs[info.name] = (info.updated_at, spec)
        return spec

    def _report(self, claim: Claim, now: dt.datetime) -> None:
        for name, n in claim.skipped.items():
            log.info(
                "schedule %r does not catch up: skipped %d missed interval%s",
                name,
                n,
                "" if n == 1 else "s",
            )
        if claim.waiting and log.isEnabledFor(logging.DEBUG):
            log.debug("waiting for a free run slot (max_active_runs): %s", claim.waiting)

    def _start(self, runs: list[FiredRun]) -> None:
        if not runs:
            return
        results: list[tuple[str, dt.datetime, str | None]] = []
        for run in runs:
            results.append((run.workflow_id, self.clock.now(), self._start_one(run)))
        self.store.mark_started(results)

    def _start_one(self, run: FiredRun) -> str | None:
        """Start one run; returns None, or the error (one line) if it could not start."""
        try:
            self._start_run(run)
        except Exception as exc:
            log.error(
                "schedule %r: run %s could not start [%s]: %s",
                run.schedule,
                run.workflow_id,
                run.cause_id,
                exc,
            )
            return _one_line(exc)
        log.info(
            "schedule %r: started %s run %s [%s]",
            run.schedule,
            run.kind,
            run.workflow_id,
            run.cause_id,
        )
        return None

    # --- recovery --------------------------------------------------------------------

    def recover(self) -> list[StrandedRun]:
        """Start runs claimed but never started, and resume runs whose driver died.

        Returns what it found (and acted on).
        """
        now = self.clock.now()
        stranded = self.store.stranded(claimed_before=now - self._stranded_grace)
        to_start = [
            dataclasses.replace(s.run, cause_id="recover") for s in stranded if not s.resume
        ]
        for s in stranded:
            if s.resume and self._resume_run is not None:
                try:
                    self._resume_run(s.run.workflow_id)
                except Exception as exc:
                    log.warning("could not resume scheduled run %s: %s", s.run.workflow_id, exc)
                else:
                    log.info("resumed scheduled run %s (its driver died)", s.run.workflow_id)
        if to_start:
            log.info(
                "starting %d run(s) claimed but never started (their scheduler stopped "
                "before starting them)",
                len(to_start),
            )
            self._start(to_start)
        return stranded

    # --- the daemon --------------------------------------------------------------------

    def run_forever(self) -> None:
        """Fire due intervals until :meth:`stop`; sleep in between (see the module doc).

        A failing pass (the database unreachable, say) is logged and retried after
        the poll interval; it does not end the loop.
        """
        log.info("scheduler started")
        next_sweep = self.clock.now()
        while not self._stopped.is_set():
            self._wake.clear()
            upcoming: dt.datetime | None = None
            try:
                if self.clock.now() >= next_sweep:
                    self.recover()
                    next_sweep = self.clock.now() + self._sweep
                self.run_once()
                upcoming = self.store.next_fire_after(self.clock.now())
            except Exception:
                log.exception("scheduler pass failed; retrying in %s", self._poll)
            if self._stopped.is_set():
                break
            until = self.clock.now() + self._poll
            if upcoming is not None and upcoming < until:
                until = upcoming
            self.clock.wait(until, self._wake)
        log.info("scheduler stopped")

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after the pass in progress (thread-safe)."""
        self._stopped.set()
        self._wake.set()

    def wake(self) -> None:
        """Start the next pass now (thread-safe)."""
        self._wake.set()

    def close(self) -> None:
        """Stop listening to the store's change events."""
        self.store.unsubscribe(self._wake)
