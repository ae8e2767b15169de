"""Waiting on a condition with a timeout, for tests (never a bare sleep for state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["poll_for"]


def poll_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    *,
    what: str,
    interval: float = 0.01,
) -> Any:
    """Call ``predicate`` until it returns something truthy; return that.

    Fails the test with a message naming ``what`` was awaited (and the last value seen)
    when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last value: {last!r})")
        time.sleep(interval)
