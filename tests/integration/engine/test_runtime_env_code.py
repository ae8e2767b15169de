"""runtime_env working_dir and py_modules on one node: copies, cwd, and missing modules."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

import heliostat as hs
from heliostat.engine.runtime import session_dirs
from heliostat.exceptions import ModuleNotOnNodeError, TaskError
from heliostat.storage.packages import PackageError


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "shipped_mod.py").write_text("def greet():\n    return 'hello from the copy'\n")
    (root / "data.txt").write_text("version 1\n")
    (root / "results.csv").write_text("a,b\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


@hs.remote
def _inspect_working_dir() -> dict[str, object]:
    import shipped_mod  # only in the working_dir's copy

    return {
        "greeting": shipped_mod.greet(),
        "module_dir": os.path.dirname(shipped_mod.__file__),
        "cwd": os.getcwd(),
        "data": Path("data.txt").read_text(),
        "csv_shipped": Path("results.csv").exists(),
        "git_shipped": Path(".git").exists(),
        "env": os.environ.get("HS_CODE_TEST"),
    }


def test_working_dir_is_copied_and_workers_run_in_the_copy(tmp_path: Path, fresh_runtime) -> None:
    project = _project(tmp_path / "project")
    assert "shipped_mod" not in sys.modules
    rt = fresh_runtime(
        runtime_env={
            "working_dir": str(project),
            "excludes": ["*.csv"],
            "env_vars": {"HS_CODE_TEST": "kept"},
        }
    )
    copy = rt.code.working_dir
    assert copy is not None and copy.startswith(rt.session_dir + os.sep)
    assert rt.code.import_paths == (copy,)
    # The driver's later edits are not seen: the copy was taken at init().
    (project / "data.txt").write_text("version 2\n")
    seen = hs.get(_inspect_working_dir.remote())
    assert seen == {
        "greeting": "hello from the copy",
        "module_dir": copy,
        "cwd": copy,
        "data": "version 1\n",
        "csv_shipped": False,
        "git_shipped": False,
        "env": "kept",
    }
    # The driver itself stays where it was and cannot import the module.
    assert os.getcwd() != copy and "shipped_mod" not in sys.modules
    hs.shutdown()
    assert not os.path.exists(copy)  # gone with the session


def test_py_modules_are_importable_from_their_copies(tmp_path: Path, fresh_runtime) -> None:
    pkg = tmp_path / "libs" / "toolkit"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("NAME = 'toolkit'\n")
    single = tmp_path / "loose" / "helpers.py"
    single.parent.mkdir()
    single.write_text("def twice(x):\n    return 2 * x\n")
    rt = fresh_runtime(runtime_env={"py_modules": [str(pkg), str(single)]})

    @hs.remote
    def use() -> tuple[str, int, str, str]:
        import helpers
        import toolkit

        return toolkit.NAME, helpers.twice(21), toolkit.__file__, helpers.__file__

    name, value, pkg_file, single_file = hs.get(use.remote())
    assert (name, value) == ("toolkit", 42)
    assert rt.code.working_dir is None and len(rt.code.import_paths) == 2
    assert Path(pkg_file).parent.parent == Path(rt.code.import_paths[0])
    assert Path(single_file).parent == Path(rt.code.import_paths[1])


def test_a_working_dir_over_the_limit_fails_init_and_leaves_nothing(tmp_path: Path) -> None:
    hs.shutdown()
    project = tmp_path / "big"
    project.mkdir()
    with open(project / "weights.bin", "wb") as fh:
        fh.truncate(101 << 20)  # sparse: 101 MiB on paper, nothing on disk
    before = {d.path for d in session_dirs() if d.pid == os.getpid()}
    with pytest.raises(PackageError, match=r"weights\.bin.*excludes"):
        hs.init(runtime_env={"working_dir": str(project)})
    assert not hs.is_initialized()
    assert {d.path for d in session_dirs() if d.pid == os.getpid()} == before


@pytest.fixture
def forget_module():
    """Drop ``only_on_driver`` from ``sys.modules`` after the test (it lives in tmp_path)."""
    yield
    sys.modules.pop("only_on_driver", None)


def _module_elsewhere(root: Path) -> Path:
    root.mkdir()
    (root / "only_on_driver.py").write_text(
        "def triple(x):\n    return 3 * x\n\n"
        "class Box:\n    def __init__(self, v):\n        self.v = v\n"
    )
    return root


def test_a_module_missing_on_the_node_is_named_with_the_node(
    tmp_path: Path, runtime, monkeypatch: pytest.MonkeyPatch, forget_module
) -> None:
    # The node's workers started before the driver could import this module, and its
    # directory is on no path of theirs: only the driver has it.
    elsewhere = _module_elsewhere(tmp_path / "elsewhere")
    monkeypatch.syspath_prepend(str(elsewhere))
    import only_on_driver

    triple = hs.remote(only_on_driver.triple)
    with pytest.raises(ModuleNotOnNodeError) as caught:
        hs.get(triple.remote(2))
    err = caught.value
    node_id = hs.nodes()[0]["NodeID"]
    assert isinstance(err, ModuleNotFoundError) and isinstance(err, TaskError)
    assert (err.module, err.node_id, err.hostname) == (
        "only_on_driver",
        node_id,
        socket.gethostname(),
    )
    message = str(err)
    for part in ("'only_on_driver'", node_id, socket.gethostname(), "working_dir", "py_modules"):
        assert part in message

    # The same for an argument whose class only the driver has.
    @hs.remote
    def unbox(box: object) -> object:
        return box

    with pytest.raises(ModuleNotOnNodeError, match="an argument refers to module 'only_on_driver'"):
        hs.get(unbox.remote(only_on_driver.Box(1)))
    # The worker survived both: it still runs tasks.
    assert hs.get(unbox.remote(5)) == 5


def test_py_modules_fix_a_missing_module(
    tmp_path: Path, fresh_runtime, monkeypatch: pytest.MonkeyPatch, forget_module
) -> None:
    elsewhere = _module_elsewhere(tmp_path / "elsewhere")
    fresh_runtime(runtime_env={"py_modules": [str(elsewhere / "only_on_driver.py")]})
    monkeypatch.syspath_prepend(str(elsewhere))
    import only_on_driver

    assert hs.get(hs.remote(only_on_driver.triple).remote(5)) == 15
