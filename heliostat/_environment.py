"""Every environment variable heliostat reads, in one registry.

The configuration page of the documentation renders its table from
:data:`ENVIRONMENT`, and a unit test scans the package (and the test suite, for the
variables that only tests read) for ``HELIOSTAT_*`` names: a variable read anywhere
but missing here fails the test, and so does an entry whose reading module no longer
mentions it. Defaults that are constants in code are read from those constants when
the table is rendered, so a changed default shows up in the next build.

This module holds data only; the modules named in ``read_by`` do the reading.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Final

__all__ = ["ENVIRONMENT", "EnvVar", "render_table"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvVar:
    """One environment variable.

    Attributes:
        name: the variable, e.g. ``"HELIOSTAT_HOME"``.
        default: what applies when it is unset; ``{}`` is replaced by the value of
            ``default_constant``.
        meaning: what it sets, in a sentence or two.
        read_by: the modules that read it (dotted names).
        default_constant: ``"module:NAME"`` of the constant holding the default.
        scope: ``"runtime"`` for heliostat itself, ``"tests"`` for the test suite.
    """

    name: str
    default: str
    meaning: str
    read_by: tuple[str, ...]
    default_constant: str = ""
    scope: str = "runtime"

    def default_text(self) -> str:
        """The default as the table shows it (constants looked up now)."""
        if not self.default_constant:
            return self.default
        module, attr = self.default_constant.split(":")
        value = getattr(importlib.import_module(module), attr)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return self.default.replace("{}", str(value))


ENVIRONMENT: Final[tuple[EnvVar, ...]] = (
    EnvVar(
        name="HELIOSTAT_HOME",
        default="`~/.heliostat`",
        meaning="heliostat's private state directory (mode 0700): the SQLite lineage "
        "database, checkpoints and the signing key, unless the variables below move them.",
        read_by=("heliostat.storage.home",),
    ),
    EnvVar(
        name="HELIOSTAT_DB_URL",
        default="SQLite at `$HELIOSTAT_HOME/heliostat.db`",
        meaning="The lineage and schedules database, as a SQLAlchemy URL: "
        "`sqlite:///path` or `postgresql+psycopg://user:password@host/db`.",
        read_by=("heliostat.storage.db",),
    ),
    EnvVar(
        name="HELIOSTAT_AUTO_INIT",
        default="`1`",
        meaning="`0` stops `.remote()`, `put()` and `get_actor()` from starting a runtime "
        "when none is running (as Ray's auto-connect does); they then raise instead. Any "
        "value other than `0` or `1` is refused.",
        read_by=("heliostat.engine.runtime",),
    ),
    EnvVar(
        name="HELIOSTAT_ATTACH",
        default="`1`",
        meaning="`0` stops a driver that joins a cluster from attaching to a node daemon "
        "of its own machine (over its Unix socket); it then joins as a node without CPUs "
        "of its own. Any value other than `0` or `1` is refused.",
        read_by=("heliostat.engine.attach",),
    ),
    EnvVar(
        name="HELIOSTAT_WORKING_DIR",
        default="set by heliostat",
        meaning="Set in a worker's environment by its node: the copy of "
        '`runtime_env["working_dir"]` the worker runs in. Not for users.',
        read_by=("heliostat.engine.runtime_env",),
    ),
    EnvVar(
        name="HELIOSTAT_TOKEN",
        default="none",
        meaning="The token `heliostat ui` requires for actions (bearer header for the API, "
        "a signed session cookie for the pages); `--token` wins over it. Required when "
        "the UI binds to anything but loopback. Also the cluster token that `heliostat "
        "start --address` and `heliostat status` present to a head (else the token file "
        "`$HELIOSTAT_HOME/cluster/token`), and the token `hs.init(address=...)` "
        "uses when it is given none.",
        read_by=(
            "heliostat.cli.ui",
            "heliostat.ui.auth",
            "heliostat.cli.cluster",
            "heliostat.engine.cluster_join",
        ),
    ),
    EnvVar(
        name="HELIOSTAT_ADDRESS",
        default="none",
        meaning="`HOST:PORT` of a cluster head for `heliostat status` (`--address` wins "
        "over it; without either, status asks the head that this home's daemons use), "
        "and the cluster `hs.init()` joins when called without an address (as Ray's "
        "`RAY_ADDRESS`).",
        read_by=("heliostat.cli.cluster", "heliostat.engine.cluster_join", "heliostat.engine.api"),
    ),
    EnvVar(
        name="HELIOSTAT_TLS_CERT",
        default="none",
        meaning="The cluster's PEM certificate, for a driver of a TLS cluster "
        "(`heliostat start --tls-cert/--tls-key`): trusted for the head and for peers, "
        "and served to peers with `HELIOSTAT_TLS_KEY`.",
        read_by=("heliostat.engine.api", "heliostat.engine.cluster_join"),
    ),
    EnvVar(
        name="HELIOSTAT_TLS_KEY",
        default="none",
        meaning="The private key of `HELIOSTAT_TLS_CERT`: a driver of a TLS cluster "
        "serves its peers (the nodes that send it results) with TLS; needed with "
        "`HELIOSTAT_TLS_CERT`.",
        read_by=("heliostat.engine.cluster_join",),
    ),
    EnvVar(
        name="HELIOSTAT_STORAGE",
        default="`file://$HELIOSTAT_HOME/checkpoints`",
        meaning="Where step outputs are checkpointed: any fsspec URL (`file://`, `s3://` "
        "with `s3fs` installed, `gs://`, `memory://`). `hs.init(storage=...)` wins over it.",
        read_by=("heliostat.storage.checkpoints", "heliostat.workflows.services"),
    ),
    EnvVar(
        name="HELIOSTAT_SECRET_KEY",
        default="the key file `$HELIOSTAT_HOME/secret.key`, created on first use",
        meaning="The key that signs stored DAGs and outputs (hex or URL-safe base64, at "
        "least 32 bytes). Set the same value for drivers on several machines sharing "
        "one database.",
        read_by=("heliostat.storage.signing",),
    ),
    EnvVar(
        name="HELIOSTAT_LEASE_TIMEOUT",
        default="{} seconds",
        default_constant="heliostat.workflows.lease:DEFAULT_LEASE_TIMEOUT",
        meaning="How long a workflow's lease lasts without renewal; a driver paused "
        "longer can be taken over, and its stale writes are refused.",
        read_by=("heliostat.workflows.lease",),
    ),
    EnvVar(
        name="HELIOSTAT_DB_RETRY_TIMEOUT",
        default="{} seconds",
        default_constant="heliostat.workflows.lineage:DEFAULT_RETRY_TIMEOUT",
        meaning="How long a driver retries a lost database connection (a PostgreSQL "
        "restart) before it stops with a StorageError; the workflow stays resumable.",
        read_by=("heliostat.workflows.lineage",),
    ),
    EnvVar(
        name="CI",
        default="unset",
        meaning="When set (not `0`/`false`), the command line prints progress as plain "
        "lines (at most one every 5 s), as it does in a log file or a pipe.",
        read_by=("heliostat.cli._status",),
    ),
    EnvVar(
        name="TERM",
        default="set by the terminal",
        meaning="`dumb` turns the command line's redrawn progress line into plain lines.",
        read_by=("heliostat.cli._status",),
    ),
    EnvVar(
        name="HELIOSTAT_TEST_PG_URL",
        default="`postgresql+psycopg://postgres@127.0.0.1:5432/test`",
        meaning="The PostgreSQL server the tests use; without one they skip those tests, "
        "except under `CI=true`, where they fail.",
        read_by=("tests.conftest", "tests.integration.faults.conftest"),
        scope="tests",
    ),
    EnvVar(
        name="HELIOSTAT_FAULT_CAMPAIGN",
        default="3",
        meaning="Kills per backend in the SIGKILL fault campaign.",
        read_by=("tests.integration.faults.test_faults_sigkill",),
        scope="tests",
    ),
    EnvVar(
        name="HELIOSTAT_FAULT_SEED",
        default="random (printed)",
        meaning="Replays a fault campaign with this seed.",
        read_by=("tests.integration.faults.test_faults_sigkill",),
        scope="tests",
    ),
    EnvVar(
        name="HELIOSTAT_FAULT_LAB",
        default="set by the fault lab",
        meaning="Marks the processes a fault test starts, so it can find and stop them; "
        "not for users.",
        read_by=("tests.integration.faults.faultlab",),
        scope="tests",
    ),
)
"""Every variable, the runtime's first."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(scope: str = "runtime") -> str:
    """The variables of ``scope`` as a Markdown table (name, default, meaning)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for var in ENVIRONMENT:
        if var.scope == scope:
            rows.append(f"| `{var.name}` | {_cell(var.default_text())} | {_cell(var.meaning)} |")
    return "\n".join(rows) + "\n"
