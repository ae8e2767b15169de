"""The web UI end to end in a real headless Chromium (Debian's, driven by Playwright).

Everything is real: the workflows run through ``heliostat run`` in subprocesses, the UI
is ``heliostat ui`` in a subprocess on a free port, and the browser clicks its pages.
The scenario: a workflow whose middle step fails because a flag file is missing is
found by search, opened, its failed step seen in the failed colour and its traceback on
the step page; the flag is created, Resume clicked, and the DAG turns green without a
reload; a schedule is triggered from its page. Screenshots of every page are saved
under the test's tmp dir.

Without Chromium or Playwright the test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_S = 120

FLOWS = """
import os
from pathlib import Path

import heliostat as hs
from heliostat import workflow


@hs.remote
def extract(n):
    import pandas as pd

    return pd.DataFrame({"day": [f"2026-11-{i % 28 + 1:02d}" for i in range(n)],
                         "region": ["eu", "us", "apac"] * (n // 3) + ["eu"] * (n % 3),
                         "amount": [round(i * 1.75, 2) for i in range(n)]})


@hs.remote
def transform(df, flag):
    if not Path(flag).exists():
        raise FileNotFoundError(f"the flag file {flag} is missing")
    return len(df)


@hs.remote
def load(n):
    return n * 10


def build(flag):
    return load.bind(transform.bind(extract.bind(90), flag))


@hs.remote
def source():
    return 1


@hs.remote
def part(x, i):
    return x + i


@hs.remote
def clean(x):
    return x


@hs.remote
def combine(*xs):
    return sum(xs)


@hs.remote
def report(total, *extra):
    return total


def wide():
    src = source.bind()
    cleaned = clean.bind(src)
    parts = [part.bind(cleaned, i) for i in range(190)]
    side = [clean.options(name=f"audit_{i}").bind(src) for i in range(4)]
    return report.bind(combine.bind(*parts), *side)


def nightly(logical_time):
    return load.bind(1)


@hs.remote
def charge(x, flag):
    # Not idempotent: its worker dies before it can report, so nobody knows if it paid.
    with open(flag + ".log", "a") as log:
        print("charged", file=log)
    if not os.path.exists(flag):
        os._exit(1)
    return x * 100


def billing(flag):
    step = workflow.options(task_id="charge", idempotent=False)
    return charge.options(**step).bind(load.bind(1), flag)
"""


def _need_browser() -> Any:
    why = None
    if not os.path.exists(CHROMIUM):
        why = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "playwright is not installed (pip install playwright)"
        sync_playwright = None
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser tests must run under CI: {why}")
        pytest.skip(why)
    return sync_playwright


class World:
    """A private heliostat home, module directory and TMPDIR for the commands."""

    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.root = root
        self.mods = root / "mods"
        self.mods.mkdir()
        (self.mods / "uiflows.py").write_text(textwrap.dedent(FLOWS))
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("HELIOSTAT_DB_URL", "HELIOSTAT_STORAGE", "HELIOSTAT_TOKEN")
        }
        self.env.update(
            HELIOSTAT_HOME=str(root / "home"),
            TMPDIR=str(tmpdir),
            PYTHONPATH=os.pathsep.join(
                [str(self.mods), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "heliostat.cli", *args],
            cwd=self.mods,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    tmpdir = Path(tempfile.mkdtemp(prefix="hsui"))  # short: runtimes' sockets live here
    try:
        yield World(tmp_path, tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture
def server(world: World) -> Iterator[str]:
    """``heliostat ui --port 0`` started for real; its URL. Stopped with SIGTERM (exit 0)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "heliostat.cli", "ui", "--port", "0"],
        cwd=world.mods,
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        yield line.split()[3].rstrip("/")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        assert code == 0, proc.stderr.read() if proc.stderr else code


def test_browse_fix_resume_and_trigger(world: World, server: str, tmp_path: Path) -> None:
    sync_playwright = _need_browser()
    flag = world.root / "flag"
    failed = world.run(
        "run", "uiflows:build", f"flag={flag}", "--id", "e2e-etl-1121", "--num-cpus", "2"
    )
    assert failed.returncode == 1, failed.stderr
    wide = world.run("run", "uiflows:wide", "--id", "wide-200", "--num-cpus", "2")
    assert wide.returncode == 0, wide.stderr
    added = world.run(
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Paris",
        "--target",
        "uiflows:nightly",
    )
    assert added.returncode == 0, added.stderr
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(90_000)  # a loaded CI machine
            page.goto(f"{server}/workflows")
            page.screenshot(path=str(shots / "workflows.png"), full_page=True)
            assert page.locator(".wf-table tbody tr").count() == 2

            # Search, open.
            page.fill("input[name=search]", "e2e-etl")
            page.click("form.filters button")
            page.wait_for_url("**/workflows?search=e2e-etl*")
            rows = page.locator(".wf-table tbody tr")
            assert rows.count() == 1
            page.click("a.wid:has-text('e2e-etl-1121')")
            page.wait_for_selector("svg.dag")
            box = page.locator("svg.dag a[data-task=transform]")
            assert "st-FAILED" in (box.get_attribute("class") or "")
            fill = box.locator("rect").evaluate("r => getComputedStyle(r).stroke")
            assert fill == "rgb(220, 38, 38)"  # the failed colour, --fail
            page.screenshot(path=str(shots / "workflow_failed.png"), full_page=True)

            # The step page: its traceback.
            box.click()
            page.wait_for_selector("pre.traceback")
            assert "FileNotFoundError" in page.inner_text("pre.traceback")
            page.screenshot(path=str(shots / "step_failed.png"), full_page=True)
            page.go_back()
            page.wait_for_selector("svg.dag")

            # Fix the cause, resume, and watch the DAG turn green without a reload.
            flag.touch()
            page.click("button:has-text('Resume')")
            page.wait_for_url("**watch=1**")
            page.evaluate("window.__sameDocument = true")
            page.wait_for_selector(
                "svg.dag a[data-task=load].st-SUCCESSFUL", timeout=TIMEOUT_S * 1000
            )
            assert page.evaluate("window.__sameDocument === true")  # no reload happened
            assert page.locator("svg.dag .box.st-FAILED").count() == 0
            page.screenshot(path=str(shots / "workflow_resumed.png"), full_page=True)

            # A step with a table preview.
            page.click("svg.dag a[data-task=extract]")
            page.wait_for_selector("table.preview")
            assert page.locator("table.preview tbody tr").count() == 50
            page.screenshot(path=str(shots / "step_table.png"), full_page=True)

            # The 200-step DAG.
            page.goto(f"{server}/workflows/wide-200")
            page.wait_for_selector("svg.dag .box.group")
            assert "\u00d7190" in (page.text_content("svg.dag") or "")
            page.screenshot(path=str(shots / "workflow_200.png"))

            # Pan and zoom: the wheel and a drag move the drawing (its viewBox).
            page.wait_for_selector("[data-panzoom][data-ready]")
            view = "() => { const b = document.querySelector('svg.dag').viewBox.baseVal;"
            before = page.evaluate(view + " return [b.x, b.y, b.width]; }")
            wrap = page.locator(".dag-wrap").bounding_box()
            assert wrap is not None
            cx, cy = wrap["x"] + wrap["width"] / 2, wrap["y"] + wrap["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.wheel(0, 400)  # out
            page.wait_for_function(
                view + f" return b.width > {before[2] * 1.1}; }}", timeout=10_000
            )
            zoomed = page.evaluate(view + " return [b.x, b.y, b.width]; }")
            page.mouse.move(cx + 40, cy + 40)  # off the boxes: a drag, not a click
            page.mouse.down()
            page.mouse.move(cx - 160, cy - 20, steps=6)
            page.mouse.up()
            page.wait_for_function(view + f" return b.x > {zoomed[0] + 50}; }}", timeout=10_000)
            assert page.url.endswith("/workflows/wide-200")  # a drag opens nothing

            # The folded fan-out unfolds on a click: its 190 steps, each its own box.
            page.click("svg.dag a.group")
            page.wait_for_url("**/workflows/wide-200?expand=*")
            page.wait_for_selector("svg.dag a[data-task=part_189]")
            assert page.locator("svg.dag a[data-task^=part]").count() == 190
            assert page.locator("svg.dag a.group").count() == 0
            page.click("text=Fold groups again")
            page.wait_for_selector("svg.dag a.group")

            # Trigger a schedule from its page.
            page.goto(f"{server}/schedules/nightly")
            page.click("button:has-text('Trigger now')")
            page.wait_for_selector(".flash")
            assert "Triggered nightly" in page.inner_text(".flash")
            assert "nightly@manual-" in page.inner_text(".run-row")
            page.screenshot(path=str(shots / "schedule.png"), full_page=True)
            page.goto(f"{server}/schedules")
            page.screenshot(path=str(shots / "schedules.png"), full_page=True)
            page.goto(f"{server}/runtime")
            page.screenshot(path=str(shots / "runtime.png"), full_page=True)
        finally:
            browser.close()
    listed = world.run("workflow", "status", "e2e-etl-1121")
    assert "SUCCESSFUL" in listed.stdout, listed


def test_in_doubt_banner_resolves_with_a_click(world: World, server: str, tmp_path: Path) -> None:
    """A non-idempotent step left in doubt gets the banner; answering "it did: use this
    result" settles it (the step turns green, the banner's choices go), and Resume then
    finishes the run with that result, without running the step again."""
    sync_playwright = _need_browser()
    flag = world.root / "charged"
    stuck = world.run("run", "uiflows:billing", f"flag={flag}", "--id", "wf-bill")
    assert stuck.returncode == 1 and "NEEDS_ATTENTION" in stuck.stdout, stuck
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(90_000)
            page.goto(f"{server}/workflows/wf-bill")
            banner = page.locator(".banner.attention")
            assert "Needs attention" in banner.inner_text()
            assert banner.locator("button:has-text('It did not: run it again')").count() == 1
            assert "st-IN_DOUBT" in (
                page.locator("svg.dag a[data-task=charge]").get_attribute("class") or ""
            )
            page.screenshot(path=str(tmp_path / "in_doubt.png"), full_page=True)

            banner.locator("input[name=result]").fill("200")
            banner.locator("button:has-text('It did: use this result')").click()
            page.wait_for_selector(".flash")
            assert "Step charge resolved" in page.inner_text(".flash")
            page.wait_for_selector("svg.dag a[data-task=charge].st-SUCCESSFUL")
            assert page.locator(".banner.attention .resolve").count() == 0

            page.click("button:has-text('Resume')")
            page.wait_for_selector(".head-row .badge.st-SUCCESSFUL", timeout=TIMEOUT_S * 1000)
            page.screenshot(path=str(tmp_path / "resolved.png"), full_page=True)
        finally:
            browser.close()
    output = world.run("workflow", "output", "wf-bill")
    assert output.returncode == 0 and output.stdout.strip() == "200", output
    assert (Path(str(flag) + ".log")).read_text() == "charged\n"  # not charged twice
