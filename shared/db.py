"""MySQL/MariaDB connections and the few helpers every SQL module uses.

One ``Database`` per process. It keeps one connection per thread, checks it
with a ping before use (functions on Lambda are frozen between calls), and
turns a lost or refused server into ``DatabaseUnavailableError`` (503) rather
than a 500. SQL itself lives in named functions per table (``shared.jobs``,
``shared.users``, ...) that take a connection and use ``%s`` placeholders.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import datetime, timezone

import pymysql
import pymysql.cursors

from shared.config import DatabaseUrl
from shared.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

# Errors that mean "the server is not there", not "the query is wrong".
UNAVAILABLE = (pymysql.err.OperationalError, pymysql.err.InterfaceError, ConnectionError, OSError)
# OperationalErrors that are about the data, not the server: a failed CHECK constraint
# (MariaDB 4025, MySQL 3819). Answering them 503 would have apps retry a request that
# can never succeed.
DATA_ERRORS = (3819, 4025)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] in DATA_ERRORS:
        return False
    return isinstance(exc, UNAVAILABLE)


def utcnow() -> datetime:
    """Now in UTC, naive, millisecond precision (what DATETIME(3) stores)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def isoformat(value: datetime | None) -> str | None:
    """Render a stored UTC time as the contract's ISO 8601 string."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{value.microsecond // 1000:03d}Z" if value.microsecond else "Z")


def connect(url: DatabaseUrl, *, database: bool = True, connect_timeout: float = 5.0):
    """Open one autocommit connection (UTC session, utf8mb4, dict rows)."""
    return pymysql.connect(
        host=url.host, port=url.port, user=url.user, password=url.password,
        database=url.database if database else None, charset="utf8mb4", autocommit=True,
        cursorclass=pymysql.cursors.DictCursor, connect_timeout=connect_timeout,
        read_timeout=60, write_timeout=60, init_command="SET time_zone='+00:00'",
    )


_ISOLATION = {"READ COMMITTED": "READ COMMITTED", "REPEATABLE READ": "REPEATABLE READ"}


class Database:
    """Per-thread connections to one database, reconnecting when needed."""

    def __init__(self, url: DatabaseUrl, *, connect_timeout: float = 5.0):
        self.url = url
        self.connect_timeout = connect_timeout
        self._local = threading.local()

    def _live(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.ping(reconnect=False)
                return conn
            except UNAVAILABLE:
                self._drop()
        conn = connect(self.url, connect_timeout=self.connect_timeout)
        self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; nothing to do
                pass

    @contextmanager
    def connection(self):
        """Yield a live autocommit connection; server loss becomes DatabaseUnavailableError."""
        try:
            conn = self._live()
        except UNAVAILABLE as e:
            log.warning("database unavailable: %s", type(e).__name__)
            raise DatabaseUnavailableError(retry_after=2) from e
        try:
            yield conn
        except UNAVAILABLE as e:
            if not _unavailable(e):
                raise
            self._drop()
            log.warning("database connection lost: %s", type(e).__name__)
            raise DatabaseUnavailableError(retry_after=2) from e

    @contextmanager
    def transaction(self, isolation: str | None = None):
        """Yield a connection inside BEGIN ... COMMIT (ROLLBACK on any error).

        ``isolation`` ("READ COMMITTED") sets the level of this transaction only: claims that
        lock rows with SKIP LOCKED use it, so they take no gap locks that block inserts.
        """
        with self.connection() as conn:
            if isolation is not None:
                execute(conn, f"SET TRANSACTION ISOLATION LEVEL {_ISOLATION[isolation]}")
            conn.begin()
            try:
                yield conn
            except BaseException:
                try:
                    conn.rollback()
                except UNAVAILABLE:
                    self._drop()
                raise
            conn.commit()

    def close(self) -> None:
        self._drop()


def query(conn, sql: str, args=None) -> list[dict]:
    """Run a SELECT and return its rows as dicts."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def query_one(conn, sql: str, args=None) -> dict | None:
    """Run a SELECT expected to return at most one row."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def execute(conn, sql: str, args=None) -> int:
    """Run a statement and return the number of affected rows."""
    with conn.cursor() as cur:
        return cur.execute(sql, args)


def insert(conn, sql: str, args=None) -> int:
    """Run an INSERT and return the auto-increment id."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.lastrowid
