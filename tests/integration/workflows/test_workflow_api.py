"""The ``heliostat.workflow`` API on SQLite, with real local workers.

Steps record their side effects as ``"<task_id> <attempt>"`` lines appended to a log
file (workers are other processes), so a test can tell exactly which step ran, and
which attempt, how many times.
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

import heliostat as hs
from heliostat import workflow
from heliostat.engine import Runtime
from heliostat.exceptions import (
    CorruptCheckpointError,
    WorkflowCancelledError,
    WorkflowExecutionError,
    WorkflowNeedsAttentionError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
)
from heliostat.storage.checkpoints import EXTENSIONS
from heliostat.storage.models import Step
from heliostat.workflows import StepStatus, WorkflowStatus
from heliostat.workflows import executor as executor_module
from heliostat.workflows.services import runtime_services

pytestmark = pytest.mark.usefixtures("wf_home")


# --- steps --------------------------------------------------------------------------------


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _mark(log: str) -> None:
    ctx = workflow.get_context()
    _append(log, f"{ctx.task_id} {ctx.attempt}")


def _wait_gate(gate: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@hs.remote
def source(log: str, value: Any) -> Any:
    _mark(log)
    return value


@hs.remote
def gather(log: str, refs: list[Any]) -> list[Any]:
    _mark(log)
    return list(hs.get(refs))


@hs.remote
def add(log: str, a: int, b: int) -> int:
    _mark(log)
    return a + b


@hs.remote
def times_ten_if_flag(log: str, flag: str, x: int) -> int:
    _mark(log)
    if not os.path.exists(flag):
        raise ValueError(f"flag {flag} is missing")
    return x * 10


@hs.remote
def flaky(log: str, succeed_on: int) -> str:
    _mark(log)
    attempt = workflow.get_context().attempt
    if attempt < succeed_on:
        raise ValueError(f"attempt {attempt} fails")
    return f"ok on {attempt}"


@hs.remote
def raises(log: str, exc: BaseException) -> None:
    _mark(log)
    raise exc


@hs.remote
def describe(pair: tuple[Any, BaseException | None]) -> tuple[Any, str | None, str | None]:
    result, exc = pair
    return result, type(exc).__name__ if exc is not None else None, str(exc) if exc else None


@hs.remote
def countdown(log: str, flag: str, n: int, acc: int) -> Any:
    _mark(log)
    if n == 0:
        if not os.path.exists(flag):
            raise ValueError("the innermost step fails until the flag exists")
        return acc
    return workflow.continuation(countdown.bind(log, flag, n - 1, acc + n))


@hs.remote
def context_probe(log: str, flag: str) -> str:
    ctx = workflow.get_context()
    _append(log, f"{ctx.workflow_id}|{ctx.task_id}|{ctx.attempt}|{ctx.idempotency_key}")
    if not os.path.exists(flag):
        raise ValueError(f"attempt {ctx.attempt} fails")
    return ctx.idempotency_key


@hs.remote
def gated(log: str, gate: str) -> str:
    _mark(log)
    if not _wait_gate(gate):
        raise TimeoutError("the test never opened the gate")
    return "through"


@hs.remote
def block(prev: Any, n: int) -> Any:
    """4 MB of output: always a checkpoint file, and an object in shared memory."""
    import numpy as np

    return np.full(500_000, float(n)) + (0.0 if prev is None else float(prev[0]))


@hs.remote
def gated_total(log: str, gate: str, values: Any) -> float:
    _mark(log)
    if not _wait_gate(gate):
        raise TimeoutError("the test never opened the gate")
    return float(values.sum())


@hs.remote
def make_table(log: str) -> pa.Table:
    _mark(log)
    return pa.table({"day": ["2026-11-21", "2026-11-22"], "rows": [3, 4]})


@hs.remote
def table_rows(table: pa.Table) -> int:
    return int(pa.compute.sum(table["rows"]).as_py())


@hs.remote
def make_frame(log: str) -> Any:
    import pandas as pd

    _mark(log)
    return pd.DataFrame({"day": ["2026-11-21", "2026-11-22"], "rows": [3, 4]})


@hs.remote
def crash_worker(log: str) -> None:
    _mark(log)
    with open(log + ".key", "w") as f:
        f.write(workflow.get_context().idempotency_key)
    os._exit(1)


# --- helpers ------------------------------------------------------------------------------


def _runs(log: Path) -> Counter[str]:
    """How many times each step ran (its lines in the side-effect log)."""
    if not log.exists():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text().splitlines() if line)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _opts(task_id: str, **kwargs: Any) -> dict[str, Any]:
    return workflow.options(task_id=task_id, **kwargs)


def _sum_dag(log: Path) -> Any:
    one = source.options(**_opts("one")).bind(str(log), 1)
    two = source.options(**_opts("two")).bind(str(log), 2)
    return add.options(**_opts("sum")).bind(str(log), one, two)


def _failing_dag(log: Path, flag: Path) -> Any:
    up = source.options(**_opts("up")).bind(str(log), 4)
    return times_ten_if_flag.options(**_opts("down")).bind(str(log), str(flag), up)


# --- run, status, output, metadata --------------------------------------------------------


def test_run_returns_output_and_status_successful(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"

    assert workflow.run(_sum_dag(log), workflow_id="sum") == 3

    assert workflow.get_status("sum") is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("sum") == 3
    assert workflow.get_output("sum", task_id="two") == 2
    assert _runs(log) == {"one": 1, "two": 1, "sum": 1}


def test_a_run_freezes_the_old_heap_only_while_it_goes_on(runtime: Runtime, tmp_path: Path) -> None:
    frozen_during: list[int] = []

    def progress(done: int, total: int, failed: int) -> None:  # called in the run
        frozen_during.append(gc.get_freeze_count())

    assert gc.get_freeze_count() == 0
    workflow.run(_sum_dag(tmp_path / "log"), workflow_id="heap", on_progress=progress)

    assert frozen_during and all(n > 0 for n in frozen_during)
    assert gc.get_freeze_count() == 0


def test_a_step_the_engine_refuses_to_submit_fails_the_run_instead_of_hanging(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: every submission after the first raises in .remote() (as an
    # unreadable input checkpoint or a refused task would). The attempt must fail like
    # a step that raised, retries included, and the run end FAILED, not wait forever.
    log = tmp_path / "log"
    real = hs.RemoteFunction.remote
    calls = Counter[str]()

    def refusing(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["submit"] += 1
        if calls["submit"] > 1:
            raise RuntimeError("injected: the engine refused the task")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(hs.RemoteFunction, "remote", refusing)
    dag = add.options(**_opts("sum")).bind(
        str(log), source.options(**_opts("one")).bind(str(log), 1), 2
    )

    with pytest.raises(WorkflowExecutionError, match="injected: the engine refused"):
        workflow.run(dag, workflow_id="refused")

    assert workflow.get_status("refused") is WorkflowStatus.FAILED
    assert workflow.get_metadata("refused", "one")["status"] == str(StepStatus.SUCCESSFUL)
    assert workflow.get_metadata("refused", "sum")["status"] == str(StepStatus.FAILED)
    assert _runs(log) == {"one": 1}


def test_run_of_a_finished_workflow_returns_stored_output_without_rerunning(
    runtime: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    workflow.run(_sum_dag(log), workflow_id="once")
    before = _lines(log)

    assert workflow.run(_sum_dag(log), workflow_id="once") == 3
    assert workflow.resume("once") == 3

    assert _lines(log) == before


def test_get_output_of_unknown_step_names_the_known_ones(runtime: Runtime, tmp_path: Path) -> None:
    workflow.run(_sum_dag(tmp_path / "log"), workflow_id="steps")

    with pytest.raises(WorkflowNotFoundError, match=r"'nope'.*one, sum, two"):
        workflow.get_output("steps", task_id="nope")


def test_get_metadata_of_workflow_and_step(runtime: Runtime, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    dag = add.options(**_opts("sum", metadata={"stage": "final"})).bind(
        log, source.options(**_opts("one")).bind(log, 1), 2
    )
    workflow.run(dag, workflow_id="meta", metadata={"owner": "ana"})

    wf = workflow.get_metadata("meta")
    assert wf["workflow_id"] == "meta"
    assert wf["status"] == "SUCCESSFUL"
    assert wf["user_metadata"] == {"owner": "ana"}
    assert wf["steps"] == 2
    assert wf["error"] is None
    assert wf["created_at"] <= wf["started_at"] <= wf["finished_at"]

    step = workflow.get_metadata("meta", "sum")
    assert step["task_id"] == "sum"
    assert step["name"] == "add"
    assert step["status"] == "SUCCESSFUL"
    assert step["attempts"] == 1
    assert step["user_metadata"] == {"stage": "final"}
    assert step["started_at"] <= step["finished_at"]
    assert step["checkpoint"] == "inline:meta/sum@1"  # a small output lives in SQL
    with pytest.raises(WorkflowNotFoundError, match="'nope'"):
        workflow.get_metadata("meta", "nope")


def test_list_all_with_and_without_status_filter(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    workflow.run(_sum_dag(log), workflow_id="good")
    with pytest.raises(WorkflowExecutionError):
        workflow.run(_failing_dag(log, tmp_path / "flag"), workflow_id="bad")

    everything = dict(workflow.list_all())
    assert everything == {"good": WorkflowStatus.SUCCESSFUL, "bad": WorkflowStatus.FAILED}
    assert workflow.list_all(WorkflowStatus.FAILED) == [("bad", WorkflowStatus.FAILED)]
    assert workflow.list_all("SUCCESSFUL") == [("good", WorkflowStatus.SUCCESSFUL)]
    assert dict(workflow.list_all([WorkflowStatus.FAILED, "SUCCESSFUL"])) == everything
    assert workflow.list_all(WorkflowStatus.RUNNING) == []


def test_delete_removes_rows_and_checkpoints(
    runtime: Runtime, tmp_path: Path, wf_home: Path
) -> None:
    table = make_table.options(**_opts("table")).bind(str(tmp_path / "log"))
    assert workflow.run(table_rows.options(**_opts("rows")).bind(table), workflow_id="gone") == 7
    location = workflow.get_metadata("gone", "table")["checkpoint"]
    checkpoint = Path(location.removeprefix("file://"))
    assert checkpoint.is_file()  # a table is always a file; the int total is inline in SQL
    assert workflow.get_metadata("gone", "rows")["checkpoint"] == "inline:gone/rows@1"

    workflow.delete("gone")

    assert not checkpoint.exists()
    assert [p for p in (wf_home / "checkpoints").rglob("*") if p.is_file()] == []
    assert workflow.list_all() == []
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("gone")


@pytest.mark.parametrize(
    "call",
    [
        workflow.get_status,
        workflow.get_output,
        workflow.get_metadata,
        workflow.cancel,
        workflow.delete,
    ],
    ids=lambda fn: fn.__name__,
)
def test_unknown_workflow_id_raises_not_found_naming_it(runtime: Runtime, call: Any) -> None:
    with pytest.raises(WorkflowNotFoundError, match="no-such-wf") as info:
        call("no-such-wf")
    assert info.value.workflow_id == "no-such-wf"


@pytest.mark.parametrize("call", [workflow.resume, workflow.resume_async], ids=lambda f: f.__name__)
def test_resume_of_an_unknown_id_is_not_resumable_because_not_found(
    runtime: Runtime, call: Any
) -> None:
    """Ray raises WorkflowNotResumableError; the not-found error is its cause."""
    with pytest.raises(WorkflowNotResumableError, match="no-such-wf") as info:
        call("no-such-wf")
    assert info.value.workflow_id == "no-such-wf"
    assert isinstance(info.value.__cause__, WorkflowNotFoundError)


def test_run_async_ref_resolves_to_the_output(runtime: Runtime, tmp_path: Path) -> None:
    ref = workflow.run_async(_sum_dag(tmp_path / "log"), workflow_id="async")

    assert hs.get(ref, timeout=60) == 3
    assert workflow.get_status("async") is WorkflowStatus.SUCCESSFUL


# --- failures, resume, retries ------------------------------------------------------------


def test_failed_step_then_resume_skips_committed_steps(runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"

    with pytest.raises(WorkflowExecutionError) as info:
        workflow.run(_failing_dag(log, flag), workflow_id="fix-me")

    assert info.value.workflow_id == "fix-me"
    assert info.value.task_id == "down"
    assert isinstance(info.value.cause, ValueError)
    assert "flag" in str(info.value)
    assert workflow.get_status("fix-me") is WorkflowStatus.FAILED
    assert "ValueError" in workflow.get_metadata("fix-me")["error"]
    down = workflow.get_metadata("fix-me", "down")
    assert (down["status"], down["attempts"]) == (str(StepStatus.FAILED), 1)
    assert "ValueError" in down["error"]
    assert workflow.get_metadata("fix-me", "up")["status"] == str(StepStatus.SUCCESSFUL)

    flag.touch()
    assert workflow.resume("fix-me") == 40

    assert workflow.get_status("fix-me") is WorkflowStatus.SUCCESSFUL
    assert _lines(log) == ["up 1", "down 1", "down 2"]
    assert workflow.get_metadata("fix-me")["resume_count"] == 1
    assert workflow.get_metadata("fix-me", "down")["error"] is None


def test_run_again_with_the_id_of_a_failed_workflow_resumes_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    with pytest.raises(WorkflowExecutionError):
        workflow.run(_failing_dag(log, flag), workflow_id="again")
    flag.touch()

    assert workflow.run(_failing_dag(log, flag), workflow_id="again") == 40

    assert _runs(log) == {"up": 1, "down": 2}


def test_retry_exceptions_retries_an_app_error_until_it_succeeds(
    runtime: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    dag = flaky.options(**_opts("flaky", max_retries=2, retry_exceptions=True)).bind(str(log), 3)

    assert workflow.run(dag, workflow_id="retry") == "ok on 3"

    assert _lines(log) == ["flaky 1", "flaky 2", "flaky 3"]
    assert workflow.get_metadata("retry", "flaky")["attempts"] == 3


def test_on_progress_counts_done_steps_and_failed_attempts(
    runtime: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    shaky = flaky.options(**_opts("flaky", max_retries=2, retry_exceptions=True)).bind(str(log), 2)
    dag = add.options(**_opts("sum")).bind(str(log), source.bind(str(log), 1), 0)
    dag = add.options(**_opts("total")).bind(str(log), dag, 0)
    calls: list[tuple[int, int, int]] = []

    # Nested in a list, the two outputs reach the step as refs (as in Ray).
    join = gather.options(**_opts("join")).bind(str(log), [shaky, dag])

    out = workflow.run(join, workflow_id="progress", on_progress=lambda *a: calls.append(a))

    assert out == ["ok on 2", 1]
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] == 5
    assert calls[-1][2] == 1  # flaky's first attempt failed, the retry did not


def test_retry_backoff_still_retries(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    opts = _opts("flaky", max_retries=2, retry_exceptions=(ValueError,), retry_backoff=0.01)

    assert workflow.run(flaky.options(**opts).bind(str(log), 3), workflow_id="backoff") == "ok on 3"

    assert _lines(log) == ["flaky 1", "flaky 2", "flaky 3"]


def test_retries_stop_after_max_retries(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    dag = flaky.options(**_opts("flaky", max_retries=1, retry_exceptions=True)).bind(str(log), 3)

    with pytest.raises(WorkflowExecutionError, match="attempt 2 fails"):
        workflow.run(dag, workflow_id="retry-out")

    assert _lines(log) == ["flaky 1", "flaky 2"]
    assert workflow.get_metadata("retry-out", "flaky")["attempts"] == 2


def test_app_errors_are_not_retried_by_default(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"

    with pytest.raises(WorkflowExecutionError):
        workflow.run(flaky.options(**_opts("flaky")).bind(str(log), 3), workflow_id="no-retry")

    assert _lines(log) == ["flaky 1"]


def test_retry_exceptions_as_classes_retries_only_those(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    dag = raises.options(**_opts("r", max_retries=3, retry_exceptions=(KeyError,))).bind(
        str(log), ValueError("not retried")
    )

    with pytest.raises(WorkflowExecutionError, match="not retried"):
        workflow.run(dag, workflow_id="typed")

    assert _lines(log) == ["r 1"]


def test_catch_exceptions_gives_result_or_exception(runtime: Runtime, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    caught = _opts("caught", catch_exceptions=True)
    failing = describe.bind(raises.options(**caught).bind(log, ValueError("bad input")))
    ok = describe.bind(source.options(**_opts("fine", catch_exceptions=True)).bind(log, 7))

    assert workflow.run(failing, workflow_id="catch-bad") == (None, "ValueError", "bad input")
    assert workflow.run(ok, workflow_id="catch-ok") == (7, None, None)
    assert workflow.get_status("catch-bad") is WorkflowStatus.SUCCESSFUL


def test_checkpoint_false_step_reruns_on_resume(runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    cheap = source.options(**_opts("cheap", checkpoint=False)).bind(str(log), 5)
    dag = times_ten_if_flag.options(**_opts("down")).bind(str(log), str(flag), cheap)
    with pytest.raises(WorkflowExecutionError):
        workflow.run(dag, workflow_id="cheap")
    assert workflow.get_metadata("cheap", "cheap")["checkpoint"] is None

    flag.touch()
    assert workflow.resume("cheap") == 50

    assert _runs(log) == {"cheap": 2, "down": 2}


# --- continuations ------------------------------------------------------------------------


def test_continuation_yields_the_sub_dag_output(runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    flag.touch()

    assert workflow.run(countdown.bind(str(log), str(flag), 3, 0), workflow_id="cont") == 6

    assert workflow.get_output("cont") == 6
    assert _runs(log) == {
        "countdown": 1,
        "countdown.countdown": 1,
        "countdown.countdown.countdown": 1,
        "countdown.countdown.countdown.countdown": 1,
    }
    assert workflow.get_metadata("cont")["steps"] == 4


def test_continuation_survives_resume(runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    dag = countdown.bind(str(log), str(flag), 2, 0)
    with pytest.raises(WorkflowExecutionError):
        workflow.run(dag, workflow_id="cont-resume")
    assert workflow.get_status("cont-resume") is WorkflowStatus.FAILED

    flag.touch()
    assert workflow.resume("cont-resume") == 3

    assert workflow.get_output("cont-resume") == 3
    assert _runs(log) == {
        "countdown": 1,
        "countdown.countdown": 1,
        "countdown.countdown.countdown": 2,
    }


# --- the step context ---------------------------------------------------------------------


def test_get_context_is_stable_across_attempts_and_resume(runtime: Runtime, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    dag = context_probe.options(**_opts("probe", max_retries=1, retry_exceptions=True)).bind(
        str(log), str(flag)
    )
    with pytest.raises(WorkflowExecutionError):
        workflow.run(dag, workflow_id="ctx")
    flag.touch()

    key = workflow.resume("ctx")

    seen = [line.split("|") for line in _lines(log)]
    assert [(wid, tid, attempt) for wid, tid, attempt, _ in seen] == [
        ("ctx", "probe", "1"),
        ("ctx", "probe", "2"),
        ("ctx", "probe", "3"),
    ]
    assert {k for *_, k in seen} == {key}
    assert key and "ctx" in key


# --- cancel -------------------------------------------------------------------------------


def test_cancel_stops_a_running_workflow(runtime: Runtime, tmp_path: Path, wait_for: Any) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    dag = source.options(**_opts("after")).bind(
        str(log), gated.options(**_opts("long")).bind(str(log), str(gate))
    )
    ref = workflow.run_async(dag, workflow_id="stop")
    try:
        wait_for(lambda: "long" in _runs(log), timeout=30, what="the long step to start")
        with pytest.raises(WorkflowNotFoundError, match="no stored output"):
            workflow.get_output("stop")

        workflow.cancel("stop")

        with pytest.raises(WorkflowCancelledError) as info:
            hs.get(ref, timeout=60)
        assert info.value.workflow_id == "stop"
        assert workflow.get_status("stop") is WorkflowStatus.CANCELED
        assert "after" not in _runs(log)
        with pytest.raises(WorkflowCancelledError):
            workflow.resume("stop")
    finally:
        gate.touch()  # never leave a worker blocked


def test_outputs_no_step_still_needs_are_let_go_while_the_workflow_runs(
    runtime: Runtime, tmp_path: Path, wait_for: Any
) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    node: Any = None
    for n in range(5):
        node = block.options(**_opts(f"b{n}")).bind(node, n)
    dag = gated_total.options(**_opts("total")).bind(str(log), str(gate), node)
    one = 500_000 * 8
    ref = workflow.run_async(dag, workflow_id="let-go")
    try:
        wait_for(lambda: "total" in _runs(log), timeout=60, what="the last step to start")
        # b0..b3 are consumed and checkpointed: only b4, the running step's input, is
        # still held. Holding them all would be 5 blocks.
        wait_for(
            lambda: runtime.manager.object_stats()["shm_bytes"] < 2 * one,
            timeout=30,
            what="consumed outputs to be freed",
        )
    finally:
        gate.touch()
    assert hs.get(ref, timeout=60) == 500_000 * 10.0  # b_n = n + b_(n-1): 0, 1, 3, 6, 10
    assert workflow.get_output("let-go", task_id="b2")[0] == 3.0  # read back from its file


# --- checkpoint formats and corruption ----------------------------------------------------


def test_arrow_table_output_is_checkpointed_as_arrow(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    table = make_table.options(**_opts("table")).bind(str(log))

    assert workflow.run(table_rows.bind(table), workflow_id="arrow") == 7

    location = workflow.get_metadata("arrow", "table")["checkpoint"]
    assert location.endswith("." + EXTENSIONS["arrow"])
    out = workflow.get_output("arrow", task_id="table")
    assert isinstance(out, pa.Table)
    assert out.equals(pa.table({"day": ["2026-11-21", "2026-11-22"], "rows": [3, 4]}))


def test_dataframe_output_is_checkpointed_as_parquet(runtime: Runtime, tmp_path: Path) -> None:
    import pandas as pd  # a dev dependency: missing, the test fails rather than skips

    frame = workflow.run(
        make_frame.options(**_opts("frame")).bind(str(tmp_path / "log")), workflow_id="pq"
    )

    assert workflow.get_metadata("pq", "frame")["checkpoint"].endswith("." + EXTENSIONS["parquet"])
    stored = workflow.get_output("pq")
    assert isinstance(stored, pd.DataFrame)
    pd.testing.assert_frame_equal(stored, frame)


def _corrupt(workflow_id: str, task_id: str, location: str) -> None:
    """Flip one byte of a step's checkpoint, in its file or in its SQL row."""
    if location.startswith("inline:"):
        steps = Step.__table__
        where = (steps.c.workflow_id == workflow_id) & (steps.c.task_id == task_id)
        services = runtime_services()
        assert services is not None
        with services.store().engine.begin() as conn:
            data = bytearray(
                conn.execute(sa.select(steps.c.output_inline).where(where)).scalar_one()
            )
            data[len(data) // 2] ^= 0xFF
            conn.execute(steps.update().where(where).values(output_inline=bytes(data)))
        return
    path = Path(location.removeprefix("file://"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kept", ["inline", "file"])
def test_corrupt_upstream_checkpoint_on_resume(
    runtime: Runtime, tmp_path: Path, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN §4 / the issue: a corrupt checkpoint is reported as such and, for an
    idempotent step, the step re-runs; whether it was kept in SQL or in a file."""
    if kept == "file":
        monkeypatch.setattr(executor_module, "INLINE_LIMIT", 0)
    log, flag = tmp_path / "log", tmp_path / "flag"
    with pytest.raises(WorkflowExecutionError):
        workflow.run(_failing_dag(log, flag), workflow_id="corrupt")
    location = workflow.get_metadata("corrupt", "up")["checkpoint"]
    assert location.startswith("inline:" if kept == "inline" else "file://")
    _corrupt("corrupt", "up", location)
    with pytest.raises(CorruptCheckpointError, match="is corrupt"):
        workflow.get_output("corrupt", task_id="up")
    flag.touch()

    assert workflow.resume("corrupt") == 40
    # 'up' re-ran because its checkpoint was corrupt; 'down' ran once before (and
    # failed on purpose), once with the corrupt input (not counted by the step: it
    # never started its body) and once for real.
    assert _runs(log)["up"] == 2
    assert workflow.get_metadata("corrupt", "up")["checkpoint"] != location


# --- worker crashes inside one driver ------------------------------------------------------


def test_non_idempotent_step_whose_worker_dies_needs_attention(
    runtime: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    dag = crash_worker.options(**_opts("charge", idempotent=False)).bind(str(log))

    with pytest.raises(WorkflowNeedsAttentionError, match="'charge'") as info:
        workflow.run(dag, workflow_id="doubt")

    assert info.value.task_id == "charge"
    assert workflow.get_status("doubt") is WorkflowStatus.NEEDS_ATTENTION
    assert workflow.get_metadata("doubt", "charge")["status"] == str(StepStatus.IN_DOUBT)
    assert _lines(log) == ["charge 1"]
    with pytest.raises(WorkflowNeedsAttentionError):
        workflow.resume("doubt")
    assert _lines(log) == ["charge 1"]


def test_resolve_settles_an_in_doubt_step_by_hand(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    dag = crash_worker.options(**_opts("charge", idempotent=False)).bind(str(log))
    with pytest.raises(WorkflowNeedsAttentionError):
        workflow.run(dag, workflow_id="by-hand")

    with pytest.raises(ValueError, match="exactly one"):
        workflow.resolve("by-hand", "charge")
    workflow.resolve("by-hand", "charge", result="charged (checked by a person)")
    with pytest.raises(ValueError, match="not IN_DOUBT"):
        workflow.resolve("by-hand", "charge", rerun=True)

    assert workflow.resume("by-hand") == "charged (checked by a person)"
    assert workflow.get_status("by-hand") is WorkflowStatus.SUCCESSFUL
    assert _lines(log) == ["charge 1"]  # never re-run


def test_resolve_with_rerun_runs_the_step_again(runtime: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log"
    dag = crash_worker.options(**_opts("charge", idempotent=False)).bind(str(log))
    with pytest.raises(WorkflowNeedsAttentionError):
        workflow.run(dag, workflow_id="rerun")

    workflow.resolve("rerun", "charge", rerun=True)
    with pytest.raises(WorkflowNeedsAttentionError):  # crash_worker crashes every time
        workflow.resume("rerun")
    assert _lines(log) == ["charge 1", "charge 2"]


def test_run_with_the_same_dag_plus_a_hook_resolves_needs_attention(
    runtime: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    plain = crash_worker.options(**_opts("charge", idempotent=False)).bind(str(log))
    with pytest.raises(WorkflowNeedsAttentionError):
        workflow.run(plain, workflow_id="late-hook")

    hooked = crash_worker.options(
        **_opts("charge", idempotent=False, on_in_doubt=_already_charged)
    ).bind(str(log))
    result = workflow.run(hooked, workflow_id="late-hook")

    assert result == f"charged once under {Path(str(log) + '.key').read_text()}"
    assert _lines(log) == ["charge 1"]
    assert workflow.get_status("late-hook") is WorkflowStatus.SUCCESSFUL


def _already_charged(key: str) -> str:
    return f"charged once under {key}"


def test_on_in_doubt_hook_resolves_a_crashed_non_idempotent_step(
    runtime: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    opts = _opts("charge", idempotent=False, on_in_doubt=_already_charged)
    dag = source.options(**_opts("after")).bind(
        str(log), crash_worker.options(**opts).bind(str(log))
    )

    result = workflow.run(dag, workflow_id="hooked")

    assert result == f"charged once under {Path(str(log) + '.key').read_text()}"
    assert _lines(log) == ["charge 1", "after 1"]
    assert workflow.get_output("hooked", task_id="charge") == result
