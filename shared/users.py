"""Users: one row per (provider, subject), e.g. ('dev', 'alice') or ('wechat', openid)."""

from __future__ import annotations

import uuid

from shared.db import execute, query, query_one, utcnow


def get_or_create_user(conn, *, provider: str, subject: str, unionid: str | None = None) -> str:
    """Return the id of the user for this identity, creating it once."""
    row = query_one(conn, "SELECT id, unionid FROM users WHERE provider=%s AND subject=%s", (provider, subject))
    if row is None:
        execute(conn, "INSERT IGNORE INTO users (id, provider, subject, unionid, created_at) "
                      "VALUES (%s, %s, %s, %s, %s)", (str(uuid.uuid4()), provider, subject, unionid, utcnow()))
        row = query_one(conn, "SELECT id, unionid FROM users WHERE provider=%s AND subject=%s", (provider, subject))
    if unionid and row["unionid"] != unionid:
        execute(conn, "UPDATE users SET unionid=%s WHERE id=%s", (unionid, row["id"]))
    return row["id"]


def get_user(conn, user_id: str) -> dict | None:
    """The login of a user: provider ('dev', 'wechat') and subject (name, openid); None if unknown."""
    return query_one(conn, "SELECT id, provider, subject FROM users WHERE id=%s", (user_id,))


def find_users(conn, key: str) -> list[dict]:
    """The users an operator means by ``key``: the one with that id, else every login with that subject
    (a WeChat openid, a dev name); oldest first."""
    row = query_one(conn, "SELECT id, provider, subject, unionid, created_at FROM users WHERE id=%s", (key,))
    if row is not None:
        return [row]
    return query(conn, "SELECT id, provider, subject, unionid, created_at FROM users WHERE subject=%s "
                       "ORDER BY created_at, id", (key,))
