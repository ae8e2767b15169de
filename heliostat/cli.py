"""The ``heliostat`` command line.

Only the first commands exist yet; ``heliostat --help`` lists them.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from examples.etl.pipeline import main as demo_main  # the example ships beside the package

    return demo_main(["--days", str(args.days)])


def _cmd_version(args: argparse.Namespace) -> int:
    from heliostat import __version__

    print(__version__)
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from heliostat.storage.db import current_revision, default_db_url, ensure_schema, make_engine

    url = args.url or default_db_url()
    engine = make_engine(url)
    try:
        if args.action == "upgrade":
            revision = ensure_schema(engine)
            print(f"{url}: at revision {revision}")
        else:
            print(current_revision(engine) or "(empty database)")
    finally:
        engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heliostat", description="heliostat command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the ETL example on a local node")
    demo.add_argument("--days", type=int, default=5)
    demo.set_defaults(func=_cmd_demo)
    db = sub.add_parser("db", help="the lineage database: upgrade or show its schema revision")
    db.add_argument("action", choices=["upgrade", "current"])
    db.add_argument("--url", default=None, help="database URL (default: HELIOSTAT_DB_URL)")
    db.set_defaults(func=_cmd_db)
    version = sub.add_parser("version", help="print the installed version")
    version.set_defaults(func=_cmd_version)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
