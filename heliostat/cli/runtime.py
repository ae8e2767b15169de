"""``heliostat status`` and ``heliostat list tasks|actors|objects``.

Both look at the live local runtimes, the node managers of driver processes on this
machine (``heliostat.engine.introspect``), each of which answers a snapshot over its
node socket. ``status`` also summarizes the lineage database (workflows by status,
live leases, schedules), whether or not a runtime is running.

The database summary counts rows with one ``GROUP BY`` rather than loading every
workflow, so it stays quick with many runs, and it never creates a database that
does not exist yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from typing import TYPE_CHECKING, Any

from heliostat.cli._util import (
    EXIT_OK,
    add_json_flag,
    first_line,
    format_duration,
    print_json,
    print_table,
)

if TYPE_CHECKING:
    from heliostat.engine.introspect import SessionInfo

__all__ = ["register"]

_KINDS = ("tasks", "actors", "objects")

# Columns shown for each kind (the JSON has every field a runtime reports).
_COLUMNS: dict[str, tuple[str, ...]] = {
    "tasks": ("task_id", "name", "state", "attempt", "worker_pid", "duration"),
    "actors": ("actor_id", "class_name", "name", "state", "pid", "restarts"),
    "objects": ("object_id", "kind", "size", "ref_count", "owner_pid"),
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="local runtimes (resources, workers, object store) and the lineage database",
        description="Show the heliostat runtimes running on this machine (their "
        "resources, workers, object store and tasks), the cluster's nodes when a head "
        "is known (--address, HELIOSTAT_ADDRESS, or the daemons 'heliostat start' "
        "started from this HELIOSTAT_HOME) and a summary of the lineage database "
        "(workflows by status, live leases, schedules).",
    )
    p.add_argument("--address", default=None, metavar="HOST:PORT", help="the cluster head to ask")
    p.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="the cluster token (default HELIOSTAT_TOKEN, else this home's token file)",
    )
    add_json_flag(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "list",
        help="tasks, actors or objects of the local runtimes",
        description="List the tasks, actors or objects of the heliostat runtimes "
        "running on this machine.",
    )
    p.add_argument("kind", choices=_KINDS, help="what to list")
    p.add_argument(
        "--session", default=None, help="only this runtime (a session name from 'status')"
    )
    add_json_flag(p)
    p.set_defaults(func=_cmd_list)


# --- runtimes ------------------------------------------------------------------------


def _sessions(only: str | None = None) -> list[SessionInfo]:
    from heliostat.engine.introspect import live_sessions

    sessions = live_sessions()
    if only is not None:
        sessions = [s for s in sessions if s.session == only]
        if not sessions:
            from heliostat.cli._util import CliError

            raise CliError(f"no live runtime with session {only!r} on this machine")
    return sessions


def _snapshot(session: SessionInfo, what: str) -> tuple[Any, str | None]:
    """(snapshot, None), or (None, why it could not be had)."""
    from heliostat.engine.introspect import snapshot
    from heliostat.exceptions import HeliostatError

    try:
        return snapshot(session, what), None
    except HeliostatError as exc:
        return None, first_line(str(exc))


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _pick(d: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in d:
            return d[name]
    return None


def _print_runtime(session: SessionInfo, status: dict[str, Any] | None, error: str | None) -> None:
    up = format_duration(max(0.0, time.time() - session.started_at))
    print(f"Runtime {session.session} (driver pid {session.pid}, up {up})")
    if status is None:
        print(f"  not answering: {error}")
        return
    total: dict[str, float] = _pick(status, "resources_total", "total") or {}
    free: dict[str, float] = _pick(status, "resources_available", "available") or {}
    print(f"  resources:    {_free(total, free)}")
    workers: list[dict[str, Any]] = status.get("workers") or []
    states: dict[str, int] = {}
    for w in workers:
        states[str(w.get("state"))] = states.get(str(w.get("state")), 0) + 1
    by_state = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    print(f"  workers:      {len(workers)}" + (f" ({by_state})" if by_state else ""))
    store: dict[str, Any] = status.get("object_store") or {}
    used = _pick(store, "used_bytes", "shm_bytes")
    capacity = _pick(store, "capacity_bytes", "shm_limit")
    print(
        f"  object store: {_size(used)} of {_size(capacity)} used, "
        f"{store.get('objects', 0)} objects, {_size(store.get('spilled_bytes', 0))} spilled"
    )
    tasks: dict[str, int] = status.get("tasks") or {}
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(tasks.items()))
    print(f"  tasks:        {counts or 'none yet'}")
    actors = status.get("actors")
    if isinstance(actors, int):
        print(f"  actors:       {actors}")


# --- the lineage database -------------------------------------------------------------


def _db_summary() -> dict[str, Any]:
    """Workflows by status, live leases and schedules, without creating a database."""
    import sqlalchemy as sa

    from heliostat.storage.db import current_revision, default_db_url, make_engine
    from heliostat.storage.models import Workflow

    url = default_db_url()
    shown = sa.make_url(url).render_as_string(hide_password=True)
    summary: dict[str, Any] = {"url": shown, "exists": True}
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        from pathlib import Path

        if not Path(parsed.database).expanduser().exists():
            summary["exists"] = False
            return summary
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
            summary["revision"] = revision
            if revision is None:
                return summary
            wf = Workflow.__table__
            rows = conn.execute(sa.select(wf.c.status, sa.func.count()).group_by(wf.c.status))
            summary["workflows"] = {str(status): int(n) for status, n in rows}
            summary["live_leases"] = _live_leases(conn, revision)
            summary["schedules"] = _schedule_counts(conn)
    finally:
        engine.dispose()
    return summary


def _live_leases(conn: Any, revision: str) -> int:
    """Workflows a driver holds now (leases moved into ``workflows`` at revision 0004)."""
    import sqlalchemy as sa

    from heliostat.storage.models import Workflow

    now = dt.datetime.now(dt.UTC)
    if revision >= "0004":
        expires = Workflow.__table__.c.lease_expires_at
        query = sa.select(sa.func.count()).where(
            Workflow.__table__.c.lease_owner.is_not(None), expires > now
        )
    else:  # a database this heliostat has not migrated yet
        leases = sa.table("leases", sa.column("expires_at", Workflow.__table__.c.created_at.type))
        query = sa.select(sa.func.count()).select_from(leases).where(leases.c.expires_at > now)
    return int(conn.execute(query).scalar_one())


def _schedule_counts(conn: Any) -> dict[str, int] | None:
    """Schedules, active and paused; None for a schema without schedules."""
    import sqlalchemy as sa

    from heliostat.storage.models import Schedule

    # A database not yet upgraded (status never migrates) may predate schedules.
    if not sa.inspect(conn).has_table(Schedule.__tablename__):
        return None
    table = Schedule.__table__
    counts = {
        bool(paused): int(n)
        for paused, n in conn.execute(
            sa.select(table.c.paused, sa.func.count()).group_by(table.c.paused)
        )
    }
    paused, active = counts.get(True, 0), counts.get(False, 0)
    return {"total": paused + active, "active": active, "paused": paused}


def _print_db(summary: dict[str, Any]) -> None:
    print(f"Lineage database {summary['url']}")
    if not summary.get("exists"):
        print("  not created yet (the first workflow or 'heliostat db upgrade' creates it)")
        return
    if summary.get("revision") is None:
        print("  empty: no schema yet ('heliostat db upgrade' creates it)")
        return
    workflows: dict[str, int] = summary.get("workflows") or {}
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(workflows.items()))
    print(f"  schema:       revision {summary['revision']}")
    print(f"  workflows:    {sum(workflows.values())}" + (f" ({by_status})" if by_status else ""))
    print(f"  live leases:  {summary.get('live_leases', 0)}")
    schedules = summary.get("schedules")
    if schedules is not None:
        print(
            f"  schedules:    {schedules['total']} "
            f"({schedules['active']} active, {schedules['paused']} paused)"
        )


def _print_cluster(cluster: dict[str, Any]) -> None:
    print(f"Cluster at {cluster['address']}")
    if "error" in cluster:
        print(f"  not answering: {first_line(cluster['error'])}")
        return
    alive = sum(1 for n in cluster["nodes"] if n["state"] in ("ALIVE", "SUSPECT"))
    print(f"  cluster id:   {cluster['cluster_id']} (heliostat {cluster['version']})")
    print(f"  nodes:        {alive} alive of {len(cluster['nodes'])}")
    print(f"  resources:    {_free(cluster['total'], cluster['available'])}")
    now = time.time()
    rows = []
    for n in cluster["nodes"]:
        beat = n["last_heartbeat_at"]
        rows.append(
            [
                n["node_id"],  # in full: NodeAffinitySchedulingStrategy takes it
                n["state"] + (" (head)" if n["is_head"] else ""),
                n["address"],
                n["pid"],
                _resources(n["total"]),
                f"{n.get('objects', 0)} ({_size(n.get('object_bytes', 0))})",
                "-" if beat is None else format_duration(max(0.0, now - beat)) + " ago",
            ]
        )
    if rows:
        print_table(
            ["node", "state", "address", "pid", "resources", "objects", "last heartbeat"], rows
        )


_BYTE_RESOURCES = ("memory", "object_store_memory")


def _amount(key: str, value: float) -> str:
    """A resource's amount: bytes as GiB, anything else as the number it is."""
    return f"{value / 2**30:.1f} GiB" if key in _BYTE_RESOURCES else f"{value:g}"


def _resources(total: dict[str, float]) -> str:
    """``CPU 2, memory 14.3 GiB, object_store_memory 6.1 GiB``: bytes read as sizes."""
    return ", ".join(f"{key} {_amount(key, value)}" for key, value in sorted(total.items())) or "-"


def _free(total: dict[str, float], available: dict[str, float]) -> str:
    """``CPU 1/2 free, memory 15.3/15.3 GiB free``: what is free of each resource."""
    parts = []
    for key, value in sorted(total.items()):
        free = available.get(key, 0)
        if key in _BYTE_RESOURCES:
            parts.append(f"{key} {free / 2**30:.1f}/{value / 2**30:.1f} GiB free")
        else:
            parts.append(f"{key} {free:g}/{value:g} free")
    return ", ".join(parts) or "-"


def _cmd_status(args: argparse.Namespace) -> int:
    from heliostat.cli.cluster import cluster_summary

    runtimes = []
    for session in _sessions():
        snap, error = _snapshot(session, "status")
        runtimes.append((session, snap, error))
    cluster = cluster_summary(args.address, args.token)
    db = _db_summary()
    if args.json:
        print_json(
            {
                "runtimes": [
                    {
                        "session": s.session,
                        "pid": s.pid,
                        "started_at": dt.datetime.fromtimestamp(s.started_at, dt.UTC),
                        "status": snap,
                        "error": error,
                    }
                    for s, snap, error in runtimes
                ],
                "cluster": cluster,
                "database": db,
            }
        )
        return EXIT_OK
    if not runtimes:
        print("No local heliostat runtime is running (a driver that called hs.init() has one).")
    for session, snap, error in runtimes:
        _print_runtime(session, snap, error)
    if cluster is not None:
        print()
        _print_cluster(cluster)
    print()
    _print_db(db)
    return EXIT_OK


def _cell(kind: str, column: str, row: dict[str, Any]) -> Any:
    if column == "duration" and kind == "tasks":
        start, finish = row.get("started_at"), row.get("finished_at")
        if start is None:
            return "-"
        return format_duration((finish or time.time()) - start)
    if column == "size":
        return _size(row.get("size"))
    value = row.get(column)
    return "-" if value in (None, "") else value


def _cmd_list(args: argparse.Namespace) -> int:
    sessions = _sessions(args.session)
    rows: list[dict[str, Any]] = []
    failed = []
    for session in sessions:
        snap, error = _snapshot(session, args.kind)
        if snap is None:
            failed.append(f"runtime {session.session} (pid {session.pid}): {error}")
            continue
        rows.extend({"session": session.session, **item} for item in snap)
    for line in failed:
        sys.stderr.write(f"heliostat: {line}\n")
    if not sessions:
        sys.stderr.write("heliostat: no local heliostat runtime is running\n")
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        if sessions:
            sys.stderr.write(f"heliostat: no {args.kind}\n")
        return EXIT_OK
    columns = _COLUMNS[args.kind]
    multi = len(sessions) > 1
    headers = (["session"] if multi else []) + [c.replace("_", " ") for c in columns]
    print_table(
        headers,
        [
            ([row["session"]] if multi else []) + [_cell(args.kind, c, row) for c in columns]
            for row in rows
        ],
    )
    return EXIT_OK
