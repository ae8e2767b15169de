"""Statements compiled once per database and run on the DBAPI cursor (hot paths).

The workflow group commit runs on every executor turn, a few statements each; going
through SQLAlchemy's ``Connection.execute`` costs about 0.1 ms per statement in Python
(parameter processing, result set-up, events), which was most of a durable chain
step's cost. :class:`Prepared` works the SQL text, the order of its parameters and each
parameter's bind processor (the column type's conversion, e.g. ``UTCDateTime``) out
once; a row then becomes a parameter tuple (or dict) by one ``itemgetter`` call plus
the conversions, each distinct value converted once per batch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from heliostat.exceptions import HeliostatInternalError

__all__ = ["Prepared", "PreparedCache"]


class Prepared:
    """One DML statement compiled once for a dialect (see the module docstring)."""

    __slots__ = ("_convert", "_fixed", "_get", "_names", "_positional", "sql")

    def __init__(
        self,
        stmt: Any,
        dialect: Any,
        keys: Iterable[str] | None = None,
        processors: dict[str, Any] | None = None,
    ) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        self.sql: str = compiled.string
        self._positional: bool = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if self._positional else list(compiled.binds)
        given = set(keys or ())
        self._names = names
        self._convert: list[tuple[int, Any]] = []
        self._fixed: dict[str, Any] = {}
        for i, name in enumerate(names):
            bind = compiled.binds[name]
            # Columns of one type share one converter, so a value bound to several
            # columns of a batch (its timestamp) is converted once (see params).
            type_key = repr(bind.type)
            if processors is not None and type_key in processors:
                proc = processors[type_key]
            else:
                proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if processors is not None:
                    processors[type_key] = proc
            if proc is not None:
                self._convert.append((i, proc))
            if bind.required or name in given:
                continue  # each row gives it
            if bind.callable is not None:  # a Python-side default: give it in the rows
                raise HeliostatInternalError(f"{name!r} of {self.sql!r} needs a value per row")
            self._fixed[name] = bind.value  # a literal of .values(...)
        if not names:
            self._get: Callable[[dict[str, Any]], Any] = lambda row: ()
        elif len(names) == 1:
            only = names[0]
            self._get = lambda row: (row[only],)
        else:
            self._get = operator.itemgetter(*names)

    def params(
        self, rows: list[dict[str, Any]], done: dict[tuple[int, int], Any] | None = None
    ) -> list[Any]:
        """The DBAPI parameters of ``rows``.

        Rows share most values (the batch's one timestamp, the workflow id, states):
        each distinct object is converted once per ``done`` memo (one per transaction
        may serve several statements). The caller keeps the rows alive while the memo
        lives, so the ids it is keyed by are not reused meanwhile.
        """
        get, fixed, convert = self._get, self._fixed, self._convert
        if done is None:
            done = {}
        out: list[Any] = []
        for row in rows:
            values = list(get({**fixed, **row} if fixed else row))
            for i, proc in convert:
                v = values[i]
                key = (id(proc), id(v))
                if key in done:
                    values[i] = done[key]
                else:
                    values[i] = done[key] = proc(v)
            out.append(
                tuple(values) if self._positional else dict(zip(self._names, values, strict=True))
            )
        return out


class PreparedCache:
    """:class:`Prepared` statements of one database, by statement and row shape."""

    def __init__(self, dialect: Any) -> None:
        self._dialect = dialect
        self._prepared: dict[tuple[int, tuple[str, ...]], Prepared] = {}
        self._processors: dict[str, Any] = {}

    def run(
        self,
        cursor: Any,
        stmt: Any,
        rows: list[dict[str, Any]],
        memo: dict[tuple[int, int], Any] | None = None,
    ) -> int:
        """Execute ``stmt`` once per row (``executemany`` for several); returns rowcount.

        ``memo``: converted values shared by the statements of one transaction.
        """
        if not rows:
            return 0
        prepared = self._get(stmt, rows[0])
        if len(rows) == 1:
            cursor.execute(prepared.sql, prepared.params(rows, memo)[0])
        else:
            cursor.executemany(prepared.sql, prepared.params(rows, memo))
        return int(cursor.rowcount)

    def _get(self, stmt: Any, row: dict[str, Any]) -> Prepared:
        key = (id(stmt), tuple(row))
        prepared = self._prepared.get(key)
        if prepared is None:
            keys = row if isinstance(stmt, sa.Insert) else None  # an INSERT names its columns
            prepared = self._prepared[key] = Prepared(stmt, self._dialect, keys, self._processors)
        return prepared
