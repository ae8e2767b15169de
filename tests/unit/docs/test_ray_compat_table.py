"""The porting table is computed from the code: statuses follow what resolves."""

from __future__ import annotations

import heliostat
from heliostat import exceptions
from heliostat._ray_compat import (
    OWN_NAMES,
    RAY_NAMES,
    RayName,
    render_table,
    resolve,
    resolved_path,
)


def test_resolve_finds_attributes_submodules_and_lazy_names() -> None:
    assert resolve("heliostat.get")
    assert resolve("heliostat.exceptions.ActorDiedError")
    assert resolve("heliostat.workflow.run")  # a lazy attribute of the package
    assert resolve("heliostat.storage.checkpoints")  # a submodule not imported yet
    assert not resolve("heliostat.no_such_name")
    assert not resolve("heliostat.exceptions.NoSuchError")
    assert not resolve("heliostat.no_such_module.Thing")
    assert not resolve("no_such_package.x")


def test_every_public_heliostat_name_is_classified() -> None:
    public = {f"heliostat.{n}" for n in heliostat.__all__}
    public |= {f"heliostat.exceptions.{n}" for n in exceptions.__all__}
    public |= {f"heliostat.workflow.{n}" for n in heliostat.workflow.__all__}
    counterparts = {path for entry in RAY_NAMES for path in entry.candidates()}
    unclassified = sorted(public - counterparts - OWN_NAMES)
    assert not unclassified, (
        f"classify these in heliostat/_ray_compat.py (a Ray name in RAY_NAMES, or "
        f"OWN_NAMES): {unclassified}"
    )
    stale = sorted(n for n in OWN_NAMES if not resolve(n))
    assert not stale, f"OWN_NAMES names that no longer exist: {stale}"


def test_ray_names_are_unique_and_dotted_under_ray() -> None:
    names = [e.ray for e in RAY_NAMES]
    assert len(names) == len(set(names))
    assert all(n.startswith("ray.") for n in names)


def test_the_table_marks_exactly_the_names_that_resolve() -> None:
    table = render_table()
    for entry in RAY_NAMES:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{entry.ray}` |"))
        found = resolved_path(entry)
        if found is None:
            assert "| no |" in row, row
        else:
            assert f"| yes: `{found}` |" in row, row
    assert "| `ray.get` | yes: `heliostat.get` |" in table
    assert "| `ray.client` | no |" in table


def test_render_table_follows_the_resolver_it_is_given() -> None:
    entries = [
        RayName(ray="ray.a", group="G1"),
        RayName(ray="ray.b", group="G1", note="x | y"),
        RayName(ray="ray.c", group="G2", heliostat=("heliostat.c1", "heliostat.c2")),
    ]
    exists = {"heliostat.a", "heliostat.c2"}.__contains__
    table = render_table(entries, exists)
    assert table.splitlines() == [
        "### G1",
        "",
        "| Ray | heliostat | Notes |",
        "| --- | --- | --- |",
        "| `ray.a` | yes: `heliostat.a` |  |",
        "| `ray.b` | no | x \\| y |",
        "",
        "### G2",
        "",
        "| Ray | heliostat | Notes |",
        "| --- | --- | --- |",
        "| `ray.c` | yes: `heliostat.c2` |  |",
    ]
