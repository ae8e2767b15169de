"""The one rule for progress and status lines (``heliostat.cli._status``), no processes."""

from __future__ import annotations

import io
import logging

import pytest

from heliostat.cli._status import Progress, StatusHandler, StatusLines, is_interactive


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("tty", "environ", "interactive"),
    [
        (True, {"TERM": "xterm-256color"}, True),
        (True, {"TERM": "xterm", "CI": "false"}, True),
        (True, {"TERM": "dumb"}, False),
        (True, {"TERM": "xterm", "CI": "true"}, False),
        (True, {"TERM": "xterm", "CI": "1"}, False),
        (False, {"TERM": "xterm"}, False),
    ],
)
def test_only_a_terminal_a_person_watches_is_interactive(
    tty: bool, environ: dict[str, str], interactive: bool
) -> None:
    assert is_interactive(_Stream(tty), environ) is interactive


def test_a_closed_stream_is_not_interactive() -> None:
    stream = io.StringIO()
    stream.close()
    assert is_interactive(stream, {}) is False


def test_a_terminal_gets_one_line_redrawn_and_status_lines_above_it() -> None:
    stream = _Stream(tty=True)
    lines = StatusLines(stream, interactive=True)
    lines.progress("[wf] 1/3")
    lines.progress("[wf] 2/3")
    lines.line("heliostat: note")
    lines.progress("[wf] 3/3")
    lines.close()
    assert stream.getvalue() == (
        "\r\x1b[K[wf] 1/3"
        "\r\x1b[K[wf] 2/3"
        "\r\x1b[Kheliostat: note\n[wf] 2/3"  # the note, then the progress again below
        "\r\x1b[K[wf] 3/3"
        "\n"
    )


def test_off_a_terminal_progress_lines_are_throttled_and_the_last_one_is_kept() -> None:
    stream = _Stream(tty=False)
    clock = _Clock()
    lines = StatusLines(stream, interactive=False, interval=5.0, clock=clock)
    lines.progress("a")  # the first: written
    clock.now = 1
    lines.progress("b")  # within the interval: held back
    lines.line("status")  # status lines are never held back
    clock.now = 4.9
    lines.progress("c")  # held back, replacing "b"
    clock.now = 5.0
    lines.progress("d")  # the interval has passed
    clock.now = 6
    lines.progress("e")  # held back ...
    lines.close()  # ... and written at the end, as the final state
    lines.close()
    assert stream.getvalue() == "a\nstatus\nd\ne\n"


def test_a_final_progress_line_is_written_at_once_and_not_again() -> None:
    stream = _Stream(tty=False)
    lines = StatusLines(stream, interactive=False, interval=3600, clock=_Clock())
    lines.progress("first")
    lines.progress("done", final=True)
    lines.close()
    assert stream.getvalue() == "first\ndone\n"


def test_workflow_progress_off_a_terminal_writes_news_only() -> None:
    stream = _Stream(tty=False)
    clock = _Clock()
    lines = StatusLines(stream, interactive=False, interval=5.0, clock=clock)
    progress = Progress("wf", lines, clock=clock)
    progress(0, 2, 0)
    clock.now = 0.5
    progress(0, 2, 0)  # a poll with nothing new: no line, now or at the end
    progress(1, 2, 0)  # held back by the throttle
    progress(2, 2, 0)  # every step done: at once
    clock.now = 0.75
    progress(2, 2, 0)  # polled again before the workflow's status says so: nothing
    progress.close()
    assert stream.getvalue().splitlines() == [
        "[wf] 0/2 steps done, 0 failed, 0.00 s",
        "[wf] 2/2 steps done, 0 failed, 0.50 s",
    ]
    assert progress.elapsed() == 0.75


def test_workflow_progress_on_a_terminal_keeps_the_time_going() -> None:
    stream = _Stream(tty=True)
    clock = _Clock()
    progress = Progress("wf", StatusLines(stream, interactive=True), clock=clock)
    progress(0, 1, 0)
    clock.now = 2
    progress(0, 1, 0)
    progress.close()
    assert stream.getvalue() == (
        "\r\x1b[K[wf] 0/1 steps done, 0 failed, 0.00 s"
        "\r\x1b[K[wf] 0/1 steps done, 0 failed, 2.00 s\n"
    )


def test_log_records_become_status_lines() -> None:
    stream = _Stream(tty=True)
    lines = StatusLines(stream, interactive=True)
    logger = logging.getLogger("heliostat.test_status_handler")
    handler = StatusHandler(lines)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        lines.progress("[wf] 1/2")
        logger.warning("started %s", "x")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert stream.getvalue() == "\r\x1b[K[wf] 1/2\r\x1b[KWARNING started x\n[wf] 1/2"
