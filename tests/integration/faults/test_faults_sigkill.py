"""SIGKILL campaign: drivers killed at random moments, resumed by fresh drivers.

Each driver runs two workflows at once, a chain and a fan-out, each mixing idempotent
steps with non-idempotent ones whose ``on_in_doubt`` hook looks the idempotency key up
in the side-effect ledger (the recorded value if the effect happened, else RERUN). The
test SIGKILLs the driver at a random moment (after a random number of new attempts,
plus a random delay), checks that its fork server and workers died with it, notes
which steps had a COMMIT record at that moment, and starts a fresh driver, which
resumes both. When a round's workflows succeed, a new round starts with new ids, until
the campaign's kills are spent; a last driver then runs the round to the end.

Checked, from the side-effect logs: a step committed at the moment of a kill never ran
again; no attempt ran twice (a line per attempt number); every attempt that ran had its
INTENT committed first; each non-idempotent step's effect happened exactly once per
idempotency key; the outputs are right; each step has exactly one COMMIT.

``HELIOSTAT_FAULT_CAMPAIGN=200`` runs 200 kills per backend (default: 3);
``HELIOSTAT_FAULT_SEED`` replays a campaign (the seed is printed and named in failures).
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from faultlab import (
    Driver,
    Lab,
    chain,
    expected_output,
    fanout,
    poll,
    workflow_cfg,
)

from heliostat.storage.models import WalRecord, Workflow

KILLS = int(os.environ.get("HELIOSTAT_FAULT_CAMPAIGN") or 3)
SEED = int(os.environ.get("HELIOSTAT_FAULT_SEED") or random.SystemRandom().randrange(2**32))

CHAIN = chain("c", 8, non_idempotent=lambda i: i % 3 == 1, pre=0.04, post=0.04)
FAN = fanout("f", 6, non_idempotent=lambda i: i % 2 == 1, pre=0.04, post=0.04)
STEPS_PER_ROUND = len(CHAIN[0]) + len(FAN[0])


@dataclass
class Kill:
    """What the lineage held when a driver was killed."""

    lines: int  # side-effect log lines written by then
    committed: dict[str, set[str]]  # workflow id -> task ids with a COMMIT


@dataclass
class Round:
    number: int
    wids: dict[str, tuple[list[dict[str, Any]], str]] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)

    def configs(self) -> list[dict[str, Any]]:
        return [workflow_cfg(wid, spec) for wid, spec in self.wids.items()]


def _new_round(number: int) -> Round:
    return Round(number, {f"chain-{number}": CHAIN, f"fan-{number}": FAN})


def _reached(lab: Lab, driver: Driver, lines: int) -> bool:
    return len(lab.attempts()) >= lines or not driver.alive()


def _finished(driver: Driver) -> dict[str, Any] | None:
    for line in driver.text().splitlines():
        if line.startswith("RESULT "):
            # another thread's log line can land between the JSON and its newline
            value, _end = json.JSONDecoder().raw_decode(line.removeprefix("RESULT "))
            return dict(value)
    return None


def _check_round(lab: Lab, rnd: Round, result: dict[str, Any], where: str) -> None:
    """Everything a finished round must satisfy (see the module docstring)."""
    for wid, spec in rnd.wids.items():
        assert result.get(wid) == {"value": expected_output(*spec)}, f"{where}: {wid}: {result}"
    attempts = [a for a in lab.attempts() if a.wid in rnd.wids]
    all_lines = lab.attempts()
    # No attempt number ran twice.
    numbered = Counter((a.wid, a.task_id, a.attempt) for a in attempts)
    dupes = [k for k, n in numbered.items() if n > 1]
    assert not dupes, f"{where}: attempts that ran twice: {dupes}"
    # A step committed when a driver was killed never ran again.
    for kill in rnd.kills:
        again = [
            (a.wid, a.task_id, a.attempt)
            for a in all_lines[kill.lines :]
            if a.task_id in kill.committed.get(a.wid, set())
        ]
        assert not again, f"{where}: committed steps re-ran after a kill: {again}"
    with lab.engine() as engine, engine.connect() as conn:
        for wid, (steps, _) in rnd.wids.items():
            status = conn.execute(
                sa.select(Workflow.status).where(Workflow.workflow_id == wid)
            ).scalar_one()
            assert status == "SUCCESSFUL", f"{where}: {wid} is {status}"
            wal = conn.execute(
                sa.select(WalRecord.task_id, WalRecord.attempt, WalRecord.kind).where(
                    WalRecord.workflow_id == wid
                )
            ).all()
            commits = Counter(t for t, _, kind in wal if kind == "COMMIT")
            assert commits == Counter({s["task_id"]: 1 for s in steps}), f"{where}: {wid}"
            intents = {(t, a) for t, a, kind in wal if kind == "INTENT"}
            ran = {(a.task_id, a.attempt) for a in attempts if a.wid == wid}
            assert ran <= intents, f"{where}: attempts without an INTENT: {ran - intents}"
    # Each non-idempotent effect happened exactly once per idempotency key.
    effects = Counter(key for key, _ in lab.ledger())
    for wid, (steps, _) in rnd.wids.items():
        for s in steps:
            if not s["idempotent"]:
                key = f"{wid}:{s['task_id']}"
                assert effects[key] == 1, f"{where}: effect of {key} happened {effects[key]}x"


@pytest.mark.slow
@pytest.mark.timeout(max(300, KILLS * 30))  # a long campaign is not a hang
def test_sigkill_campaign_never_reruns_committed_steps_nor_repeats_side_effects(
    lab: Lab, backend: str
) -> None:
    rng = random.Random(f"{SEED}-{backend}")
    print(f"SIGKILL campaign: seed {SEED}, {KILLS} kills on {backend}")
    where = f"[HELIOSTAT_FAULT_SEED={SEED} backend={backend}]"
    rnd = _new_round(0)
    rounds = [rnd]
    kills = 0
    while True:
        driver = lab.start(rnd.configs())
        if kills >= KILLS:
            _check_round(lab, rnd, driver.result(), f"{where} round {rnd.number}")
            break
        # The moment: while it starts and plans (0 new attempts, up to 4 s), or a
        # little after its n-th new attempt started (n past the round's end: the
        # round may finish first, and the next one starts).
        before = len(lab.attempts())
        offset = rng.randint(0, STEPS_PER_ROUND)
        target = before + offset
        delay = rng.uniform(0, 4.0) if offset == 0 else rng.uniform(0, 0.2)
        poll(
            functools.partial(_reached, lab, driver, target),
            90,
            f"{where} attempt line {target}",
        )
        if driver.alive():
            time.sleep(delay)  # the random moment of the kill (fault timing, not a wait)
            driver.kill()
            kills += 1
            rnd.kills.append(
                Kill(lines=len(lab.attempts()), committed={w: lab.committed(w) for w in rnd.wids})
            )
        result = _finished(driver)
        if result is None:
            assert driver.proc.returncode == -signal.SIGKILL, (
                f"{where}: driver exited with {driver.proc.returncode} and no result:\n"
                f"{driver.text()}"
            )
            continue  # killed mid-run: the next driver resumes the round
        _check_round(lab, rnd, result, f"{where} round {rnd.number}")
        rnd = _new_round(rnd.number + 1)
        rounds.append(rnd)
    assert kills == KILLS
    answers = Counter(answer for _, answer in lab.hook_calls())
    print(
        f"{kills} kills over {len(rounds)} rounds; {len(lab.attempts())} attempts ran; "
        f"in-doubt hooks: {answers['found']} found the effect, {answers['rerun']} re-ran"
    )
