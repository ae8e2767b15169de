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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    daemons: Daemons,
    pg_schema_url: Callable[[], str],
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
