"""MkDocs hook: fills the pages' generated sections from the code at build time.

A page asks for a section with an HTML comment on a line of its own,
``<!-- generated: NAME -->``; the hook replaces it with Markdown computed now:

* ``ray-compat``: the porting table; each Ray name is looked up in heliostat, so the
  table says what the code provides (``heliostat._ray_compat``).
* ``environment`` / ``environment-tests``: the environment variables
  (``heliostat._environment``).
* ``cli``: every command of ``heliostat``, from its argparse parser (``cli_reference``).

An unknown name fails the build, so a typo cannot leave a page silently empty.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

_HERE = str(Path(__file__).resolve().parent)

_MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


def _sections() -> dict[str, Callable[[], str]]:
    from heliostat import _environment, _ray_compat

    if _HERE not in sys.path:  # MkDocs loads a hook by path, not as a package
        sys.path.insert(0, _HERE)
    from cli_reference import render_cli

    return {
        "ray-compat": _ray_compat.render_table,
        "environment": lambda: _environment.render_table("runtime"),
        "environment-tests": lambda: _environment.render_table("tests"),
        "cli": render_cli,
    }


def expand(markdown: str, sections: dict[str, Callable[[], str]], where: str) -> str:
    """``markdown`` with every generated-section marker replaced by its content."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in sections:
            raise PluginError(
                f"{where}: unknown generated section {name!r} (known: {', '.join(sections)})"
            )
        return sections[name]()

    return _MARKER.sub(fill, markdown)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    return expand(markdown, _sections(), page.file.src_path)
