"""A worker taking on another node's job environment before a task, and letting it go."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.engine import runtime_env
from heliostat.engine.runtime_env import use_code


@pytest.fixture
def worker_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore what use_code changes in this process: cwd, sys.path, the variables."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(runtime_env, "_cwd_before_code", None)
    monkeypatch.setattr(runtime_env, "_env_before_code", {})
    namespaces = runtime_env._Namespaces()
    namespaces.note_boot()
    monkeypatch.setattr(runtime_env, "_namespaces", namespaces)
    modules = dict(sys.modules)
    cwd = os.getcwd()
    monkeypatch.setenv("HS_TEST_KEPT", "node")
    monkeypatch.delenv("HS_TEST_NEW", raising=False)
    yield
    os.chdir(cwd)
    for name in set(sys.modules) - set(modules):
        del sys.modules[name]


def test_a_jobs_env_vars_hold_for_its_tasks_and_go_with_the_next_job(
    worker_state: None, tmp_path: Path
) -> None:
    job = ((str(tmp_path),), str(tmp_path), (("HS_TEST_KEPT", "job"), ("HS_TEST_NEW", "1")))
    use_code(job)
    assert os.environ["HS_TEST_KEPT"] == "job" and os.environ["HS_TEST_NEW"] == "1"
    assert sys.path[0] == str(tmp_path) and os.getcwd() == str(tmp_path)
    use_code(job)  # the next task of the same job: the node's value is still remembered
    other = ((), "", (("HS_TEST_NEW", "2"),))
    use_code(other)
    assert os.environ["HS_TEST_KEPT"] == "node" and os.environ["HS_TEST_NEW"] == "2"
    use_code(None)  # the node's own task
    assert os.environ["HS_TEST_KEPT"] == "node" and "HS_TEST_NEW" not in os.environ
    assert os.getcwd() != str(tmp_path)


def _module_dir(root: Path, name: str, value: str) -> str:
    """A directory with ``hs_job_mod.py``: its VALUE, and HS_TEST_NEW as at import."""
    where = root / name
    where.mkdir()
    (where / "hs_job_mod.py").write_text(
        f"import os\nVALUE = {value!r}\nAT_IMPORT = os.environ.get('HS_TEST_NEW')\n"
    )
    return str(where)


def _imported() -> object:
    import hs_job_mod  # type: ignore[import-not-found]

    return hs_job_mod


def test_each_job_imports_its_own_module_of_a_shared_name_and_gets_it_back(
    worker_state: None, tmp_path: Path
) -> None:
    own = _module_dir(tmp_path, "own", "own")
    sys.path.insert(0, own)  # the worker's own job's code, as a driver's directory is
    mine = _imported()
    assert mine.VALUE == "own"
    a = ((_module_dir(tmp_path, "a", "a"),), "", (("HS_TEST_NEW", "for a"),))
    b = ((_module_dir(tmp_path, "b", "b"),), "", (("HS_TEST_NEW", "for b"),))
    use_code(a)
    first_a = _imported()
    assert first_a.VALUE == "a" and first_a.AT_IMPORT == "for a"
    use_code(b)
    assert _imported().VALUE == "b" and _imported().AT_IMPORT == "for b"
    assert a[0][0] not in sys.path  # a's code is out of b's way
    use_code(a)
    assert _imported() is first_a  # a's own module again, as it left it
    use_code(None)
    assert _imported() is mine and a[0][0] not in sys.path and b[0][0] not in sys.path


def test_a_worker_loads_a_function_once_per_job() -> None:
    from heliostat.engine.records import function_key

    a = (("/a",), "", ())
    assert function_key(b"f", None) == b"f"
    assert function_key(b"f", a) != function_key(b"f", (("/b",), "", ()))
    assert function_key(b"f", a) == function_key(b"f", (("/a",), "", ()))


def test_the_node_sends_a_function_again_to_a_worker_for_another_job(make_node, make_spec) -> None:
    from heliostat.engine.node_instructions import Execute

    node = make_node()
    worker = node.add_worker()
    node.state.tasks.functions[b"fn"] = b"pickled by reference"
    sent = []
    for code in (None, None, (("/a",), "", ()), (("/a",), "", ()), (("/b",), "", ())):
        spec = make_spec(fn_id=b"fn")
        spec.code = code
        node.state.submit(node.state.driver, spec)
        (execute,) = [m for m in node.sent(worker) if isinstance(m, Execute)]
        sent.append(execute.fn_bytes)
        node.state.task_done(_done(worker, spec))
    code = b"pickled by reference"
    assert sent == [code, None, code, None, code]


def _done(worker, spec):
    from heliostat.engine.node_instructions import TaskDone
    from heliostat.engine.object_table import ObjKind

    rid = spec.return_ids[0]
    return TaskDone(
        worker=worker,
        task_id=spec.task_id,
        results=[(rid, int(ObjKind.INLINE), b"N.", (), 2)],
        started=0,
        finished=0,
    )


def test_an_attached_drivers_job_is_installed_then_carried_by_its_tasks(
    make_node, make_spec
) -> None:
    from heliostat.engine.node_instructions import InstallCode
    from heliostat.engine.records import spec_to_wire

    node = make_node(num_cpus=1)  # no worker yet: the task waits here, in the table
    node.state.join_cluster(1)
    driver = node.state.driver_attached(4242)
    answers: list = []
    env = (("REGION", "eu"),)
    node.state.verbs["set_job"](driver, lambda ok, v: answers.append((ok, v)), ("wd-1",), env)
    (ask,) = [e for e in node.effects() if isinstance(e, InstallCode)]
    assert ask.uris == ("wd-1",) and answers == []  # installed off the lock first
    node.state.actors.head_answer(ask.req, True, (("/cache/wd-1",), "/cache/wd-1"))
    assert answers == [(True, None)]
    spec = make_spec()
    node.state.verbs["submit"](driver, None, spec_to_wire(spec))
    (submitted,) = [s for s in node.state.tasks.tasks.values() if s.task_id == spec.task_id]
    assert submitted.job == (("wd-1",), env)
    assert submitted.code == (("/cache/wd-1",), "/cache/wd-1", env)


def test_only_an_attached_driver_may_set_a_job(make_node) -> None:
    node = make_node()
    node.state.join_cluster(1)
    worker = node.add_worker()
    answers: list = []
    node.state.verbs["set_job"](worker, lambda ok, v: answers.append((ok, v)), (), ())
    ((ok, error),) = answers
    assert not ok and "attached" in str(error)


def test_a_job_whose_packages_cannot_be_installed_is_refused_and_not_kept(
    make_node, make_spec
) -> None:
    from heliostat.engine.node_instructions import InstallCode
    from heliostat.engine.records import spec_to_wire

    node = make_node(num_cpus=1)
    node.state.join_cluster(1)
    driver = node.state.driver_attached(4242)
    answers: list = []
    node.state.verbs["set_job"](driver, lambda ok, v: answers.append((ok, v)), ("wd-9",), ())
    (ask,) = [e for e in node.effects() if isinstance(e, InstallCode)]
    missing = FileNotFoundError("package wd-9 is not at the head")
    node.state.actors.head_answer(ask.req, False, missing)
    assert answers == [(False, missing)]  # init() raises it: the driver does not go on
    spec = make_spec()
    node.state.verbs["submit"](driver, None, spec_to_wire(spec))
    assert node.state.tasks.tasks[spec.task_id].job is None
