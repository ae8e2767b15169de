"""Who may read and act: loopback, the bearer token, the signed session cookie, CSRF.

Pure decisions, no I/O, so each rule is tested on its own:

* Reads from a server bound to loopback need nothing; off loopback a token is required
  at start (:func:`check_bind`) and every request must carry it (bearer header) or a
  session cookie signed with it.
* Actions (POST) always need proof that the user meant them: the API takes the bearer
  token (without a configured token: a request that is not cross-site), a page form
  takes the session cookie plus the CSRF token derived from it, so another site cannot
  make the user's browser act.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

__all__ = [
    "SESSION_COOKIE",
    "TokenRequiredError",
    "bearer_ok",
    "check_bind",
    "csrf_for",
    "is_loopback",
    "new_session",
    "session_ok",
]

SESSION_COOKIE = "heliostat_session"


class TokenRequiredError(ValueError):
    """A non-loopback bind without a token."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token.

    Raises:
        TokenRequiredError: ``host`` is not loopback and ``token`` is empty.
    """
    if not is_loopback(host) and not token:
        raise TokenRequiredError(
            f"refusing to serve on {host} without a token: anyone who can reach it could "
            "resume, cancel and trigger runs. Pass --token T or set HELIOSTAT_TOKEN "
            "(or bind to 127.0.0.1)."
        )


def _mac(secret: str, what: str) -> str:
    return hmac.new(secret.encode(), what.encode(), hashlib.sha256).hexdigest()


def new_session(secret: str) -> str:
    """A fresh session cookie value: a random nonce and its signature."""
    nonce = secrets.token_urlsafe(18)
    return f"{nonce}.{_mac(secret, 'session:' + nonce)}"


def session_ok(secret: str, cookie: str | None) -> bool:
    """Whether ``cookie`` is a session this server signed."""
    if not cookie or "." not in cookie:
        return False
    nonce, sig = cookie.rsplit(".", 1)
    return hmac.compare_digest(sig, _mac(secret, "session:" + nonce))


def csrf_for(secret: str, cookie: str) -> str:
    """The CSRF token that goes with a session cookie (in every form of its pages)."""
    return _mac(secret, "csrf:" + cookie)


def bearer_ok(token: str | None, header: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (False without a token)."""
    if not token or not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)
