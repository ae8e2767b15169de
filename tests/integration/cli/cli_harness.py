"""The harness of the CLI tests: the ``heliostat`` command run as a real subprocess.

* :class:`Cli`: ``cli.run(*args)`` runs ``python -m heliostat.cli ARGS``
  in a private world: ``HELIOSTAT_HOME`` (SQLite lineage, checkpoints) under
  ``tmp_path``, ``TMPDIR`` a short private directory (so ``heliostat status`` sees
  only the runtimes of this test: runtimes keep their session files there), and the
  working directory ``tmp_path / "mods"``, where the test writes its workflow modules
  (``cli.write_module``); it is on ``PYTHONPATH`` for the workers and the drivers.
* ``cli.bad_input(*args, names=...)`` and ``cli.bad_inputs({args: names})``: the
  command exits 2 with one ``heliostat: error:`` line naming ``names``, no traceback.
  ``bad_inputs`` runs its commands at once: they are mostly interpreter start-up.
* ``cli.run_into_file(path, *args)`` and ``cli.run_on_terminal(*args)``: stdout and
  stderr together, written to a file or to a pseudo-terminal, as a log or a CI job
  would see them.
* ``with cli.start(*args) as daemon``: a long-running command (``scheduler``) whose
  output is read as it comes (``daemon.stderr()``); ``daemon.stop()`` sends SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

COMMAND_TIMEOUT_S = 120


class Cli:
    """Runs ``heliostat`` commands against one test's private home."""

    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.home = root / "home"
        self.mods = root / "mods"
        self.mods.mkdir()
        self.tmpdir = tmpdir
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("HELIOSTAT_DB_URL", "HELIOSTAT_STORAGE", "HELIOSTAT_ADDRESS")
        }
        env["HELIOSTAT_HOME"] = str(self.home)
        env["TMPDIR"] = str(tmpdir)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.mods), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env

    @property
    def argv0(self) -> list[str]:
        return [sys.executable, "-m", "heliostat.cli"]

    def write_module(self, name: str, source: str) -> Path:
        path = self.mods / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    def run(
        self, *args: str, expect: int | None = 0, argv0: Sequence[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``heliostat ARGS``; check its exit status unless ``expect`` is None.

        ``argv0`` replaces ``python -m heliostat.cli`` (the installed script, say).
        """
        result = subprocess.run(
            [*(argv0 or self.argv0), *args],
            cwd=self.mods,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        if expect is not None:
            assert result.returncode == expect, _describe(args, result)
        return result

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``heliostat ARGS`` without waiting (stdout and stderr piped)."""
        return subprocess.Popen(
            [*self.argv0, *args],
            cwd=self.mods,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )

    def run_into_file(self, path: Path, *args: str) -> tuple[int, str]:
        """Run ``heliostat ARGS`` with stdout and stderr both written to ``path`` (as
        ``> path 2>&1`` does); returns the exit status and the file's text."""
        with path.open("w") as out:
            code = subprocess.run(
                [*self.argv0, *args],
                cwd=self.mods,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=COMMAND_TIMEOUT_S,
            ).returncode
        return code, path.read_text()

    def run_on_terminal(self, *args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
        """Run ``heliostat ARGS`` with stdout and stderr on a pseudo-terminal (``env``
        added); returns the exit status and everything written there, byte for byte
        (the terminal's own newline translation is off)."""
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # keep "\n" as written, not "\r\n"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        proc = subprocess.Popen(
            [*self.argv0, *args],
            cwd=self.mods,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        try:
            while True:
                if select.select([master], [], [], 0.1)[0]:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: every writer has closed the terminal
                        data = b""
                    if not data:
                        break
                    chunks.append(data)
                elif proc.poll() is not None:
                    break  # exited, and nothing is left to read
                elif time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"heliostat {' '.join(args)} did not finish")
            proc.wait(timeout=COMMAND_TIMEOUT_S)
        finally:
            os.close(master)
        return proc.returncode, b"".join(chunks).decode()

    @contextlib.contextmanager
    def start(self, *args: str) -> Iterator[Daemon]:
        """Start ``heliostat ARGS`` in the background; killed at the end if still alive."""
        daemon = Daemon(self.popen(*args))
        try:
            yield daemon
        finally:
            daemon.kill()

    def run_many(self, commands: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
        """Run independent commands at once (they are mostly start-up time); in order."""
        procs = [self.popen(*args) for args in commands]
        results = []
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
            results.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
        return results

    @staticmethod
    def ok(result: subprocess.CompletedProcess[str], expect: int = 0) -> str:
        """Assert the exit status of a :meth:`run_many` result; return its stdout."""
        assert result.returncode == expect, _describe(result.args, result)
        return result.stdout

    def bad_inputs(self, commands: dict[tuple[str, ...], Sequence[str]]) -> None:
        """Each command (run at once) is refused with exit 2 and one line naming its
        fragments."""
        results = self.run_many(list(commands))
        for (args, names), result in zip(commands.items(), results, strict=True):
            assert result.returncode == 2, _describe(args, result)
            assert_one_line_error(result, names)

    def bad_input(self, *args: str, names: Sequence[str] = ()) -> str:
        """Run a command that must be refused as bad input; return its error line."""
        result = self.run(*args, expect=2)
        return assert_one_line_error(result, names)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query on the home's SQLite database ([] if there is none yet)."""
        path = self.home / "heliostat.db"
        if not path.exists():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return list(conn.execute(sql))
        finally:
            conn.close()


class Daemon:
    """A ``heliostat`` command running in the background, its output read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._out: list[str] = []
        self._err: list[str] = []
        self._lock = threading.Lock()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)

    def stdout(self) -> str:
        with self._lock:
            return "".join(self._out)

    def stderr(self) -> str:
        with self._lock:
            return "".join(self._err)

    def stop(self, timeout: float = 60) -> tuple[int, str, str]:
        """SIGTERM, then wait for the exit; returns (exit status, stdout, stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        return code, self.stdout(), self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _describe(args: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"heliostat {' '.join(args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], names: Sequence[str] = ()
) -> str:
    """The stderr is one ``heliostat: error: ...`` line naming ``names``; return it."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("heliostat: error: "), line
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    return line
