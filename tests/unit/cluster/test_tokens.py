"""Cluster tokens are safe to paste after ``--token`` on a command line."""

from __future__ import annotations

import secrets

import pytest

from heliostat.cluster import auth


def test_a_new_token_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = iter(["-starts-like-an-option", "_fine", "unused"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert auth.new_token() == "_fine"
    monkeypatch.undo()
    tokens = {auth.new_token() for _ in range(2000)}
    assert len(tokens) == 2000 and not any(t.startswith("-") for t in tokens)
    assert all(len(t) >= 40 for t in tokens)  # 32 random bytes, base64
