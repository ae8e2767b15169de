"""Which database, checkpoint store and key a driver joined to a cluster uses."""

from __future__ import annotations

import dataclasses

import pytest

from heliostat.cluster.rpc import WorkflowStores
from heliostat.workflows.cluster_stores import choose_db, choose_key, choose_storage

PG = "postgresql+psycopg://etl:s3cret@db.internal:5432/heliostat"
HEAD = "10.0.0.1:9637"
KEY = b"k" * 32


def published(**changes: object) -> WorkflowStores:
    base = WorkflowStores(
        db_url=PG,
        storage_url="s3://bucket/ckpt",
        storage_configured=True,
        signing_key=KEY,
        head_machine="head/1234",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_joined_driver_uses_the_clusters_database_storage_and_key() -> None:
    db = choose_db(published(), {}, machine="elsewhere/99", head=HEAD)
    assert (db.url, db.from_cluster, db.refusal) == (PG, True, None)
    assert HEAD in db.source
    storage = choose_storage(published(), {}, init_storage=None, machine="elsewhere/99", head=HEAD)
    assert (storage.url, storage.from_cluster) == ("s3://bucket/ckpt", True)
    assert choose_key(published(), {}, db) == KEY


def test_what_the_driver_sets_itself_wins() -> None:
    env = {
        "HELIOSTAT_DB_URL": "sqlite:////tmp/mine.db",
        "HELIOSTAT_STORAGE": "file:///tmp/mine",
    }
    db = choose_db(published(), env, machine="m", head=HEAD)
    assert (db.url, db.from_cluster) == ("sqlite:////tmp/mine.db", False)
    assert "HELIOSTAT_DB_URL" in db.source
    assert choose_key(published(), env, db) is None  # its own database: its own key
    storage = choose_storage(published(), env, init_storage=None, machine="m", head=HEAD)
    assert storage.url == "file:///tmp/mine"
    chosen = choose_storage(published(), env, init_storage="memory://x", machine="m", head=HEAD)
    assert (chosen.url, chosen.source) == ("memory://x", "hs.init(storage=...)")
    # A key of its own, with the cluster's database: the driver's key is kept.
    cluster_db = choose_db(published(), {}, machine="m", head=HEAD)
    assert choose_key(published(), {"HELIOSTAT_SECRET_KEY": "ab" * 32}, cluster_db) is None


def test_without_a_cluster_the_local_defaults_apply() -> None:
    db = choose_db(None, {}, machine="m", head="")
    assert (db.url, db.refusal, db.from_cluster) == (None, None, False)
    storage = choose_storage(None, {}, init_storage=None, machine="m", head="")
    assert (storage.url, storage.refusal) == (None, None)
    assert choose_key(None, {}, db) is None


def test_a_sqlite_database_on_the_heads_machine_is_shared_only_there() -> None:
    stores = published(db_url="sqlite:////home/ann/.heliostat/heliostat.db")
    same = choose_db(stores, {}, machine="head/1234", head=HEAD)
    assert same.url == stores.db_url and same.refusal is None
    other = choose_db(stores, {}, machine="node/5678", head=HEAD)
    assert other.url is None and other.refusal is not None
    assert "SQLite file on the head's machine" in other.refusal
    assert "--db-url postgresql" in other.refusal and "HELIOSTAT_DB_URL" in other.refusal
    memory = choose_db(published(db_url="sqlite://"), {}, machine="head/1234", head=HEAD)
    assert memory.refusal is not None and "head's memory" in memory.refusal


def test_the_heads_default_checkpoint_directory_is_shared_only_on_its_machine() -> None:
    stores = published(
        storage_url="file:///home/ann/.heliostat/checkpoints", storage_configured=False
    )
    same = choose_storage(stores, {}, init_storage=None, machine="head/1234", head=HEAD)
    assert same.url == stores.storage_url and same.refusal is None
    other = choose_storage(stores, {}, init_storage=None, machine="node/1", head=HEAD)
    assert other.refusal is not None and "--storage URL" in other.refusal
    # A directory given with --storage is taken to be shared at the same path.
    shared = published(storage_url="file:///mnt/shared/ckpt", storage_configured=True)
    assert choose_storage(shared, {}, init_storage=None, machine="node/1", head=HEAD).url == (
        "file:///mnt/shared/ckpt"
    )


@pytest.mark.parametrize("text", [repr(published()), str(published())])
def test_the_published_stores_never_show_their_secrets(text: str) -> None:
    assert "s3cret" not in text and repr(KEY) not in text and "kkkk" not in text
