"""The command-line reference, rendered from the ``heliostat`` argparse parser."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias of a command already listed
                continue
            seen.add(id(sub))
            yield (*path, name), helps.get(name, ""), sub
            yield from _commands(sub, (*path, name))


def render_cli(parser: argparse.ArgumentParser | None = None) -> str:
    """One section per command: its summary, then its ``--help`` text verbatim."""
    if parser is None:
        from heliostat.cli._app import build_parser

        parser = build_parser()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps to this width; keep builds stable
    try:
        out = ["### heliostat", "", "```text", parser.format_help().rstrip(), "```", ""]
        for path, summary, sub in _commands(parser, ("heliostat",)):
            out += [f"{'#' * min(len(path) + 2, 5)} {' '.join(path)}", ""]
            if summary:
                out += [summary[0].upper() + summary[1:] + ".", ""]
            out += ["```text", sub.format_help().rstrip(), "```", ""]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out)
