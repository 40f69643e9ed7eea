"""Who is calling: app users by bearer token, operators by ADMIN_TOKEN."""

from __future__ import annotations

import hmac
from datetime import datetime, timezone

from shared.config import ConfigError
from shared.db import isoformat
from shared.errors import ForbiddenError, UnauthorizedError
from shared.tokens import issue_token, verify_token
from shared.users import get_or_create_user


def authenticate(ctx, req) -> str:
    """Return the calling user's id from the bearer token, or raise 401."""
    return verify_token(ctx.secret_keys(), req.bearer())


def require_admin(ctx, req) -> None:
    """Allow only the operator token (401 without a token, 403 with another one)."""
    token = req.bearer()
    admin = ctx.config.admin_token
    if not admin or not hmac.compare_digest(token.encode(), admin.encode()):
        raise ForbiddenError()


def login(ctx, *, provider: str, subject: str, unionid: str | None = None) -> dict:
    """Find or create the user and return the contract's login answer."""
    key = ctx.config.secret_key
    if not key:
        raise ConfigError("SECRET_KEY: must be set")
    with ctx.db.connection() as conn:
        user_id = get_or_create_user(conn, provider=provider, subject=subject, unionid=unionid)
    token, exp = issue_token(key, user_id, ctx.config.token_ttl)
    return {"token": token, "expires_at": isoformat(datetime.fromtimestamp(exp, timezone.utc)),
            "user": {"id": user_id}}


__all__ = ["authenticate", "require_admin", "login", "UnauthorizedError"]
