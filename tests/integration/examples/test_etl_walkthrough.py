"""The README's crash-and-resume walkthrough, followed in order right after ``make demo``.

The commands are read from the README itself (the ``sh`` block after the
``<!-- walkthrough: crash-and-resume -->`` marker), so the walkthrough and this test
cannot drift apart. Every command runs as a real subprocess in a private
``HELIOSTAT_HOME`` and ``TMPDIR``; each step's outcome is checked against what the
README promises.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
MARKER = "<!-- walkthrough: crash-and-resume -->"
TIMEOUT_S = 180

pytestmark = pytest.mark.slow


def walkthrough_commands(readme: str) -> list[str]:
    """The commands of the README's crash-and-resume block, comments dropped."""
    after = readme.split(MARKER, 1)[1]
    block = re.search(r"```sh\n(.*?)```", after, re.S)
    assert block is not None, f"no ```sh block after {MARKER} in README.md"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def demo_command(makefile: str) -> list[str]:
    """``make demo``'s recipe, as an argv for this interpreter."""
    recipe = re.search(r"^demo:.*\n\t(.+)$", makefile, re.M)
    assert recipe is not None, "no demo target in the Makefile"
    return _argv(recipe.group(1).replace("$(BIN)/", ".venv/bin/"))


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == ".venv/bin/python":
        return [sys.executable, *words[1:]]
    if words[0] == ".venv/bin/heliostat":
        return [sys.executable, "-m", "heliostat.cli", *words[1:]]
    raise AssertionError(f"unexpected command in the walkthrough: {command!r}")


@pytest.fixture
def world(tmp_path: Path, wait_for: Callable[..., Any]) -> Iterator[dict[str, str]]:
    # A short TMPDIR: a runtime's Unix socket lives under it (108-byte path limit).
    tmpdir = tempfile.mkdtemp(prefix="hsetl")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HELIOSTAT_DB_URL", "HELIOSTAT_STORAGE", "HELIOSTAT_SECRET_KEY")
    }
    env.update(HELIOSTAT_HOME=str(tmp_path / "home"), TMPDIR=tmpdir, PYTHONUNBUFFERED="1")
    env.pop("TERM", None)
    try:
        yield env
        # The killed driver's fork server removes its session's files, and a clean
        # shutdown does too: nothing of any run is left behind.
        wait_for(
            lambda: not any(Path(tmpdir).glob("heliostat-*")),
            timeout=30,
            what=f"the runtimes' session directories under {tmpdir} to be removed",
        )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def _run_id(output: str) -> str:
    found = re.search(r"\[etl\] starting workflow (\S+)", output)
    assert found is not None, f"no 'starting workflow' line in:\n{output}"
    return found.group(1)


def test_readme_crash_and_resume_walkthrough_works_after_make_demo(
    world: dict[str, str],
) -> None:
    readme = (REPO / "README.md").read_text()
    steps = walkthrough_commands(readme)
    assert [shlex.split(s)[:3] for s in steps] == [
        [".venv/bin/python", "-m", "examples.etl.pipeline"],
        [".venv/bin/heliostat", "workflow", "list"],
        [".venv/bin/python", "-m", "examples.etl.pipeline"],
    ], steps
    crash, listing, resume = steps
    assert "--crash-at load-2026-11-20" in crash and "--resume" in resume

    # make demo: a fresh run that succeeds.
    demo = _run(demo_command((REPO / "Makefile").read_text()), world)
    assert demo.returncode == 0, demo.stderr
    demo_id = _run_id(demo.stdout)
    assert f"[etl] workflow {demo_id}: SUCCESSFUL" in demo.stdout

    # 1. --crash-at takes effect on a fresh run: the driver is killed by SIGKILL.
    crashed = _run(_argv(crash), world)
    assert crashed.returncode == -signal.SIGKILL, (crashed.stdout, crashed.stderr)
    crash_id = _run_id(crashed.stdout)
    assert crash_id != demo_id
    assert "--crash-at load-2026-11-20: killing the driver now" in crashed.stderr

    # 2. The list shows the crashed run RESUMABLE, the demo's SUCCESSFUL.
    listed = _run(_argv(listing), world)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:]}
    assert rows == {crash_id: "RESUMABLE", demo_id: "SUCCESSFUL"}, listed.stdout

    # 3. --resume goes on with that run: the in-flight load is in doubt, and its hook
    # finds it in the warehouse's load log instead of loading it twice.
    resumed = _run(_argv(resume), world)
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert f"workflow {crash_id} exists (RESUMABLE): going on with it" in resumed.stdout
    assert (
        f"[etl] {crash_id}:load-2026-11-20 was loaded before the crash: not loading again"
        in resumed.stdout
    )
    assert f"[etl] workflow {crash_id}: SUCCESSFUL" in resumed.stdout
    warehouse = Path(world["HELIOSTAT_HOME"]) / "examples" / "etl" / "warehouse.sqlite"
    with sqlite3.connect(warehouse) as db:
        logged = db.execute("SELECT idempotency_key FROM load_log").fetchall()
        revenue_rows = db.execute("SELECT COUNT(*) FROM daily_revenue").fetchone()[0]
    days = [f"2026-11-{d}" for d in range(17, 22)]
    assert sorted(k for (k,) in logged) == sorted(
        f"{wid}:load-{day}" for wid in (demo_id, crash_id) for day in days
    )
    assert revenue_rows == 5 * 4  # five days, four regions, upserted

    # Asking the finished demo run to crash is refused, not silently ignored.
    refused = _run([*_argv(crash), "--workflow-id", demo_id], world)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "cannot take effect" in refused.stderr and demo_id in refused.stderr
