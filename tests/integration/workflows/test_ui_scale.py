"""The UI's scale paths and edges on real SQLite and PostgreSQL: the counts per status
kept at write time, keyset paging and id-prefix search over a larger fill (the path the
100,000-run page takes), paged step logs, and checkpoint downloads that cannot leave the
checkpoint store."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime, current_runtime
from heliostat.exceptions import WorkflowExecutionError
from heliostat.storage.db import default_db_url
from heliostat.storage.signing import default_signer
from heliostat.storage.states import WorkflowStatus
from heliostat.ui import create_app
from heliostat.ui.state import LOG_PAGE
from heliostat.workflows.compile import compile_dag
from heliostat.workflows.events import WorkflowMove
from heliostat.workflows.lease import LeaseOwner
from heliostat.workflows.store import WorkflowStore


@hs.remote
def add(x: int) -> int:
    return x + 1


@hs.remote
def fragile(x: int, flag: str) -> int:
    if not Path(flag).exists():
        raise ValueError(f"flag {flag} is missing")
    return x * 2


@hs.remote
def chatty(lines: int, word: str = "line") -> int:
    for i in range(lines):
        print(f"{word} {i:05d}")
    return lines


@hs.remote
def big(n: int) -> bytes:
    return b"x" * n


@pytest.fixture
def store(wf_home: Path) -> Iterator[WorkflowStore]:
    """The lineage store of the test's database (the one the UI and the API use)."""
    s = WorkflowStore.open(default_db_url(), signer=default_signer())
    yield s
    s.close()


def _counted(store: WorkflowStore) -> dict[str, int]:
    """The counts the UI reads (kept at write time)."""
    return {str(k): v for k, v in store.status_counts().items()}


def _recounted(store: WorkflowStore) -> dict[str, int]:
    """The same counts, counted the slow way over every run."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM workflows GROUP BY status"))
        return {str(s): int(n) for s, n in rows}


def _shard_rows(store: WorkflowStore) -> list[int]:
    with store.engine.connect() as conn:
        return [int(n) for (n,) in conn.execute(sa.text("SELECT runs FROM workflow_status_counts"))]


def test_counts_follow_every_status_change(
    wf_backend: str, runtime: Runtime, store: WorkflowStore, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    with TestClient(create_app()) as c:

        def check(expected: dict[str, int]) -> None:
            assert _counted(store) == _recounted(store) == expected
            assert c.get("/api/workflows").json()["counts"] == expected
            assert min(_shard_rows(store)) >= 0  # a fresh database: no backfilled rows

        check({})
        workflow.run(add.bind(1), workflow_id="ok")
        with pytest.raises(WorkflowExecutionError, match="missing"):
            workflow.run(fragile.bind(add.bind(1), str(flag)), workflow_id="fixme")
        with pytest.raises(WorkflowExecutionError, match="missing"):
            workflow.run(fragile.bind(add.bind(2), str(flag)), workflow_id="giveup")
        check({"SUCCESSFUL": 1, "FAILED": 2})

        flag.touch()
        assert workflow.resume("fixme") == 4  # FAILED -> RUNNING -> SUCCESSFUL
        check({"SUCCESSFUL": 2, "FAILED": 1})

        assert c.post("/api/workflows/giveup/cancel").json()["status"] == "CANCELED"
        check({"SUCCESSFUL": 2, "CANCELED": 1})

        workflow.delete("ok")
        check({"SUCCESSFUL": 1, "CANCELED": 1})


def _fill(store: WorkflowStore, n: int) -> dict[str, tuple[dt.datetime, str]]:
    """``n`` runs through the store's write code, three per second of creation time (so
    page keys tie on time), with mixed outcomes; their id -> (created_at, status)."""
    compiled = compile_dag(add.bind(add.bind(1)))
    owner = LeaseOwner.new()
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    made: dict[str, tuple[dt.datetime, str]] = {}
    for i in range(n):
        wid = f"w-{i:06d}"
        at = start + dt.timedelta(seconds=i // 3)
        lease = store.create(
            workflow_id=wid,
            compiled=compiled,
            metadata={},
            name="add",
            schedule=None,
            owner=owner,
            timeout=600.0,
            now=at,
        )
        assert lease is not None
        outcome = (
            WorkflowStatus.SUCCESSFUL,
            WorkflowStatus.FAILED,
            WorkflowStatus.CANCELED,
            WorkflowStatus.RUNNING,
        )[i % 4]
        if outcome is WorkflowStatus.CANCELED:
            store.move(
                wid,
                lambda s: [WorkflowMove(start=s, finish=WorkflowStatus.CANCELED, cause="cancel()")],
                now=at,
            )
        elif outcome is not WorkflowStatus.RUNNING:
            move = WorkflowMove(start=WorkflowStatus.RUNNING, finish=outcome, cause="test")
            store.commit(lease, 1, [], now=at, finish=[move], release=True)
        made[wid] = (at, str(outcome))
    return made


def _walk(c: TestClient, limit: int, **params: Any) -> list[str]:
    """Every id the API pages through, following next_cursor to the end."""
    seen: list[str] = []
    cursor = None
    while True:
        query: dict[str, Any] = {"limit": limit, **params}
        if cursor:
            query["cursor"] = cursor
        r = c.get("/api/workflows", params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [w["workflow_id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_keyset_paging_filters_and_substring_search_over_a_fill(
    wf_backend: str, store: WorkflowStore
) -> None:
    made = _fill(store, 400)
    newest = sorted(made, key=lambda w: (made[w][0], w), reverse=True)
    with TestClient(create_app()) as c:
        assert _walk(c, 37) == newest
        assert _walk(c, 50, order="asc") == newest[::-1]
        # Several statuses: one index range each, merged in page order.
        two = [w for w in newest if made[w][1] in ("FAILED", "CANCELED")]
        assert _walk(c, 23, status=["FAILED", "CANCELED"]) == two
        assert _walk(c, 40, status="RUNNING") == [w for w in newest if made[w][1] == "RUNNING"]
        # Search: text anywhere in the id, case-sensitive; LIKE wildcards are plain text.
        assert _walk(c, 50, search="w-00012") == [f"w-00012{i}" for i in range(9, -1, -1)]
        assert _walk(c, 50, search="w-00012", status="FAILED") == [
            "w-000129",
            "w-000125",
            "w-000121",
        ]
        assert _walk(c, 7, search="0012") == [w for w in newest if "0012" in w]
        assert _walk(c, 50, search="-00039") == [f"w-00039{i}" for i in range(9, -1, -1)]
        assert _walk(c, 30, search="-0", status=["FAILED", "CANCELED"]) == two
        for none in ("W-0001", "w-0001_", "w-%", "x", "0012w"):
            assert _walk(c, 50, search=none) == [], none
        # The CLI's listing ('heliostat workflow list --search', through
        # list_workflows) matches the same way, in the same order.
        for text in ("0012", "-00039", "W-0001", "w-%", "w-0001_"):
            listed = [r.workflow_id for r in store.list_workflows(search=text)]
            assert listed == _walk(c, 50, search=text), text
        expected = {"SUCCESSFUL": 100, "FAILED": 100, "CANCELED": 100, "RUNNING": 100}
        assert c.get("/api/workflows").json()["counts"] == expected == _recounted(store)
        html = c.get("/workflows", params={"status": "FAILED", "limit": 10}).text
        assert "Next page" in html and "w-000397" in html


def test_a_page_is_one_index_range(wf_backend: str, store: WorkflowStore) -> None:
    """The queries a deep, filtered page runs read an index in the page's order: no
    scan of the table and no sort of every match (what keeps 100,000 runs fast)."""
    made = _fill(store, 60)
    after = sorted(made.items(), key=lambda kv: (kv[1][0], kv[0]), reverse=True)[20]
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM workflows" in statement:
            statements.append((statement, params))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        for status in (None, [WorkflowStatus.FAILED, WorkflowStatus.RUNNING]):
            store.list_page(status, limit=10, after=(after[1][0], after[0]))
        # A search reads the same ranges, testing each entry: still no sort.
        store.list_page(None, limit=10, search="-0000", after=(after[1][0], after[0]))
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert len(statements) == 4  # unfiltered, one per status, searched
    with store.engine.connect() as conn:
        for statement, params in statements:
            if store.engine.dialect.name == "sqlite":
                plan = " ".join(
                    str(row[-1])
                    for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                )
                assert "USING INDEX ix_workflows_" in plan, plan
                assert "TEMP B-TREE" not in plan, plan
            else:
                # Tiny tables make any plan cheap: rule the others out, so a Sort left
                # in the plan means no index gives the page's order.
                for kind in ("seqscan", "bitmapscan", "sort"):
                    conn.exec_driver_sql(f"SET LOCAL enable_{kind} = off")
                plan = " ".join(
                    str(row[0]) for row in conn.exec_driver_sql("EXPLAIN " + statement, params)
                )
                assert "Index Scan" in plan and "ix_workflows_" in plan, plan
                assert "Sort" not in plan, plan


def test_step_logs_are_paged(wf_backend: str, runtime: Runtime) -> None:
    lines = 3000  # 33,000 characters: three pages
    workflow.run(chatty.options(**workflow.options(task_id="talk")).bind(lines), workflow_id="log")
    printed = "".join(f"line {i:05d}\n" for i in range(lines))
    base = "/api/workflows/log/steps/talk"
    with TestClient(create_app()) as c:
        step = c.get(base).json()
        (tail,) = step["logs"]
        assert tail["length"] == len(printed) and tail["size"] == len(printed)
        assert tail["text"] == printed[-LOG_PAGE:] and tail["offset"] == len(printed) - LOG_PAGE
        assert tail["more_before"] and not tail["more_after"] and not tail["truncated"]

        pages = []
        offset = 0
        while True:
            page = c.get(f"{base}/logs", params={"attempt": 1, "offset": offset}).json()
            assert page["offset"] == offset
            pages.append(page["text"])
            offset += len(page["text"])
            if not page["more_after"]:
                break
        assert "".join(pages) == printed and len(pages) == 3
        first = c.get(f"{base}/logs", params={"attempt": 1, "offset": 0, "limit": 22}).json()
        assert first["text"] == "line 00000\nline 00001\n" and not first["more_before"]
        assert c.get(f"{base}/logs", params={"attempt": 1}).json()["text"] == tail["text"]

        html = c.get("/workflows/log/steps/talk").text
        assert "Load earlier" in html and "line 02999" in html and "line 00000" not in html
        start = c.get("/workflows/log/steps/talk", params={"log_attempt": 1, "log_offset": 0})
        assert "line 00000" in start.text and "Later" in start.text
        assert "line 02999" not in start.text

        assert c.get(f"{base}/logs", params={"attempt": 2}).status_code == 404
        assert c.get(f"{base}/logs", params={"attempt": 1, "offset": -1}).status_code == 422
        assert c.get(f"{base}/logs", params={"attempt": 0}).status_code == 422
        assert c.get("/api/workflows/log/steps/nope/logs?attempt=1").status_code == 404


def test_log_offsets_count_characters_not_bytes(wf_backend: str, runtime: Runtime) -> None:
    word = "h\u00e9lio\u2600\U0001f600"  # 1, 2, 3 and 4 bytes in UTF-8
    step = chatty.options(**workflow.options(task_id="talk")).bind(40, word)
    workflow.run(step, workflow_id="utf8")
    printed = "".join(f"{word} {i:05d}\n" for i in range(40))
    base = "/api/workflows/utf8/steps/talk/logs"
    with TestClient(create_app()) as c:
        tail = c.get(base, params={"attempt": 1}).json()
        assert tail["unit"] == "characters"
        assert tail["length"] == tail["size"] == len(printed) < len(printed.encode())
        for offset, limit in ((0, 7), (5, 2), (len(printed) - 3, 10)):
            page = c.get(base, params={"attempt": 1, "offset": offset, "limit": limit}).json()
            assert page["text"] == printed[offset : offset + limit], (offset, limit)
            assert page["offset"] == offset
        schema = c.get("/api/openapi.json").json()["components"]["schemas"]["LogOut"]
        assert "characters" in schema["description"] and "never bytes" in schema["description"]
        assert schema["properties"]["unit"]["const"] == "characters"
        assert "characters" in schema["properties"]["size"]["description"]


def test_checkpoint_download_cannot_leave_the_store(
    wf_backend: str, runtime: Runtime, store: WorkflowStore, wf_home: Path, tmp_path: Path
) -> None:
    """Even a row signed with the installation's key (say, one a run with another
    ``--storage`` wrote) is served only from under this UI's checkpoint store."""
    workflow.run(big.options(**workflow.options(task_id="blob")).bind(200_000), workflow_id="dl")
    record = store.load("dl")
    ref = record.steps["blob"].checkpoint
    assert ref is not None and ref.location.startswith("file://") and ref.data is None
    url = "/workflows/dl/steps/blob/checkpoint"

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"the neighbour's data")
    secret_sum = "sha256:" + hashlib.sha256(secret.read_bytes()).hexdigest()
    root = ref.location.split("/dl/", 1)[0] if "/dl/" in ref.location else None
    assert root is not None, ref.location
    inside = Path(ref.location.removeprefix("file://")).parent
    link = inside / "link.bin"
    os.symlink(secret, link)

    with TestClient(create_app()) as c:
        good = c.get(url)
        assert (
            good.status_code == 200
            and good.content == Path(inside / Path(ref.location).name).read_bytes()
        )
        for forged in (
            secret.as_uri(),  # another directory altogether
            f"{root}/../{secret.name}",  # climbing out of the root
            f"{root}/dl/../../{secret.name}",
            f"{root}//dl/x",  # an empty segment
            link.as_uri(),  # inside by name, outside by its real path
        ):
            _forge(store, "dl", "blob", forged, secret_sum, ref.format)
            r = c.get(url)
            assert r.status_code == 403, (forged, r.status_code)
            assert b"neighbour" not in r.content
            assert "is outside this UI" in r.text
            preview = c.get("/api/workflows/dl/steps/blob").json()["preview"]
            assert preview["kind"] == "unavailable" and "outside" in preview["reason"]
        # A location nobody with the key wrote is refused before anything is read.
        with store.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE steps SET output_location = :l WHERE task_id = 'blob'"),
                {"l": ref.location + ".other"},
            )
        refused = c.get(url)
        assert refused.status_code == 403 and "signed" in refused.text


def _forge(
    store: WorkflowStore, wid: str, task_id: str, location: str, checksum: str, fmt: str
) -> None:
    """Point the step's output at ``location``, signed with the installation's key."""
    signature = store.signer.sign("step-output", wid, task_id, location, checksum, fmt)
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE steps SET output_location = :l, output_checksum = :c, "
                "output_signature = :s WHERE workflow_id = :w AND task_id = :t"
            ),
            {"l": location, "c": checksum, "s": signature, "w": wid, "t": task_id},
        )


def test_schedule_trigger_says_the_run_waits_for_a_scheduler(wf_backend: str) -> None:
    from heliostat.ui.views import _waiting
    from heliostat.workflows import schedules

    schedules.create("hourly", f"{__name__}:hourly_target", cron="0 * * * *")
    if current_runtime() is not None:
        hs.shutdown()  # as in the web server: no runtime in this process
    with TestClient(create_app()) as c:
        made = c.post("/api/schedules/hourly/trigger").json()
        assert "starts when a scheduler ('heliostat scheduler') takes it" in made["message"]
        (run,) = c.get("/api/schedules/hourly").json()["runs"]
        assert run["workflow_id"] == made["workflow_id"] and run["started_at"] is None
        assert run["waiting"] == "waiting for the scheduler"
        assert "the run waits" in c.get("/schedules/hourly").text
    t0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    later = t0 + dt.timedelta(minutes=1)
    assert "start one with 'heliostat scheduler'" in str(
        _waiting(fired_at=None, started_at=None, since=t0, now=later)
    )
    assert _waiting(fired_at=t0, started_at=None, since=t0, now=later) == "starting"
    assert _waiting(fired_at=t0, started_at=later, since=t0, now=later) is None


def hourly_target(logical_time: Any) -> Any:
    return add.bind(1)
