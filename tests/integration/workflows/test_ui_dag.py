"""A big workflow's page on real SQLite and PostgreSQL: a 2,000-step fan-out is drawn
folded into one box with its count and states, a group unfolds on request, the full
graph and the full step table are there when asked for, and the live part keeps the
view it was opened with."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import heliostat as hs
from heliostat.storage.db import default_db_url
from heliostat.storage.signing import default_signer
from heliostat.storage.states import AttemptStatus, StepStatus
from heliostat.ui import create_app
from heliostat.workflows.compile import compile_dag
from heliostat.workflows.events import AttemptEnded, Commit, Intent
from heliostat.workflows.lease import LeaseOwner
from heliostat.workflows.step import ErrorInfo
from heliostat.workflows.store import WorkflowStore

PARTS = 1998
FAILED = ("part-0100", "part-0200", "part-1500")


@hs.remote
def source() -> int:
    return 1


@hs.remote
def part(x: int) -> int:
    return x


@hs.remote
def join(*xs: int) -> int:
    return sum(xs)


@pytest.fixture
def fan_out(wf_backend: str, wf_home: Path) -> Iterator[str]:
    """A stored 2,000-step run, source -> 1,998 parts -> join, written through the
    store's own code: the source and most parts done, three parts failed, the rest
    (and the join) pending. Its id."""
    src = source.options(name="source").bind()
    parts = [part.options(name=f"part-{j:04d}").bind(src) for j in range(PARTS)]
    compiled = compile_dag(join.options(name="join").bind(*parts))
    store = WorkflowStore.open(default_db_url(), signer=default_signer())
    at = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    lease = store.create(
        workflow_id="fan-2000",
        compiled=compiled,
        metadata={},
        name="join",
        schedule=None,
        owner=LeaseOwner.new(),
        timeout=600.0,
        now=at,
    )
    assert lease is not None
    records: list[Any] = []
    for n, tid in enumerate(["source", *(f"part-{j:04d}" for j in range(1800))]):
        t = at + dt.timedelta(milliseconds=n)
        records.append(Intent(task_id=tid, attempt=1, key=f"k{n}", at=t))
        if tid in FAILED:
            error = ErrorInfo(type_name="ValueError", message="bad", traceback="ValueError\n")
            records.append(
                AttemptEnded(
                    task_id=tid,
                    attempt=1,
                    status=AttemptStatus.FAILED,
                    finish=StepStatus.FAILED,
                    cause="raised",
                    at=t,
                    error=error,
                    started_at=t,
                    finished_at=t,
                )
            )
        else:
            records.append(
                Commit(
                    task_id=tid,
                    attempt=1,
                    start=StepStatus.RUNNING,
                    checkpoint=None,
                    output_format=None,
                    cause="finished",
                    at=t,
                    started_at=t,
                    finished_at=t + dt.timedelta(seconds=2),
                )
            )
    store.commit(lease, 1, records, now=at + dt.timedelta(seconds=5))
    store.close()
    yield "fan-2000"


def _boxes(html: str) -> dict[str, str]:
    """``data-task`` or ``data-group`` of each drawn box -> its class."""
    return {
        m.group(3): m.group(1)
        for m in re.finditer(r'class="(box[^"]*)" data-(task|group)="([^"]+)"', html)
    }


def test_a_2000_step_fan_out_is_drawn_folded_with_its_count(fan_out: str) -> None:
    with TestClient(create_app()) as c:
        html = c.get(f"/workflows/{fan_out}").text
        boxes = _boxes(html)
        assert set(boxes) == {"source", "group:part-0000", "join"}
        assert "st-FAILED" in boxes["group:part-0000"]  # the worst of its steps
        group = html[html.index('data-group="group:part-0000"') :]
        group = group[: group.index("</a>")]
        assert 'data-count="1998"' in group and "part-\u2026 \u00d71998" in group
        assert "3 failed \u00b7 198 pending \u00b7 1797 done" in group
        assert "2,000 steps in 3 boxes: 1 folded group" in html
        # The step table lists the first 100 steps and links to the rest.
        assert html.count('class="step-row"') == 100
        assert "The first 100 of 2,000 steps" in html
        every = c.get(f"/workflows/{fan_out}", params={"all_steps": 1}).text
        assert every.count('class="step-row"') == 2000


def test_a_folded_group_unfolds_and_folds_again(fan_out: str) -> None:
    with TestClient(create_app()) as c:
        folded = c.get(f"/workflows/{fan_out}").text
        href = re.search(r'<a href="([^"]+)" class="box group', folded)
        assert href is not None
        url = href.group(1).replace("&amp;", "&")
        assert url == f"/workflows/{fan_out}?expand=group%3Apart-0000"
        shown = c.get(url).text
        boxes = _boxes(shown)
        assert len(boxes) == 2000 and "group:part-0000" not in boxes
        assert boxes["part-0100"] == "box st-FAILED" and boxes["part-1900"] == "box st-PENDING"
        assert f'href="/workflows/{fan_out}"' in shown  # "Fold groups again"
        # The live part polled by the page keeps the view it was opened with.
        assert f'data-live-url="/workflows/{fan_out}/live?expand=group%3Apart-0000"' in shown
        live = c.get(f"/workflows/{fan_out}/live", params={"expand": "group:part-0000"}).text
        assert len(_boxes(live)) == 2000
        # The full graph: nothing folded.
        full = c.get(f"/workflows/{fan_out}", params={"full": 1}).text
        assert len(_boxes(full)) == 2000 and "Fold wide layers" in full
        # An unknown group is no error: there is nothing to unfold.
        assert len(_boxes(c.get(f"/workflows/{fan_out}?expand=group:nope").text)) == 3
