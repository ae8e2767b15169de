"""``heliostat version`` and ``heliostat demo``."""

from __future__ import annotations

import argparse
from typing import Any

from heliostat.cli._util import EXIT_OK, CliError

__all__ = ["register"]


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the ETL example (examples/etl) as a durable workflow on a local node",
        description="Run the ETL example of a heliostat checkout as a durable workflow.",
    )
    demo.add_argument("--days", type=int, default=5, help="days of data to process (default 5)")
    demo.set_defaults(func=_cmd_demo)
    version = sub.add_parser("version", help="print the installed version")
    version.set_defaults(func=_cmd_version)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from examples.etl.pipeline import main as demo_main
    except ImportError as exc:
        raise CliError(
            f"the ETL example cannot be imported ({exc}); run 'heliostat demo' from the "
            "root of a heliostat checkout"
        ) from exc
    code: int = demo_main(["--days", str(args.days)])
    return code


def _cmd_version(args: argparse.Namespace) -> int:
    from heliostat import __version__

    print(__version__)
    return EXIT_OK
