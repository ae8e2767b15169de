"""The web UI's JSON API and pages through FastAPI's test client, on real SQLite and
PostgreSQL, over workflows really run: listing, paging, one run, one step (traceback,
preview, checkpoint download), schedules, actions, escaping, 404/422 and the token."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.ui import create_app
from heliostat.ui.auth import TokenRequiredError
from heliostat.workflows import schedules

EVIL = "<script>alert(1)</script>"


@hs.remote
def extract(n: int) -> Any:
    import pandas as pd

    return pd.DataFrame({"day": [f"d{i}" for i in range(n)], "amount": [i * 1.5 for i in range(n)]})


@hs.remote
def transform(df: Any, flag: str) -> int:
    if not Path(flag).exists():
        raise ValueError(f"{EVIL} flag {flag} is missing")
    return len(df)


@hs.remote
def load(n: int) -> int:
    return n * 10


def _dag(flag: Path) -> Any:
    return load.bind(transform.bind(extract.bind(60), str(flag)))


def nightly(logical_time: Any) -> Any:
    """A schedule's target: the DAG of one run."""
    return load.bind(1)


def _client(**kwargs: Any) -> TestClient:
    return TestClient(create_app(**kwargs))


def test_a_failed_run_read_back_escaped(wf_backend: str, runtime: Runtime, tmp_path: Path) -> None:
    wid = f"etl-{EVIL}"
    flag = tmp_path / "flag"
    with pytest.raises(Exception, match="flag"):
        workflow.run(_dag(flag), workflow_id=wid)
    with _client() as c:
        page = c.get("/api/workflows").json()
        assert [w["workflow_id"] for w in page["items"]] == [wid]
        assert page["items"][0]["status"] == "FAILED"
        assert page["items"][0]["steps_total"] == 3 and page["items"][0]["steps_done"] == 1
        assert page["counts"] == {"FAILED": 1}
        assert c.get("/api/workflows", params={"search": "etl-<scr"}).json()["items"]
        assert not c.get("/api/workflows", params={"search": "nope"}).json()["items"]
        assert not c.get("/api/workflows", params={"status": "SUCCESSFUL"}).json()["items"]

        one = c.get(f"/api/workflows/{quote(wid, safe='')}").json()
        states = {s["task_id"]: s["status"] for s in one["steps"]}
        assert sorted(states.values()) == ["FAILED", "PENDING", "SUCCESSFUL"]
        assert len(one["edges"]) == 2
        failed = next(t for t, s in states.items() if s == "FAILED")
        ok = next(t for t, s in states.items() if s == "SUCCESSFUL")

        step = c.get(f"/api/workflows/{quote(wid, safe='')}/steps/{failed}").json()
        assert "ValueError" in step["traceback"] and "flag" in step["error"]
        assert next(w["kind"] for w in step["wal"]) == "INTENT"
        good = c.get(f"/api/workflows/{quote(wid, safe='')}/steps/{ok}").json()
        assert [w["kind"] for w in good["wal"]] == ["INTENT", "COMMIT"]
        assert good["preview"]["kind"] == "table"
        assert good["preview"]["shape"] == [60, 2]
        assert len(good["preview"]["rows"]) == 50
        assert [col["name"] for col in good["preview"]["columns"]] == ["day", "amount"]

        # Pages: the id and the error are shown, escaped.
        for url in (
            "/workflows",
            f"/workflows/{quote(wid, safe='')}",
            f"/workflows/{quote(wid, safe='')}/steps/{failed}",
        ):
            html = c.get(url).text
            assert EVIL not in html, url
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url
        step_html = c.get(f"/workflows/{quote(wid, safe='')}/steps/{failed}").text
        assert "Traceback" in step_html and "ValueError" in step_html
        wf_html = c.get(f"/workflows/{quote(wid, safe='')}").text
        assert 'class="box st-FAILED"' in wf_html and 'class="box st-SUCCESSFUL"' in wf_html

        # The checkpoint download gives the stored bytes.
        dl = c.get(f"/workflows/{quote(wid, safe='')}/steps/{ok}/checkpoint")
        assert dl.status_code == 200
        assert "sha256:" + hashlib.sha256(dl.content).hexdigest() == good_checksum(good)


def good_checksum(step: dict[str, Any]) -> str:
    commit = next(w for w in step["wal"] if w["kind"] == "COMMIT")
    return str(commit["checksum"])


def test_not_found_and_bad_parameters(wf_backend: str) -> None:
    with _client() as c:
        r = c.get("/api/workflows/nope")
        assert r.status_code == 404 and "nope" in r.json()["detail"]
        page = c.get("/workflows/nope")
        assert page.status_code == 404 and "No workflow with id" in page.text
        assert c.get("/api/schedules/nope").status_code == 404
        assert c.post("/api/workflows/nope/cancel").status_code == 404
        for params in (
            {"limit": 0},
            {"limit": 501},
            {"status": "BOGUS"},
            {"cursor": "zz"},
            {"order": "sideways"},
        ):
            assert c.get("/api/workflows", params=params).status_code == 422, params
        assert c.get("/workflows", params={"status": "BOGUS"}).status_code == 422


def test_keyset_paging(wf_backend: str, runtime: Runtime, tmp_path: Path) -> None:
    (tmp_path / "flag").touch()
    for i in range(23):
        workflow.run(load.bind(i), workflow_id=f"run-{i:03d}")
    with _client() as c:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 10}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/api/workflows", params=params).json()
            seen += [w["workflow_id"] for w in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == [f"run-{i:03d}" for i in reversed(range(23))]
        asc = c.get("/api/workflows", params={"limit": 5, "order": "asc"}).json()
        assert [w["workflow_id"] for w in asc["items"]] == [f"run-{i:03d}" for i in range(5)]
        assert asc["counts"] == {"SUCCESSFUL": 23}
        # A pickled output is previewed (in a child process) by its repr.
        pv = c.get("/api/workflows/run-005/steps/load").json()["preview"]
        assert pv == {"kind": "repr", "type": "builtins.int", "text": "50", "truncated": False}
        # the page shows a working "next" link
        html = c.get("/workflows", params={"limit": 10}).text
        assert "Next page" in html


def test_actions_cancel_and_schedules(wf_backend: str, runtime: Runtime, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="flag"):
        workflow.run(_dag(tmp_path / "flag"), workflow_id="to-cancel")
    schedules.create("nightly", f"{__name__}:nightly", cron="0 3 * * *", timezone="Europe/Paris")
    with _client() as c:
        r = c.post("/api/workflows/to-cancel/cancel")
        assert r.status_code == 200 and r.json()["status"] == "CANCELED"
        assert workflow.get_status("to-cancel") == "CANCELED"

        listed = c.get("/api/schedules").json()
        assert [s["name"] for s in listed] == ["nightly"]
        fires = listed[0]["next_fire_times"]
        assert len(fires) == 5 and all(f.endswith(("Z", "+00:00")) for f in fires)
        assert c.post("/api/schedules/nightly/pause").json()["status"] == "paused"
        assert schedules.get("nightly").paused
        assert c.get("/api/schedules/nightly").json()["next_fire_times"] == []
        c.post("/api/schedules/nightly/unpause")
        assert not schedules.get("nightly").paused
        # A trigger is recorded as a manual run (the scheduler starts it).
        hs.shutdown()
        made = c.post("/api/schedules/nightly/trigger").json()
        assert made["workflow_id"].startswith("nightly@manual-")
        runs = c.get("/api/schedules/nightly").json()["runs"]
        assert [r["workflow_id"] for r in runs] == [made["workflow_id"]]
        html = c.get("/schedules/nightly").text
        assert "Europe/Paris" in html and "UTC" in html and "Trigger now" in html
        # A cross-site POST is refused even without a token.
        bad = c.post("/api/schedules/nightly/pause", headers={"Origin": "http://evil.example"})
        assert bad.status_code == 403
        assert not schedules.get("nightly").paused


def test_token_rules(wf_backend: str) -> None:
    with pytest.raises(TokenRequiredError, match="token"):
        create_app(host="0.0.0.0")
    with _client(host="0.0.0.0", token="s3cret") as c:
        assert c.get("/api/workflows").status_code == 401
        assert c.get("/api/workflows", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/api/workflows", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        page = c.get("/workflows", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert c.post("/login", data={"token": "nope"}).status_code == 401
        assert c.post("/api/schedules/x/pause").status_code == 401
        r = c.post("/login", data={"token": "s3cret", "next": "/schedules"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/schedules"
        assert c.get("/workflows").status_code == 200  # the session cookie
        # a form without its CSRF token is refused
        assert c.post("/schedules/x/pause", data={}).status_code == 403


def test_loopback_forms_need_the_csrf_token(wf_backend: str) -> None:
    schedules.create("hourly", f"{__name__}:nightly", cron="0 * * * *")
    with _client() as c:
        html = c.get("/schedules").text
        assert 'name="csrf"' in html
        csrf = html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert c.post("/schedules/hourly/pause", data={"csrf": "x"}).status_code == 403
        assert not schedules.get("hourly").paused
        r = c.post("/schedules/hourly/pause", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert schedules.get("hourly").paused
    fresh = TestClient(create_app())  # no session cookie at all
    assert fresh.post("/schedules/hourly/unpause", data={"csrf": csrf}).status_code == 401


def test_runtime_shows_the_live_local_runtime(wf_home: Path, runtime: Runtime) -> None:
    import os

    with _client() as c:
        found = [r for r in c.get("/api/runtime").json() if r["pid"] == os.getpid()]
        assert len(found) == 1 and found[0]["status"] is not None, found
        html = c.get("/runtime").text
        assert found[0]["session"] in html and "Object store" in html and "CPU" in html
