"""The command's shape: help everywhere, usage errors in one line, a fast ``--help``."""

from __future__ import annotations

import subprocess
import sys

from cli_harness import Cli

GROUPS = [
    (),
    ("run",),
    ("workflow",),
    ("workflow", "show"),
    ("schedule",),
    ("schedule", "add"),
    ("scheduler",),
    ("status",),
    ("list",),
    ("db",),
    ("demo",),
    ("version",),
]


def test_help_everywhere_and_version(cli: Cli) -> None:
    results = cli.run_many([(*group, "--help") for group in GROUPS])
    for group, result in zip(GROUPS, results, strict=True):
        assert result.returncode == 0, (group, result.stderr)
        assert result.stdout.startswith(f"usage: heliostat {' '.join(group)}".rstrip()), group
    top = results[0].stdout
    for command in ("run", "workflow", "schedule", "scheduler", "status", "list", "db"):
        assert f"    {command} " in top or f"    {command}\n" in top
    from heliostat import __version__

    assert cli.run("version").stdout.strip() == __version__


def test_usage_errors_are_one_line_with_exit_2(cli: Cli) -> None:
    cli.bad_inputs(
        {
            (): ["the following arguments are required: COMMAND"],
            ("frobnicate",): ["invalid choice: 'frobnicate'", "heliostat --help"],
            ("run",): ["required: MODULE:FUNCTION", "heliostat run --help"],
            ("workflow", "show"): ["required: ID", "heliostat workflow show --help"],
            ("schedule", "next", "x", "-n", "many"): ["invalid int value: 'many'"],
            ("list", "workers"): ["invalid choice: 'workers'"],
            ("db", "downgrade"): ["invalid choice: 'downgrade'"],
        }
    )


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from heliostat.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'sqlalchemy', 'pyarrow', 'networkx', 'numpy', 'alembic'} & set(sys.modules)\n"
        "print(sorted(heavy), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stderr.strip() == "[]"
