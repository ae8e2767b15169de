"""SQL access for schedules: definitions, claims of due intervals, and their runs.

Two kinds of callers share this store. People (the Python API, the CLI) create, edit,
pause and delete schedules and trigger manual runs; the trigger loop claims the
intervals that fell due and records how starting them went. Every change a person makes
bumps ``schedules.updated_at`` and wakes the loops of this process that subscribed
(:meth:`ScheduleStore.subscribe`); loops in other processes see it at their next poll.

Claiming due intervals (:meth:`ScheduleStore.claim_due`) is one transaction per batch
of schedules:

1. Select the unpaused schedules whose ``next_fire_at`` is due, oldest first. On
   PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``, so two loops share the
   work without waiting on each other and never plan the same schedule at once; SQLite
   transactions take the database write lock up front (``BEGIN IMMEDIATE``), which
   serializes the loops.
2. Count each schedule's active runs (workflows PENDING, RUNNING or RESUMABLE, plus runs
   claimed but not yet visible as a workflow) in one query.
3. Ask the caller's planner what to fire for each schedule (pure policy:
   :func:`heliostat.scheduler.cron.plan_fires`).
4. ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` one ``schedule_runs`` row per fire
   time: the unique ``(schedule_name, logical_time, kind)`` makes the insert the claim,
   and a row that conflicts was claimed by somebody else and is not started here.
5. Move each schedule's ``cursor`` and ``next_fire_at``, then commit.

The caller starts the claimed runs after the commit and reports back with
:meth:`ScheduleStore.mark_started` (``started_at`` or ``error``, one batched UPDATE). A
scheduler that dies in between leaves rows with neither; :meth:`ScheduleStore.stranded`
finds them after a grace period so they are started again under the same workflow id.

Manual runs. A person who triggers a run where there is no runtime to start it
(``heliostat schedule trigger NAME``) records a *request*: a ``manual`` row that nobody
has taken yet, whose ``fired_at`` is NULL until a starter takes it:

1. Every pass of a trigger loop looks for requests (:meth:`ScheduleStore.take_manual`,
   a read that takes no lock) and takes them with one conditional UPDATE (``SET
   fired_at = now WHERE fired_at IS NULL AND started_at IS NULL``). Two loops
   may both see a request; the UPDATE admits one of them, as the unique constraint
   does for intervals, and only the loop it admits starts the run.
2. From then on the run is a claim like an interval's: the loop starts it and calls
   :meth:`mark_started`; a loop that dies before that leaves a stranded claim, which
   the sweep starts after the grace period.

A request is never "stranded": it is work for the next pass, not a sign that a loop
died. A process that starts the run itself (``trigger`` with a runtime) records it
already taken (:meth:`ScheduleStore.record_manual` with ``taken_at``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from heliostat.exceptions import ScheduleExistsError, ScheduleNotFoundError
from heliostat.scheduler.cron import FirePlan, ScheduleSpec, run_id
from heliostat.storage.db import SQLITE_BEGIN_OPTION, ensure_schema, make_engine
from heliostat.storage.models import Schedule, ScheduleRunKind, Workflow
from heliostat.storage.models import ScheduleRun as ScheduleRunRow
from heliostat.storage.states import WorkflowStatus
from heliostat.workflows.lineage import driver_gone
from heliostat.workflows.schedule_records import (
    Claim,
    FiredRun,
    ScheduleInfo,
    ScheduleRun,
    StrandedRun,
    info_from_row,
)
from heliostat.workflows.store import WorkflowStore

__all__ = [
    "ACTIVE_STATUSES",
    "Claim",
    "FiredRun",
    "ScheduleInfo",
    "ScheduleRun",
    "ScheduleStore",
    "StrandedRun",
]

_SCH: sa.Table = Schedule.__table__  # type: ignore[assignment]
_RUN: sa.Table = ScheduleRunRow.__table__  # type: ignore[assignment]
_W: sa.Table = Workflow.__table__  # type: ignore[assignment]

ACTIVE_STATUSES = (WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.RESUMABLE)
"""Workflow states in which a scheduled run counts against ``max_active_runs``."""

_ACTIVE_VALUES = [str(s) for s in ACTIVE_STATUSES]


Planner = Callable[[ScheduleInfo, int], FirePlan]
"""``planner(schedule, active_runs) -> FirePlan``: the policy
:meth:`ScheduleStore.claim_due` applies."""


def _same_timing(info: ScheduleInfo, spec: ScheduleSpec) -> bool:
    return (
        info.cron == spec.cron
        and info.interval == spec.interval
        and info.timezone == spec.timezone
        and info.start == spec.start
        and info.end == spec.end
    )


# Statements built once (the loop runs them every tick).
_DUE = (
    sa.select(_SCH)
    .where(_SCH.c.paused == sa.false(), _SCH.c.next_fire_at <= sa.bindparam("now"))
    .order_by(_SCH.c.next_fire_at, _SCH.c.name)
    .limit(sa.bindparam("limit"))
)
_DUE_AFTER = _DUE.where(
    sa.tuple_(_SCH.c.next_fire_at, _SCH.c.name)
    > sa.tuple_(sa.bindparam("after_at", type_=_SCH.c.next_fire_at.type), sa.bindparam("after_n"))
)
_NEXT_FUTURE = (
    sa.select(_SCH.c.next_fire_at)
    .where(_SCH.c.paused == sa.false(), _SCH.c.next_fire_at > sa.bindparam("now"))
    .order_by(_SCH.c.next_fire_at)
    .limit(1)
)
# Active runs, one row (the schedule's name) per run: those whose workflow is in an
# active state (found through the workflows' status index, then the runs' primary key),
# and those claimed but not yet visible as a workflow: not started, or started within
# the grace period (the engine creates the workflow row moments after the start). Three
# SELECTs, not one with an OR: each reaches its rows through an index, where one
# statement would scan every run ever fired.
_NO_WORKFLOW = ~sa.exists().where(_W.c.workflow_id == _RUN.c.workflow_id)
_ACTIVE_RUNS = sa.union_all(
    sa.select(_RUN.c.schedule_name).where(
        _RUN.c.workflow_id.in_(
            sa.select(_W.c.workflow_id).where(_W.c.status.in_(_ACTIVE_VALUES)).scalar_subquery()
        )
    ),
    sa.select(_RUN.c.schedule_name).where(
        _RUN.c.started_at.is_(None), _RUN.c.error.is_(None), _NO_WORKFLOW
    ),
    sa.select(_RUN.c.schedule_name).where(
        _RUN.c.started_at > sa.bindparam("recent"), _RUN.c.error.is_(None), _NO_WORKFLOW
    ),
)
_ADVANCE = (
    _SCH.update()
    .where(_SCH.c.name == sa.bindparam("n"))
    .values(cursor=sa.bindparam("c"), next_fire_at=sa.bindparam("nf"))
)
_MARK = (
    _RUN.update()
    .where(_RUN.c.workflow_id == sa.bindparam("w"))
    .values(started_at=sa.bindparam("s"), error=sa.bindparam("e"))
)
# A manual run nobody has taken yet (see "Manual runs" in the module docstring).
_REQUESTED = sa.and_(_RUN.c.fired_at.is_(None), _RUN.c.started_at.is_(None), _RUN.c.error.is_(None))
_REQUESTS = (
    sa.select(_RUN, _SCH.c.target, _SCH.c.kwargs, _W.c.status)
    .select_from(
        _RUN.join(_SCH, _SCH.c.name == _RUN.c.schedule_name).outerjoin(
            _W, _W.c.workflow_id == _RUN.c.workflow_id
        )
    )
    .where(_REQUESTED)
    .order_by(_RUN.c.logical_time, _RUN.c.workflow_id)
    .limit(sa.bindparam("limit"))
)
_TAKE = (
    _RUN.update()
    .where(_RUN.c.workflow_id.in_(sa.bindparam("ids", expanding=True)), _REQUESTED)
    .values(fired_at=sa.bindparam("now"))
    .returning(_RUN.c.workflow_id)
)


class ScheduleStore:
    """SQL access for schedules and their runs (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        insert = (pg_dialect.insert if self._postgres else sqlite_dialect.insert)(_RUN)
        self._claim_insert = insert.on_conflict_do_nothing().returning(_RUN.c.workflow_id)
        self._listeners: weakref.WeakSet[threading.Event] = weakref.WeakSet()
        self._listeners_lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> ScheduleStore:
        """Connect to ``url`` and migrate the schema to head if needed."""
        engine = make_engine(url)
        ensure_schema(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def _read(self) -> Connection:
        """A connection for reading: on SQLite it begins DEFERRED, so it takes no write
        lock (the engine's transactions otherwise begin IMMEDIATE)."""
        return self.engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})

    # --- change notification -----------------------------------------------------------

    def subscribe(self, event: threading.Event) -> None:
        """Set ``event`` whenever a person changes a schedule through this store."""
        with self._listeners_lock:
            self._listeners.add(event)

    def unsubscribe(self, event: threading.Event) -> None:
        with self._listeners_lock:
            self._listeners.discard(event)

    def _changed(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for event in listeners:
            event.set()

    # --- definitions (people) ------------------------------------------------------------

    def _lock_row(self, conn: Connection, name: str) -> Any:
        query = sa.select(_SCH).where(_SCH.c.name == name)
        if self._postgres:
            query = query.with_for_update()
        return conn.execute(query).first()

    def upsert(
        self,
        *,
        name: str,
        target: str,
        spec: ScheduleSpec,
        kwargs: dict[str, Any],
        catchup: bool,
        max_active_runs: int,
        paused: bool,
        now: dt.datetime,
        replace: bool,
    ) -> ScheduleInfo:
        """Create a schedule, or redefine an existing one when ``replace`` is True.

        A new schedule first fires at its start (when given; with catch-up from there
        if that is in the past) or at its first fire time after ``now``. A redefined one
        keeps its cursor and creation time; if its timing changed it next fires at the
        first new fire time after both the cursor and ``now`` (an edit neither re-fires
        an interval nor backfills), otherwise its pending intervals stay due.

        Raises:
            ScheduleExistsError: the name is taken and ``replace`` is False.
        """
        interval_s = int(spec.interval.total_seconds()) if spec.interval is not None else None
        values = {
            "target": target,
            "cron": spec.cron,
            "interval_seconds": interval_s,
            "timezone": spec.timezone,
            "kwargs": kwargs,
            "catchup": catchup,
            "max_active_runs": max_active_runs,
            "paused": paused,
            "start_at": spec.start,
            "end_at": spec.end,
            "updated_at": now,
        }
        try:
            info = self._upsert(name, values, spec, now=now, replace=replace)
        except sa.exc.IntegrityError:
            # Another process created the same name between our read and our insert.
            if not replace:
                raise ScheduleExistsError(
                    f"Schedule {name!r} exists already; pass replace=True "
                    "(heliostat schedule add --replace) to redefine it.",
                    schedule=name,
                ) from None
            info = self._upsert(name, values, spec, now=now, replace=replace)
        self._changed()
        return info

    def _upsert(
        self,
        name: str,
        values: dict[str, Any],
        spec: ScheduleSpec,
        *,
        now: dt.datetime,
        replace: bool,
    ) -> ScheduleInfo:
        with self.engine.begin() as conn:
            row = self._lock_row(conn, name)
            if row is None:
                first_after = spec.start - dt.timedelta(microseconds=1) if spec.start else now
                conn.execute(
                    _SCH.insert().values(
                        name=name,
                        created_at=now,
                        cursor=None,
                        next_fire_at=spec.next_fire_time(first_after),
                        **values,
                    )
                )
            else:
                if not replace:
                    raise ScheduleExistsError(
                        f"Schedule {name!r} exists already; pass replace=True "
                        "(heliostat schedule add --replace) to redefine it.",
                        schedule=name,
                    )
                old = info_from_row(row._mapping)
                if _same_timing(old, spec):
                    next_fire = old.next_fire_time
                else:
                    after = max(old.last_logical_time, now) if old.last_logical_time else now
                    next_fire = spec.next_fire_time(after)
                conn.execute(
                    _SCH.update()
                    .where(_SCH.c.name == name)
                    .values(next_fire_at=next_fire, **values)
                )
            return info_from_row(
                conn.execute(sa.select(_SCH).where(_SCH.c.name == name)).one()._mapping
            )

    def get(self, name: str) -> ScheduleInfo:
        """The schedule named ``name``.

        Raises:
            ScheduleNotFoundError: there is none.
        """
        with self._read() as conn:
            row = conn.execute(sa.select(_SCH).where(_SCH.c.name == name)).first()
        if row is None:
            raise self._not_found(name)
        return info_from_row(row._mapping)

    def _not_found(self, name: str) -> ScheduleNotFoundError:
        with self._read() as conn:
            names = conn.execute(sa.select(_SCH.c.name).order_by(_SCH.c.name).limit(21)).scalars()
            known = list(names)
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        hint = f" (known: {listed})" if known else " (there are no schedules)"
        return ScheduleNotFoundError(f"No schedule named {name!r}{hint}.", schedule=name)

    def list_all(self) -> list[ScheduleInfo]:
        """Every schedule, by name."""
        with self._read() as conn:
            rows = conn.execute(sa.select(_SCH).order_by(_SCH.c.name)).all()
        return [info_from_row(r._mapping) for r in rows]

    def set_paused(self, name: str, paused: bool, *, now: dt.datetime) -> ScheduleInfo:
        """Pause or resume a schedule (a no-op if it already is).

        Raises:
            ScheduleNotFoundError: there is none.
        """
        with self.engine.begin() as conn:
            row = self._lock_row(conn, name)
            if row is not None:
                info = info_from_row(row._mapping)
                if info.paused is not paused:
                    conn.execute(
                        _SCH.update()
                        .where(_SCH.c.name == name)
                        .values(paused=paused, updated_at=now)
                    )
                    info = dataclasses.replace(info, paused=paused, updated_at=now)
        if row is None:  # raised outside the transaction: the message needs a read
            raise self._not_found(name)
        self._changed()
        return info

    def delete(self, name: str) -> None:
        """Delete a schedule and its run records; the runs' workflows stay.

        Raises:
            ScheduleNotFoundError: there is none.
        """
        with self.engine.begin() as conn:
            # Explicit, not only ON DELETE CASCADE: foreign keys are per connection on SQLite.
            conn.execute(_RUN.delete().where(_RUN.c.schedule_name == name))
            deleted = conn.execute(_SCH.delete().where(_SCH.c.name == name)).rowcount
        if not deleted:
            raise self._not_found(name)
        self._changed()

    def record_manual(
        self,
        name: str,
        *,
        at: dt.datetime,
        workflow_id: str,
        taken_at: dt.datetime | None = None,
    ) -> FiredRun:
        """Record a manual run of ``name`` asked for at ``at``; returns it.

        Without ``taken_at`` the run is a request: the next pass of a trigger loop takes
        and starts it (the loops of this process are woken at once; others see it at
        their next poll). With ``taken_at`` the caller has taken it and starts it
        itself, then calls :meth:`mark_started`; should the caller die first, a loop's
        sweep starts it once :data:`~heliostat.workflows.triggers.STRANDED_GRACE` has
        passed.

        Raises:
            ScheduleNotFoundError: there is none.
        """
        info = self.get(name)
        with self.engine.begin() as conn:  # the foreign key catches a delete meanwhile
            conn.execute(
                _RUN.insert().values(
                    workflow_id=workflow_id,
                    schedule_name=name,
                    logical_time=at,
                    kind=ScheduleRunKind.MANUAL,
                    fired_at=taken_at,  # None: a request nobody has taken yet
                    started_at=None,
                    error=None,
                )
            )
        if taken_at is None:
            self._changed()
        return FiredRun(
            schedule=name,
            target=info.target,
            kwargs=info.kwargs,
            logical_time=at,
            workflow_id=workflow_id,
            kind=ScheduleRunKind.MANUAL,
        )

    def take_manual(self, now: dt.datetime, *, limit: int, cause_id: str = "") -> list[FiredRun]:
        """Take up to ``limit`` requested manual runs, oldest first; the caller starts
        them and calls :meth:`mark_started`.

        Another loop taking the same request at the same time gets it, or this one
        does, never both (see "Manual runs" in the module docstring). Manual runs are
        taken whether their schedule is paused or at ``max_active_runs``: a person asked
        for them. A request whose workflow exists already (a starter died between
        starting it and recording that) is only marked started.
        """
        with self._read() as conn:
            rows = conn.execute(_REQUESTS, {"now": now, "limit": limit}).all()
        if not rows:
            return []
        wanted: dict[str, FiredRun] = {}
        started: list[tuple[str, dt.datetime, str | None]] = []
        for row in rows:
            m = row._mapping
            if m["status"] is not None:
                started.append((m["workflow_id"], now, None))
                continue
            wanted[m["workflow_id"]] = FiredRun(
                schedule=m["schedule_name"],
                target=m["target"],
                kwargs=dict(m["kwargs"] or {}),
                logical_time=m["logical_time"],
                workflow_id=m["workflow_id"],
                kind=ScheduleRunKind.MANUAL,
                cause_id=cause_id,
            )
        self.mark_started(started)
        if not wanted:
            return []
        with self.engine.begin() as conn:
            taken = set(conn.execute(_TAKE, {"ids": list(wanted), "now": now}).scalars())
        return [run for workflow_id, run in wanted.items() if workflow_id in taken]

    def runs(self, name: str, *, limit: int = 20) -> list[ScheduleRun]:
        """The schedule's latest runs (by logical time, newest first), with their status.

        Raises:
            ScheduleNotFoundError: there is no such schedule.
        """
        query = (
            sa.select(_RUN, _W.c.status)
            .select_from(_RUN.outerjoin(_W, _W.c.workflow_id == _RUN.c.workflow_id))
            .where(_RUN.c.schedule_name == name)
            .order_by(_RUN.c.logical_time.desc(), _RUN.c.workflow_id.desc())
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
            missing = (
                not rows
                and not conn.execute(sa.select(_SCH.c.name).where(_SCH.c.name == name)).first()
            )
        if missing:
            raise self._not_found(name)
        return [
            ScheduleRun(
                schedule=m["schedule_name"],
                logical_time=m["logical_time"],
                workflow_id=m["workflow_id"],
                kind=ScheduleRunKind(m["kind"]),
                fired_at=m["fired_at"],
                started_at=m["started_at"],
                error=m["error"],
                status=WorkflowStatus(m["status"]) if m["status"] is not None else None,
            )
            for m in (r._mapping for r in rows)
        ]

    # --- the trigger loop ------------------------------------------------------------

    def claim_due(
        self,
        now: dt.datetime,
        *,
        planner: Planner,
        limit: int,
        after: tuple[dt.datetime, str] | None = None,
        starting_grace: dt.timedelta,
        cause_id: str = "",
    ) -> Claim:
        """Claim the due intervals of up to ``limit`` schedules, in one transaction.

        Args:
            now: the current time; schedules with ``next_fire_at <= now`` are due.
            planner: decides what each due schedule fires, given its active runs.
            limit: the most schedules one batch examines.
            after: examine only schedules after this ``(next_fire_at, name)`` key (the
                previous batch's ``last_key``), so one pass visits each schedule once.
            starting_grace: a run started less than this long ago and not yet visible as
                a workflow counts as active.
            cause_id: correlation id for the runs' log lines.

        Returns:
            What was claimed; the caller starts ``fired`` and calls :meth:`mark_started`.
        """
        if after is None:
            query, params = _DUE, {"now": now, "limit": limit}
        else:
            query = _DUE_AFTER
            params = {"now": now, "limit": limit, "after_at": after[0], "after_n": after[1]}
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        fired: list[FiredRun] = []
        waiting: list[str] = []
        skipped: dict[str, int] = {}
        with self.engine.begin() as conn:
            rows = conn.execute(query, params).all()
            if not rows:
                return Claim(fired=[], waiting=[], skipped={}, last_key=None, examined=0)
            active = self._active_counts(conn, now - starting_grace)
            inserts: list[dict[str, Any]] = []
            advances: list[dict[str, Any]] = []
            for row in rows:
                info = info_from_row(row._mapping)
                plan = planner(info, active.get(info.name, 0))
                if plan.waiting:
                    waiting.append(info.name)
                if plan.skipped:
                    skipped[info.name] = plan.skipped
                if not plan.fire:
                    continue
                for t in plan.fire:
                    wid = run_id(info.name, t)
                    inserts.append(
                        {
                            "workflow_id": wid,
                            "schedule_name": info.name,
                            "logical_time": t,
                            "kind": ScheduleRunKind.SCHEDULED,
                            "fired_at": now,
                            "started_at": None,
                            "error": None,
                        }
                    )
                    fired.append(
                        FiredRun(
                            schedule=info.name,
                            target=info.target,
                            kwargs=info.kwargs,
                            logical_time=t,
                            workflow_id=wid,
                            kind=ScheduleRunKind.SCHEDULED,
                            cause_id=cause_id,
                        )
                    )
                advances.append({"n": info.name, "c": plan.cursor, "nf": plan.next_fire_at})
            if inserts:
                claimed = set(conn.execute(self._claim_insert, inserts).scalars())
                if len(claimed) != len(inserts):
                    fired = [f for f in fired if f.workflow_id in claimed]
            if advances:
                conn.execute(_ADVANCE, advances)
        last = rows[-1]._mapping
        return Claim(
            fired=fired,
            waiting=waiting,
            skipped=skipped,
            last_key=(last["next_fire_at"], last["name"]),
            examined=len(rows),
        )

    @staticmethod
    def _active_counts(conn: Connection, recent: dt.datetime) -> dict[str, int]:
        return dict(Counter(conn.execute(_ACTIVE_RUNS, {"recent": recent}).scalars()))

    def mark_started(self, results: Sequence[tuple[str, dt.datetime, str | None]]) -> None:
        """Record how starting runs went: ``(workflow_id, when, error or None)`` each.

        A run with an error is done (it counts as neither active nor stranded). Both set
        ``started_at``, so "not attempted yet" is ``started_at IS NULL``, which the
        ``started_at`` index finds without walking every failed run.
        """
        if not results:
            return
        rows = [{"w": wid, "s": at, "e": error} for wid, at, error in results]
        with self.engine.begin() as conn:
            conn.execute(_MARK, rows)

    def next_fire_after(self, now: dt.datetime) -> dt.datetime | None:
        """The earliest ``next_fire_at`` of an unpaused schedule that is after ``now``."""
        with self._read() as conn:
            value: dt.datetime | None = conn.execute(_NEXT_FUTURE, {"now": now}).scalar()
        return value

    def stranded(self, *, claimed_before: dt.datetime) -> list[StrandedRun]:
        """Runs that need starting or resuming by the scheduler:

        * claimed (an interval, or a manual run taken) before ``claimed_before`` and
          neither started nor failed: their scheduler died between the claim and the
          start (if their workflow exists it died after the start and the run is only
          marked started here). A manual request nobody has taken is not stranded:
          :meth:`take_manual` hands it to the next pass;
        * whose workflow is RESUMABLE, or RUNNING and its driver surely gone (see
          ``heliostat.workflows.lineage.driver_gone``): their driver died.
        """
        query = (
            sa.select(
                _RUN,
                _SCH.c.target,
                _SCH.c.kwargs,
                _W.c.status,
                *WorkflowStore.LEASE_COLUMNS,
            )
            .select_from(
                _RUN.join(_SCH, _SCH.c.name == _RUN.c.schedule_name).outerjoin(
                    _W, _W.c.workflow_id == _RUN.c.workflow_id
                )
            )
            .where(
                sa.or_(
                    sa.and_(
                        _RUN.c.started_at.is_(None),
                        _RUN.c.error.is_(None),
                        _RUN.c.fired_at < claimed_before,  # a request (NULL) is not stranded
                    ),
                    _RUN.c.workflow_id.in_(
                        sa.select(_W.c.workflow_id)
                        .where(
                            _W.c.status.in_(
                                [str(WorkflowStatus.RUNNING), str(WorkflowStatus.RESUMABLE)]
                            )
                        )
                        .scalar_subquery()
                    ),
                )
            )
            .order_by(_RUN.c.logical_time)
        )
        out: list[StrandedRun] = []
        started: list[tuple[str, dt.datetime, str | None]] = []
        with self._read() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            m = row._mapping
            status = m["status"]
            if m["started_at"] is None and status is not None:
                started.append((m["workflow_id"], m["fired_at"], None))
            if status is None:
                resume = False
                if m["started_at"] is not None:  # started, then its workflow was deleted
                    continue
            elif status == WorkflowStatus.RESUMABLE or (
                status == WorkflowStatus.RUNNING and driver_gone(WorkflowStore.holder_of(m))
            ):
                resume = True
            else:
                continue
            out.append(
                StrandedRun(
                    run=FiredRun(
                        schedule=m["schedule_name"],
                        target=m["target"],
                        kwargs=dict(m["kwargs"] or {}),
                        logical_time=m["logical_time"],
                        workflow_id=m["workflow_id"],
                        kind=ScheduleRunKind(m["kind"]),
                    ),
                    resume=resume,
                )
            )
        self.mark_started(started)
        return out

    def run_counts(self) -> dict[str, int]:
        """Recorded runs per schedule name (for tests and the benchmark)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_RUN.c.schedule_name, sa.func.count()).group_by(_RUN.c.schedule_name)
            ).all()
        return {name: n for name, n in rows}
