"""The docs build's hook: generated sections, and the CLI reference from the parser."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
HOOKS = REPO / "docs" / "hooks"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(HOOKS))
    try:
        spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(HOOKS))


def test_expand_replaces_markers_and_refuses_unknown_names() -> None:
    pytest.importorskip("mkdocs")
    from mkdocs.exceptions import PluginError

    generated = _load("generated")
    sections = {"a": lambda: "A-TABLE", "b": lambda: "B"}
    page = "# T\n\n<!-- generated: a -->\n\ntext <!-- generated: b --> inline\n"
    assert generated.expand(page, sections, "p.md") == (
        "# T\n\nA-TABLE\n\ntext <!-- generated: b --> inline\n"
    )
    with pytest.raises(PluginError, match=r"p\.md: unknown generated section 'zz'"):
        generated.expand("<!-- generated: zz -->\n", sections, "p.md")


def test_every_marker_in_the_pages_names_a_known_section() -> None:
    pytest.importorskip("mkdocs")
    generated = _load("generated")
    known = generated._sections()
    used = {
        name
        for page in (REPO / "docs").rglob("*.md")
        for name in re.findall(r"^<!-- generated: ([a-z-]+) -->$", page.read_text(), re.M)
    }
    assert used == set(known)  # each section is shown, and none is unknown


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*path, name))
                out += _leaves(sub, (*path, name))
    return out


def test_cli_reference_has_a_section_with_the_help_of_every_command() -> None:
    from heliostat.cli._app import build_parser

    text = _load("cli_reference").render_cli()
    commands = _leaves(build_parser(), ("heliostat",))
    assert ("heliostat", "workflow", "resolve") in commands
    for command in commands:
        heading = re.search(rf"^#+ {re.escape(' '.join(command))}$", text, re.M)
        assert heading, f"no section for {' '.join(command)}"
        assert f"usage: {' '.join(command)}" in text[heading.end() :]
