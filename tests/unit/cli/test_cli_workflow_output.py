"""How ``heliostat workflow`` renders lineage records: durations, log text, headers."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from heliostat.cli.workflow import _attempt_header, _log_text, _run_seconds
from heliostat.workflows.step import StepLogs

T0 = dt.datetime(2026, 11, 21, 3, 0, 0, tzinfo=dt.UTC)


def _run(status: str, started: dt.datetime | None, finished: dt.datetime | None) -> Any:
    return SimpleNamespace(status=status, started_at=started, finished_at=finished)


def _attempt(status: str, **times: dt.datetime | None) -> Any:
    started, finished = times.get("started_at"), times.get("finished_at")
    duration = (finished - started).total_seconds() if started and finished else None
    return SimpleNamespace(
        status=status,
        queued_at=times.get("queued_at"),
        started_at=started,
        finished_at=finished,
        duration=duration,
    )


def test_a_running_runs_duration_is_the_time_so_far() -> None:
    now = T0 + dt.timedelta(seconds=90)
    assert _run_seconds(_run("RUNNING", T0, None), now) == 90.0
    # SQLite hands back naive UTC datetimes.
    assert _run_seconds(_run("RUNNING", T0.replace(tzinfo=None), None), now) == 90.0
    assert _run_seconds(_run("SUCCESSFUL", T0, T0 + dt.timedelta(seconds=2)), now) == 2.0
    assert _run_seconds(_run("RESUMABLE", T0, None), now) is None  # its end is not known
    assert _run_seconds(_run("PENDING", None, None), now) is None


def test_log_text_says_when_the_start_is_cut_and_why_there_is_none() -> None:
    cut = StepLogs(text="the end", size=1_000_007, truncated=True)
    assert _log_text(cut, None) == (
        "[the start is cut: it printed 1,000,007 characters, the first 1,000,000 are not "
        "kept]\nthe end\n"
    )
    assert _log_text(StepLogs(text="a\n", size=2, truncated=False), None) == "a\n"
    assert _log_text(None, _attempt("SUCCESSFUL")) == "(it printed nothing)\n"
    assert "interrupted" in _log_text(None, _attempt("INTERRUPTED"))
    assert "still running" in _log_text(None, _attempt("RUNNING"))


def test_attempt_headers_name_step_attempt_outcome_and_when() -> None:
    done = _attempt("FAILED", started_at=T0, finished_at=T0 + dt.timedelta(seconds=0.25))
    assert _attempt_header("check", 2, done) == (
        "--- check, attempt 2: FAILED, started 2026-11-21 03:00:00 UTC, ran 0.25 s ---"
    )
    lost = _attempt("INTERRUPTED", queued_at=T0)
    assert _attempt_header("charge", 1, lost) == (
        "--- charge, attempt 1: INTERRUPTED, queued 2026-11-21 03:00:00 UTC, never reported "
        "its start ---"
    )
    assert _attempt_header("load", 1, None) == "--- load, attempt 1 ---"
