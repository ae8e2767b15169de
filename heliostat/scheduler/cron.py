"""When schedules fire: cron and interval arithmetic, missed intervals, run ids. No I/O.

A :class:`ScheduleSpec` is a cron expression (five fields, evaluated on the wall clock of
an IANA time zone) or a fixed interval, optionally bounded by a start and an end. It
answers "when does this fire next?", "which fire times did we miss between two
instants?" and "what was the latest fire time before now?". Every instant going in or
out is a timezone-aware datetime; results are in UTC. :func:`plan_fires` turns the
missed fire times of one schedule into what the trigger loop fires now, given its
catch-up option and free run slots, and :func:`run_id` names a fired run
deterministically (``nightly@2026-11-21T02:00:00Z``) so that two schedulers, or one
restarted, compute the same id for the same interval.

Interval schedules are plain UTC arithmetic: fire times are ``anchor + k * interval``
(``anchor`` is the spec's start, else the Unix epoch), so daylight-saving changes do not
affect them; "every 1 day" is every 24 hours, not "same local time each day" (use a cron
for that).

Cron schedules and daylight-saving time
---------------------------------------

A cron expression names wall-clock times of the schedule's zone. Twice a year the wall
clock of a zone with daylight-saving time skips or repeats a stretch of times, and the
rule for those is:

(a) A local time that does not exist (the spring-forward gap) fires once, at the first
    instant after the gap. ``30 2 * * *`` in America/New_York on 2026-03-08 fires at
    03:00 EDT (07:00Z); every 15 minutes, the 02:00, 02:15, 02:30 and 02:45 runs
    become one run at 03:00, which is also the 03:00 run.
(b) A local time that occurs twice (fall back) fires once, at its first occurrence, if
    the cron's hour field is fixed (a number or a list of numbers: a daily or weekly job
    such as ``30 1 * * *``). If the hour field contains ``*``, a range or a step
    (``0 * * * *``, ``*/15 * * * *``, ``0 0-6 * * *``), it fires at each real
    occurrence, as an hourly job should: ``0 * * * *`` fires 25 times on the fall-back
    day and 23 times on the spring-forward day.

This is the rule of Vixie cron and of most schedulers that treat DST deliberately; it
keeps "once a day" jobs at once a day and keeps "every N minutes" jobs evenly spaced in
real time. croniter's own zone handling is not used, because it fires fixed-hour jobs
twice in the repeated hour: croniter only enumerates *naive* wall-clock times here, and
this module maps each one to real instants (:meth:`ScheduleSpec._instants`). Mapping
wall times to instants is monotone except in a repeated hour, where the second
occurrences are held in a small heap until every earlier instant has been produced.

Run ids
-------

``{schedule}@{logical time in UTC}`` with the time as ``YYYY-MM-DDTHH:MM:SSZ`` (plus
``.ffffff`` when it has microseconds, which cron times never do). A manual run ("trigger
now") is ``{schedule}@manual-{time}``, so it can never take a scheduled interval's id.
Schedule names are restricted (:func:`validate_schedule_name`) so ids parse back.
"""

from __future__ import annotations

import copy
import datetime as dt
import heapq
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from heliostat.exceptions import InvalidScheduleError

__all__ = [
    "MAX_NAME_LENGTH",
    "SKIPPED_COUNT_CAP",
    "FirePlan",
    "RunIdParts",
    "ScheduleSpec",
    "manual_run_id",
    "parse_every",
    "parse_run_id",
    "plan_fires",
    "run_id",
    "validate_schedule_name",
]

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_TINY = dt.timedelta(microseconds=1)

_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31 or L"),
    ("month", "1-12 or jan-dec"),
    ("day-of-week", "0-7 or sun-sat"),
)
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# croniter extensions that are not deterministic across processes (hashed "H" needs an
# id, "R" is random): two schedulers would disagree on the fire times.
_NONDETERMINISTIC = re.compile(r"\b[HR]\b", re.IGNORECASE)
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu", "Universal"})

SKIPPED_COUNT_CAP = 10_000
"""The most dropped intervals :func:`plan_fires` counts (for its log line) before it stops."""

MAX_NAME_LENGTH = 200
"""Longest schedule name: its run ids (name + ``@manual-`` + a time) must fit an id column."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_MANUAL_PREFIX = "manual-"


def _aware_utc(value: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value!r} is naive; pass a timezone-aware datetime")
    return value.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        # ZoneInfoNotFoundError for unknown keys, ValueError for malformed ones ("../x").
        raise InvalidScheduleError(
            f"Unknown time zone {name!r}; use an IANA name such as 'UTC', "
            "'Europe/Berlin' or 'America/New_York'."
        ) from None


def _croniter_reason(exc: Exception) -> str:
    """croniter's message, shortened: "out of range", "step '0'", "not understood"."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())  # it repeats the expression
    text = re.sub(r"\s*in field \d+", "", text)
    text = re.sub(r"\s*is not acceptable,?\s*", " ", text).strip(" ,.")
    return text or "not understood"


def _normalize_cron(expr: object) -> str:
    """Validate a cron expression and return it as five space-separated fields.

    Raises:
        InvalidScheduleError: naming the field croniter rejects, when it can be told.
    """
    if not isinstance(expr, str):
        raise InvalidScheduleError(f"Cron expression must be a string, got {expr!r}.")
    text = " ".join(expr.split())
    text = _ALIASES.get(text.lower(), text)
    fields = text.split(" ") if text else []
    if len(fields) != 5:
        raise InvalidScheduleError(
            f"Invalid cron expression {expr!r}: it has {len(fields)} fields, expected 5 "
            "(minute hour day-of-month month day-of-week), or @hourly/@daily/@weekly/"
            "@monthly/@yearly."
        )
    for (name, _allowed), value in zip(_FIELDS, fields, strict=True):
        if _NONDETERMINISTIC.search(value):
            raise InvalidScheduleError(
                f"Invalid cron expression {expr!r}: {name} field {value!r} uses a hashed or "
                "random value (H, R), which two schedulers would not agree on."
            )
    try:
        croniter(text, dt.datetime(2000, 1, 1))
    except (CroniterError, ValueError, KeyError, TypeError) as whole:
        for i, ((name, allowed), value) in enumerate(zip(_FIELDS, fields, strict=True)):
            alone = " ".join(value if j == i else "*" for j in range(5))
            try:
                croniter(alone, dt.datetime(2000, 1, 1))
            except (CroniterError, ValueError, KeyError, TypeError) as exc:
                raise InvalidScheduleError(
                    f"Invalid cron expression {expr!r}: bad {name} field {value!r}: "
                    f"{_croniter_reason(exc)} (allowed: {allowed})."
                ) from None
        raise InvalidScheduleError(
            f"Invalid cron expression {expr!r}: {_croniter_reason(whole)}."
        ) from None
    try:  # a valid expression that matches no date at all ("0 0 30 2 *")
        croniter(text, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except CroniterBadDateError:
        raise InvalidScheduleError(
            f"Cron expression {expr!r} never fires: no date matches it."
        ) from None
    return text


def _hour_is_fixed(expr: str) -> bool:
    """True if the hour field names fixed hours only (``1`` or ``1,13``): rule (b)."""
    hour = expr.split(" ")[1]
    return all(part.isdigit() for part in hour.split(","))


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleSpec:
    """When a schedule fires: a cron expression in a time zone, or a fixed interval.

    Exactly one of ``cron`` and ``interval`` is given. ``start`` and ``end`` bound the
    fire times (both inclusive); naive ``start``/``end`` are read as wall times of
    ``timezone``; they are stored in UTC. An interval schedule's fire times are
    ``start + k * interval`` (or counted from the Unix epoch without a start).

    Validation happens here, at construction; every method can then assume a sound spec.

    Raises:
        InvalidScheduleError: malformed cron string (naming the field), unknown time
            zone, non-positive interval, both or neither of cron and interval, an end
            before the start.
    """

    cron: str | None = None
    interval: dt.timedelta | None = None
    timezone: str = "UTC"
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    # Derived at construction (not part of equality): the zone, the normalized five-field
    # expression, whether the zone is UTC (no DST mapping needed), and rule (b)'s choice.
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _expr: str = field(init=False, repr=False, compare=False)
    # A parsed croniter to copy: parsing costs ~50 us, a copy ~3 us. Never iterated
    # itself, so copies made by several threads at once are independent.
    _template: croniter | None = field(init=False, repr=False, compare=False)
    _is_utc: bool = field(init=False, repr=False, compare=False)
    _each_occurrence: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval is None):
            got = "both" if self.cron is not None else "neither"
            raise InvalidScheduleError(
                f"A schedule needs exactly one of a cron expression or an interval (got {got})."
            )
        zone = _zone(self.timezone)
        expr = ""
        if self.cron is not None:
            expr = _normalize_cron(self.cron)
        else:
            if not isinstance(self.interval, dt.timedelta):
                raise InvalidScheduleError(
                    f"A schedule interval must be a timedelta, got {self.interval!r}."
                )
            if self.interval <= dt.timedelta(0):
                raise InvalidScheduleError(
                    f"A schedule interval must be positive, got {self.interval}."
                )
        start = self._bound(self.start, zone, "start")
        end = self._bound(self.end, zone, "end")
        if start is not None and end is not None and end < start:
            raise InvalidScheduleError(
                f"Schedule end {end.isoformat()} is before its start {start.isoformat()}."
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_expr", expr)
        object.__setattr__(
            self, "_template", croniter(expr, dt.datetime(2000, 1, 1)) if expr else None
        )
        object.__setattr__(self, "_is_utc", self.timezone in _UTC_NAMES)
        object.__setattr__(self, "_each_occurrence", bool(expr) and not _hour_is_fixed(expr))

    @staticmethod
    def _bound(value: dt.datetime | None, zone: ZoneInfo, what: str) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise InvalidScheduleError(f"Schedule {what} must be a datetime, got {value!r}.")
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=zone)
        return value.astimezone(UTC)

    @property
    def expression(self) -> str | None:
        """The cron expression as evaluated (aliases expanded, five fields), or None."""
        return self._expr or None

    # --- public queries ---------------------------------------------------------------

    def next_fire_time(self, after: dt.datetime) -> dt.datetime | None:
        """The first fire time strictly after ``after``, or None if there is none (past
        the end)."""
        return next(self._iter_after(_aware_utc(after, "after")), None)

    def next_fire_times(self, after: dt.datetime, n: int) -> list[dt.datetime]:
        """The first ``n`` fire times strictly after ``after`` (fewer if the end comes
        first), as aware UTC datetimes, oldest first."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return list(itertools.islice(self._iter_after(_aware_utc(after, "after")), n))

    def fire_times_between(self, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
        """The fire times ``t`` with ``start < t <= end``, oldest first: the intervals
        missed between two instants. Lazy, so a long outage costs only what is read."""
        lo = _aware_utc(start, "start")
        hi = _aware_utc(end, "end")
        return itertools.takewhile(lambda t: t <= hi, self._iter_after(lo))

    def latest_fire_time(self, at_or_before: dt.datetime) -> dt.datetime | None:
        """The last fire time ``t <= at_or_before``, or None if there is none.

        Costs a few steps whatever the distance to the previous fire time (it does not
        enumerate the intervals in between).
        """
        at = _aware_utc(at_or_before, "at_or_before")
        if self.end is not None and at > self.end:
            at = self.end
        if self.start is not None and at < self.start:
            return None
        if self.interval is not None:
            anchor = self.start or _EPOCH
            k = (at - anchor) // self.interval
            return anchor + k * self.interval
        lower = self._latest_candidate_instant(at)
        if lower is None:
            return None
        if self.start is not None and lower < self.start:
            lower = self.start
        latest = None
        for t in self.fire_times_between(lower - _TINY, at):
            latest = t
        return latest

    # --- enumeration ------------------------------------------------------------------

    def _croniter(self, start: dt.datetime) -> croniter:
        """A croniter over naive wall times, positioned at ``start``."""
        assert self._template is not None
        it = copy.copy(self._template)
        it.set_current(start, force=True)
        return it

    def _iter_after(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """Fire times strictly after ``after`` (UTC), within [start, end], in order."""
        if self.start is not None and after < self.start:
            after = self.start - _TINY
        if self.interval is not None:
            times = self._interval_after(after)
        elif self._is_utc:
            times = self._utc_cron_after(after)
        else:
            times = self._zoned_cron_after(after)
        if self.end is None:
            return times
        end = self.end
        return itertools.takewhile(lambda t: t <= end, times)

    def _interval_after(self, after: dt.datetime) -> Iterator[dt.datetime]:
        assert self.interval is not None
        interval = self.interval
        anchor = self.start or _EPOCH
        k = (after - anchor) // interval + 1  # exact: timedelta // timedelta is an int
        t = anchor + k * interval
        while True:
            yield t
            t += interval

    def _utc_cron_after(self, after: dt.datetime) -> Iterator[dt.datetime]:
        it = self._croniter(after.replace(tzinfo=None))
        while True:
            try:
                wall = it.get_next(dt.datetime)
            except CroniterBadDateError:  # nothing more within croniter's search range
                return
            yield wall.replace(tzinfo=UTC)

    def _zoned_cron_after(self, after: dt.datetime) -> Iterator[dt.datetime]:
        local = after.astimezone(self._zone)
        wall = local.replace(tzinfo=None)
        if local.fold == 0:
            # `after` is in the first pass of a repeated hour: second occurrences of wall
            # times earlier than its own are still ahead of it, so start that much earlier.
            width = _offset(local) - _offset(local.replace(fold=1))
            if width > dt.timedelta(0):
                wall -= width
        it = self._croniter(wall)
        deferred: list[dt.datetime] = []  # second occurrences in a repeated hour (a heap)
        last = after
        while True:
            try:
                candidate = it.get_next(dt.datetime)
            except CroniterBadDateError:
                break
            first, second = self._instants(candidate)
            while deferred and deferred[0] <= first:
                t = heapq.heappop(deferred)
                if t > last:
                    last = t
                    yield t
            if first > last:  # equal instants: gap times collapsed onto one (rule a)
                last = first
                yield first
            if second is not None:
                heapq.heappush(deferred, second)
        while deferred:
            t = heapq.heappop(deferred)
            if t > last:
                last = t
                yield t

    def _instants(self, wall: dt.datetime) -> tuple[dt.datetime, dt.datetime | None]:
        """The real instants a naive wall time of the zone fires at: (first, second).

        ``second`` is the repeated hour's second occurrence when rule (b) fires both.
        """
        a = wall.replace(tzinfo=self._zone)
        b = wall.replace(tzinfo=self._zone, fold=1)
        off_a, off_b = _offset(a), _offset(b)
        if off_a == off_b:  # the ordinary case: one instant
            return (wall - off_a).replace(tzinfo=UTC), None
        if off_a > off_b:  # repeated (fold=0 is the earlier instant, pre-transition)
            first = (wall - off_a).replace(tzinfo=UTC)
            second = (wall - off_b).replace(tzinfo=UTC) if self._each_occurrence else None
            return first, second
        # Nonexistent: the transition instant lies between the two readings (rule a).
        return _transition_between(self._zone, wall - off_b, wall - off_a), None

    def _latest_candidate_instant(self, at: dt.datetime) -> dt.datetime | None:
        """A fire time <= ``at`` close to the latest one (no later than it), or None.

        The last wall-clock candidate at or before ``at``'s wall time maps (first
        occurrence, or end of a gap) to a fire time no later than ``at``, since that
        mapping is monotone in wall time; only a few fire times can follow it up to ``at``.
        """
        if self._is_utc:
            local_wall = at.replace(tzinfo=None)
        else:
            local_wall = at.astimezone(self._zone).replace(tzinfo=None)
        it = self._croniter(local_wall + _TINY)
        try:
            candidate: dt.datetime = it.get_prev(dt.datetime)
        except CroniterBadDateError:
            return None
        if self._is_utc:
            return candidate.replace(tzinfo=UTC)
        return self._instants(candidate)[0]


def _offset(value: dt.datetime) -> dt.timedelta:
    offset = value.utcoffset()
    assert offset is not None  # zoneinfo always gives one
    return offset


def _transition_between(zone: ZoneInfo, lo: dt.datetime, hi: dt.datetime) -> dt.datetime:
    """The instant in ``(lo, hi]`` (naive UTC) where the zone's offset changes, as aware
    UTC. Zone transitions fall on whole seconds, so a binary search on seconds is exact."""
    lo_s = int((lo.replace(tzinfo=UTC) - _EPOCH).total_seconds())
    hi_s = int((hi.replace(tzinfo=UTC) - _EPOCH).total_seconds())
    before = _offset(dt.datetime.fromtimestamp(lo_s, zone))
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if _offset(dt.datetime.fromtimestamp(mid, zone)) == before:
            lo_s = mid
        else:
            hi_s = mid
    return _EPOCH + dt.timedelta(seconds=hi_s)


# --- planning what the trigger loop fires ---------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FirePlan:
    """What to fire for one schedule now, and where its bookkeeping moves.

    Attributes:
        fire: logical times to fire now, oldest first (empty if none).
        cursor: the latest logical time fired once this plan is carried out (the old
            cursor if ``fire`` is empty).
        next_fire_at: the first fire time after ``cursor``; None when the schedule has
            no more. At or before ``now`` when due intervals wait for a free run slot.
        waiting: due intervals were left waiting for a free slot (``max_active_runs``).
        skipped: missed intervals dropped because the schedule does not catch up
            (counted up to :data:`SKIPPED_COUNT_CAP`).
    """

    fire: tuple[dt.datetime, ...]
    cursor: dt.datetime | None
    next_fire_at: dt.datetime | None
    waiting: bool
    skipped: int


def plan_fires(
    spec: ScheduleSpec,
    *,
    next_due: dt.datetime,
    cursor: dt.datetime | None,
    now: dt.datetime,
    catchup: bool,
    slots: int,
) -> FirePlan:
    """Decide which of a schedule's due fire times to fire now.

    Args:
        spec: the schedule's timing.
        next_due: the schedule's earliest unfired fire time (its ``next_fire_at``).
        cursor: the latest logical time fired so far, or None.
        now: the current time.
        catchup: True fires every missed interval, oldest first; False fires only the
            latest one due and skips the others.
        slots: how many more runs may be active (``max_active_runs`` minus active runs);
            intervals beyond it wait, none is dropped when ``catchup`` is True.

    Returns:
        The plan; ``fire`` is empty when nothing is due or no slot is free.
    """
    next_due = _aware_utc(next_due, "next_due")
    now = _aware_utc(now, "now")
    if next_due > now:
        return FirePlan(fire=(), cursor=cursor, next_fire_at=next_due, waiting=False, skipped=0)
    if slots <= 0:
        return FirePlan(fire=(), cursor=cursor, next_fire_at=next_due, waiting=True, skipped=0)
    if catchup:
        due = itertools.chain((next_due,), spec.fire_times_between(next_due, now))
        fire = tuple(itertools.islice(due, slots))
        skipped = 0
        nxt = spec.next_fire_time(fire[-1])
    else:
        nxt = spec.next_fire_time(next_due)
        if nxt is None or nxt > now:  # the common case: exactly one interval is due
            fire, skipped = (next_due,), 0
        else:
            latest = spec.latest_fire_time(now)
            assert latest is not None and latest >= nxt, "nxt is a fire time <= now"
            fire = (latest,)
            # Dropped: the fire times in [next_due, latest), as many as in (next_due,
            # latest]. Counted up to a cap: a minutely schedule paused for a year
            # misses 525,600.
            dropped = spec.fire_times_between(next_due, latest)
            skipped = sum(1 for _ in itertools.islice(dropped, SKIPPED_COUNT_CAP))
            nxt = spec.next_fire_time(latest)
    new_cursor = fire[-1]
    return FirePlan(
        fire=fire,
        cursor=new_cursor,
        next_fire_at=nxt,
        waiting=nxt is not None and nxt <= now,
        skipped=skipped,
    )


# --- names, run ids, intervals ---------------------------------------------------------


def validate_schedule_name(name: object) -> str:
    """Check a schedule name: letters, digits, ``_ . -``, at most 200 characters.

    Raises:
        InvalidScheduleError: the name is empty, too long, or has other characters
            (``@`` would make run ids ambiguous).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidScheduleError(
            f"Invalid schedule name {name!r}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit."
        )
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidScheduleError(
            f"Schedule name {name[:40]!r}... is {len(name)} characters long; "
            f"the limit is {MAX_NAME_LENGTH}."
        )
    return name


def _format_time(t: dt.datetime) -> str:
    t = _aware_utc(t, "logical_time")
    if t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime(_TIME_FORMAT)


def run_id(schedule: str, logical_time: dt.datetime) -> str:
    """The deterministic workflow id of a scheduled run: ``name@2026-11-21T02:00:00Z``."""
    return f"{schedule}@{_format_time(logical_time)}"


def manual_run_id(schedule: str, at: dt.datetime) -> str:
    """The workflow id of a manual run triggered at ``at``: ``name@manual-<UTC time>``."""
    return f"{schedule}@{_MANUAL_PREFIX}{_format_time(at)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunIdParts:
    """A run id taken apart: the schedule, the logical time, and whether it is manual."""

    schedule: str
    logical_time: dt.datetime
    manual: bool


def parse_run_id(value: str) -> RunIdParts:
    """Inverse of :func:`run_id` and :func:`manual_run_id`.

    Raises:
        ValueError: ``value`` is not a schedule's run id.
    """
    name, sep, stamp = value.rpartition("@")
    if not sep or not name:
        raise ValueError(f"{value!r} is not a scheduled run id (expected 'name@time')")
    manual = stamp.startswith(_MANUAL_PREFIX)
    if manual:
        stamp = stamp[len(_MANUAL_PREFIX) :]
    for fmt in (_TIME_FORMAT, "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            parsed = dt.datetime.strptime(stamp, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        return RunIdParts(schedule=name, logical_time=parsed, manual=manual)
    raise ValueError(f"{value!r} is not a scheduled run id (bad time {stamp!r})")


_EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EVERY_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_every(value: object) -> dt.timedelta:
    """An interval from a timedelta, a number of seconds, or text: ``"90s"``, ``"15m"``,
    ``"1h"``, ``"1d"``, ``"2w"``, ``"1h30m"``, ``"300"`` (seconds).

    Raises:
        InvalidScheduleError: anything else, or a non-positive interval.
    """
    if isinstance(value, dt.timedelta):
        delta = value
    elif isinstance(value, bool):
        raise InvalidScheduleError(f"Invalid interval {value!r}.")
    elif isinstance(value, int | float):
        delta = dt.timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            delta = dt.timedelta(seconds=float(text))
        elif text and _EVERY_PART.sub("", text) == "":
            seconds = sum(float(n) * _EVERY_UNITS[u] for n, u in _EVERY_PART.findall(text))
            delta = dt.timedelta(seconds=seconds)
        else:
            raise InvalidScheduleError(
                f"Invalid interval {value!r}: use a number of seconds or a duration such "
                "as '90s', '15m', '1h', '1d', '1h30m'."
            )
    else:
        raise InvalidScheduleError(f"Invalid interval {value!r}.")
    if delta <= dt.timedelta(0):
        raise InvalidScheduleError(f"A schedule interval must be positive, got {value!r}.")
    return delta
