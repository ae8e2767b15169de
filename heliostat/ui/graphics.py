"""Server-drawn SVG: a workflow's DAG, the Gantt of its attempts, the runs-over-time chart.

Layout is pure (:func:`layout_dag` returns positions); drawing only formats SVG. Every
string that reaches the SVG (step ids, names) goes through :func:`markupsafe.escape`.
The DAG is layered left to right by topological generation (networkx), ordered within
each layer by a few barycenter sweeps to cut crossings, and siblings of a wide fan-out
(the same function with the same parents and children) are folded into one box that
says how many steps it holds.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
from markupsafe import Markup, escape

__all__ = [
    "STATUS_ORDER",
    "DagBox",
    "DagLayout",
    "dag_svg",
    "gantt_svg",
    "layout_dag",
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
"""Worst first: a folded box takes the worst state of the steps it holds."""

BOX_W, BOX_H, GAP_X, GAP_Y = 168, 46, 64, 18
COLLAPSE_AT = 8
"""Siblings of one fan-out folded into one box from this many on."""


@dataclass(slots=True, kw_only=True)
class DagBox:
    """One box of the drawn DAG: a step, or ``count`` folded sibling steps."""

    key: str
    label: str
    status: str
    task_id: str | None
    count: int = 1
    duration: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    layer: int = 0
    x: float = 0.0
    y: float = 0.0


@dataclass(slots=True, kw_only=True)
class DagLayout:
    """Positioned boxes and edges (box keys), with the drawing's size."""

    boxes: dict[str, DagBox]
    edges: list[tuple[str, str]]
    width: float
    height: float


def _worst(statuses: Iterable[str]) -> str:
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return min(statuses, key=lambda s: rank.get(s, len(rank)))


def layout_dag(
    steps: Mapping[str, tuple[str, str, float | None]],
    edges: Sequence[tuple[str, str]],
    *,
    collapse_at: int = COLLAPSE_AT,
) -> DagLayout:
    """Place a DAG's steps for drawing.

    Args:
        steps: task id -> (function name, status, duration in seconds or None).
        edges: (parent task id, child task id) pairs.
        collapse_at: fold sibling groups of at least this many steps (0: never).
    """
    parents: dict[str, set[str]] = defaultdict(set)
    children: dict[str, set[str]] = defaultdict(set)
    for p, c in edges:
        if p in steps and c in steps:
            parents[c].add(p)
            children[p].add(c)
    # Fold: the same function with the same parents and children.
    groups: dict[tuple[str, frozenset[str], frozenset[str]], list[str]] = defaultdict(list)
    for tid, (name, _, _) in steps.items():
        groups[(name, frozenset(parents[tid]), frozenset(children[tid]))].append(tid)
    box_of: dict[str, str] = {}
    boxes: dict[str, DagBox] = {}
    for (name, _, _), members in groups.items():
        if collapse_at and len(members) >= collapse_at:
            members.sort()
            key = f"group:{members[0]}"
            counts: dict[str, int] = defaultdict(int)
            for m in members:
                counts[steps[m][1]] += 1
                box_of[m] = key
            durations = [d for m in members if (d := steps[m][2]) is not None]
            boxes[key] = DagBox(
                key=key,
                label=f"{name} \u00d7{len(members)}",
                status=_worst(counts),
                task_id=None,
                count=len(members),
                duration=max(durations) if durations else None,
                counts=dict(counts),
            )
        else:
            for m in members:
                box_of[m] = m
                boxes[m] = DagBox(
                    key=m, label=m, status=steps[m][1], task_id=m, duration=steps[m][2]
                )
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(sorted(boxes))
    box_edges = sorted({(box_of[p], box_of[c]) for p, c in edges if p in box_of and c in box_of})
    graph.add_edges_from(e for e in box_edges if e[0] != e[1])
    layers = [sorted(g) for g in nx.topological_generations(graph)]
    for i, layer in enumerate(layers):
        for key in layer:
            boxes[key].layer = i
    _order_layers(graph, layers)
    tallest = max((len(layer) for layer in layers), default=0)
    height = max(tallest * (BOX_H + GAP_Y) - GAP_Y, BOX_H) + 2 * GAP_Y
    for i, layer in enumerate(layers):
        offset = (height - (len(layer) * (BOX_H + GAP_Y) - GAP_Y)) / 2
        for j, key in enumerate(layer):
            boxes[key].x = GAP_Y + i * (BOX_W + GAP_X)
            boxes[key].y = offset + j * (BOX_H + GAP_Y)
    width = len(layers) * (BOX_W + GAP_X) - GAP_X + 2 * GAP_Y
    return DagLayout(boxes=boxes, edges=list(graph.edges()), width=max(width, BOX_W), height=height)


def _order_layers(graph: nx.DiGraph[str], layers: list[list[str]], sweeps: int = 4) -> None:
    """Reorder each layer in place by the mean position of its neighbours (barycenter),
    sweeping down then up, so edges cross less."""

    def sweep(seq: Sequence[list[str]], neighbours: object) -> None:
        for prev, layer in itertools.pairwise(seq):
            pos = {k: i for i, k in enumerate(prev)}
            here = {k: i for i, k in enumerate(layer)}

            def centre(key: str, pos: dict[str, int] = pos, here: dict[str, int] = here) -> float:
                near = [pos[n] for n in neighbours(key) if n in pos]  # type: ignore[operator]
                return sum(near) / len(near) if near else float(here[key])

            layer.sort(key=centre)

    for _ in range(sweeps):
        sweep(layers, graph.predecessors)
        sweep(layers[::-1], graph.successors)


def _fmt_seconds(seconds: float | None) -> str:
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


def dag_svg(layout: DagLayout, step_url: str) -> Markup:
    """The DAG as an SVG element; boxes of single steps link to ``step_url`` + task id.

    ``step_url`` is already URL-safe (the caller quotes); task ids are quoted here.
    """
    from urllib.parse import quote

    out = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="workflow DAG" viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" '
        f'width="{layout.width:.0f}" height="{layout.height:.0f}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'class="arrowhead"/></marker></defs><g class="edges">',
    ]
    for p, c in layout.edges:
        a, b = layout.boxes[p], layout.boxes[c]
        x1, y1 = a.x + BOX_W, a.y + BOX_H / 2
        x2, y2 = b.x, b.y + BOX_H / 2
        mx = (x1 + x2) / 2
        out.append(
            f'<path d="M{x1:.1f},{y1:.1f} C{mx:.1f},{y1:.1f} {mx:.1f},{y2:.1f} '
            f'{x2 - 2:.1f},{y2:.1f}" marker-end="url(#arrow)"/>'
        )
    out.append('</g><g class="boxes">')
    for box in sorted(layout.boxes.values(), key=lambda b: b.key):
        title = escape(box.label if box.task_id is None else box.task_id)
        detail = _fmt_seconds(box.duration)
        if box.count > 1:
            done = box.counts.get("SUCCESSFUL", 0)
            detail = f"{done}/{box.count} done"
        status_text = box.status.lower().replace("_", " ")
        inner = (
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="7"/>'
            f'<text x="{box.x + 10:.1f}" y="{box.y + 19:.1f}" class="label">'
            f"{escape(_clip(box.label, 22))}</text>"
            f'<text x="{box.x + 10:.1f}" y="{box.y + 36:.1f}" class="sub">'
            f"{escape(status_text)}{' · ' + escape(detail) if detail else ''}</text>"
            f"<title>{title}: {escape(box.status)}</title>"
        )
        cls = f"box st-{escape(box.status)}" + (" group" if box.count > 1 else "")
        if box.task_id is not None:
            href = escape(step_url + quote(box.task_id, safe=""))
            out.append(
                f'<a href="{href}" class="{cls}" data-task="{escape(box.task_id)}">{inner}</a>'
            )
        else:
            out.append(f'<g class="{cls}">{inner}</g>')
    out.append("</g></svg>")
    return Markup("".join(out))


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
        tick = _fmt_seconds(span * i / 4) or "0"
        out.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" class="grid"/>'
            f'<text x="{x:.1f}" y="{height - 4}" class="tick">+{tick}</text>'
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
            f"{escape(status)} {_fmt_seconds(((f or now) - s).total_seconds())}</title></rect>"
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
