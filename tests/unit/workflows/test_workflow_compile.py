"""Compiling bound DAGs (no runtime): task ids, rejections, options, the step wrapper."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from typing import Any

import networkx as nx
import pytest

import heliostat as hs
from heliostat import workflow
from heliostat.exceptions import WorkflowDefinitionError
from heliostat.storage.checkpoints import CheckpointStore
from heliostat.workflows.compile import CompiledWorkflow, Upstream, compile_dag, upstream_ids
from heliostat.workflows.options import STEP_OPTION_NAMES, step_options
from heliostat.workflows.step import Continuation, StepCall, StepEnv


@hs.remote
def extract(day: str) -> list[int]:
    return [1, 2, 3]


@hs.remote
def transform(rows: list[int], scale: int = 1) -> list[int]:
    return [r * scale for r in rows]


@hs.remote
def load(*tables: Any) -> int:
    return len(tables)


def _etl() -> Any:
    a = extract.bind("2026-11-21")
    b = extract.bind("2026-11-22")
    return load.bind(transform.bind(a), transform.bind(b, scale=2), [a, {"k": b}])


def _edges(compiled: CompiledWorkflow) -> set[tuple[str, str]]:
    return set(compiled.graph.edges)


# --- task ids ---------------------------------------------------------------------------


def test_same_dag_built_twice_gets_the_same_task_ids() -> None:
    first, second = compile_dag(_etl()), compile_dag(_etl())

    assert list(first.steps) == list(second.steps)
    assert first.order() == second.order()
    assert _edges(first) == _edges(second)
    assert first.output == second.output == "load"
    assert set(first.steps) == {"extract", "extract_1", "transform", "transform_1", "load"}


def test_derived_ids_follow_a_depth_first_walk_left_to_right() -> None:
    compiled = compile_dag(_etl())

    # transform(a) is met before transform(b): its id has no suffix, and so on.
    assert compiled.steps["transform"].parents == ("extract",)
    assert compiled.steps["transform_1"].parents == ("extract_1",)
    assert repr(compiled.steps["transform_1"].args) == repr((Upstream("extract_1"),))
    assert repr(compiled.steps["transform_1"].kwargs) == repr({"scale": 2})
    assert compiled.steps["load"].parents == ("transform", "transform_1", "extract", "extract_1")
    assert compiled.order()[-1] == "load"
    assert nx.is_directed_acyclic_graph(compiled.graph)


def test_shared_node_is_one_step() -> None:
    a = extract.bind("d")
    compiled = compile_dag(load.bind(a, a, transform.bind(a)))

    assert set(compiled.steps) == {"extract", "transform", "load"}
    assert compiled.steps["load"].parents == ("extract", "transform")


def test_explicit_task_id_wins_and_derived_ids_avoid_it() -> None:
    named = extract.options(**workflow.options(task_id="extract")).bind("explicit")
    dag = load.bind(extract.bind("derived"), named)

    compiled = compile_dag(dag)

    assert compiled.steps["extract"].args == ("explicit",)
    assert compiled.steps["extract_1"].args == ("derived",)
    assert compiled.steps["load"].parents == ("extract_1", "extract")


def test_explicit_task_ids_are_kept_verbatim() -> None:
    dag = load.options(**workflow.options(task_id="load-2026-11-21")).bind(
        transform.options(**workflow.options(task_id="t")).bind(extract.bind("d"))
    )

    compiled = compile_dag(dag)

    assert set(compiled.steps) == {"extract", "t", "load-2026-11-21"}
    assert compiled.output == "load-2026-11-21"


def test_prefix_and_start_position_apply_to_derived_ids_only() -> None:
    dag = load.bind(extract.options(**workflow.options(task_id="x")).bind("d"), extract.bind("e"))

    compiled = compile_dag(dag, prefix="parent.", start_position=10)

    assert set(compiled.steps) == {"x", "parent.extract", "parent.load"}
    assert sorted(s.position for s in compiled.steps.values()) == [10, 11, 12]


def test_duplicate_explicit_task_ids_get_suffixes_upstream_first() -> None:
    # Ray's rule: the first step with an id keeps it, later ones get _1, _2, ...;
    # upstream steps are met first.
    same = workflow.options(task_id="same")
    inner = extract.options(**same).bind("d")
    middle = transform.options(**same).bind(inner)
    dag = load.options(**same).bind(middle, extract.bind("e"))

    compiled = compile_dag(dag)

    assert compiled.output == "same_2"
    assert compiled.steps["same"].name.endswith("extract")
    assert compiled.steps["same_1"].name.endswith("transform")
    assert set(compiled.steps) == {"same", "same_1", "same_2", "extract"}


def test_a_suffixed_id_never_takes_an_id_asked_for_explicitly() -> None:
    dag = load.bind(
        extract.options(**workflow.options(task_id="x")).bind("a"),
        extract.options(**workflow.options(task_id="x")).bind("b"),
        transform.options(**workflow.options(task_id="x_1")).bind([]),
    )

    compiled = compile_dag(dag)

    assert {"x", "x_1", "x_2"} <= set(compiled.steps)
    assert compiled.steps["x_1"].name.endswith("transform")


# --- rejections -------------------------------------------------------------------------


def test_cycle_is_rejected_naming_its_steps() -> None:
    a = extract.bind("d")
    b = transform.bind(a)
    # bind() cannot make a cycle; a graph assembled by hand can.
    a.args = (b,)
    a._children = [b]

    with pytest.raises(WorkflowDefinitionError, match="cycle") as info:
        compile_dag(b)

    assert "extract" in str(info.value) and "transform" in str(info.value)


def test_unserializable_constant_argument_is_rejected_naming_the_step() -> None:
    dag = load.bind(transform.bind(extract.bind("d"), scale=threading.Lock()))

    with pytest.raises(WorkflowDefinitionError) as info:
        compile_dag(dag)

    message = str(info.value)
    assert "'transform'" in message
    assert "'scale'" in message
    assert "serialized" in message
    assert info.value.task_id == "transform"


def test_unserializable_positional_argument_names_its_position() -> None:
    lock = threading.Lock()

    with pytest.raises(WorkflowDefinitionError, match=r"'extract'.*argument 0"):
        compile_dag(extract.bind(lock))


def test_root_that_is_not_a_dag_node_is_rejected() -> None:
    with pytest.raises(WorkflowDefinitionError, match="bind"):
        compile_dag(42)


def test_bad_workflow_option_in_a_step_is_rejected_naming_it() -> None:
    bad = extract.options(_workflow={"max_retries": -1})

    with pytest.raises(WorkflowDefinitionError, match=r"extract.*max_retries"):
        compile_dag(bad.bind("d"))


# --- the persisted form -----------------------------------------------------------------


def test_compiled_workflow_round_trips_through_bytes() -> None:
    compiled = compile_dag(_etl())

    again = CompiledWorkflow.from_bytes(compiled.to_bytes())

    assert list(again.steps) == list(compiled.steps)
    assert again.order() == compiled.order()
    assert _edges(again) == _edges(compiled)
    assert again.output == compiled.output


def test_from_bytes_rejects_other_pickles() -> None:
    import cloudpickle

    with pytest.raises(WorkflowDefinitionError):
        CompiledWorkflow.from_bytes(cloudpickle.dumps({"not": "a workflow"}))


def test_upstream_ids_are_in_argument_order() -> None:
    args = (Upstream("a"), [1, Upstream("b")], {"x": (Upstream("c"),)})
    assert upstream_ids(args, {"k": Upstream("d")}) == ["a", "b", "c", "d"]


# --- workflow.options -------------------------------------------------------------------


def test_options_rejects_unknown_keys_listing_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        workflow.options(task_id="t", retries=3, checkpointing=False)

    message = str(info.value)
    assert "'checkpointing'" in message and "'retries'" in message
    for name in STEP_OPTION_NAMES:
        assert name in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"task_id": ""}, "task_id"),
        ({"task_id": "a/b"}, "task_id"),
        ({"task_id": ".hidden"}, "task_id"),
        ({"max_retries": -1}, "max_retries"),
        ({"retry_backoff": -0.5}, "retry_backoff"),
    ],
)
def test_options_rejects_bad_values(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        workflow.options(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        # A string where a bool belongs is refused: "false" would read as true, and a
        # step meant as non-idempotent would be re-run blindly.
        ({"idempotent": "false"}, "idempotent must be True or False"),
        ({"idempotent": 0}, "idempotent"),
        ({"checkpoint": "no"}, "checkpoint"),
        ({"catch_exceptions": None}, "catch_exceptions"),
        ({"task_id": 7}, "task_id"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": 2.0}, "max_retries"),
        ({"retry_backoff": "1s"}, "retry_backoff"),
        ({"retry_exceptions": ["nope"]}, "retry_exceptions"),
        ({"retry_exceptions": "ValueError"}, "retry_exceptions"),
        ({"on_in_doubt": "not callable"}, "on_in_doubt"),
        ({"metadata": ["a"]}, "metadata"),
    ],
)
def test_options_refuse_values_of_the_wrong_type(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TypeError, match=fragment):
        workflow.options(**kwargs)


def test_options_defaults_and_normalization() -> None:
    opts = step_options({})
    assert (opts.checkpoint, opts.idempotent, opts.catch_exceptions) == (True, True, False)
    assert (opts.max_retries, opts.retry_exceptions, opts.on_in_doubt) == (3, False, None)

    opts = step_options({"retry_exceptions": KeyError, "metadata": {"a": 1}})
    assert opts.retry_exceptions == (KeyError,)
    assert opts.metadata == {"a": 1}


def test_options_reach_the_compiled_step() -> None:
    def hook(key: str) -> str:
        return key

    fn = extract.options(
        **workflow.options(
            task_id="e",
            idempotent=False,
            on_in_doubt=hook,
            checkpoint=False,
            max_retries=5,
            metadata={"owner": "ana"},
        )
    )

    spec = compile_dag(fn.bind("d")).steps["e"]

    assert spec.options.idempotent is False
    assert spec.options.on_in_doubt is hook
    assert spec.options.checkpoint is False
    assert spec.options.max_retries == 5
    assert spec.options.metadata == {"owner": "ana"}


def test_steps_of_one_function_share_one_options_object() -> None:
    careful = transform.options(**workflow.options(idempotent=False))
    dag = load.bind(
        transform.bind(extract.bind("a")),
        transform.bind(extract.bind("b")),
        careful.bind(extract.bind("c")),
    )

    steps = compile_dag(dag).steps

    assert steps["transform"].options is steps["transform_1"].options
    assert steps["extract"].options is steps["extract_2"].options
    assert steps["transform_2"].options is not steps["transform"].options
    assert steps["transform_2"].options.idempotent is False
    assert steps["transform"].options.idempotent is True


# --- the step wrapper and the context, in process ---------------------------------------


def test_get_context_outside_a_step_raises() -> None:
    with pytest.raises(RuntimeError, match="inside a workflow step"):
        workflow.get_context()


def _env(checkpoint_url: str | None, *, catch: bool = False, inline_limit: int = 0) -> StepEnv:
    return StepEnv(
        workflow_id="wf",
        task_id="t",
        attempt=2,
        idempotency_key="wf:t",
        checkpoint_url=checkpoint_url,
        inline_limit=inline_limit,
        catch_exceptions=catch,
    )


def _with_context(a: Any, b: Any, *, c: Any) -> Any:
    ctx = workflow.get_context()
    return (a, b, c, ctx.workflow_id, ctx.task_id, ctx.attempt, ctx.idempotency_key)


def test_step_call_substitutes_parents_sets_context_and_checkpoints() -> None:
    url = "memory://wf-unit-step-call"
    call = StepCall(_with_context)

    value, meta = call(
        _env(url), (Upstream("p"), Upstream("q")), {"c": Upstream("p")}, ("p", "q"), 1, 2
    )

    assert value == (1, 2, 1, "wf", "t", 2, "wf:t")
    assert meta.continuation is False
    assert meta.checkpoint is not None
    assert CheckpointStore(url).read(meta.checkpoint) == value
    with pytest.raises(RuntimeError):
        workflow.get_context()  # reset after the step


def test_step_call_reads_parent_checkpoints() -> None:
    url = "memory://wf-unit-step-parent"
    ref = CheckpointStore(url).write("wf", "p", 1, {"rows": 3})

    value, meta = StepCall(lambda x: x["rows"])(_env(None), (Upstream("p"),), {}, ("p",), ref)

    assert value == 3
    assert meta.checkpoint is None


def test_step_call_returns_a_small_output_inline_and_reads_inline_parents() -> None:
    url = "memory://wf-unit-step-inline"
    value, meta = StepCall(lambda x: x + 1)(
        _env(url, inline_limit=1024), (Upstream("p"),), {}, ("p",), 41
    )
    assert value == 42
    ref = meta.checkpoint
    assert ref is not None and ref.inline and ref.data is not None
    assert CheckpointStore(url).fs.find("/wf-unit-step-inline") == []  # no file written

    # A consumer handed the inline ref decodes (and verifies) it without any store.
    out, _ = StepCall(lambda x: x * 2)(_env(None), (Upstream("p"),), {}, ("p",), ref)
    assert out == 84


def test_step_call_catch_exceptions_returns_the_error() -> None:
    def boom() -> None:
        raise ValueError("boom")

    value, _ = StepCall(boom)(_env(None, catch=True), (), {}, ())

    result, exc = value
    assert result is None
    assert isinstance(exc, ValueError) and str(exc) == "boom"


def test_step_call_marks_a_continuation() -> None:
    sub = extract.bind("d")

    value, meta = StepCall(lambda: workflow.continuation(sub))(_env(None), (), {}, ())

    assert isinstance(value, Continuation)
    assert meta.continuation is True


def test_continuation_rejects_non_dag() -> None:
    with pytest.raises(TypeError, match="bind"):
        workflow.continuation(42)  # type: ignore[arg-type]


def test_running_a_step_imports_none_of_the_driver_side_libraries() -> None:
    """A worker runs steps through heliostat.workflows.step; the first step of every
    fresh worker used to pay ~0.7 s importing SQLAlchemy, networkx and pyarrow."""
    code = (
        "import sys\n"
        "from heliostat.workflows.step import StepCall, StepEnv\n"
        "from heliostat.workflows.compile import Upstream\n"
        "env = StepEnv(workflow_id='w', task_id='t', attempt=1, idempotency_key='w:t',\n"
        "    checkpoint_url='memory://imports', inline_limit=0, catch_exceptions=False)\n"
        "value, meta = StepCall(lambda x: x + 1)(env, (Upstream('p'),), {}, ('p',), 1)\n"
        "assert value == 2 and meta.checkpoint is not None\n"
        "heavy = {'sqlalchemy', 'networkx', 'pyarrow', 'alembic', 'pandas'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_nested_placeholders_become_refs_and_top_level_ones_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray resolves top-level arguments only: a step output or a stored ObjectRef value
    nested in a list, tuple or dict reaches the step as a ref (here a fake put's)."""
    from heliostat.workflows import step as step_module
    from heliostat.workflows.compile import StoredValue

    monkeypatch.setattr(step_module, "put", lambda value: ("ref", value))
    args, kwargs = step_module.resolve_arguments(
        (Upstream("p"), [Upstream("q"), 5], StoredValue(7), (StoredValue(8),)),
        {"k": {"x": Upstream("p")}, "v": StoredValue(9)},
        {"p": 1, "q": 2},
    )
    assert args == (1, [("ref", 2), 5], 7, (("ref", 8),))
    assert kwargs == {"k": {"x": ("ref", 1)}, "v": 9}


def test_stored_value_pickles_and_compares_by_value() -> None:
    from heliostat.workflows.compile import StoredValue

    assert pickle.loads(pickle.dumps(StoredValue([1, 2]))) == StoredValue([1, 2])
    assert StoredValue(1) != StoredValue(2)
