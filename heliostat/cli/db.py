"""``heliostat db upgrade|current``: the lineage database's schema."""

from __future__ import annotations

import argparse
from typing import Any

from heliostat.cli._util import EXIT_OK

__all__ = ["register"]


def register(sub: Any) -> None:
    db = sub.add_parser(
        "db",
        help="the lineage database: upgrade it or show its schema revision",
        description="Upgrade the lineage database to this heliostat's schema, or show "
        "the revision it is at.",
    )
    db.add_argument(
        "action",
        choices=["upgrade", "current"],
        help="upgrade: migrate to the newest schema; current: print the revision",
    )
    db.add_argument(
        "--url", default=None, help="database URL (default: HELIOSTAT_DB_URL, else SQLite)"
    )
    db.set_defaults(func=_cmd_db)


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
    return EXIT_OK
