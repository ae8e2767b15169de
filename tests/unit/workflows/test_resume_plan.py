"""plan_resume: what a resume does with each step, from lineage facts alone."""

from __future__ import annotations

import pytest

from heliostat.storage.checkpoints import inline_ref
from heliostat.storage.states import StepStatus
from heliostat.workflows.resume_plan import (
    InDoubt,
    Recommit,
    Rerun,
    Skip,
    StepFacts,
    plan_resume,
)

S = StepStatus


def _ref(task: str) -> object:
    return inline_ref("wf", task, 1, task.encode())


def _facts(status: StepStatus | None, *parents: str, **kw: object) -> StepFacts:
    kw.setdefault("idempotent", True)
    if status is S.SUCCESSFUL and "checkpoint" not in kw:
        kw["checkpoint"] = _ref("x")
    return StepFacts(parents=parents, status=status, **kw)  # type: ignore[arg-type]


def _kinds(plan: dict[str, object]) -> dict[str, str]:
    return {t: type(d).__name__ for t, d in plan.items()}


def test_committed_steps_are_skipped_and_the_rest_run() -> None:
    plan = plan_resume(
        {
            "a": _facts(S.SUCCESSFUL),
            "b": _facts(S.FAILED, "a"),
            "c": _facts(S.PENDING, "b"),
            "d": _facts(None, "c"),
        },
        output="d",
    )
    assert _kinds(plan) == {"a": "Skip", "b": "Rerun", "c": "Rerun", "d": "Rerun"}
    assert plan["b"].reason == "failed before; resume retries it"
    assert plan["a"].recorded is S.SUCCESSFUL


@pytest.mark.parametrize(
    ("idempotent", "found", "expected"),
    [
        (True, False, Rerun),
        (False, False, InDoubt),
        (True, True, Recommit),
        (False, True, Recommit),  # its output exists: it did finish, doubt or not
    ],
)
def test_an_interrupted_attempt(idempotent: bool, found: bool, expected: type) -> None:
    ref = _ref("b") if found else None
    plan = plan_resume(
        {
            "a": _facts(S.SUCCESSFUL),
            "b": _facts(S.RUNNING, "a", idempotent=idempotent, found=ref),
        },
        output="b",
    )
    assert type(plan["b"]) is expected
    assert plan["b"].recorded_idempotent is idempotent
    if found:
        assert plan["b"].checkpoint == ref


def test_in_doubt_stays_in_doubt() -> None:
    plan = plan_resume({"a": _facts(S.IN_DOUBT, idempotent=False)}, output="a")
    assert plan["a"] == InDoubt(
        recorded=S.IN_DOUBT, recorded_idempotent=False, reason="still in doubt"
    )


def test_an_uncheckpointed_output_reruns_only_when_something_needs_it() -> None:
    facts = {
        "cheap": _facts(S.SUCCESSFUL, checkpoint=None),
        "used": _facts(S.SUCCESSFUL, "cheap"),
        "next": _facts(S.FAILED, "used"),
        "cheap2": _facts(S.SUCCESSFUL, checkpoint=None),
        "reader": _facts(S.FAILED, "cheap2"),
        "out": _facts(None, "next", "reader"),
    }
    plan = plan_resume(facts, output="out")
    assert isinstance(plan["cheap"], Skip)  # its only consumer is committed
    assert plan["cheap"].checkpoint is None
    assert isinstance(plan["cheap2"], Rerun)  # "reader" runs again and reads it
    assert plan["cheap2"].reason == "its output was not checkpointed and is needed"


def test_a_chain_of_uncheckpointed_steps_reruns_back_to_a_checkpoint() -> None:
    facts = {
        "a": _facts(S.SUCCESSFUL),
        "b": _facts(S.SUCCESSFUL, "a", checkpoint=None),
        "c": _facts(S.SUCCESSFUL, "b", checkpoint=None),
        "d": _facts(S.RUNNING, "c"),
    }
    assert _kinds(plan_resume(facts, output="d")) == {
        "a": "Skip",
        "b": "Rerun",
        "c": "Rerun",
        "d": "Rerun",
    }


def test_the_output_step_without_checkpoint_reruns() -> None:
    plan = plan_resume({"a": _facts(S.SUCCESSFUL, checkpoint=None)}, output="a")
    assert isinstance(plan["a"], Rerun)


def test_continued_steps_stand_for_their_sub_dag() -> None:
    facts = {
        "gen": _facts(S.SUCCESSFUL, continued=True),
        "gen.sub": _facts(S.SUCCESSFUL, checkpoint=None),
        "gen.out": _facts(S.RUNNING, "gen.sub"),
        "after": _facts(None, "gen"),
    }
    plan = plan_resume(facts, output="after", alias={"gen": "gen.out"})
    assert _kinds(plan) == {
        "gen": "Skip",
        "gen.sub": "Rerun",  # gen.out re-runs and reads it
        "gen.out": "Rerun",
        "after": "Rerun",
    }


def test_deep_graphs_do_not_recurse() -> None:
    n = 5_000
    facts = {f"s{i}": _facts(S.SUCCESSFUL, *([f"s{i - 1}"] if i else [])) for i in range(n)}
    facts[f"s{n}"] = _facts(S.RUNNING, f"s{n - 1}")
    plan = plan_resume(facts, output=f"s{n}")
    assert sum(isinstance(d, Skip) for d in plan.values()) == n
