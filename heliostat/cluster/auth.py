"""The cluster token, and the gRPC interceptor that demands it on every call.

Why a token from the first day: a cluster runs whatever code its callers send, so an
open control port is remote code execution for anyone who can reach it (Ray's
dashboard job API was exactly that, CVE-2023-48022). heliostat's head therefore:

1. creates a random token (32 bytes from :mod:`secrets`, URL-safe text) the first time
   it starts, in ``$HELIOSTAT_HOME/cluster/token`` with mode ``0600``, and reuses it
   when it restarts, so nodes that hold it rejoin a restarted head without help;
2. refuses every gRPC call whose ``authorization`` metadata is not ``bearer <token>``
   with ``UNAUTHENTICATED``, and logs the refusal (method and peer, never the token);
3. compares tokens with :func:`hmac.compare_digest`, so the time a refusal takes does
   not tell how much of a guess was right;
4. binds to 127.0.0.1 unless told otherwise, and serves TLS when given a certificate
   and key (without TLS the token crosses the network in clear: use TLS off loopback).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import grpc

from heliostat.storage.home import PRIVATE_FILE_MODE, make_private_dirs

__all__ = [
    "AUTH_METADATA_KEY",
    "TOKEN_BYTES",
    "TokenInterceptor",
    "call_metadata",
    "cluster_id_of",
    "ensure_token_file",
    "read_token_file",
    "tokens_match",
]

log = logging.getLogger("heliostat.cluster")

AUTH_METADATA_KEY: Final = "authorization"
"""The gRPC metadata entry that carries ``bearer <token>``."""

TOKEN_BYTES: Final = 32
"""Random bytes in a new cluster token."""

_SCHEME: Final = "bearer"


def tokens_match(given: str, expected: str) -> bool:
    """Whether ``given`` is ``expected``, compared in constant time."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def cluster_id_of(token: str) -> str:
    """A public id of the cluster: the start of the token's SHA-256 (reveals nothing)."""
    return hashlib.sha256(b"heliostat cluster id\0" + token.encode("utf-8")).hexdigest()[:16]


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with each call."""
    return ((AUTH_METADATA_KEY, f"{_SCHEME} {token}"),)


def read_token_file(path: str | os.PathLike[str]) -> str | None:
    """The token stored at ``path``, or ``None`` when there is no such file.

    Raises:
        PermissionError: the file exists but this user cannot read it.
        ValueError: the file is empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not text:
        raise ValueError(f"the cluster token file {path} is empty; delete it to make a new one")
    return text


def new_token() -> str:
    """A random cluster token (URL-safe base64 of ``TOKEN_BYTES`` bytes).

    Never one that starts with ``-``: pasted after ``--token`` on a command line, it
    would be read as an option (one token in 64 did).
    """
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def ensure_token_file(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """The token at ``path``, created (mode ``0600``) when there is none.

    The new file is written under a temporary name and renamed, so a reader never
    sees half a token; two heads racing to create it both end up with the winner's.

    Returns:
        ``(token, created)``.
    """
    existing = read_token_file(path)
    if existing is not None:
        return existing, False
    target = Path(path)
    make_private_dirs(target.parent)
    token = new_token()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.write(fd, (token + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, target)  # fails if another head created it meanwhile
    except FileExistsError:
        os.unlink(tmp)
        winner = read_token_file(target)
        assert winner is not None
        return winner, False
    os.unlink(tmp)
    return token, True


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with the cluster token; refuses it otherwise.

    The refusal is a handler of its own (so it has the call's context to name the
    peer in the log line) that aborts with ``UNAUTHENTICATED``.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the cluster token must not be empty")
        self._token = token

    def _check(self, metadata: Any) -> str | None:
        """``None`` when the token is right, else why the call is refused."""
        value = ""
        for key, item in metadata or ():
            if key == AUTH_METADATA_KEY:
                value = item if isinstance(item, str) else item.decode("utf-8", "replace")
                break
        if not value:
            return "no cluster token"
        scheme, _, given = value.partition(" ")
        if scheme.lower() != _SCHEME or not given:
            return "a malformed authorization header"
        if not tokens_match(given.strip(), self._token):
            return "a wrong cluster token"
        return None

    def intercept_service(
        self,
        continuation: Callable[[Any], Any],
        handler_call_details: Any,
    ) -> Any:
        why = self._check(handler_call_details.invocation_metadata)
        if why is None:
            return continuation(handler_call_details)
        return _refusal(handler_call_details.method, why)


def _refusal(method: str, why: str) -> Any:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        log.warning("refused %s from %s: %s", method, context.peer(), why)
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"heliostat head: {why}; pass the cluster token (--token, HELIOSTAT_TOKEN, "
            "or the head's token file)",
        )

    return grpc.unary_unary_rpc_method_handler(refuse)
