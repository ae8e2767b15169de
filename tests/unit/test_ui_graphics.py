"""The UI's pure parts: DAG layout (layers, barycenter order, fan-out folding), SVG
escaping, and the access rules (loopback, bearer token, signed session, CSRF)."""

from __future__ import annotations

import datetime as dt

import pytest

from heliostat.ui import auth, graphics


def _crossings(layout: graphics.DagLayout) -> int:
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
    layout = graphics.layout_dag(steps, edges)
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
    layout = graphics.layout_dag(steps, edges)
    assert len(layout.boxes) == 3
    group = next(b for b in layout.boxes.values() if b.count > 1)
    assert group.count == 30 and group.status == "FAILED" and group.label == "part \u00d730"
    assert group.counts == {"SUCCESSFUL": 29, "FAILED": 1}
    assert graphics.layout_dag(steps, edges, collapse_at=0).boxes.keys() == steps.keys()


def test_a_2000_step_dag_is_drawn() -> None:
    # How long it takes is measured by benchmarks/ui.py (page_workflow_2000_steps).
    steps = {f"s{i}": (f"f{i % 7}", "SUCCESSFUL", 1.0) for i in range(2000)}
    edges = [(f"s{i}", f"s{i + 1 + (i % 3)}") for i in range(1990)]
    svg = graphics.dag_svg(graphics.layout_dag(steps, edges), "/w/x/steps/")
    assert svg.count("<rect") >= 100


def test_svg_text_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    layout = graphics.layout_dag({evil: (evil, "FAILED", None)}, [])
    svg = str(graphics.dag_svg(layout, "/w/x/steps/"))
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
