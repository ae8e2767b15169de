"""How a time column's value is written to SQLite (no database needed)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from heliostat.storage.sql_base import UTCDateTime

_DIALECT = sqlite.dialect()


def _ours() -> sa.types.TypeEngine[dt.datetime]:
    return UTCDateTime()


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 11, 21, 12, 30, 5, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 21, 12, 30, 5, tzinfo=dt.UTC),  # no microseconds
        dt.datetime(2026, 11, 21, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(2026, 1, 1, 0, 15, 7, 9, tzinfo=dt.timezone(dt.timedelta(hours=9))),
        dt.datetime(5, 1, 2, 3, 4, 5, tzinfo=dt.UTC),  # a year of fewer than 4 digits
    ],
)
def test_sqlite_text_is_what_sqlalchemy_writes_for_the_utc_time(value: dt.datetime) -> None:
    ours = _ours().bind_processor(_DIALECT)
    stock = sa.DateTime().dialect_impl(_DIALECT).bind_processor(_DIALECT)
    assert ours is not None and stock is not None

    assert ours(value) == stock(value.astimezone(dt.UTC).replace(tzinfo=None))


def test_sqlite_refuses_a_naive_time() -> None:
    process = _ours().bind_processor(_DIALECT)
    assert process is not None

    with pytest.raises(ValueError, match="naive datetime"):
        process(dt.datetime(2026, 11, 21, 12, 0))
    assert process(None) is None
