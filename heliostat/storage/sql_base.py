"""What every heliostat table shares: the metadata, naming convention, time type, base.

The SQL models live in modules of their own, one per area (:mod:`~heliostat.storage.models`
for workflows, steps, the WAL and schedules; :mod:`~heliostat.storage.cluster_nodes` for
a cluster head's node table), all on the one :data:`metadata` defined here, so Alembic
sees one schema. :mod:`heliostat.storage.models` imports every area, so importing it
(as the migration environment does) registers every table. The choices behind these
definitions are explained in the docstring of :mod:`heliostat.storage.models`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

__all__ = [
    "NAMING_CONVENTION",
    "STATE_LENGTH",
    "Base",
    "UTCDateTime",
    "metadata",
    "state_column_type",
    "utcnow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint and index names, identical on every backend."""

STATE_LENGTH = 16
"""Width of a state column (the longest value, NEEDS_ATTENTION, has 15 characters)."""

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
"""The metadata every heliostat table belongs to (Alembic's ``target_metadata``)."""


def utcnow() -> dt.datetime:
    """The current time as a timezone-aware UTC datetime (what every time column holds)."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL: ``TIMESTAMP WITH TIME ZONE``. SQLite: ISO text of the UTC time, read back
    with ``tzinfo=UTC`` attached. Naive datetimes are refused (``ValueError``), since we
    could only guess their zone.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: heliostat stores only aware times")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":  # SQLite keeps text; drop the offset so text sorts
            return value.replace(tzinfo=None)
        return value

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite: the text SQLAlchemy's DATETIME writes ("YYYY-MM-DD HH:MM:SS.ffffff"),
        # made in one C call (the group commit converts a few of these per workflow
        # step): isoformat of a UTC time, less its "+00:00".
        utc = dt.UTC

        def process(value: dt.datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is not utc:
                if value.tzinfo is None or value.utcoffset() is None:
                    raise ValueError(f"naive datetime {value!r}: heliostat stores only aware times")
                value = value.astimezone(utc)
            return value.isoformat(" ", "microseconds")[:26]

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def state_column_type(enum_cls: type[Any], name: str) -> sa.Enum:
    """The column type of a state: its enum's values in a VARCHAR with a CHECK constraint
    (``native_enum=False``), named ``ck_<table>_<name>`` on every backend."""
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=STATE_LENGTH,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    """Declarative base of the heliostat models (bound to :data:`metadata`)."""

    metadata: ClassVar[sa.MetaData] = metadata
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: sa.JSON(),
        bytes: sa.LargeBinary(),
    }
