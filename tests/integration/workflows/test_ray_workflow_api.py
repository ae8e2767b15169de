"""Ray Workflows API that ported programs rely on, with real local workers.

Each test follows Ray's documented behaviour: ``import ray.workflow`` works as a module,
``@workflow.options`` decorates a remote function, top-level DAG outputs and ObjectRefs
reach a step as values while nested ones reach it as refs, ``continuation`` outside a
workflow runs the DAG, ``get_output`` of a failed workflow raises its step's error,
``resume`` of an unknown workflow raises ``WorkflowNotResumableError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import (
    WorkflowError,
    WorkflowExecutionError,
    WorkflowNotResumableError,
    WorkflowOutputFailedError,
)
from heliostat.workflows import WorkflowStatus

pytestmark = pytest.mark.usefixtures("wf_home")


class ChargeDeclined(Exception):
    """A user's exception class, defined in the test module."""


@hs.remote
def value_of(x: Any) -> Any:
    return x


@hs.remote
def kinds(direct: Any, nested: list[Any], mapping: dict[str, Any]) -> tuple[str, ...]:
    return (
        type(direct).__name__,
        type(nested[0]).__name__,
        type(mapping["k"]).__name__,
    )


@hs.remote
def total_of_refs(refs: list[Any]) -> int:
    return sum(hs.get(refs))


@hs.remote
def multiply(a: int, b: int) -> int:
    return a * b


@hs.remote
def factorial(n: int) -> Any:
    if n <= 1:
        return 1
    return workflow.continuation(multiply.bind(n, factorial.bind(n - 1)))


@hs.remote
def decline(amount: int) -> None:
    raise ChargeDeclined(f"card declined for {amount}")


@hs.remote
def wait_for_file(path: str, value: Any) -> Any:
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


# --- import heliostat.workflow ------------------------------------------------------------


def test_workflow_is_one_module_under_every_import_form() -> None:
    import heliostat.workflow as imported
    from heliostat import workflow as attribute

    assert imported is attribute is hs.workflow is sys.modules["heliostat.workflow"]
    assert imported.__name__ == "heliostat.workflows"
    from heliostat.workflow.event_listener import EventListener

    assert EventListener is workflow.EventListener


def test_import_heliostat_alone_does_not_load_workflows() -> None:
    code = (
        "import sys, heliostat\n"
        "assert 'heliostat.workflows' not in sys.modules\n"
        "import heliostat.workflow as w\n"
        "import heliostat.workflows as ws\n"
        "assert w is ws is heliostat.workflow\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- @workflow.options --------------------------------------------------------------------


def test_options_decorates_a_remote_function(runtime: Runtime) -> None:
    @workflow.options(task_id="the_source", metadata={"owner": "ops"})
    @hs.remote
    def src() -> int:
        return 41

    assert workflow.run(value_of.bind(src.bind()), workflow_id="opt-deco") == 41
    assert workflow.get_output("opt-deco", task_id="the_source") == 41
    assert workflow.get_metadata("opt-deco", "the_source")["user_metadata"] == {"owner": "ops"}
    # .options(**workflow.options(...)) on top of the decorator still works, as in Ray.
    renamed = src.options(**workflow.options(task_id="renamed"))
    assert workflow.run(renamed.bind(), workflow_id="opt-deco-2") == 41
    assert workflow.get_output("opt-deco-2", task_id="renamed") == 41


def test_options_under_remote_is_refused() -> None:
    with pytest.raises(TypeError, match=r"above @hs\.remote"):

        @hs.remote
        @workflow.options(checkpoint=False)
        def f() -> None:
            return None

    with pytest.raises(TypeError, match="checkpoint"):
        workflow.options(checkpoint="no")


# --- arguments ------------------------------------------------------------------------------


def test_object_ref_argument_reaches_the_step_as_its_value_and_survives_resume(
    runtime: Runtime,
) -> None:
    ref = hs.put({"rows": 3})
    dag = value_of.bind(ref)
    assert workflow.run(dag, workflow_id="ref-direct") == {"rows": 3}
    # Stored by value: a second run of the same id needs no live ref.
    del ref
    assert workflow.run(value_of.bind(hs.put({"rows": 3})), workflow_id="ref-direct") == {"rows": 3}


def test_nested_dag_outputs_and_refs_reach_the_step_as_refs(runtime: Runtime) -> None:
    """Ray resolves top-level arguments only (Ray's workflow.run example does
    ``ray.get(bookings)`` on a list of bound steps)."""
    assert (
        workflow.run(
            total_of_refs.bind([value_of.bind(1), value_of.bind(2), hs.put(3)]), workflow_id="nest"
        )
        == 6
    )
    got = workflow.run(
        kinds.bind(value_of.bind(5), [value_of.bind(6)], {"k": hs.put(7)}), workflow_id="kinds"
    )
    assert got == ("int", "ObjectRef", "ObjectRef")


# --- continuations --------------------------------------------------------------------------


def test_continuation_runs_in_workflows_and_in_plain_execute(runtime: Runtime) -> None:
    assert workflow.run(factorial.bind(5), workflow_id="fact") == 120
    assert hs.get(factorial.bind(5).execute()) == 120
    # In the driver, outside any step, continuation() runs the DAG and returns its value.
    assert workflow.continuation(multiply.bind(6, 7)) == 42


# --- failures, output, resume ----------------------------------------------------------------


def test_get_output_of_a_failed_workflow_raises_the_steps_error(runtime: Runtime) -> None:
    with pytest.raises(WorkflowExecutionError) as ran:
        workflow.run(decline.bind(30), workflow_id="declined")
    with pytest.raises(WorkflowExecutionError) as got:
        workflow.get_output("declined")
    for err in (ran.value, got.value):
        assert isinstance(err.cause, ChargeDeclined)
        assert isinstance(err.__cause__, ChargeDeclined)
        assert "card declined for 30" in str(err)
        assert err.task_id == "decline"
    with pytest.raises(WorkflowExecutionError) as step:
        workflow.get_output("declined", task_id="decline")
    assert isinstance(step.value.cause, ChargeDeclined)
    with pytest.raises(WorkflowExecutionError):
        hs.get(workflow.get_output_async("declined"))


def test_get_output_async_waits_for_a_running_workflow(runtime: Runtime, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    running = workflow.run_async(wait_for_file.bind(str(gate), "done"), workflow_id="later")
    pending = workflow.get_output_async("later")
    ready, _ = hs.wait([pending], timeout=0.3)
    assert ready == []  # it cannot have an output before the step can finish
    gate.touch()
    assert hs.get(pending, timeout=60) == "done"
    assert hs.get(running) == "done"
    assert hs.get(workflow.get_output_async("later")) == "done"
    with pytest.raises(workflow.WorkflowNotFoundError):
        workflow.get_output_async("never-ran")


@hs.remote
def gated_countdown(n: int, gate: str) -> Any:
    # Steps "n-1" .. "0" exist only once the step before them has run (continuations).
    if n == 0:
        return hs.get(wait_for_file.remote(gate, "bottom"))
    nxt = gated_countdown.options(**workflow.options(task_id=str(n - 1)))
    return workflow.continuation(nxt.bind(n - 1, gate))


def test_get_output_async_of_a_step_waits_until_the_step_has_run(
    runtime: Runtime, tmp_path: Path
) -> None:
    # Ray: get_output_async(wid, task_id=...) completes when that task finishes, even a
    # task that is still running or that a continuation has not created yet.
    gate = tmp_path / "gate"
    top = gated_countdown.options(**workflow.options(task_id="3"))
    running = workflow.run_async(top.bind(3, str(gate)), workflow_id="countdown")
    steps = [workflow.get_output_async("countdown", task_id=str(i)) for i in range(4)]
    ready, _ = hs.wait(steps, num_returns=4, timeout=0.3)
    assert ready == []  # the bottom step cannot finish before the gate opens
    gate.touch()
    assert hs.get(steps, timeout=60) == ["bottom"] * 4
    assert hs.get(running) == "bottom"
    # Once the run is over, a step that never existed is an error at get().
    missing = workflow.get_output_async("countdown", task_id="no-such-step")
    with pytest.raises(workflow.WorkflowNotFoundError, match="no-such-step"):
        hs.get(missing, timeout=60)


def test_resume_of_an_unknown_workflow_is_not_resumable(runtime: Runtime) -> None:
    with pytest.raises(WorkflowNotResumableError, match="No workflow with id 'ghost'"):
        workflow.resume("ghost")
    with pytest.raises(WorkflowNotResumableError):
        workflow.resume_async("ghost")
    assert workflow.WorkflowNotResumableError is WorkflowNotResumableError
    # A successful workflow resumes to its stored output, as in Ray.
    assert workflow.run(value_of.bind(9), workflow_id="done-once") == 9
    assert workflow.resume("done-once") == 9


# --- workflow.init ------------------------------------------------------------------------------


def test_init_chooses_the_checkpoint_storage(
    fresh_runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_runtime()
    monkeypatch.setenv("HELIOSTAT_STORAGE", str(tmp_path / "from-env"))
    target = tmp_path / "chosen"
    workflow.init(storage=str(target))
    big = "x" * 100_000  # too large to be kept inline in SQL: a checkpoint file
    assert workflow.run(value_of.bind(big), workflow_id="stored-here") == big
    assert list(target.rglob("*")) and not (tmp_path / "from-env").exists()
    workflow.init(storage=str(target))  # the same storage again: fine
    workflow.init()  # nothing to change
    with pytest.raises(WorkflowError, match="already"):
        workflow.init(storage=str(tmp_path / "elsewhere"))


def test_init_checks_its_arguments(fresh_runtime: Any) -> None:
    fresh_runtime()
    with pytest.raises(TypeError, match="storage"):
        workflow.init(storage=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_running_workflows"):
        workflow.init(max_running_workflows="4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending_workflows=3"):
        workflow.init(max_pending_workflows=3)
    workflow.init(max_running_workflows=-1, max_pending_workflows=None)


def test_init_starts_the_runtime_when_there_is_none(tmp_path: Path) -> None:
    if hs.is_initialized():
        hs.shutdown()
    try:
        workflow.init(storage=str(tmp_path / "store"))
        assert hs.is_initialized()
        assert workflow.run(value_of.bind(1), workflow_id="auto-init") == 1
        assert workflow.get_status("auto-init") is WorkflowStatus.SUCCESSFUL
    finally:
        hs.shutdown()


def test_get_output_errors_are_value_errors_as_in_ray(runtime: Runtime) -> None:
    # Ray's get_output raises a ValueError for a failed workflow ("Cannot load output"),
    # whatever the step raised, and for a step the workflow does not have; a ported
    # ``except ValueError`` must still catch them.
    with pytest.raises(WorkflowExecutionError):
        workflow.run(decline.bind(5), workflow_id="declined-5")
    with pytest.raises(ValueError) as failed:
        workflow.get_output("declined-5")
    assert isinstance(failed.value, WorkflowOutputFailedError)
    assert isinstance(failed.value.cause, ChargeDeclined)  # not a ValueError itself
    with pytest.raises(ValueError):
        hs.get(workflow.get_output_async("declined-5"), timeout=60)
    assert workflow.run(value_of.bind(1), workflow_id="has-one-step") == 1
    with pytest.raises(ValueError, match="non_exist") as missing:
        workflow.get_output("has-one-step", task_id="non_exist")
    assert isinstance(missing.value, workflow.WorkflowNotFoundError)
    with pytest.raises(ValueError, match="non_exist"):
        hs.get(workflow.get_output_async("has-one-step", task_id="non_exist"), timeout=60)
    with pytest.raises(ValueError, match="no-such-workflow") as unknown:
        workflow.get_output("no-such-workflow")
    assert isinstance(unknown.value, workflow.WorkflowNotFoundError)


def test_duplicate_task_ids_get_suffixes_as_in_ray(runtime: Runtime) -> None:
    @workflow.options(task_id="f")
    @hs.remote
    def f(n: int, dep: Any) -> int:
        return n

    assert workflow.run(f.bind(20, f.bind(10, None)), workflow_id="duplicate") == 20
    assert workflow.get_output("duplicate", task_id="f") == 10  # upstream first
    assert workflow.get_output("duplicate", task_id="f_1") == 20
