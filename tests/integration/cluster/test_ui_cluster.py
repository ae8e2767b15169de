"""The web UI of a head: its runtime page and ``/api/cluster`` show the head's nodes and
jobs, read from the control plane in the same process (FastAPI's test client, over a
real ``HeadService``; no browser: HTTP and HTML only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from heliostat.cluster import HeadService, Timing
from heliostat.cluster.rpc import Registration
from heliostat.ui import create_app

EVIL = "<script>alert(1)</script>"


@pytest.fixture
def head(tmp_path: Path) -> Iterator[tuple[HeadService, list[float]]]:
    now = [1000.0]
    service = HeadService(
        cluster_id="c1",
        version="test",
        timing=Timing(heartbeat_interval=1.0, suspect_after=3.0, dead_after=6.0),
        clock=lambda: now[0],
        package_dir=tmp_path / "packages",
    )
    yield service, now
    service.close()


def _register(service: HeadService, node_id: str, address: str, **kw: Any) -> None:
    service.register_node(
        Registration(
            node_id=node_id,
            address=address,
            hostname="box",
            pid=kw.pop("pid", 10),
            total=kw.pop("total", {"CPU": 2.0}),
            available=kw.pop("available", {"CPU": 2.0}),
            **kw,
        ),
        cause_id="test",
    )


def test_the_runtime_page_and_api_show_the_heads_nodes_and_jobs(
    head: tuple[HeadService, list[float]], tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    service, now = head
    _register(service, "00000000000000a1", "127.0.0.1:5001", is_head=True, total={"CPU": 1.0})
    _register(service, "00000000000000b2", "127.0.0.2:5002", pid=11)
    _register(service, "00000000000000c3", "127.0.0.3:5003", pid=12)
    now[0] += 5.0  # b2 and c3 keep silent; a1 and b2 heartbeat
    service.heartbeat("00000000000000a1", {"CPU": 1.0}, cause_id="t")
    service.heartbeat("00000000000000b2", {"CPU": 0.5}, cause_id="t")
    now[0] += 2.0  # c3 has been silent 7 s: dead at the next tick
    wait_for(
        lambda: (
            {n.node_id: n.state.value for n in service.list_nodes()}["00000000000000c3"] == "DEAD"
        ),
        5,
        what="c3 to be declared dead",
    )
    done = service.register_job("python old.py", "box", 7)
    service.finish_job(done)
    service.register_job(f"python {EVIL}.py", "laptop", 8)

    app = create_app(db_url=f"sqlite:///{tmp_path / 'ui.db'}", cluster=service)
    with TestClient(app) as client:
        data = client.get("/api/cluster").json()
        nodes = {n["node_id"]: n for n in data["nodes"]}
        assert list(nodes) == ["00000000000000a1", "00000000000000b2", "00000000000000c3"]
        b2 = nodes["00000000000000b2"]
        assert (b2["address"], b2["state"], b2["pid"]) == ("127.0.0.2:5002", "ALIVE", 11)
        assert b2["resources"] == {"CPU": {"total": 2.0, "used": 1.5}}
        assert b2["last_heartbeat_at"] is not None and b2["silent_for"] == 2.0
        assert nodes["00000000000000a1"]["is_head"] is True
        assert nodes["00000000000000c3"]["state"] == "DEAD"
        assert nodes["00000000000000c3"]["last_heartbeat_at"] is None
        assert data["nodes_alive"] == 2
        jobs = data["jobs"]
        assert [j["entrypoint"] for j in jobs] == [f"python {EVIL}.py", "python old.py"]
        assert [j["running"] for j in jobs] == [True, False]

        page = client.get("/runtime")
        assert page.status_code == 200
        html = page.text
        assert "2 nodes alive" in html
        for node_id, address in (
            ("00000000000000a1", "127.0.0.1:5001"),
            ("00000000000000b2", "127.0.0.2:5002"),
            ("00000000000000c3", "127.0.0.3:5003"),
        ):
            assert f'data-node="{node_id}"' in html and address in html
        assert "CPU 1.5 of 2" in html and ">dead</span>" in html and "(head)" in html
        assert "2 s ago" in html
        assert EVIL not in html and "&lt;script&gt;" in html  # escaped
        assert "python old.py" in html and "laptop · pid 8" in html


def test_a_ui_without_a_head_has_no_cluster(tmp_path: Path) -> None:
    app = create_app(db_url=f"sqlite:///{tmp_path / 'ui.db'}")
    with TestClient(app) as client:
        answer = client.get("/api/cluster")
        assert answer.status_code == 404 and "not served by a cluster head" in answer.text
        page = client.get("/runtime")
        assert page.status_code == 200 and "cluster-nodes" not in page.text
