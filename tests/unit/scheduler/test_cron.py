"""Unit tests for heliostat.scheduler.cron: fire times, the DST rule, plans, run ids, input."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from heliostat.exceptions import InvalidScheduleError
from heliostat.scheduler.cron import (
    SKIPPED_COUNT_CAP,
    FirePlan,
    RunIdParts,
    ScheduleSpec,
    manual_run_id,
    parse_every,
    parse_run_id,
    plan_fires,
    run_id,
    validate_schedule_name,
)

UTC = dt.UTC
NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
MINUTE = dt.timedelta(minutes=1)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local_day(spec: ScheduleSpec, day: dt.date, zone: ZoneInfo) -> list[dt.datetime]:
    """The fire times within one local calendar day of ``zone``."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    tiny = dt.timedelta(microseconds=1)
    return list(spec.fire_times_between(start - tiny, end - tiny))


def in_zone(times: list[dt.datetime], zone: ZoneInfo) -> list[str]:
    return [t.astimezone(zone).strftime("%H:%M%z") for t in times]


# --- DST: the documented rule, zone by zone ------------------------------------------

NY_SPRING, NY_FALL = dt.date(2026, 3, 8), dt.date(2026, 11, 1)
BERLIN_SPRING, BERLIN_FALL = dt.date(2026, 3, 29), dt.date(2026, 10, 25)


@pytest.mark.parametrize(
    ("zone", "spring", "fall"),
    [(NY, NY_SPRING, NY_FALL), (BERLIN, BERLIN_SPRING, BERLIN_FALL)],
    ids=["new_york", "berlin"],
)
def test_hourly_fires_23_times_in_spring_and_25_in_fall(
    zone: ZoneInfo, spring: dt.date, fall: dt.date
) -> None:
    hourly = ScheduleSpec(cron="0 * * * *", timezone=zone.key)
    assert len(local_day(hourly, spring, zone)) == 23
    assert len(local_day(hourly, fall, zone)) == 25
    assert len(local_day(hourly, spring - dt.timedelta(days=1), zone)) == 24
    # Every real hour, evenly spaced in real time, on both days.
    for day in (spring, fall):
        times = local_day(hourly, day, zone)
        assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(
    ("zone", "spring", "fall"),
    [(NY, NY_SPRING, NY_FALL), (BERLIN, BERLIN_SPRING, BERLIN_FALL)],
    ids=["new_york", "berlin"],
)
def test_every_15_minutes_collapses_the_gap_and_repeats_the_fold(
    zone: ZoneInfo, spring: dt.date, fall: dt.date
) -> None:
    quarter = ScheduleSpec(cron="*/15 * * * *", timezone=zone.key)
    assert len(local_day(quarter, spring, zone)) == 96 - 4  # 02:00-02:45 become 03:00
    assert len(local_day(quarter, fall, zone)) == 96 + 4
    times = local_day(quarter, fall, zone)
    assert all(b - a == dt.timedelta(minutes=15) for a, b in itertools.pairwise(times))


def test_new_york_nonexistent_time_fires_at_the_first_instant_after_the_gap() -> None:
    daily = ScheduleSpec(cron="30 2 * * *", timezone="America/New_York")
    assert local_day(daily, NY_SPRING, NY) == [utc(2026, 3, 8, 7, 0)]  # 03:00 EDT
    assert in_zone(local_day(daily, NY_SPRING, NY), NY) == ["03:00-0400"]
    assert in_zone(local_day(daily, NY_SPRING + dt.timedelta(days=1), NY), NY) == ["02:30-0400"]


def test_berlin_nonexistent_time_fires_at_the_first_instant_after_the_gap() -> None:
    daily = ScheduleSpec(cron="30 2 * * *", timezone="Europe/Berlin")
    assert local_day(daily, BERLIN_SPRING, BERLIN) == [utc(2026, 3, 29, 1, 0)]  # 03:00 CEST
    assert in_zone(local_day(daily, BERLIN_SPRING, BERLIN), BERLIN) == ["03:00+0200"]


def test_new_york_fixed_hour_in_the_repeated_hour_fires_once_at_the_first() -> None:
    daily = ScheduleSpec(cron="30 1 * * *", timezone="America/New_York")
    assert local_day(daily, NY_FALL, NY) == [utc(2026, 11, 1, 5, 30)]  # 01:30 EDT
    weekly = ScheduleSpec(cron="30 1 * * 0", timezone="America/New_York")  # a Sunday
    assert local_day(weekly, NY_FALL, NY) == [utc(2026, 11, 1, 5, 30)]


def test_berlin_fixed_hour_in_the_repeated_hour_fires_once_at_the_first() -> None:
    daily = ScheduleSpec(cron="30 2 * * *", timezone="Europe/Berlin")
    assert local_day(daily, BERLIN_FALL, BERLIN) == [utc(2026, 10, 25, 0, 30)]  # 02:30 CEST
    assert in_zone(local_day(daily, BERLIN_FALL, BERLIN), BERLIN) == ["02:30+0200"]


def test_fixed_hour_with_a_minute_step_runs_through_the_repeated_hour_once() -> None:
    spec = ScheduleSpec(cron="*/15 1 * * *", timezone="America/New_York")
    assert in_zone(local_day(spec, NY_FALL, NY), NY) == [
        "01:00-0400",
        "01:15-0400",
        "01:30-0400",
        "01:45-0400",
    ]


def test_hour_range_covering_the_repeated_hour_fires_at_each_occurrence() -> None:
    spec = ScheduleSpec(cron="0 0-3 * * *", timezone="America/New_York")
    assert in_zone(local_day(spec, NY_FALL, NY), NY) == [
        "00:00-0400",
        "01:00-0400",
        "01:00-0500",
        "02:00-0500",
        "03:00-0500",
    ]
    # A list of hours is fixed hours: once.
    listed = ScheduleSpec(cron="0 1,13 * * *", timezone="America/New_York")
    assert in_zone(local_day(listed, NY_FALL, NY), NY) == ["01:00-0400", "13:00-0500"]


def test_next_fire_times_from_inside_the_repeated_hour() -> None:
    hourly = ScheduleSpec(cron="0 * * * *", timezone="America/New_York")
    first_pass = utc(2026, 11, 1, 5, 20)  # 01:20 EDT
    second_pass = utc(2026, 11, 1, 6, 20)  # 01:20 EST
    assert hourly.next_fire_times(first_pass, 3) == [
        utc(2026, 11, 1, 6),
        utc(2026, 11, 1, 7),
        utc(2026, 11, 1, 8),
    ]
    assert hourly.next_fire_times(second_pass, 2) == [utc(2026, 11, 1, 7), utc(2026, 11, 1, 8)]
    assert hourly.latest_fire_time(second_pass) == utc(2026, 11, 1, 6)
    assert hourly.latest_fire_time(first_pass) == utc(2026, 11, 1, 5)
    daily = ScheduleSpec(cron="30 1 * * *", timezone="America/New_York")
    assert daily.latest_fire_time(second_pass + dt.timedelta(minutes=30)) == utc(2026, 11, 1, 5, 30)
    assert daily.next_fire_time(first_pass) == utc(2026, 11, 1, 5, 30)
    assert daily.next_fire_time(utc(2026, 11, 1, 5, 40)) == utc(2026, 11, 2, 6, 30)


# --- DST: a brute-force oracle over real transitions -------------------------------


def _matcher(expr: str) -> Callable[[dt.datetime], bool]:
    """Whether a naive wall time matches ``expr`` (no L, no #): the plain cron meaning."""
    fields = croniter(expr, dt.datetime(2000, 1, 1)).expanded
    minute, hour, dom, month, dow = (None if f == ["*"] else {int(v) for v in f} for f in fields)
    if dow is not None:
        dow = {d % 7 for d in dow}

    def match(w: dt.datetime) -> bool:
        if minute is not None and w.minute not in minute:
            return False
        if hour is not None and w.hour not in hour:
            return False
        if month is not None and w.month not in month:
            return False
        dom_ok = dom is None or w.day in dom
        dow_ok = dow is None or (w.isoweekday() % 7) in dow
        if dom is not None and dow is not None:
            return dom_ok or dow_ok  # cron's rule when both are restricted
        return dom_ok and dow_ok

    return match


def _oracle(expr: str, zone: ZoneInfo, lo: dt.datetime, hi: dt.datetime) -> list[dt.datetime]:
    """Fire times in (lo, hi] by walking every real minute, applying the rule literally."""
    match = _matcher(expr)
    fixed_hour = all(p.isdigit() for p in expr.split()[1].split(","))
    out = []
    t = lo
    prev_wall = t.astimezone(zone).replace(tzinfo=None)
    while t < hi:
        t += MINUTE
        local = t.astimezone(zone)
        wall = local.replace(tzinfo=None)
        skipped = []  # wall times a forward jump passed over
        w = prev_wall + MINUTE
        while w < wall:
            skipped.append(w)
            w += MINUTE
        gap_hit = any(match(w) for w in skipped)  # (a): fires at the first instant after
        second_pass = local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
        if gap_hit or (match(wall) and not (second_pass and fixed_hour)):
            out.append(t)
        prev_wall = wall
    return out


def _transition_windows(zone: ZoneInfo, year: int) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    day = utc(year, 1, 1)
    while day.year == year:
        nxt = day + dt.timedelta(days=1)
        if day.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            yield day - dt.timedelta(days=1), nxt + dt.timedelta(days=1)
        day = nxt


ORACLE_ZONES = ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "America/Santiago"]
ORACLE_EXPRESSIONS = [
    "0 * * * *",
    "*/15 * * * *",
    "30 2 * * *",
    "30 1 * * *",
    "*/20 1-3 * * *",
    "15 2 * * 0",
    "45 0 * * *",
    "0 0 * * *",
    "10 23 * * 6",
]


@pytest.mark.parametrize("zone_name", ORACLE_ZONES)
def test_fire_times_match_a_brute_force_oracle_around_every_transition(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    windows = list(_transition_windows(zone, 2026))
    assert len(windows) == 2, "each of these zones changes twice in 2026"
    for expr in ORACLE_EXPRESSIONS:
        spec = ScheduleSpec(cron=expr, timezone=zone_name)
        for lo, hi in windows:
            expected = _oracle(expr, zone, lo, hi)
            assert list(spec.fire_times_between(lo, hi)) == expected, (expr, lo)
            # From any starting instant, including ones inside a gap's or fold's hour.
            for k in itertools.count():
                after = lo + dt.timedelta(minutes=37 * k)
                if after >= hi:
                    break
                want = [t for t in expected if t > after][:3]
                got = [t for t in spec.next_fire_times(after, 3) if t <= hi]
                assert got == want, (expr, after)
                before = [t for t in expected if t <= after]
                if before:
                    assert spec.latest_fire_time(after) == before[-1], (expr, after)


# --- month ends -------------------------------------------------------------------------


def test_the_31st_skips_months_without_one() -> None:
    spec = ScheduleSpec(cron="0 0 31 * *")
    assert spec.next_fire_times(utc(2026, 1, 31, 12), 4) == [
        utc(2026, 3, 31),
        utc(2026, 5, 31),
        utc(2026, 7, 31),
        utc(2026, 8, 31),
    ]


def test_last_day_of_month_with_l_in_a_leap_year() -> None:
    spec = ScheduleSpec(cron="0 0 L * *")
    assert spec.next_fire_times(utc(2028, 1, 1), 4) == [
        utc(2028, 1, 31),
        utc(2028, 2, 29),
        utc(2028, 3, 31),
        utc(2028, 4, 30),
    ]
    assert spec.next_fire_time(utc(2027, 2, 1)) == utc(2027, 2, 28)


def test_february_29th_fires_in_leap_years_only() -> None:
    spec = ScheduleSpec(cron="0 6 29 2 *")
    assert spec.next_fire_times(utc(2026, 1, 1), 2) == [utc(2028, 2, 29, 6), utc(2032, 2, 29, 6)]
    assert spec.latest_fire_time(utc(2031, 12, 31)) == utc(2028, 2, 29, 6)


def test_a_range_of_month_end_days_in_a_zone() -> None:
    spec = ScheduleSpec(cron="0 12 28-31 * *", timezone="Europe/Berlin")
    feb = local_day(spec, dt.date(2028, 2, 29), BERLIN)
    assert in_zone(feb, BERLIN) == ["12:00+0100"]
    times = spec.fire_times_between(utc(2028, 2, 1), utc(2028, 3, 2))
    assert [t.astimezone(BERLIN).day for t in times] == [28, 29]


def test_month_end_in_a_zone_crosses_the_utc_month() -> None:
    spec = ScheduleSpec(cron="0 23 L * *", timezone="America/New_York")
    assert spec.next_fire_time(utc(2026, 4, 1)) == utc(2026, 4, 1, 3)  # Mar 31 23:00 EDT
    assert spec.next_fire_time(utc(2026, 4, 1, 3)) == utc(2026, 5, 1, 3)  # Apr 30 23:00 EDT


# --- intervals ----------------------------------------------------------------------------


def test_interval_counts_from_the_start() -> None:
    spec = ScheduleSpec(interval=dt.timedelta(minutes=7), start=utc(2026, 1, 1, 0, 3))
    assert spec.next_fire_times(utc(2025, 6, 1), 3) == [
        utc(2026, 1, 1, 0, 3),
        utc(2026, 1, 1, 0, 10),
        utc(2026, 1, 1, 0, 17),
    ]
    assert spec.next_fire_time(utc(2026, 1, 1, 0, 10)) == utc(2026, 1, 1, 0, 17)
    assert spec.latest_fire_time(utc(2026, 1, 1, 0, 16)) == utc(2026, 1, 1, 0, 10)
    assert spec.latest_fire_time(utc(2026, 1, 1, 0, 2)) is None


def test_interval_without_a_start_counts_from_the_epoch() -> None:
    spec = ScheduleSpec(interval=dt.timedelta(hours=1))
    assert spec.next_fire_time(utc(2026, 11, 21, 10, 0)) == utc(2026, 11, 21, 11, 0)
    assert spec.latest_fire_time(utc(2026, 11, 21, 10, 59)) == utc(2026, 11, 21, 10, 0)
    odd = ScheduleSpec(interval=dt.timedelta(seconds=7))
    t = odd.next_fire_time(utc(2026, 11, 21))
    assert t is not None and int(t.timestamp()) % 7 == 0


def test_interval_ignores_daylight_saving_time() -> None:
    daily = ScheduleSpec(
        interval=dt.timedelta(days=1),
        timezone="America/New_York",
        start=dt.datetime(2026, 3, 7, 2, 30),  # naive: read in the schedule's zone (EST)
    )
    assert daily.start == utc(2026, 3, 7, 7, 30)
    times = daily.next_fire_times(utc(2026, 3, 1), 3)
    assert times == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 7, 30)]
    assert in_zone(times, NY) == ["02:30-0500", "03:30-0400", "03:30-0400"]


def test_end_bound_is_inclusive_and_stops_the_schedule() -> None:
    spec = ScheduleSpec(cron="0 * * * *", start=utc(2026, 1, 1, 1), end=utc(2026, 1, 1, 3))
    assert spec.next_fire_times(utc(2025, 1, 1), 10) == [
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 2),
        utc(2026, 1, 1, 3),
    ]
    assert spec.next_fire_time(utc(2026, 1, 1, 3)) is None
    assert spec.latest_fire_time(utc(2030, 1, 1)) == utc(2026, 1, 1, 3)
    assert spec.latest_fire_time(utc(2026, 1, 1, 0, 59)) is None


# --- missed intervals --------------------------------------------------------------------


def test_missed_intervals_exclude_the_start_and_include_the_end() -> None:
    spec = ScheduleSpec(cron="*/30 * * * *")
    missed = list(spec.fire_times_between(utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 3, 0)))
    assert missed[0] == utc(2026, 1, 1, 0, 30)
    assert missed[-1] == utc(2026, 1, 1, 3, 0)
    assert len(missed) == 6


def test_missed_intervals_are_lazy_over_a_long_outage() -> None:
    spec = ScheduleSpec(cron="* * * * *")
    missed = spec.fire_times_between(utc(2000, 1, 1), utc(2026, 1, 1))
    assert list(itertools.islice(missed, 2)) == [utc(2000, 1, 1, 0, 1), utc(2000, 1, 1, 0, 2)]
    # The latest one is found without enumerating 13 million minutes.
    assert spec.latest_fire_time(utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1)


def test_fire_times_are_strictly_after_and_utc() -> None:
    spec = ScheduleSpec(cron="0 * * * *", timezone="Europe/Berlin")
    at = dt.datetime(2026, 6, 1, 12, 0, tzinfo=BERLIN)
    nxt = spec.next_fire_times(at, 2)
    assert nxt == [utc(2026, 6, 1, 11), utc(2026, 6, 1, 12)]
    assert all(t.tzinfo is UTC for t in nxt)
    with pytest.raises(ValueError, match="naive"):
        spec.next_fire_time(dt.datetime(2026, 6, 1))


def test_aliases_are_expanded() -> None:
    assert ScheduleSpec(cron="@daily").expression == "0 0 * * *"
    assert ScheduleSpec(cron="  0   *  * * * ").expression == "0 * * * *"
    assert ScheduleSpec(cron="@hourly").next_fire_time(utc(2026, 1, 1, 0, 30)) == utc(2026, 1, 1, 1)


# --- plans: what the trigger loop fires ---------------------------------------------------

HOURLY = ScheduleSpec(cron="0 * * * *")
OUTAGE_START, OUTAGE_END = utc(2026, 1, 1, 1, 0), utc(2026, 1, 1, 4, 10)


def test_plan_catchup_fires_every_missed_interval_oldest_first() -> None:
    plan = plan_fires(
        HOURLY, next_due=OUTAGE_START, cursor=None, now=OUTAGE_END, catchup=True, slots=10
    )
    assert plan.fire == (
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 2),
        utc(2026, 1, 1, 3),
        utc(2026, 1, 1, 4),
    )
    assert plan.cursor == utc(2026, 1, 1, 4)
    assert plan.next_fire_at == utc(2026, 1, 1, 5)
    assert not plan.waiting and plan.skipped == 0


def test_plan_without_catchup_fires_only_the_latest() -> None:
    plan = plan_fires(
        HOURLY, next_due=OUTAGE_START, cursor=None, now=OUTAGE_END, catchup=False, slots=1
    )
    assert plan.fire == (utc(2026, 1, 1, 4),)
    assert plan.skipped == 3
    assert plan.next_fire_at == utc(2026, 1, 1, 5)


def test_plan_with_too_few_slots_leaves_the_rest_waiting() -> None:
    plan = plan_fires(
        HOURLY, next_due=OUTAGE_START, cursor=None, now=OUTAGE_END, catchup=True, slots=2
    )
    assert plan.fire == (utc(2026, 1, 1, 1), utc(2026, 1, 1, 2))
    assert plan.waiting and plan.next_fire_at == utc(2026, 1, 1, 3)
    full = plan_fires(
        HOURLY, next_due=OUTAGE_START, cursor=None, now=OUTAGE_END, catchup=True, slots=0
    )
    assert full == FirePlan(
        fire=(), cursor=None, next_fire_at=OUTAGE_START, waiting=True, skipped=0
    )


def test_plan_before_the_due_time_fires_nothing() -> None:
    plan = plan_fires(
        HOURLY, next_due=utc(2026, 1, 1, 5), cursor=None, now=OUTAGE_END, catchup=True, slots=5
    )
    assert plan.fire == () and not plan.waiting and plan.next_fire_at == utc(2026, 1, 1, 5)


def test_plan_past_the_end_has_no_next_fire_time() -> None:
    spec = ScheduleSpec(cron="0 * * * *", end=utc(2026, 1, 1, 2))
    plan = plan_fires(
        spec, next_due=OUTAGE_START, cursor=None, now=OUTAGE_END, catchup=True, slots=5
    )
    assert plan.fire == (utc(2026, 1, 1, 1), utc(2026, 1, 1, 2))
    assert plan.next_fire_at is None and not plan.waiting


def test_plan_counts_skipped_intervals_up_to_a_cap() -> None:
    minutely = ScheduleSpec(cron="* * * * *")
    plan = plan_fires(
        minutely, next_due=utc(2025, 1, 1), cursor=None, now=utc(2026, 1, 1), catchup=False, slots=1
    )
    assert plan.fire == (utc(2026, 1, 1),)
    assert plan.skipped == SKIPPED_COUNT_CAP


# --- run ids and names ------------------------------------------------------------------


def test_run_id_is_the_name_and_the_utc_logical_time() -> None:
    at = dt.datetime(2026, 11, 21, 3, 0, tzinfo=BERLIN)
    assert run_id("nightly", at) == "nightly@2026-11-21T02:00:00Z"
    assert run_id("n", utc(2026, 1, 1, 0, 0, 0, 5)) == "n@2026-01-01T00:00:00.000005Z"
    assert (
        manual_run_id("nightly", utc(2026, 1, 2, 3, 4, 5)) == "nightly@manual-2026-01-02T03:04:05Z"
    )


def test_parse_run_id_inverts_run_id() -> None:
    t = utc(2026, 11, 21, 2)
    assert parse_run_id(run_id("etl.daily-eu", t)) == RunIdParts(
        schedule="etl.daily-eu", logical_time=t, manual=False
    )
    m = utc(2026, 11, 21, 2, 0, 1, 250)
    assert parse_run_id(manual_run_id("x", m)) == RunIdParts(
        schedule="x", logical_time=m, manual=True
    )
    for bad in ("nightly", "@2026-01-01T00:00:00Z", "n@yesterday", "n@2026-01-01"):
        with pytest.raises(ValueError, match="not a scheduled run id"):
            parse_run_id(bad)


def test_schedule_names_are_restricted() -> None:
    assert validate_schedule_name("etl.daily-eu_2") == "etl.daily-eu_2"
    for bad in ("", "has space", "a@b", "-lead", "x/y", "x" * 201, 7):
        with pytest.raises(InvalidScheduleError):
            validate_schedule_name(bad)


def test_parse_every() -> None:
    assert parse_every("15m") == dt.timedelta(minutes=15)
    assert parse_every("1h30m") == dt.timedelta(minutes=90)
    assert parse_every("1d") == dt.timedelta(days=1)
    assert parse_every("2w") == dt.timedelta(weeks=2)
    assert parse_every("90s") == parse_every(90) == parse_every("90")
    assert parse_every(dt.timedelta(hours=2)) == dt.timedelta(hours=2)
    for bad in ("", "15x", "m", "-5m", 0, -3, True, [1]):
        with pytest.raises(InvalidScheduleError):
            parse_every(bad)


# --- bad input: one line naming the problem ------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad minute field '61': out of range (allowed: 0-59)"),
        ({"cron": "0 24 * * *"}, "bad hour field '24'"),
        ({"cron": "0 0 32 * *"}, "bad day-of-month field '32'"),
        ({"cron": "0 0 * 13 *"}, "bad month field '13'"),
        ({"cron": "0 0 * * funday"}, "bad day-of-week field 'funday'"),
        ({"cron": "*/0 * * * *"}, "bad minute field '*/0'"),
        ({"cron": "* * *"}, "has 3 fields, expected 5"),
        ({"cron": "0 0 * * * 2026"}, "has 6 fields, expected 5"),
        ({"cron": ""}, "has 0 fields"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": "H * * * *"}, "hashed or random"),
        ({"cron": "R 2 * * *"}, "hashed or random"),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus_Mons"}, "Unknown time zone"),
        ({"cron": "0 * * * *", "timezone": "../etc/passwd"}, "Unknown time zone"),
        ({"interval": dt.timedelta(0)}, "interval must be positive"),
        ({"interval": dt.timedelta(seconds=-5)}, "interval must be positive"),
        ({}, "exactly one of a cron expression or an interval (got neither)"),
        ({"cron": "* * * * *", "interval": dt.timedelta(1)}, "(got both)"),
        (
            {"cron": "* * * * *", "start": utc(2026, 2, 1), "end": utc(2026, 1, 1)},
            "is before its start",
        ),
    ],
)
def test_invalid_schedules_raise_one_line_naming_the_problem(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        ScheduleSpec(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_spec_equality_ignores_derived_fields() -> None:
    a = ScheduleSpec(cron="0 * * * *", timezone="Europe/Berlin")
    b = ScheduleSpec(cron="0 * * * *", timezone="Europe/Berlin")
    assert a == b and hash(a) == hash(b)
    assert a != ScheduleSpec(cron="0 * * * *")
