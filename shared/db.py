"""MySQL/MariaDB connections and the few helpers every SQL module uses.

One ``Database`` per process: a bounded pool of connections. ``connection()``
borrows one for the length of a ``with`` block and gives it back; a
``connection()`` or ``transaction()`` opened inside another one, in the same
thread (or greenlet, once gevent has patched ``threading``), uses the
connection already borrowed, so helpers see the enclosing transaction. When
``max_connections`` are all borrowed, a borrower waits up to ``pool_timeout``
seconds, then gets ``DatabaseUnavailableError`` (503) rather than a hung
request. A lost or refused server is that same 503, never a 500. SQL itself
lives in named functions per table (``shared.jobs``, ``shared.users``, ...)
that take a connection and use ``%s`` placeholders.

No round trip checks an idle connection before it is lent. The server closes
idle connections on its own (``wait_timeout``, ``KILL``, a restart, a
failover; a Lambda container frozen past them), and two cheap steps cover
that:

* Before lending one, a non-blocking ``MSG_PEEK`` on its socket (a syscall):
  an idle connection has nothing to read, so an end of file, a reset, or any
  byte (the notice a server may write before it hangs up) means closed, and a
  new connection is opened in its place.
* The close that the peek cannot see yet (it lands between the peek and the
  send, or the path died silently: a NAT or firewall that forgot the
  connection) makes the first command of the borrow fail as gone away (2006),
  lost (2013), closed for inactivity (4031), or a closed socket. Only that
  first command, and only on a connection taken from the pool, reconnects and
  runs again, once, unseen by the caller.

Why running it again is safe: the server closed that connection before the
command reached it, and a session the server has ended never reads what is
sent to it afterwards (its kernel answers with a reset), so the command did
not run and running it on the new connection runs it once. No earlier command
of the borrow is lost with the old session (there is none), and the new
session starts as any lent one does (autocommit, UTC); a ``transaction()``
begins with its first command. What the client cannot tell apart from this is
a server that dies or kills the session *while* running that very command:
a statement cut short is rolled back, and a server that died mostly refuses
the reconnect too (503, as before); only one that committed, lost the
connection and at once accepts a new one sees the command twice, which the
conditional updates and keyed inserts of this code base absorb (a rate-limit
hit would count twice). Any later command of the borrow, and the first one on
a newly opened connection, fails as a real outage: ``DatabaseUnavailableError``.

A borrow that ends in an exception which may have cut a read or a write in
half, or that leaves a transaction or an unread result open, closes its
connection instead of pooling it. Errors the server answered (a constraint,
bad SQL) and the ``ApiError``s raised by code between commands leave it clean.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import pymysql
import pymysql.connections
import pymysql.cursors
from pymysql.constants import SERVER_STATUS

from shared import metrics
from shared.config import DatabaseUrl
from shared.errors import ApiError, DatabaseUnavailableError

log = logging.getLogger(__name__)

# Errors that mean "the server is not there", not "the query is wrong".
UNAVAILABLE = (pymysql.err.OperationalError, pymysql.err.InterfaceError, ConnectionError, OSError)
# OperationalErrors that are about the data, not the server: a failed CHECK constraint
# (MariaDB 4025, MySQL 3819). Answering them 503 would have apps retry a request that
# can never succeed.
DATA_ERRORS = (3819, 4025)
# How a connection the server closed while it was idle fails its next command: gone away (the
# write failed), lost (end of file on the read), closed for inactivity (MySQL 8's notice).
STALE_ERRORS = (2006, 2013, 4031)
# Idle connections kept when the pool has no max_connections (the listener, gthread workers).
MAX_IDLE = 16
RETRY_AFTER = 2


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] in DATA_ERRORS:
        return False
    return isinstance(exc, UNAVAILABLE)


def _stale(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.OperationalError):
        return bool(exc.args) and exc.args[0] in STALE_ERRORS
    return isinstance(exc, (pymysql.err.InterfaceError, OSError))


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


def _settings(url: DatabaseUrl, *, database: bool, connect_timeout: float) -> dict:
    return dict(
        host=url.host, port=url.port, user=url.user, password=url.password,
        database=url.database if database else None, charset="utf8mb4", autocommit=True,
        cursorclass=pymysql.cursors.DictCursor, connect_timeout=connect_timeout,
        read_timeout=60, write_timeout=60, init_command="SET time_zone='+00:00'",
    )


def connect(url: DatabaseUrl, *, database: bool = True, connect_timeout: float = 5.0):
    """Open one autocommit connection (UTC session, utf8mb4, dict rows)."""
    return pymysql.connect(**_settings(url, database=database, connect_timeout=connect_timeout))


class _PooledConnection(pymysql.connections.Connection):
    """A connection that runs the first command of a borrow again on a new session if the server
    had closed the old one while it sat in the pool (see the module docstring)."""

    retry_once = False  # set when lent from the pool, spent by the first command
    generation = 0  # the pool's generation when opened: close() retires the older ones

    def query(self, sql, unbuffered=False):
        return self._first(super().query, sql, unbuffered)

    def begin(self):
        return self._first(super().begin)

    def _execute_command(self, command, sql):
        self.retry_once = False  # whatever the first command is, only it may be retried
        return super()._execute_command(command, sql)

    def _first(self, command, *args):
        if not self.retry_once:
            return command(*args)
        self.retry_once = False
        try:
            return command(*args)
        except UNAVAILABLE as e:
            if not _stale(e):
                raise
            log.info("database connection closed while idle (%s); reconnecting", e)
            self._force_close()
            self.connect()
        return command(*args)

    def closed_by_server(self) -> bool:
        """Whether the server has hung up on this idle connection: one non-blocking peek, no round trip."""
        sock = self._sock
        if sock is None:
            return True
        try:
            sock.settimeout(0.0)  # pymysql sets its own timeout again before every read and write
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False  # nothing to read: open
        except (OSError, ValueError):
            return True
        return True  # end of file, or bytes nobody asked for: the server's goodbye

    def clean(self) -> bool:
        """Open, outside a transaction, with no result left half read."""
        return (self._sock is not None and not self.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
                and not (self._result is not None and self._result.unbuffered_active))

    def discard(self) -> None:
        """Close without a goodbye (the socket may be dead or out of step)."""
        if self._result is not None:
            self._result.unbuffered_active = False  # nothing left to read it from
        self._closed = True
        self._force_close()


def _leaves_clean(failure: BaseException | None) -> bool:
    """Whether a borrow that ended with this exception cannot have stopped mid-packet."""
    if failure is None:
        return True
    if isinstance(failure, DatabaseUnavailableError) or _unavailable(failure):
        return False
    return isinstance(failure, (ApiError, pymysql.err.MySQLError))


_ISOLATION = {"READ COMMITTED": "READ COMMITTED", "REPEATABLE READ": "REPEATABLE READ"}


class _Waiter:
    """One borrower waiting in line, woken alone when a connection (or room for one) is handed to it."""

    __slots__ = ("cond", "conn", "granted")

    def __init__(self, lock):
        self.cond = threading.Condition(lock)
        self.conn: _PooledConnection | None = None
        self.granted = False


class Database:
    """A pool of connections to one database; each thread (or greenlet) borrows one at a time."""

    def __init__(self, url: DatabaseUrl, *, connect_timeout: float = 5.0, max_connections: int | None = None,
                 max_idle: int | None = None, pool_timeout: float | None = None):
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1 (or None: no bound)")
        self.url = url
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_idle = max_idle if max_idle is not None else (max_connections or MAX_IDLE)
        self.pool_timeout = connect_timeout if pool_timeout is None else pool_timeout
        # threading only: under gevent's monkey-patching these wait and hold per greenlet.
        self._lock = threading.Lock()
        self._waiters: collections.deque[_Waiter] = collections.deque()  # first come, first served
        self._idle: list[_PooledConnection] = []  # a stack: the most recently used is lent first
        self._open = 0  # lent + idle + being opened
        self._generation = 0
        self._held = threading.local()

    def _room(self) -> bool:
        return self.max_connections is None or self._open < self.max_connections

    def _take(self) -> _PooledConnection:
        with self._lock:
            if self._waiters or not (self._idle or self._room()):
                # Wait in line: a connection given back goes to the oldest waiter, never to a
                # newcomer, so under a crowd no request waits much longer than the others.
                waiter = _Waiter(self._lock)
                self._waiters.append(waiter)
                deadline = time.monotonic() + self.pool_timeout
                while not waiter.granted:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._waiters.remove(waiter)
                        log.warning("database pool exhausted: %d connections lent for %.1f s",
                                    self._open, self.pool_timeout)
                        metrics.db_error("pool_exhausted")
                        raise DatabaseUnavailableError(retry_after=RETRY_AFTER)
                    try:
                        waiter.cond.wait(remaining)
                    except BaseException:  # a timeout or an interrupt while in line: leave it cleanly
                        self._leave(waiter)
                        raise
                conn = waiter.conn  # None: room to open one, counted already
            elif self._idle:
                conn = self._idle.pop()
            else:
                conn = None
                self._open += 1
            generation = self._generation
        if conn is not None:
            if not conn.closed_by_server():
                conn.retry_once = True
                return conn
            conn.discard()  # closed while idle: its place in the pool opens a new one
        try:
            conn = _PooledConnection(**_settings(self.url, database=True, connect_timeout=self.connect_timeout))
        except BaseException as e:
            with self._lock:
                self._open -= 1
                self._grant()
            if not _unavailable(e):
                raise
            log.warning("database unavailable: %s", type(e).__name__)
            metrics.db_error("unreachable")
            raise DatabaseUnavailableError(retry_after=RETRY_AFTER) from e
        conn.generation = generation
        return conn

    def _give_back(self, conn: _PooledConnection, failure: BaseException | None) -> None:
        conn.retry_once = False
        clean = conn.clean() and _leaves_clean(failure)
        with self._lock:
            keep = clean and conn.generation == self._generation and len(self._idle) < self.max_idle
            if keep:
                self._idle.append(conn)
            else:
                self._open -= 1
            self._grant()
        if not keep:
            _close(conn, polite=clean)

    def _leave(self, waiter: _Waiter) -> None:
        """Take a waiter out of line, giving back what it was handed (call with the lock held)."""
        if not waiter.granted:
            self._waiters.remove(waiter)
            return
        if waiter.conn is not None:
            self._idle.append(waiter.conn)
        else:
            self._open -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand what is free to the oldest waiters (call with the lock held)."""
        while self._waiters and (self._idle or self._room()):
            waiter = self._waiters.popleft()
            if self._idle:
                waiter.conn = self._idle.pop()
            else:
                self._open += 1
            waiter.granted = True
            waiter.cond.notify()

    @contextmanager
    def connection(self):
        """Yield a live autocommit connection; server loss becomes DatabaseUnavailableError."""
        held = getattr(self._held, "conn", None)
        conn = held if held is not None else self._take()
        self._held.conn = conn
        failure = None
        try:
            yield conn
        except BaseException as e:
            failure = e
            if _unavailable(e):
                log.warning("database connection lost: %s", type(e).__name__)
                metrics.db_error("lost")
                raise DatabaseUnavailableError(retry_after=RETRY_AFTER) from e
            raise
        finally:
            if held is None:  # the outermost borrow gives it back
                self._held.conn = None
                self._give_back(conn, failure)

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
            except Exception:
                try:
                    conn.rollback()
                except UNAVAILABLE:
                    conn.discard()
                raise
            except BaseException:
                # A timeout or an interrupt may have cut a packet in half: hang up instead, and the
                # server rolls back the transaction of a connection that closes.
                conn.discard()
                raise
            conn.commit()

    def close(self) -> None:
        """Close the idle connections; those lent now are closed when given back."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._generation += 1
            self._grant()
        for conn in idle:
            _close(conn, polite=True)


def _close(conn, *, polite: bool) -> None:
    try:
        if polite:
            conn.close()  # COM_QUIT: the server counts no aborted connection
        else:
            conn.discard()
    except Exception:  # already broken; nothing to do
        pass


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
