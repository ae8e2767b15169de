"""The UI's pure parts: DAG layout (layers, barycenter order, fan-out folding), SVG
escaping, and the access rules (loopback, bearer token, signed session, CSRF)."""

from __future__ import annotations

import datetime as dt

import pytest

from heliostat.ui import auth, dag, graphics


def _expand(key: str) -> str:
    return f"/w/x?expand={key}"


def _crossings(layout: dag.DagLayout) -> int:
    segs = [(layout.boxes[p], layout.boxes[c]) for p, c in layout.edges]
    n = 0
    for i, (a1, b1) in enumerate(segs):
        for a2, b2 in segs[i + 1 :]:
            if a1.layer == a2.layer and b1.layer == b2.layer:
                if (a1.y - a2.y) * (b1.y - b2.y) < 0:
                    n += 1
    return n


def test_layers_follow_dependencies_and_barycenter_removes_crossings() -> None:
    # Two chains whose names sort against their wiring: a0->z1, z0->a1.
    steps = {t: (t, "SUCCESSFUL", 1.0) for t in ("a0", "z0", "a1", "z1", "end")}
    edges = [("a0", "z1"), ("z0", "a1"), ("a1", "end"), ("z1", "end")]
    layout = dag.layout_dag(steps, edges)
    assert {k: b.layer for k, b in layout.boxes.items()} == {
        "a0": 0,
        "z0": 0,
        "a1": 1,
        "z1": 1,
        "end": 2,
    }
    assert all(layout.boxes[p].x < layout.boxes[c].x for p, c in edges)
    assert _crossings(layout) == 0


def test_wide_fan_out_folds_into_one_box_with_a_count() -> None:
    steps = {"src": ("src", "SUCCESSFUL", 0.1), "join": ("join", "PENDING", None)}
    edges = []
    for i in range(30):
        steps[f"p{i}"] = ("part", "FAILED" if i == 7 else "SUCCESSFUL", float(i))
        edges += [("src", f"p{i}"), (f"p{i}", "join")]
    layout = dag.layout_dag(steps, edges)
    assert len(layout.boxes) == 3
    group = next(b for b in layout.boxes.values() if b.count > 1)
    assert group.count == 30 and group.status == "FAILED" and group.label == "part \u00d730"
    assert group.counts == {"SUCCESSFUL": 29, "FAILED": 1}
    assert dag.layout_dag(steps, edges, collapse_at=0).boxes.keys() == steps.keys()


def _mesh(
    layers: int, width: int
) -> tuple[dict[str, tuple[str, str, float]], list[tuple[str, str]]]:
    """``layers`` x ``width`` steps, layer ``i`` all calls of ``f{i % 5}``, each step fed
    by two of the layer before (so no two share their parents), then one sink."""
    steps: dict[str, tuple[str, str, float]] = {}
    edges: list[tuple[str, str]] = []
    for i in range(layers):
        for j in range(width):
            steps[f"s{i}_{j}"] = (f"f{i % 5}", "SUCCESSFUL", 1.0 + j / 100)
            if i:
                edges += [
                    (f"s{i - 1}_{j}", f"s{i}_{j}"),
                    (f"s{i - 1}_{(j + 1) % width}", f"s{i}_{j}"),
                ]
    steps["sink"] = ("sink", "PENDING", 0.0)
    edges += [(f"s{layers - 1}_{j}", "sink") for j in range(width)]
    return steps, edges


def test_a_2000_step_mesh_is_drawn_one_box_per_layer() -> None:
    steps, edges = _mesh(20, 100)
    steps["s3_7"] = ("f3", "FAILED", 2.0)
    steps["s3_8"] = ("f3", "RUNNING", None)
    layout = dag.layout_dag(steps, edges)
    assert len(layout.boxes) == 21 and layout.steps == 2001 and layout.folded == 20
    layer3 = next(b for b in layout.boxes.values() if b.layer == 3)
    assert layer3.label == "f3 \u00d7100" and layer3.count == 100
    assert layer3.counts == {"SUCCESSFUL": 98, "FAILED": 1, "RUNNING": 1}
    assert layer3.status == "FAILED" and layer3.duration == 2.0
    # One edge between consecutive layers, all pointing right.
    assert len(layout.edges) == 20
    assert all(layout.boxes[p].layer + 1 == layout.boxes[c].layer for p, c in layout.edges)
    svg = str(dag.dag_svg(layout, "/w/x/steps/", _expand))
    assert svg.count('class="box group') == 20
    assert f'href="/w/x?expand={layer3.key}"' in svg
    assert 'data-count="100"' in svg and "1 failed \u00b7 1 running \u00b7 98 done" in svg
    assert svg.count("<") < 400  # what the browser draws does not grow with the steps


def test_expanding_a_group_draws_its_steps_and_keeps_the_others_folded() -> None:
    steps, edges = _mesh(20, 100)
    folded = dag.layout_dag(steps, edges)
    key = next(b.key for b in folded.boxes.values() if b.layer == 4)
    layout = dag.layout_dag(steps, edges, expand=[key])
    assert key not in layout.boxes
    shown = {k for k, b in layout.boxes.items() if b.layer == 4}
    assert shown == {f"s4_{j}" for j in range(100)}
    assert all(layout.boxes[k].task_id == k for k in shown)
    assert len(layout.boxes) == 20 + 100
    # Every step of layer 4 is linked to its folded neighbours, left and right.
    assert {c for p, c in layout.edges if layout.boxes[p].layer == 3} == shown
    assert {p for p, c in layout.edges if layout.boxes[c].layer == 5} == shown
    # Nothing folded: every step is a box.
    assert dag.layout_dag(steps, edges, collapse_at=0).boxes.keys() == steps.keys()


def test_a_long_chain_of_distinct_steps_is_drawn() -> None:
    steps = {f"s{i}": (f"f{i % 7}", "SUCCESSFUL", 1.0) for i in range(2000)}
    edges = [(f"s{i}", f"s{i + 1 + (i % 3)}") for i in range(1990)]
    layout = dag.layout_dag(steps, edges)
    assert all(layout.boxes[p].x < layout.boxes[c].x for p, c in layout.edges)
    svg = dag.dag_svg(layout, "/w/x/steps/", _expand)
    assert svg.count('class="box ') == len(layout.boxes)


def test_shapes_are_cached_by_structure_and_recoloured_each_time() -> None:
    steps, edges = _mesh(6, 20)
    cache = dag.ShapeCache(size=2)
    first = dag.layout_dag(steps, edges, cache=cache)
    steps["s2_5"] = ("f2", "FAILED", 1.0)
    again = dag.layout_dag(steps, edges, cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    key = next(b.key for b in again.boxes.values() if b.layer == 2)
    assert first.boxes[key].status == "SUCCESSFUL" and again.boxes[key].status == "FAILED"
    assert {k: (b.x, b.y) for k, b in first.boxes.items()} == {
        k: (b.x, b.y) for k, b in again.boxes.items()
    }
    # Another structure, or other options, is another shape; the oldest is dropped.
    dag.layout_dag(steps, edges, cache=cache, expand=[key])
    dag.layout_dag(steps, edges[:-1], cache=cache)
    dag.layout_dag(steps, edges, cache=cache)
    assert (cache.misses, cache.hits) == (4, 1)


def test_svg_text_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    layout = dag.layout_dag({evil: (evil, "FAILED", None)}, [])
    svg = str(dag.dag_svg(layout, "/w/x/steps/", _expand))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    now = dt.datetime.now(dt.UTC)
    gantt = str(graphics.gantt_svg([(evil, 1, "FAILED", now, now)], now=now))
    assert "<script>" not in gantt


def test_access_rules() -> None:
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1")
    assert auth.is_loopback("localhost") and not auth.is_loopback("0.0.0.0")
    with pytest.raises(auth.TokenRequiredError, match="--token"):
        auth.check_bind("0.0.0.0", None)
    auth.check_bind("0.0.0.0", "t")
    auth.check_bind("127.0.0.1", None)
    assert auth.bearer_ok("t", "Bearer t") and not auth.bearer_ok("t", "Bearer u")
    assert not auth.bearer_ok(None, "Bearer ") and not auth.bearer_ok("t", None)
    cookie = auth.new_session("secret")
    assert auth.session_ok("secret", cookie) and not auth.session_ok("other", cookie)
    assert not auth.session_ok("secret", cookie + "x") and not auth.session_ok("secret", None)
    assert auth.csrf_for("secret", cookie) != auth.csrf_for("secret", auth.new_session("secret"))
