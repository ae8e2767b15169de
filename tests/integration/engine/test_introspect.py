"""Snapshots of a live runtime over its node socket (what ``heliostat status`` reads)."""

from __future__ import annotations

import numpy as np
import pytest

import heliostat as hs
from heliostat.engine import introspect
from heliostat.engine.runtime import Runtime
from heliostat.exceptions import HeliostatError


def _mine(runtime: Runtime) -> introspect.SessionInfo:
    sessions = {s.session: s for s in introspect.live_sessions()}
    assert runtime.session in sessions
    return sessions[runtime.session]


def test_snapshots_show_workers_tasks_actors_and_objects(runtime: Runtime) -> None:
    @hs.remote
    def double(x: int) -> int:
        return 2 * x

    @hs.remote
    class Counter:
        def ping(self) -> int:
            return 1

    counter = Counter.options(name="introspected").remote()
    assert hs.get(counter.ping.remote()) == 1
    assert hs.get([double.remote(i) for i in range(3)]) == [0, 2, 4]
    big = hs.put(np.zeros(300_000))

    session = _mine(runtime)
    assert session.pid > 0

    status = introspect.snapshot(session, "status")
    assert status["session"] == runtime.session
    assert status["total"]["CPU"] == runtime.config.num_cpus
    assert any("introspected" in (w["actor"] or "") for w in status["workers"])
    assert status["object_store"]["shm_bytes"] >= 300_000 * 8
    assert status["tasks"]["FINISHED"] >= 4

    tasks = introspect.snapshot(session, "tasks")
    assert sum(1 for t in tasks if t["name"].endswith("double") and t["state"] == "FINISHED") >= 3

    actors = introspect.snapshot(session, "actors")
    assert [a["state"] for a in actors if a["name"] == "introspected"] == ["ALIVE"]

    objects = introspect.snapshot(session, "objects")
    assert any(o["kind"] == "SHM" and o["size"] >= 300_000 * 8 for o in objects)
    del big
    hs.kill(counter)


def test_bad_requests_give_clear_errors(runtime: Runtime, tmp_path: object) -> None:
    session = _mine(runtime)
    with pytest.raises(ValueError, match="unknown snapshot 'bogus'"):
        introspect.snapshot(session, "bogus")
    gone = introspect.SessionInfo(
        session="0-dead", pid=0, started_at=0.0, socket_path=f"{tmp_path}/missing.sock"
    )
    with pytest.raises(HeliostatError, match="did not answer"):
        introspect.snapshot(gone, "status")
    # The node goes on serving after the refused request.
    assert introspect.snapshot(session, "status")["session"] == runtime.session
