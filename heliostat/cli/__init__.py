"""The ``heliostat`` command line: ``heliostat --help`` lists the commands.

One module per command group (``run``, ``workflow``, ``schedule``, ``runtime`` for
``status`` and ``list``, ``db``, ``misc``); ``_app`` builds the parser and maps errors
to exit codes; ``_util`` holds the conventions they share (see its docstring). The
console script is ``heliostat.cli:main``; ``python -m heliostat.cli`` runs it too.
"""

from __future__ import annotations

from heliostat.cli._app import main

__all__ = ["main"]
