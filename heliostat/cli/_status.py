"""Progress and status lines on stderr: one rule for every command.

Commands that run something long (``run``, ``workflow resume``, ``schedule trigger
--wait``, ``scheduler``) say how it goes on stderr; stdout holds the result (and the
whole ``--json`` document). Where stderr goes decides what those lines look like:

* An interactive terminal: the progress is one line redrawn in place (carriage return,
  erase to the end of the line). A status line first erases the progress line, is
  written, and the progress line is drawn again below it, so neither overwrites the
  other.
* Anything else (a log file, a pipe, a CI job, ``TERM=dumb``): every update is a plain
  line of its own, never a carriage return or an escape sequence. Progress lines are
  throttled to one per :data:`PLAIN_INTERVAL` seconds, plus the final state (written
  by :meth:`StatusLines.close` if the throttle held it back), so a long run does not
  flood a log. Status lines are written as they come.

The alternatives were a progress library (tqdm, rich), a dependency for one line that
brings its own rule, and leaving each command to test ``isatty``, which lets them
drift apart. :class:`StatusLines` is the one place: commands write every progress and
status line through it. A CI job is not interactive even on a pseudo-terminal (``CI``
set, as the common CI services do): its log is a file.

This module imports only the standard library (``heliostat --help`` stays fast).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

from heliostat.cli._util import format_duration

__all__ = [
    "PLAIN_INTERVAL",
    "Progress",
    "StatusHandler",
    "StatusLines",
    "is_interactive",
]

PLAIN_INTERVAL = 5.0
"""Seconds between two progress lines where they cannot be redrawn (logs, pipes, CI)."""

_ERASE = "\r\x1b[K"  # back to the start of the line, erase it


def _set(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def is_interactive(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is a terminal a person watches, where a line may be redrawn.

    A terminal (``isatty``), unless ``TERM`` is ``dumb`` (no cursor control) or ``CI``
    is set (a CI job's pseudo-terminal is captured into a log).
    """
    env = os.environ if environ is None else environ
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and env.get("TERM", "") != "dumb" and not _set(env.get("CI"))


class StatusLines:
    """Writes a command's progress and status lines to one stream, by the module's rule.

    Args:
        stream: where the lines go (the commands pass ``sys.stderr``).
        interactive: redraw progress in place; default :func:`is_interactive`.
        interval: seconds between two plain progress lines.
        clock: monotonic seconds (tests pass a fake).

    Thread-safe: a workflow's progress comes from its driver thread while the main
    thread writes status lines.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        interactive: bool | None = None,
        interval: float = PLAIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.interactive = is_interactive(stream) if interactive is None else interactive
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_write = float("-inf")  # when the last plain progress line was written
        # The latest progress text; on a terminal it is on screen (without its
        # newline) while _drawn; elsewhere it is written iff not _pending.
        self._current = ""
        self._drawn = False
        self._pending = False

    def line(self, text: str) -> None:
        """Write a status line (``heliostat: running workflow 'x'``), ending with a
        newline; on a terminal the progress line is drawn again below it."""
        with self._lock:
            if self._drawn:
                self.stream.write(_ERASE + text + "\n" + self._fit(self._current))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def progress(self, text: str, *, final: bool = False) -> None:
        """Show the progress ``text``: redrawn on a terminal; elsewhere a line of its
        own, unless one was written less than ``interval`` seconds ago (``final``
        writes it anyway)."""
        with self._lock:
            self._current = text
            if self.interactive:
                self.stream.write(_ERASE + self._fit(text))
                self._drawn = True
            else:
                now = self._clock()
                if not final and now - self._last_write < self.interval:
                    self._pending = True
                    return
                self.stream.write(text + "\n")
                self._last_write = now
                self._pending = False
            self.stream.flush()

    def close(self) -> None:
        """End the progress: on a terminal, keep the last line on screen (its newline);
        elsewhere, write the latest state if the throttle held it back."""
        with self._lock:
            if self._drawn:
                self.stream.write("\n")
                self._drawn = False
            elif self._pending:
                self.stream.write(self._current + "\n")
                self._pending = False
            else:
                return
            self.stream.flush()

    @staticmethod
    def _fit(text: str) -> str:
        # A redrawn line must not wrap: "\r" only goes back to the start of the last row.
        width = shutil.get_terminal_size().columns - 1
        return text if len(text) <= width or width < 20 else text[: width - 3] + "..."


class Progress:
    """A workflow's progress line, ``[wf-1] 3/10 steps done, 0 failed, 1.2 s``.

    Called as ``on_progress(done, total, failed)`` (by the executor on each change, or
    by a command polling the workflow's record, with or without a change); writes
    through a :class:`StatusLines`. Where lines are not redrawn, only a change of the
    counts makes a line; the one that first says every step is done is written at
    once, throttle or not.
    """

    def __init__(
        self, workflow_id: str, lines: StatusLines, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.workflow_id = workflow_id
        self.lines = lines
        self._clock = clock
        self._started = clock()
        self._counts: tuple[int, int, int] | None = None

    def __call__(self, done: int, total: int, failed: int) -> None:
        text = (
            f"[{self.workflow_id}] {done}/{total} steps done, {failed} failed, "
            f"{format_duration(self.elapsed())}"
        )
        changed, self._counts = self._counts != (done, total, failed), (done, total, failed)
        if changed or self.lines.interactive:  # a log gets news only, a terminal the time
            self.lines.progress(text, final=changed and 0 < total <= done)

    def elapsed(self) -> float:
        return self._clock() - self._started

    def close(self) -> None:
        self.lines.close()


class StatusHandler(logging.Handler):
    """A logging handler that writes each record as a status line (the scheduler's
    log: runs fired, passes that failed)."""

    def __init__(self, lines: StatusLines) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.line(self.format(record))
        except Exception:
            self.handleError(record)
