"""The pure parts of generator tasks and async actors: ``num_returns`` parsing, the
node manager's stream record, and what makes a class an async actor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from heliostat.engine.async_actor import is_async_class
from heliostat.engine.streams import (
    DYNAMIC,
    STREAMING,
    StreamState,
    is_generator_function,
    parse_num_returns,
)


def _reply_log() -> tuple[list[tuple[bool, Any]], Any]:
    log: list[tuple[bool, Any]] = []

    def reply(ok: bool, value: Any) -> None:
        log.append((ok, value))

    return log, reply


# --- num_returns ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "generator", "expected"),
    [
        (None, False, 1),
        (None, True, STREAMING),
        ("streaming", False, STREAMING),
        ("dynamic", True, DYNAMIC),
        (3, True, 3),
    ],
)
def test_parse_num_returns(value: Any, generator: bool, expected: int) -> None:
    assert parse_num_returns(value, what="f", generator=generator) == expected


@pytest.mark.parametrize("value", [1.0, True, [1], b"streaming"])
def test_num_returns_of_the_wrong_type_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match=r"num_returns .* for f"):
        parse_num_returns(value, what="f", generator=False)


@pytest.mark.parametrize("value", [0, -2, "stream", "STREAMING"])
def test_num_returns_out_of_range_or_unknown_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="for f"):
        parse_num_returns(value, what="f", generator=False)


def test_generator_functions_are_recognised() -> None:
    def plain() -> int:
        return 1

    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    async def coro() -> int:
        return 1

    assert [is_generator_function(f) for f in (plain, gen, agen, coro)] == [
        False,
        True,
        True,
        False,
    ]


# --- StreamState ----------------------------------------------------------------------


def test_items_are_stored_in_order_and_replays_refused() -> None:
    stream = StreamState(owner=0)
    assert stream.accepts(0) and not stream.accepts(1)
    stream.add(11)
    stream.add(12)
    # A retry replays the generator from the start: its first two items are old.
    assert not stream.accepts(0) and not stream.accepts(1)
    assert stream.accepts(2)
    assert stream.items == [11, 12]


def test_lookup_answers_known_items_end_or_wait() -> None:
    stream = StreamState(owner=0)
    assert stream.lookup(0) is None
    stream.add(5)
    assert stream.lookup(0) == 5
    assert stream.lookup(1) is None
    stream.finish()
    assert stream.lookup(1) == 0  # the end
    assert stream.delivered == 1


def test_add_wakes_only_the_waiter_of_that_index() -> None:
    stream = StreamState(owner=0)
    _log, reply = _reply_log()
    stream.waiters = [(0, 1, reply), (1, 2, reply)]
    woken = stream.add(7)
    assert [w[:2] for w in woken] == [(0, 1)]
    assert [w[:2] for w in stream.waiters] == [(1, 2)]
    assert stream.delivered == 1


def test_finish_wakes_every_waiter_and_refuses_more_items() -> None:
    stream = StreamState(owner=0)
    _log, reply = _reply_log()
    stream.waiters = [(0, 1, reply)]
    assert [w[:2] for w in stream.finish()] == [(0, 1)]
    assert stream.waiters == []
    assert not stream.accepts(0)


def test_drop_returns_what_the_caller_never_received() -> None:
    stream = StreamState(owner=3)
    for oid in (1, 2, 3):
        stream.add(oid)
    assert stream.lookup(0) == 1
    assert stream.drop() == [2, 3]
    assert stream.dropped and not stream.accepts(3)
    assert stream.drop() == []  # nothing left to release twice


# --- async actor classes ----------------------------------------------------------------


def test_a_class_with_an_async_method_is_an_async_actor() -> None:
    class Plain:
        def f(self) -> int:
            return 1

    class WithCoroutine(Plain):
        async def g(self) -> int:
            return 2

    class WithAsyncGenerator:
        async def h(self) -> AsyncIterator[int]:
            yield 1

    assert not is_async_class(Plain)
    assert is_async_class(WithCoroutine)
    assert is_async_class(WithAsyncGenerator)
