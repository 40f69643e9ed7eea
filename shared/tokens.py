"""Bearer tokens: a signed, expiring user id (HMAC-SHA256 over SECRET_KEY).

Format: ``base64url(json{"sub","exp"}).base64url(hmac)``. Verification accepts
any of the given keys, so ``SECRET_KEY`` can be rotated while old tokens live.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from shared.errors import TokenExpiredError, UnauthorizedError


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: str, payload: str) -> str:
    return _b64(hmac.new(key.encode("utf-8"), b"token\n" + payload.encode("ascii"), hashlib.sha256).digest())


def issue_token(key: str, user_id: str, ttl: int, *, now: float | None = None) -> tuple[str, int]:
    """Return (token, expiry epoch seconds) for a user."""
    exp = int((time.time() if now is None else now) + ttl)
    payload = _b64(json.dumps({"sub": user_id, "exp": exp}, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_sign(key, payload)}", exp


def verify_token(keys, token: str, *, now: float | None = None) -> str:
    """Return the user id of a valid token, else raise 401 (unauthorized or token_expired)."""
    if not token.isascii():
        raise UnauthorizedError("malformed token")
    payload, sep, signature = token.partition(".")
    if not sep or not payload or not signature:
        raise UnauthorizedError("malformed token")
    if not any(k and hmac.compare_digest(_sign(k, payload), signature) for k in keys):
        raise UnauthorizedError("invalid token")
    try:
        claims = json.loads(_unb64(payload))
        user_id, exp = str(claims["sub"]), int(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise UnauthorizedError("malformed token") from None
    if exp <= (time.time() if now is None else now):
        raise TokenExpiredError()
    return user_id
