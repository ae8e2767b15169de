"""Durable workflows on a real cluster: a driver's workflows record into the cluster's
database and checkpoint store (the head's ``--db-url`` / ``--storage``), so a driver on
another node resumes a workflow whose driver was killed, without re-running its
finished steps.

Each driver has a ``HELIOSTAT_HOME`` of its own (its own default SQLite file and key
file), as it would on its own machine; the metadata is in a PostgreSQL schema of the
test's own and the checkpoints in a directory every process sees.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa
from cluster_daemons import Daemons

# Driver 1: a three-step workflow whose middle step waits for a file "go". Each step
# appends one byte to a counter file when it starts running: the counters say how
# often each ran, whichever node ran it.
FIRST_DRIVER = """
import pathlib, sys, time
import heliostat as hs
from heliostat import workflow

marks = pathlib.Path(sys.argv[1])

def count(name):
    with open(marks / f"{name}.count", "a") as fh:
        fh.write("x")

@hs.remote
def load():
    count("load")
    return [1, 2, 3]

@hs.remote
def double(xs):
    count("double")
    (marks / "double.started").touch()
    while not (marks / "go").exists():
        time.sleep(0.05)
    return [2 * x for x in xs]

@hs.remote
def total(xs):
    count("total")
    return sum(xs)

hs.init()
print(workflow.run(total.bind(double.bind(load.bind())), workflow_id="cross-node"))
"""


def test_a_workflow_whose_driver_was_killed_is_resumed_from_another_node(
    pg_schema_url: Callable[[], str],
    daemons: Daemons,
    tmp_path: Path,
    wait_for: Callable[..., Any],
) -> None:
    db_url = pg_schema_url()
    shared = tmp_path / "shared-checkpoints"
    marks = tmp_path / "marks"
    marks.mkdir()
    daemons.start_head("--db-url", db_url, "--storage", f"file://{shared}")
    daemons.start_node("n1", "127.0.0.2")
    daemons.start_node("n2", "127.0.0.3")

    first = daemons.spawn_driver(FIRST_DRIVER, home="driver1", args=(str(marks),))
    wait_for(
        lambda: (marks / "double.started").exists() or first.poll() is not None,
        120,
        what="the first driver's workflow to reach its middle step",
    )
    assert first.poll() is None, first.communicate()
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-run
    first.wait(timeout=30)

    # It recorded in the cluster's database, not in its own home's SQLite.
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT workflow_id FROM workflows")).scalars().all()
    finally:
        engine.dispose()
    assert ids == ["cross-node"]
    assert not (daemons.home("driver1") / "heliostat.db").exists()

    (marks / "go").touch()
    # Another driver, with another home (another default database and key), on the
    # command line as an operator would.
    resumed = daemons.run(
        "driver2",
        "workflow",
        "resume",
        "cross-node",
        "--json",
        env={"HELIOSTAT_ADDRESS": daemons.address, "HELIOSTAT_TOKEN": daemons.token},
    )
    answer = json.loads(resumed.stdout)
    assert (answer["status"], answer["output"]) == ("SUCCESSFUL", 12), resumed.stderr
    counts = {
        name: len((marks / f"{name}.count").read_text()) for name in ("load", "double", "total")
    }
    assert counts["load"] == 1, counts  # finished before the kill: not run again
    assert counts["total"] == 1, counts
    # The step that was running when its driver died ran again, or its first attempt's
    # checkpoint (written after the kill) was adopted: once or twice, never more.
    assert counts["double"] in (1, 2), counts
    assert not (daemons.home("driver2") / "heliostat.db").exists()
    status = daemons.run(
        "driver2",
        "workflow",
        "status",
        "cross-node",
        "--json",
        env={"HELIOSTAT_ADDRESS": daemons.address, "HELIOSTAT_TOKEN": daemons.token},
    )
    assert json.loads(status.stdout)["status"] == "SUCCESSFUL"


# A non-idempotent step follows its driver's lease wherever it runs: on another node
# than its driver's through a copy of the beacon that its node keeps
# (engine/beacon_mirror.py), on the driver's own node through the beacon itself. The
# step runs on the node named by argv[3] ("here": the driver's), records its pid and
# node, then ticks until a "go" file appears.
LEASED_DRIVER = """
import os, pathlib, sys, time
os.environ["HELIOSTAT_LEASE_TIMEOUT"] = sys.argv[2]
import heliostat as hs
from heliostat import workflow
from heliostat.util.scheduling_strategies import NodeAffinitySchedulingStrategy

marks = pathlib.Path(sys.argv[1])

def mark(name, text):  # whole or not at all: the test reads a mark once it exists
    (marks / f"{name}.tmp").write_text(text)
    os.replace(marks / f"{name}.tmp", marks / name)

@hs.remote
def charge(wid):
    node = hs.get_runtime_context().get_node_id()
    mark(f"{wid}.pid", f"{os.getpid()} {node}")
    while not (marks / f"{wid}.go").exists():
        with open(marks / f"{wid}.ticks", "a") as fh:
            fh.write("x")
        time.sleep(0.05)
    return node

hs.init()
me = hs.get_runtime_context().get_node_id()
there = NodeAffinitySchedulingStrategy(me if sys.argv[3] == "here" else sys.argv[3], soft=False)
for wid in ("paid", "frozen"):
    step = charge.options(
        scheduling_strategy=there, **workflow.options(task_id="charge", idempotent=False)
    )
    ran_on = workflow.run(step.bind(wid), workflow_id=wid)
    mark(f"{wid}.result", f"{me} {ran_on}")
"""


@pytest.mark.parametrize("where", ["another node", "the driver's node"], ids=["elsewhere", "here"])
def test_a_non_idempotent_step_stops_with_its_drivers_lease(
    daemons: Daemons, tmp_path: Path, wait_for: Callable[..., Any], where: str
) -> None:
    lease_timeout = 4.0
    marks = tmp_path / "marks"
    marks.mkdir()
    daemons.start_head()
    n1 = daemons.start_node("n1", "127.0.0.2")
    (marks / "paid.go").touch()
    # The driver attaches to the head's node (its lease beacon is in that node's session
    # directory); its steps are placed on n1, which follows the beacon over gRPC, or on
    # the head's node, which reads the beacon itself.
    target = n1 if where == "another node" else "here"
    driver = daemons.spawn_driver(
        LEASED_DRIVER, home="driver", args=(str(marks), str(lease_timeout), target)
    )

    # It runs where it was placed, and its workflow succeeds.
    wait_for(
        lambda: (marks / "paid.result").exists() or driver.poll() is not None,
        120,
        what="the first workflow to finish",
    )
    assert driver.poll() is None, driver.communicate()
    driver_node, ran_on = (marks / "paid.result").read_text().split()
    assert (ran_on == n1 != driver_node) if where == "another node" else ran_on == driver_node

    # The driver stops renewing its lease (SIGSTOP) while the second one's step runs:
    # the step's worker dies before the lease can expire.
    wait_for(lambda: (marks / "frozen.pid").exists(), 60, what="the second step to start")
    pid = int((marks / "frozen.pid").read_text().split()[0])
    wait_for(lambda: (marks / "frozen.ticks").exists(), 30, what="the step to tick")
    os.kill(driver.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: _gone(pid), lease_timeout + 10, what="the step's worker to stop")
        took = time.monotonic() - stopped
        ticks = (marks / "frozen.ticks").read_text()
        # The lease was last renewed before the stop: it expires at most lease_timeout
        # after it (the polling here adds its interval).
        assert took < lease_timeout + 0.5, took
        assert (marks / "frozen.ticks").read_text() == ticks  # nothing runs any more
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
