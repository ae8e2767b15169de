"""The CLI with modules written as Ray scripts: ``python -m heliostat``, ``init()`` at import."""

from __future__ import annotations

import sys

from cli_harness import Cli

INIT_AT_IMPORT = """
    import heliostat as hs

    hs.init(num_cpus=2)


    @hs.remote
    def double(x):
        return x * 2


    @hs.remote
    def cpus_seen():
        return hs.cluster_resources()["CPU"]


    def build(x=3):
        return double.bind(double.bind(x))


    def build_cpus():
        return cpus_seen.bind()
"""

INIT_IN_STEP_MODULE = """
    import heliostat as hs


    @hs.remote
    def double(x):
        return x * 2


    def build(x=3):
        # Pipeline code calling init() once the command's runtime is up (Ray style).
        hs.init()
        return double.bind(x)
"""


def test_python_dash_m_heliostat_runs_the_cli(cli: Cli) -> None:
    result = cli.run("--help", argv0=[sys.executable, "-m", "heliostat"])
    assert "usage: heliostat" in result.stdout
    assert "run" in result.stdout


def test_run_uses_the_runtime_a_module_started_at_import(cli: Cli) -> None:
    cli.write_module("rayish", INIT_AT_IMPORT)
    result = cli.run("run", "rayish:build", "x=5", "--id", "ray-1", "--json")
    assert '"status": "SUCCESSFUL"' in result.stdout
    assert '"output": 20' in result.stdout
    # The node is the one the module asked for (2 CPUs), not the command's default.
    result = cli.run("run", "rayish:build_cpus", "--id", "ray-2", "--json")
    assert '"output": 2.0' in result.stdout


def test_run_refuses_num_cpus_when_the_module_started_the_runtime(cli: Cli) -> None:
    cli.write_module("rayish", INIT_AT_IMPORT)
    result = cli.run("run", "rayish:build", "--num-cpus", "1", expect=2)
    assert "--num-cpus" in result.stderr
    assert "heliostat.init()" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_in_pipeline_code_returns_the_commands_runtime(cli: Cli) -> None:
    # build() runs before the command starts its node: its init() starts one, which
    # the command then adopts.
    cli.write_module("stepinit", INIT_IN_STEP_MODULE)
    result = cli.run("run", "stepinit:build", "x=4", "--id", "si-1", "--json")
    assert '"output": 8' in result.stdout


def test_run_help_says_what_happens_to_a_modules_init(cli: Cli) -> None:
    result = cli.run("run", "--help")
    assert "heliostat.init()" in " ".join(result.stdout.split())
