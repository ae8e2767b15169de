"""Server-drawn SVG charts: the Gantt of a run's attempts and the runs-over-time chart.

Every string that reaches the SVG (step ids) goes through :func:`markupsafe.escape`.
The DAG has its own module (:mod:`heliostat.ui.dag`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = [
    "STATUS_ORDER",
    "fmt_seconds",
    "gantt_svg",
    "runs_chart_svg",
]

STATUS_ORDER = (
    "FAILED",
    "IN_DOUBT",
    "NEEDS_ATTENTION",
    "RUNNING",
    "PENDING",
    "RESUMABLE",
    "CANCELED",
    "SKIPPED",
    "INTERRUPTED",
    "SUCCESSFUL",
)
"""Worst first: a folded DAG box takes the worst state of the steps it holds; charts
stack in this order."""


def fmt_seconds(seconds: float | None) -> str:
    """A duration as a person reads it: ``840 ms``, ``12.5 s``, ``3.2 min``, ``1.5 h``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def gantt_svg(
    attempts: Sequence[tuple[str, int, str, dt.datetime | None, dt.datetime | None]],
    *,
    now: dt.datetime,
    max_rows: int = 60,
) -> Markup:
    """A timeline of attempts: rows of ``(task id, attempt, status, start, finish)``;
    an attempt with no finish runs to ``now``."""
    started = [a for a in attempts if a[3] is not None]
    rows = started[:max_rows]
    if not rows:
        return Markup('<p class="muted">No attempt has started yet.</p>')
    more = (
        f'<p class="muted small">The first {max_rows} of {len(started)} attempts.</p>'
        if len(started) > max_rows
        else ""
    )
    start = min(a[3] for a in rows if a[3] is not None)
    end = max((a[4] or now) for a in rows)
    span = max((end - start).total_seconds(), 1e-3)
    label_w, plot_w, row_h = 200, 760, 18
    height = len(rows) * row_h + 28
    out = [
        f'<svg class="gantt" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 '
        f'{label_w + plot_w + 10} {height}" width="100%" role="img" aria-label="attempt timeline">'
    ]
    for i in range(5):
        x = label_w + plot_w * i / 4
        tick = fmt_seconds(span * i / 4) or "0"
        out.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" class="grid"/>'
            # The last tick ends at the axis' end (centred, it would be cut off).
            f'<text x="{x:.1f}" y="{height - 4}" class="tick{" end" if i == 4 else ""}">'
            f"+{tick}</text>"
        )
    for i, (tid, attempt, status, s, f) in enumerate(rows):
        assert s is not None
        x0 = label_w + plot_w * (s - start).total_seconds() / span
        x1 = label_w + plot_w * ((f or now) - start).total_seconds() / span
        y = i * row_h + 3
        label = f"{tid} #{attempt}"
        out.append(
            f'<text x="{label_w - 8}" y="{y + 11}" class="glabel">{escape(_clip(label, 30))}</text>'
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 2):.1f}" height="{row_h - 6}" '
            f'rx="3" class="bar st-{escape(status)}"><title>{escape(label)}: '
            f"{escape(status)} {fmt_seconds(((f or now) - s).total_seconds())}</title></rect>"
        )
    out.append("</svg>" + more)
    return Markup("".join(out))


def runs_chart_svg(runs: Sequence[tuple[dt.datetime, str]], *, buckets: int = 30) -> Markup:
    """Stacked bars of runs over time coloured by outcome, from ``(created_at, status)``."""
    if not runs:
        return Markup("")
    times = [t for t, _ in runs]
    lo, hi = min(times), max(times)
    span = max((hi - lo).total_seconds(), 1.0)
    counts: list[dict[str, int]] = [defaultdict(int) for _ in range(buckets)]
    for t, status in runs:
        i = min(int((t - lo).total_seconds() / span * buckets), buckets - 1)
        counts[i][status] += 1
    tallest = max(sum(c.values()) for c in counts) or 1
    w, h, bw = 600, 70, 600 / buckets
    out = [
        f'<svg class="runs-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" '
        'preserveAspectRatio="none" role="img" aria-label="runs over time">'
    ]
    for i, c in enumerate(counts):
        y = float(h)
        for status in reversed(STATUS_ORDER):
            n = c.get(status, 0)
            if not n:
                continue
            bh = h * n / tallest
            y -= bh
            out.append(
                f'<rect x="{i * bw + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                f'class="bar st-{status}"><title>{n} {status.lower()}</title></rect>'
            )
    fmt = "%Y-%m-%d %H:%M"
    out.append(
        f'</svg><div class="chart-axis"><span>{lo:{fmt}}</span>'
        f"<span>{len(runs)} newest runs</span><span>{hi:{fmt}} UTC</span></div>"
    )
    return Markup("".join(out))
