"""A remote traceback names the user's real file and line, and starts at user code.

cloudpickle writes code pickled by value with the file name ``<dynamic-code>``; the
engine's pickler keeps the real one (``engine/serialization.py``), and the worker cuts
its own frames from the front of the traceback (``engine/worker.py``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import heliostat as hs
from heliostat.exceptions import TaskError


def test_task_pickled_by_value_reports_its_real_file_and_line(runtime) -> None:
    # A local function: cloudpickle cannot import it by name, so it travels by value.
    def lookup_missing(mapping):
        return mapping["missing"]

    task = hs.remote(lookup_missing)
    with pytest.raises(TaskError) as info:
        hs.get(task.remote({}))
    err = info.value
    assert isinstance(err, KeyError)
    text = err.remote_traceback
    line = lookup_missing.__code__.co_firstlineno + 1
    assert "<dynamic-code>" not in text
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    # The first frame is the user's: heliostat's worker frames were cut.
    assert lines[1] == f'  File "{__file__}", line {line}, in lookup_missing'
    assert lines[2].strip() == 'return mapping["missing"]'  # the source line, read back
    assert "_run_user" not in text and "_execute" not in text
    assert lines[-1] == "KeyError: 'missing'"


def test_task_defined_in_a_users_main_script_reports_the_script(tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(
        textwrap.dedent(
            """\
            import heliostat as hs


            @hs.remote
            def bad(d):
                return d["missing"]


            if __name__ == "__main__":
                hs.init(num_cpus=1)
                try:
                    hs.get(bad.remote({}))
                except KeyError as exc:
                    print(exc.remote_traceback)
                finally:
                    hs.shutdown()
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = done.stdout
    assert f'File "{script}", line 6, in bad' in text, text
    assert "<dynamic-code>" not in text
    assert text.splitlines()[1].startswith(f'  File "{script}"'), text
