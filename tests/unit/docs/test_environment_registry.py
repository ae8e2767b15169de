"""The configuration table's registry agrees with the code that reads the variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from heliostat._environment import ENVIRONMENT, EnvVar, render_table

REPO = Path(__file__).resolve().parents[3]
NAME = re.compile(r"\bHELIOSTAT_[A-Z0-9]+(?:_[A-Z0-9]+)*\b")
REGISTRY = REPO / "heliostat" / "_environment.py"


def _names_in(root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if path == REGISTRY:
            continue
        for name in set(NAME.findall(path.read_text())):
            found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


def _source(module: str) -> str:
    base = REPO.joinpath(*module.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    return path.read_text()


def test_every_variable_the_package_mentions_is_registered() -> None:
    registered = {v.name for v in ENVIRONMENT if v.scope == "runtime"}
    missing = {
        n: where for n, where in _names_in(REPO / "heliostat").items() if n not in registered
    }
    assert not missing, f"add these to heliostat/_environment.py: {missing}"


def test_every_variable_the_tests_read_is_registered() -> None:
    registered = {v.name for v in ENVIRONMENT}
    # Names the tests only strip from a child's environment, or read as the package does.
    missing = {
        n: where
        for n, where in _names_in(REPO / "tests").items()
        if n not in registered and n != "HELIOSTAT_ADDRESS"
    }
    assert not missing, f"add these to heliostat/_environment.py: {missing}"


@pytest.mark.parametrize("var", ENVIRONMENT, ids=lambda v: v.name)
def test_each_registered_variable_is_read_where_the_registry_says(var: EnvVar) -> None:
    assert var.read_by
    for module in var.read_by:
        assert var.name in _source(module), f"{module} does not mention {var.name}"


def test_defaults_come_from_the_constants_in_code() -> None:
    from heliostat.workflows.lease import DEFAULT_LEASE_TIMEOUT
    from heliostat.workflows.lineage import DEFAULT_RETRY_TIMEOUT

    table = render_table()
    lease = next(v for v in ENVIRONMENT if v.name == "HELIOSTAT_LEASE_TIMEOUT")
    retry = next(v for v in ENVIRONMENT if v.name == "HELIOSTAT_DB_RETRY_TIMEOUT")
    assert lease.default_text() == f"{DEFAULT_LEASE_TIMEOUT:g} seconds"
    assert retry.default_text() == f"{DEFAULT_RETRY_TIMEOUT:g} seconds"
    assert f"| `HELIOSTAT_LEASE_TIMEOUT` | {DEFAULT_LEASE_TIMEOUT:g} seconds |" in table


def test_render_table_has_one_row_per_variable_of_the_scope() -> None:
    for scope in ("runtime", "tests"):
        rows = render_table(scope).splitlines()[2:]
        names = [v.name for v in ENVIRONMENT if v.scope == scope]
        assert [r.split("`")[1] for r in rows] == names
    assert "HELIOSTAT_TEST_PG_URL" not in render_table()
