"""A workflow's DAG for the browser: placed on the server, drawn as one SVG.

Placement is pure and in two parts. :func:`shape_dag` reads only the graph's structure
(step ids, function names, edges) and returns where every box goes; :func:`layout_dag`
then colours those boxes with the steps' states. The structure of a run never changes
once it is created while its states change on every refresh, so :class:`ShapeCache`
keeps shapes keyed by a hash of the structure, and the page of a running 2,000-step
workflow polled every second costs a dictionary lookup and the drawing, not a layout.

The layout:

1. Layers, left to right: a step's layer is the length of the longest path from a
   source to it (networkx's topological generations), so every edge points right.
2. Folding: the steps of one layer that run the same function (the same code, whatever
   names they were given) become one box when there are ``collapse_at`` or more of
   them (a fan-out of 190 ``part`` calls, a 100-wide stage of a mesh). The box says
   how many steps it holds and how many are in each state; a click on it unfolds that
   group (``expand``). Folding nodes of one
   layer keeps every edge pointing right, so the layers stay as they were. This is
   what keeps a 2,000-step run readable and fast in the browser: what is drawn grows
   with the number of distinct stages, not with the number of steps. Alternatives
   measured: drawing every step (14,000 SVG elements, a second to the first frame
   and 150 ms per zoom step in Chromium) and culling to the viewport in JavaScript
   (the page must read without JavaScript, and a user cannot make sense of 2,000
   boxes anyway); the full graph stays available on request.
3. Order within a layer: a few barycenter sweeps (each box moves to the mean position
   of its neighbours in the layer before, then after) to cut edge crossings.

Every string that reaches the SVG (step ids, function names) goes through
:func:`markupsafe.escape`; links quote task ids.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import networkx as nx
from markupsafe import Markup, escape

from heliostat.ui.graphics import STATUS_ORDER, fmt_seconds

__all__ = [
    "BOX_H",
    "BOX_W",
    "COLLAPSE_AT",
    "DagBox",
    "DagLayout",
    "DagShape",
    "ShapeCache",
    "dag_svg",
    "layout_dag",
    "shape_dag",
]

BOX_W, BOX_H, GAP_X, GAP_Y = 176, 48, 64, 18
COLLAPSE_AT = 8
"""Steps of one function in one layer are folded into one box from this many on."""

_SHORT = {
    "SUCCESSFUL": "done",
    "FAILED": "failed",
    "RUNNING": "running",
    "PENDING": "pending",
    "IN_DOUBT": "in doubt",
    "NEEDS_ATTENTION": "attention",
    "RESUMABLE": "resumable",
    "CANCELED": "canceled",
    "SKIPPED": "skipped",
    "INTERRUPTED": "interrupted",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedBox:
    """Where one box goes: one step, or the steps of a folded group (``key`` is then
    ``group:`` + its first member's id, stable for a given graph)."""

    key: str
    name: str
    members: tuple[str, ...]
    layer: int
    x: float
    y: float

    @property
    def folded(self) -> bool:
        return self.key.startswith("group:")


@dataclass(frozen=True, slots=True, kw_only=True)
class DagShape:
    """The placed boxes of a graph and the edges between them (box keys), without
    states: what :class:`ShapeCache` keeps."""

    boxes: Mapping[str, PlacedBox]
    edges: tuple[tuple[str, str], ...]
    width: float
    height: float
    steps: int


@dataclass(slots=True, kw_only=True)
class DagBox:
    """One box as drawn: a step, or ``count`` folded steps of one function."""

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
    """Positioned boxes with their states, edges (box keys), and the drawing's size."""

    boxes: dict[str, DagBox]
    edges: list[tuple[str, str]]
    width: float
    height: float
    steps: int = 0

    @property
    def folded(self) -> int:
        """How many boxes are folded groups."""
        return sum(1 for b in self.boxes.values() if b.task_id is None)


def _worst(statuses: Iterable[str]) -> str:
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return min(statuses, key=lambda s: rank.get(s, len(rank)))


def shape_dag(
    names: Mapping[str, str],
    edges: Sequence[tuple[str, str]],
    *,
    kinds: Mapping[str, str] | None = None,
    collapse_at: int = COLLAPSE_AT,
    expand: Iterable[str] = (),
) -> DagShape:
    """Place a graph's boxes: layers, folding, barycenter order (module docstring).

    Args:
        names: task id -> the step's name (its function's, unless given another).
        edges: (parent task id, child task id) pairs; pairs naming unknown steps are
            ignored.
        kinds: task id -> what makes steps "the same function" for folding (the hash
            of the function's code); None: the names.
        collapse_at: fold groups of at least this many steps (0: never fold).
        expand: keys of groups to draw unfolded.
    """
    kind = names if kinds is None else kinds
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(names)
    graph.add_edges_from((p, c) for p, c in edges if p in names and c in names and p != c)
    unfold = frozenset(expand)
    box_of: dict[str, str] = {}
    members: dict[str, tuple[str, ...]] = {}
    layer_of: dict[str, int] = {}
    for depth, generation in enumerate(nx.topological_generations(graph)):
        by_kind: dict[str, list[str]] = defaultdict(list)
        for tid in generation:
            by_kind[kind.get(tid, names[tid])].append(tid)
        for group in by_kind.values():
            group.sort()
            key = f"group:{group[0]}"
            if collapse_at and len(group) >= collapse_at and key not in unfold:
                parts = [(key, tuple(group))]
            else:
                parts = [(tid, (tid,)) for tid in group]
            for k, held in parts:
                members[k] = held
                layer_of[k] = depth
                for tid in held:
                    box_of[tid] = k
    box_edges = sorted({(box_of[p], box_of[c]) for p, c in graph.edges})
    layers: list[list[str]] = [[] for _ in range(max(layer_of.values(), default=-1) + 1)]
    for key in sorted(members):
        layers[layer_of[key]].append(key)
    preds: dict[str, list[str]] = defaultdict(list)
    succs: dict[str, list[str]] = defaultdict(list)
    for p, c in box_edges:
        preds[c].append(p)
        succs[p].append(c)
    _order_layers(layers, preds.get, succs.get)
    tallest = max((len(layer) for layer in layers), default=0)
    height = max(tallest * (BOX_H + GAP_Y) - GAP_Y, BOX_H) + 2 * GAP_Y
    boxes: dict[str, PlacedBox] = {}
    for i, layer in enumerate(layers):
        offset = (height - (len(layer) * (BOX_H + GAP_Y) - GAP_Y)) / 2
        for j, key in enumerate(layer):
            held = members[key]
            boxes[key] = PlacedBox(
                key=key,
                name=_group_name([names[m] for m in held]),
                members=held,
                layer=i,
                x=GAP_Y + i * (BOX_W + GAP_X),
                y=offset + j * (BOX_H + GAP_Y),
            )
    width = len(layers) * (BOX_W + GAP_X) - GAP_X + 2 * GAP_Y
    return DagShape(
        boxes=boxes,
        edges=tuple(box_edges),
        width=max(width, BOX_W + 2 * GAP_Y),
        height=height,
        steps=len(names),
    )


def _group_name(names: list[str]) -> str:
    """What a group's box is called: its steps' name when they share it, else what
    their names start with (``part_…``), else the first name and an ellipsis."""
    first = names[0]
    if all(n == first for n in names):
        return first
    low, high = min(names), max(names)  # the prefix all share is theirs
    n = next((i for i, (a, b) in enumerate(zip(low, high, strict=False)) if a != b), len(low))
    prefix = low[:n]
    return (prefix or first + ", ") + "\u2026"


def _order_layers(
    layers: list[list[str]],
    preds: Callable[[str], list[str] | None],
    succs: Callable[[str], list[str] | None],
    sweeps: int = 4,
) -> None:
    """Reorder each layer in place by the mean position of its neighbours (barycenter),
    sweeping down then up, so edges cross less. A box with no neighbour on the side
    swept from keeps its place."""

    def sweep(seq: Sequence[list[str]], neighbours: Callable[[str], list[str] | None]) -> None:
        for prev, layer in itertools.pairwise(seq):
            pos = {k: i for i, k in enumerate(prev)}
            centre: dict[str, float] = {}
            for i, key in enumerate(layer):
                near = [pos[n] for n in neighbours(key) or () if n in pos]
                centre[key] = sum(near) / len(near) if near else float(i)
            layer.sort(key=centre.__getitem__)

    for _ in range(sweeps):
        sweep(layers, preds)
        sweep(layers[::-1], succs)


def structure_key(
    names: Mapping[str, str], edges: Iterable[tuple[str, str]], *extra: object
) -> str:
    """A hash of a graph's structure (and of the layout's options in ``extra``).

    Hashes the ``repr`` of the sorted parts: a repr of strings is unambiguous (quotes
    and separators escaped) and made in C, a few milliseconds for 2,000 steps.
    """
    text = repr((sorted(names.items()), sorted(edges), extra))
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


class ShapeCache:
    """The last ``size`` shapes, keyed by :func:`structure_key`; safe across threads
    (the server answers requests on a thread pool)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._shapes: OrderedDict[str, DagShape] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(
        self,
        names: Mapping[str, str],
        edges: Sequence[tuple[str, str]],
        *,
        kinds: Mapping[str, str] | None,
        collapse_at: int,
        expand: frozenset[str],
    ) -> DagShape:
        kind = sorted(kinds.items()) if kinds is not None else None
        key = structure_key(names, edges, kind, collapse_at, sorted(expand))
        with self._lock:
            shape = self._shapes.get(key)
            if shape is not None:
                self._shapes.move_to_end(key)
                self.hits += 1
                return shape
        # Placed outside the lock: two threads may both place a new graph once.
        shape = shape_dag(names, edges, kinds=kinds, collapse_at=collapse_at, expand=expand)
        with self._lock:
            self.misses += 1
            self._shapes[key] = shape
            while len(self._shapes) > self.size:
                self._shapes.popitem(last=False)
        return shape


def layout_dag(
    steps: Mapping[str, tuple[str, str, float | None]],
    edges: Sequence[tuple[str, str]],
    *,
    kinds: Mapping[str, str] | None = None,
    collapse_at: int = COLLAPSE_AT,
    expand: Iterable[str] = (),
    cache: ShapeCache | None = None,
) -> DagLayout:
    """Place a DAG's steps and give each box its state.

    A folded box takes the worst state of the steps it holds (``STATUS_ORDER``), counts
    them per state, and shows the longest duration among them.

    Args:
        steps: task id -> (function name, status, duration in seconds or None).
        edges: (parent task id, child task id) pairs.
        kinds: task id -> the identity of its function (see :func:`shape_dag`).
        collapse_at: fold groups of at least this many steps (0: never).
        expand: keys of folded groups to draw unfolded.
        cache: where shapes are kept between calls (None: placed afresh).
    """
    names = {tid: name for tid, (name, _, _) in steps.items()}
    unfold = frozenset(expand)
    if cache is None:
        shape = shape_dag(names, edges, kinds=kinds, collapse_at=collapse_at, expand=unfold)
    else:
        shape = cache.get(names, edges, kinds=kinds, collapse_at=collapse_at, expand=unfold)
    boxes: dict[str, DagBox] = {}
    for placed in shape.boxes.values():
        if not placed.folded:
            tid = placed.key
            _, status, duration = steps[tid]
            boxes[tid] = DagBox(
                key=tid,
                label=tid,
                status=status,
                task_id=tid,
                duration=duration,
                layer=placed.layer,
                x=placed.x,
                y=placed.y,
            )
            continue
        counts: dict[str, int] = defaultdict(int)
        longest: float | None = None
        for m in placed.members:
            _, status, duration = steps[m]
            counts[status] += 1
            if duration is not None and (longest is None or duration > longest):
                longest = duration
        boxes[placed.key] = DagBox(
            key=placed.key,
            label=f"{placed.name} \u00d7{len(placed.members)}",
            status=_worst(counts),
            task_id=None,
            count=len(placed.members),
            duration=longest,
            counts=dict(counts),
            layer=placed.layer,
            x=placed.x,
            y=placed.y,
        )
    return DagLayout(
        boxes=boxes,
        edges=list(shape.edges),
        width=shape.width,
        height=shape.height,
        steps=shape.steps,
    )


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def breakdown(counts: Mapping[str, int]) -> str:
    """``3 failed · 97 done``: a folded box's steps per state, worst first."""
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    parts = sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order)))
    return " \u00b7 ".join(f"{n} {_SHORT.get(s, s.lower())}" for s, n in parts if n)


def dag_svg(layout: DagLayout, step_url: str, expand_url: Callable[[str], str]) -> Markup:
    """The DAG as an SVG element.

    A step's box links to ``step_url`` + its quoted task id; a folded box links to
    ``expand_url(key)`` (the page with that group unfolded). A step's box is four
    elements (link, rectangle, two lines of text); its full id and state are in the
    link's ``data-`` attributes and, when its label is clipped, in a ``<title>``.

    Args:
        layout: from :func:`layout_dag`.
        step_url: the URL prefix of a step's page, already URL-safe.
        expand_url: the URL that unfolds a group, given its key (escaped here).
    """
    w, h = f"{layout.width:.0f}", f"{layout.height:.0f}"
    out = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="workflow DAG" viewBox="0 0 {w} {h}" width="{w}" height="{h}">'
        '<g class="edges">'
    ]
    # All edges are one path (and their heads another): 4,000 edges are two elements for
    # the browser to lay out, not 4,000. Edges touching a folded box are drawn heavier.
    boxes = layout.boxes
    lines: dict[bool, list[str]] = {False: [], True: []}
    heads: list[str] = []
    for p, c in layout.edges:
        a, b = boxes[p], boxes[c]
        x1, y1 = a.x + BOX_W, a.y + BOX_H / 2
        x2, y2 = b.x - 7, b.y + BOX_H / 2  # the head covers the last 8 units
        mx = (x1 + x2) / 2
        lines[a.count > 1 or b.count > 1].append(
            f"M{x1:.0f},{y1:.0f}C{mx:.0f},{y1:.0f} {mx:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
        )
        heads.append(f"M{b.x - 8:.0f},{y2 - 4:.0f}l8,4l-8,4z")
    for heavy, d in lines.items():
        if d:
            out.append(f'<path class="{"fan" if heavy else "line"}" d="{"".join(d)}"/>')
    if heads:
        out.append(f'<path class="head" d="{"".join(heads)}"/>')
    out.append('</g><g class="boxes">')
    for box in boxes.values():
        x, y = box.x, box.y
        status = escape(box.status)
        if box.task_id is None:
            out.append(_group_svg(box, expand_url(box.key)))
            continue
        label = _clip(box.label, 23)
        sub = box.status.lower().replace("_", " ")
        if box.duration is not None:
            sub += " \u00b7 " + fmt_seconds(box.duration)
        title = f"<title>{escape(box.task_id)}</title>" if label != box.label else ""
        out.append(
            f'<a href="{escape(step_url + quote(box.task_id, safe=""))}" '
            f'class="box st-{status}" data-task="{escape(box.task_id)}">'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="7"/>'
            f'<text x="{x + 11:.0f}" y="{y + 20:.0f}" class="label">{escape(label)}</text>'
            f'<text x="{x + 11:.0f}" y="{y + 37:.0f}" class="sub">{escape(sub)}</text>'
            f"{title}</a>"
        )
    out.append("</g></svg>")
    return Markup("".join(out))


def _group_svg(box: DagBox, href: str) -> str:
    """A folded box: drawn as a stack of cards, its count, its steps per state as text
    and as a bar along its foot, and a link that unfolds it."""
    x, y = box.x, box.y
    status = escape(box.status)
    text = breakdown(box.counts)
    parts = [
        f'<a href="{escape(href)}" class="box group st-{status}" data-group="{escape(box.key)}" '
        f'data-count="{box.count}">'
        f'<rect class="card2" x="{x + 6:.0f}" y="{y - 6:.0f}" width="{BOX_W}" '
        f'height="{BOX_H}" rx="7"/>'
        f'<rect class="card1" x="{x + 3:.0f}" y="{y - 3:.0f}" width="{BOX_W}" '
        f'height="{BOX_H}" rx="7"/>'
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="7"/>'
        f'<text x="{x + 11:.0f}" y="{y + 19:.0f}" class="label">'
        f"{escape(_clip(box.label, 23))}</text>"
        f'<text x="{x + 11:.0f}" y="{y + 34:.0f}" class="sub">{escape(_clip(text, 30))}</text>'
    ]
    # The bar: one segment per state, worst first, inside the box's foot.
    left, span = x + 8, BOX_W - 16
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    for state, n in sorted(box.counts.items(), key=lambda kv: order.get(kv[0], len(order))):
        width = span * n / box.count
        parts.append(
            f'<rect class="seg st-{escape(state)}" x="{left:.1f}" y="{y + BOX_H - 9:.0f}" '
            f'width="{max(width, 1.5):.1f}" height="4"/>'
        )
        left += width
    duration = f", longest {fmt_seconds(box.duration)}" if box.duration is not None else ""
    parts.append(
        f"<title>{escape(box.label)}: {escape(text)}{escape(duration)}. "
        "Click to show each step.</title></a>"
    )
    return "".join(parts)
