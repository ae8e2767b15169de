"""Which lineage database, checkpoint store and signing key a driver's workflows use.

A driver joined to a cluster records its workflows where the cluster does (the head's
``--db-url`` and ``--storage``, published by the head to token holders), so that a
workflow whose driver died can be resumed by a driver on any node. What the driver
sets itself wins. Pure decisions, no I/O: the caller passes what the head published,
the environment and this machine's identity (:func:`heliostat.cluster.local.machine_id`).

Order, first match wins:

* database: ``HELIOSTAT_DB_URL`` on the driver; the cluster's; the default SQLite
  under ``HELIOSTAT_HOME``;
* checkpoints: ``hs.init(storage=...)``; ``HELIOSTAT_STORAGE`` on the driver; the
  cluster's; the default under ``HELIOSTAT_HOME``;
* signing key: ``HELIOSTAT_SECRET_KEY`` on the driver; the cluster's when its
  database is the cluster's; the key file under ``HELIOSTAT_HOME``.

What lives on the head's machine only (a SQLite file, the default checkpoint directory
under the head's home) is shared with drivers on that machine, and refused, with what to
do instead, to a driver elsewhere: using a local file of the same name would split the
cluster's workflows silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heliostat.cluster.rpc import WorkflowStores

__all__ = ["StoreChoice", "choose_db", "choose_key", "choose_storage", "hide_password"]

DB_ENV = "HELIOSTAT_DB_URL"
STORAGE_ENV = "HELIOSTAT_STORAGE"
KEY_ENV = "HELIOSTAT_SECRET_KEY"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreChoice:
    """A store to use: ``url`` (``None``: this machine's default), where that choice came
    from (for messages), or why none can be used (``refusal``)."""

    url: str | None
    source: str
    from_cluster: bool = False
    refusal: str | None = None


def hide_password(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: show nothing of it
        return "<an unparsable URL>"


def _sqlite_database(url: str) -> str | None:
    """The database part of a SQLite URL (``""`` for an in-memory one); None otherwise."""
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except Exception:
        return None
    if not parsed.drivername.startswith("sqlite"):
        return None
    return parsed.database or ""


def choose_db(
    published: WorkflowStores | None,
    env: Mapping[str, str],
    *,
    machine: str,
    head: str,
) -> StoreChoice:
    """The lineage database (see the module docstring for the order).

    Args:
        published: what the head publishes (``None``: not joined, or a head that
            publishes nothing).
        env: the driver's environment.
        machine: this machine's identity.
        head: the head's address, for messages.
    """
    if env.get(DB_ENV):
        return StoreChoice(url=env[DB_ENV], source=f"the environment variable {DB_ENV}")
    if published is None or not published.db_url:
        return StoreChoice(url=None, source="the default under HELIOSTAT_HOME")
    source = f"the cluster's database (the head at {head}, its --db-url)"
    database = _sqlite_database(published.db_url)
    if database is not None and database in ("", ":memory:"):
        return StoreChoice(
            url=None,
            source=source,
            refusal=(
                f"The cluster's lineage database ({hide_password(published.db_url)}) lives "
                "in the head's memory: no driver can share it. Start the head with "
                f"--db-url postgresql+psycopg://..., or set {DB_ENV} on this driver."
            ),
        )
    if database is not None and published.head_machine != machine:
        return StoreChoice(
            url=None,
            source=source,
            refusal=(
                f"The cluster's lineage database is a SQLite file on the head's machine "
                f"({hide_password(published.db_url)} at {head}); a driver on another "
                "machine cannot share it. Start the head with --db-url "
                f"postgresql+psycopg://... (a database every driver reaches), or set {DB_ENV} "
                "on this driver to record its workflows in a database of its own."
            ),
        )
    return StoreChoice(url=published.db_url, source=source, from_cluster=True)


def choose_storage(
    published: WorkflowStores | None,
    env: Mapping[str, str],
    *,
    init_storage: str | None,
    machine: str,
    head: str,
) -> StoreChoice:
    """The checkpoint store (see the module docstring for the order).

    Args:
        init_storage: what ``hs.init(storage=...)`` / ``workflow.init`` chose, if anything.
        The others: as for :func:`choose_db`.
    """
    if init_storage:
        return StoreChoice(url=init_storage, source="hs.init(storage=...)")
    if env.get(STORAGE_ENV):
        return StoreChoice(url=env[STORAGE_ENV], source=f"the environment variable {STORAGE_ENV}")
    if published is None or not published.storage_url:
        return StoreChoice(url=None, source="the default under HELIOSTAT_HOME")
    if not published.storage_configured:
        source = f"the cluster's checkpoint store (the default under the head's home, at {head})"
        if published.head_machine != machine:
            return StoreChoice(
                url=None,
                source=source,
                refusal=(
                    "The cluster's checkpoint store is the default directory under the "
                    f"head's HELIOSTAT_HOME ({published.storage_url}), on the head's machine; "
                    "a driver on another machine cannot share it. Start the head with "
                    "--storage URL (a store every node and driver reaches: s3://..., or a "
                    f"directory shared at the same path), or set {STORAGE_ENV} or "
                    "hs.init(storage=...) on this driver."
                ),
            )
        return StoreChoice(url=published.storage_url, source=source, from_cluster=True)
    return StoreChoice(
        url=published.storage_url,
        source=f"the cluster's checkpoint store (the head at {head}, its --storage)",
        from_cluster=True,
    )


def choose_key(
    published: WorkflowStores | None, env: Mapping[str, str], db: StoreChoice
) -> bytes | None:
    """The cluster's signing key when the workflows use the cluster's database and the
    driver sets no ``HELIOSTAT_SECRET_KEY``; ``None``: this installation's own key."""
    if env.get(KEY_ENV) or not db.from_cluster or published is None:
        return None
    return published.signing_key or None
