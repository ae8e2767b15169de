"""Resume planning: what a resumed run does with each step, decided from lineage alone.

:func:`plan_resume` is pure (compare :func:`heliostat.scheduler.cron.plan_fires`): the
caller gathers the facts, the step rows of the lineage database and, for steps caught
mid-attempt, whether that attempt left a complete checkpoint behind, and gets one
decision per step:

* :class:`Skip`: committed; not run again, its consumers read its checkpoint.
* :class:`Recommit`: its attempt finished and wrote its checkpoint, but the driver died
  before the COMMIT: commit it now, do not run it.
* :class:`Rerun`: run it (again): it never ran, it failed before, its idempotent
  attempt was interrupted, or its output was not checkpointed and is needed again.
* :class:`InDoubt`: a non-idempotent step's attempt was interrupted, so it may or may
  not have done its work: only its ``on_in_doubt`` hook or a person may settle it.

A step's idempotency is the one recorded when it ran, not the resuming code's: an
attempt made as non-idempotent stays in doubt even if the step is now declared
idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from heliostat.storage.checkpoints import CheckpointRef
from heliostat.storage.states import StepStatus

__all__ = [
    "Decision",
    "InDoubt",
    "Recommit",
    "Rerun",
    "Skip",
    "StepFacts",
    "plan_resume",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFacts:
    """What lineage says about one step, as :func:`plan_resume` needs it.

    Attributes:
        parents: the steps whose outputs it takes.
        status: its recorded status; ``None`` if the lineage has no row for it.
        idempotent: as recorded (as declared, for a step with no row).
        checkpoint: its committed output, if any (``None`` for ``checkpoint=False``).
        continued: its output is a continuation (a sub-DAG that stands in for it).
        found: the checkpoint its latest attempt left without a COMMIT, if any.
    """

    parents: tuple[str, ...]
    status: StepStatus | None
    idempotent: bool
    checkpoint: CheckpointRef | None = None
    continued: bool = False
    found: CheckpointRef | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    """Committed: keep its output (``checkpoint``; ``None`` if it was not checkpointed
    and nothing needs it)."""

    recorded: StepStatus | None
    recorded_idempotent: bool | None
    checkpoint: CheckpointRef | None
    reason: str = "committed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommit:
    """Its interrupted attempt did finish: commit ``checkpoint`` without running it."""

    recorded: StepStatus | None
    recorded_idempotent: bool | None
    checkpoint: CheckpointRef
    reason: str = "finished before the crash; committed from its checkpoint"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rerun:
    """Run it (again); ``reason`` says why."""

    recorded: StepStatus | None
    recorded_idempotent: bool | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InDoubt:
    """It may or may not have done its work: settle it before going on."""

    recorded: StepStatus | None
    recorded_idempotent: bool | None
    reason: str


Decision = Skip | Recommit | Rerun | InDoubt


def _reverse_topological(facts: Mapping[str, StepFacts]) -> list[str]:
    """Task ids, every step before its parents (iterative: graphs can be deep)."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in facts:
        if root in state:
            continue
        stack = [(root, iter(facts[root].parents))]
        state[root] = 1
        while stack:
            node, parents = stack[-1]
            for parent in parents:
                if parent in facts and parent not in state:
                    state[parent] = 1
                    stack.append((parent, iter(facts[parent].parents)))
                    break
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    order.reverse()
    return order


def plan_resume(
    facts: Mapping[str, StepFacts],
    *,
    output: str,
    alias: Mapping[str, str] | None = None,
) -> dict[str, Decision]:
    """Decide what a resumed run does with each step.

    Args:
        facts: every step of the workflow (continuations' sub-steps included).
        output: the workflow's output step.
        alias: continued step -> the output step of the sub-DAG that stands for it.

    Returns:
        One decision per step of ``facts``.
    """
    alias = alias or {}

    def resolve(task_id: str) -> str:
        while task_id in alias:
            task_id = alias[task_id]
        return task_id

    consumers: dict[str, list[str]] = {t: [] for t in facts}
    for task_id, f in facts.items():
        for parent in f.parents:
            consumers.setdefault(resolve(parent), []).append(task_id)
    for continued, sub_output in alias.items():  # a continued step's consumers read its sub-output
        consumers.setdefault(resolve(sub_output), []).extend(consumers.get(continued, []))
    final_output = resolve(output)

    plan: dict[str, Decision] = {}
    for task_id in _reverse_topological(facts):  # consumers are decided first
        f = facts[task_id]
        rec, idem = f.status, (f.idempotent if f.status else None)
        status = f.status
        if status is StepStatus.SUCCESSFUL:
            if f.checkpoint is not None or f.continued:
                plan[task_id] = Skip(
                    checkpoint=f.checkpoint, recorded=rec, recorded_idempotent=idem
                )
                continue
            needed = task_id == final_output or any(
                not isinstance(plan.get(c), Skip) for c in consumers.get(task_id, [])
            )
            if needed:
                plan[task_id] = Rerun(
                    reason="its output was not checkpointed and is needed",
                    recorded=rec,
                    recorded_idempotent=idem,
                )
            else:
                plan[task_id] = Skip(checkpoint=None, recorded=rec, recorded_idempotent=idem)
        elif status is StepStatus.RUNNING:
            if f.found is not None:
                plan[task_id] = Recommit(checkpoint=f.found, recorded=rec, recorded_idempotent=idem)
            elif f.idempotent:
                plan[task_id] = Rerun(
                    reason="interrupted (its driver stopped); re-run",
                    recorded=rec,
                    recorded_idempotent=idem,
                )
            else:
                plan[task_id] = InDoubt(
                    reason="interrupted (its driver stopped); it may have done its work",
                    recorded=rec,
                    recorded_idempotent=idem,
                )
        elif status is StepStatus.IN_DOUBT:
            plan[task_id] = InDoubt(reason="still in doubt", recorded=rec, recorded_idempotent=idem)
        elif status is StepStatus.FAILED:
            plan[task_id] = Rerun(
                reason="failed before; resume retries it", recorded=rec, recorded_idempotent=idem
            )
        else:  # PENDING, SKIPPED, or no row yet
            plan[task_id] = Rerun(reason="not run yet", recorded=rec, recorded_idempotent=idem)
    return plan
