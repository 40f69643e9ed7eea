"""The connection pool of shared.db: no ping, a retry only where it is safe, a bound that holds."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime

import pymysql
import pytest

import shared.db as db_module
from shared.db import Database, _PooledConnection, execute, query, query_one
from shared.errors import ConflictError, DatabaseUnavailableError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WINDOW = datetime(2024, 1, 1)
RETRIED = "closed while idle"


@pytest.fixture
def make_db(database_url):
    made = []

    def make(**kwargs) -> Database:
        db = Database(database_url, **kwargs)
        made.append(db)
        return db

    yield make
    for db in made:
        db.close()


def connection_id(conn) -> int:
    return query_one(conn, "SELECT CONNECTION_ID() AS id")["id"]


def pings(conn) -> int:
    """Pings this session has received (MySQL: Com_ping; MariaDB counts them in Com_admin_commands)."""
    rows = query(conn, "SHOW SESSION STATUS WHERE Variable_name IN ('Com_ping', 'Com_admin_commands')")
    assert rows, "the server reports no ping counter"
    return sum(int(r["Value"]) for r in rows)


def wait_gone(admin, ids, timeout=5.0) -> None:
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while query(admin, "SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN %s", (ids,)):
        assert time.monotonic() < deadline, f"connections {ids} still open"
        time.sleep(0.02)
    time.sleep(0.05)  # the server's FIN reaches our socket


def kill(admin, conn_id: int) -> None:
    execute(admin, f"KILL {int(conn_id)}")
    wait_gone(admin, [conn_id])


def blind_peek(monkeypatch) -> None:
    """Make the pool's socket check say "open" always, so only the retry can save the borrow."""
    monkeypatch.setattr(_PooledConnection, "closed_by_server", lambda self: False)


def hits(admin, bucket: str):
    row = query_one(admin, "SELECT hits FROM rate_limits WHERE bucket=%s AND window_start=%s", (bucket, WINDOW))
    return row and row["hits"]


def add_hit(conn, bucket: str) -> None:
    execute(conn, "INSERT INTO rate_limits (bucket, window_start, hits) VALUES (%s, %s, 1)", (bucket, WINDOW))


# -- no round trip before reuse ------------------------------------------------------------

def test_a_reused_connection_costs_one_round_trip_per_query_and_no_ping(make_db, monkeypatch):
    sent = []
    execute_command = pymysql.connections.Connection._execute_command

    def counting(self, command, sql):
        sent.append(command)
        return execute_command(self, command, sql)

    db = make_db()
    with db.connection() as conn:
        first = connection_id(conn)
        before = pings(conn)
    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", counting)
    for _ in range(20):
        with db.connection() as conn:
            assert query_one(conn, "SELECT 1 AS one") == {"one": 1}
    monkeypatch.undo()
    assert len(sent) == 20  # one command per borrow: the query itself
    with db.connection() as conn:
        assert connection_id(conn) == first
        assert pings(conn) == before


# -- a connection the server closed while idle ---------------------------------------------

@pytest.mark.parametrize("how, peek, first", [
    ("kill", "real", "query"),
    ("kill", "blind", "query"),
    ("kill", "blind", "transaction"),
    ("wait_timeout", "real", "query"),
    ("wait_timeout", "blind", "query"),
    ("wait_timeout", "blind", "transaction"),
])
def test_a_connection_closed_while_idle_is_replaced_unseen(make_db, db_conn, monkeypatch, caplog, how, peek, first):
    db = make_db(max_connections=1)
    with db.connection() as conn:
        old = connection_id(conn)
        if how == "wait_timeout":
            execute(conn, "SET SESSION wait_timeout=1")
    if how == "kill":
        kill(db_conn, old)
    else:
        time.sleep(1.2)
        wait_gone(db_conn, [old])
    if peek == "blind":
        blind_peek(monkeypatch)
    caplog.set_level(logging.INFO, logger="shared.db")
    if first == "query":
        with db.connection() as conn:
            new = connection_id(conn)
    else:
        with db.transaction() as conn:
            add_hit(conn, "idle")
            new = connection_id(conn)
        assert hits(db_conn, "idle") == 1
    assert new != old
    # The peek finds what the server did; only when it cannot is the first command run again.
    assert (RETRIED in caplog.text) == (peek == "blind")
    with db.connection() as conn:  # the replacement is the one pooled
        assert connection_id(conn) == new


def test_a_connection_lost_after_its_first_command_is_a_503_not_a_retry(make_db, db_conn, monkeypatch, caplog):
    db = make_db()
    with db.connection() as conn:
        old = connection_id(conn)
    blind_peek(monkeypatch)
    caplog.set_level(logging.INFO, logger="shared.db")
    with pytest.raises(DatabaseUnavailableError) as e:
        with db.connection() as conn:
            assert query_one(conn, "SELECT 1 AS one") == {"one": 1}
            kill(db_conn, old)
            query_one(conn, "SELECT 2")
    assert e.value.status == 503 and e.value.retry_after
    assert RETRIED not in caplog.text
    with db.connection() as conn:  # the dead one was not pooled
        assert connection_id(conn) != old


def test_the_first_command_on_a_new_connection_is_not_retried(make_db, db_conn, caplog):
    db = make_db()
    caplog.set_level(logging.INFO, logger="shared.db")
    with pytest.raises(DatabaseUnavailableError):
        with db.connection() as conn:
            kill(db_conn, conn.thread_id())
            query_one(conn, "SELECT 1")
    assert RETRIED not in caplog.text


def test_a_reconnect_that_fails_is_a_503(make_db, db_conn, monkeypatch):
    db = make_db()
    with db.connection() as conn:
        old = connection_id(conn)
    kill(db_conn, old)
    blind_peek(monkeypatch)

    def refuse(self, sock=None):
        raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server")

    monkeypatch.setattr(_PooledConnection, "connect", refuse)
    with pytest.raises(DatabaseUnavailableError):
        with db.connection() as conn:
            query_one(conn, "SELECT 1")


# -- borrowing -------------------------------------------------------------------------------

def test_nested_borrows_in_one_thread_share_one_connection(make_db, db_conn):
    db = make_db(max_connections=1, pool_timeout=0.2)  # a second connection would time out
    with db.transaction() as outer:
        add_hit(outer, "nested")
        with db.connection() as inner:
            assert inner is outer
            assert query_one(inner, "SELECT hits FROM rate_limits WHERE bucket='nested'") == {"hits": 1}
            with db.connection() as innermost:
                assert innermost is outer
        assert hits(db_conn, "nested") is None  # still uncommitted: the helper ran inside the transaction
        execute(outer, "UPDATE rate_limits SET hits=2 WHERE bucket='nested'")
    assert hits(db_conn, "nested") == 2


def test_the_pool_never_opens_more_than_max_connections(make_db, database_url, db_conn):
    size, workers, rounds = 4, 50, 10
    db = make_db(max_connections=size, pool_timeout=30)
    listed = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB=%s"
    baseline = {r["ID"] for r in query(db_conn, listed, (database_url.database,))}
    seen: set[int] = set()
    peak = [0]
    errors: list[BaseException] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            ids = {r["ID"] for r in query(db_conn, listed, (database_url.database,))} - baseline
            peak[0] = max(peak[0], len(ids))

    def work(barrier):
        try:
            barrier.wait(timeout=10)
            for _ in range(rounds):
                with db.connection() as conn:
                    seen.add(query_one(conn, "SELECT CONNECTION_ID() AS id, SLEEP(0.005) AS s")["id"])
        except BaseException as e:
            errors.append(e)

    barrier = threading.Barrier(workers)
    threads = [threading.Thread(target=work, args=(barrier,)) for _ in range(workers)]
    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    sampler.join(10)
    assert not errors
    assert len(seen) == size  # every slot was used, and no connection was opened past them
    assert 0 < peak[0] <= size


def test_a_borrower_past_the_pool_timeout_gets_a_503(make_db):
    db = make_db(max_connections=1, pool_timeout=0.3)
    got: dict = {}

    def borrow():
        start = time.monotonic()
        try:
            with db.connection():
                got["connection"] = True
        except DatabaseUnavailableError as e:
            got["error"], got["waited"] = e, time.monotonic() - start

    with db.connection():
        t = threading.Thread(target=borrow)
        t.start()
        t.join(5)
    assert "connection" not in got
    assert got["error"].status == 503 and got["error"].retry_after
    assert 0.3 <= got["waited"] < 2
    with db.connection() as conn:  # the pool is whole again
        assert query_one(conn, "SELECT 1 AS one") == {"one": 1}


def test_a_waiter_gets_the_connection_given_back_within_the_timeout(make_db):
    db = make_db(max_connections=1, pool_timeout=5)
    got: dict = {}

    def borrow():
        start = time.monotonic()
        with db.connection() as conn:
            got["id"], got["waited"] = connection_id(conn), time.monotonic() - start

    with db.connection() as conn:
        held = connection_id(conn)
        t = threading.Thread(target=borrow)
        t.start()
        time.sleep(0.2)
    t.join(5)
    assert got["id"] == held and 0.15 <= got["waited"] < 5


def test_waiters_are_served_first_come_first_served(make_db):
    """A connection given back goes to the oldest waiter, never to a borrower that came later
    (with a crowd of polls, barging newcomers left some waiting past the timeout: 503s)."""
    db = make_db(max_connections=1, pool_timeout=10)
    order, started = [], []

    def borrow(name):
        started.append(name)
        with db.connection() as conn:
            order.append(name)
            query_one(conn, "SELECT 1 AS one")

    with db.connection():
        threads = []
        for name in ("first", "second", "third"):
            threads.append(threading.Thread(target=borrow, args=(name,)))
            threads[-1].start()
            deadline = time.monotonic() + 5
            while len(db._waiters) < len(threads) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert len(db._waiters) == 3
    # The holder gives back; a newcomer arriving now queues behind the three.
    late = threading.Thread(target=borrow, args=("late",))
    late.start()
    for t in threads + [late]:
        t.join(10)
    assert order == ["first", "second", "third", "late"]


def test_a_waiter_interrupted_in_line_leaves_nothing_behind(make_db, monkeypatch):
    """A gevent Timeout (or any interrupt) while waiting in line takes the waiter out of it."""
    db = make_db(max_connections=1, pool_timeout=10)

    class Interrupt(BaseException):
        pass

    class Interrupting(threading.Condition):
        def wait(self, timeout=None):
            raise Interrupt()

    class Waiter(db_module._Waiter):
        def __init__(self, lock):
            super().__init__(lock)
            self.cond = Interrupting(lock)
    got = {}

    def borrow():
        try:
            with db.connection():
                got["connection"] = True
        except Interrupt:
            got["interrupted"] = True

    with db.connection():
        monkeypatch.setattr(db_module, "_Waiter", Waiter)
        t = threading.Thread(target=borrow)
        t.start()
        t.join(5)
        monkeypatch.undo()
    assert got == {"interrupted": True} and not db._waiters
    with db.connection() as conn:  # the one connection is still there to borrow
        assert query_one(conn, "SELECT 1 AS one") == {"one": 1}
    assert db._open == 1


# -- transactions and what an error leaves behind --------------------------------------------

@pytest.mark.parametrize("isolation", [None, "READ COMMITTED"])
def test_transactions_commit_and_roll_back(make_db, db_conn, isolation):
    db = make_db()
    with db.transaction(isolation=isolation) as conn:
        add_hit(conn, "kept")
    with pytest.raises(ConflictError):
        with db.transaction(isolation=isolation) as conn:
            add_hit(conn, "undone")
            raise ConflictError("no")
    assert hits(db_conn, "kept") == 1 and hits(db_conn, "undone") is None


class Interrupted(BaseException):
    """What a gevent Timeout or a KeyboardInterrupt looks like to the block it cuts short."""


def _in_transaction(error: BaseException | None):
    """A transaction that writes, then fails with ``error`` (None: with a duplicate key)."""
    def fail(db):
        with db.transaction() as conn:
            add_hit(conn, "x")
            if error is None:
                add_hit(conn, "x")
            raise error
    return fail


def _half_read_result(db):
    with db.connection() as conn:
        cur = conn.cursor(pymysql.cursors.SSCursor)
        cur.execute("SELECT seq FROM seq_1_to_100000")
        cur.fetchone()
        raise ConflictError("no")


def _begin_left_open(db):
    with db.connection() as conn:
        conn.begin()
        add_hit(conn, "x")


@pytest.mark.parametrize("fail, error, reused", [
    (_in_transaction(ConflictError("no")), ConflictError, True),
    (_in_transaction(None), pymysql.err.IntegrityError, True),
    (_in_transaction(RuntimeError("bug")), RuntimeError, False),
    (_in_transaction(Interrupted()), Interrupted, False),
    (_half_read_result, ConflictError, False),
    (_begin_left_open, None, False),
], ids=["conflict-in-transaction", "duplicate-key-in-transaction", "bug-in-transaction", "interrupt-in-transaction",
        "half-read-result", "begin-left-open"])
def test_a_connection_given_back_after_an_error_is_clean_or_closed(make_db, db_conn, fail, error, reused):
    db = make_db()
    with db.connection() as conn:
        old = connection_id(conn)
    if error is None:
        fail(db)
    else:
        with pytest.raises(error):
            fail(db)
    with db.connection() as conn:
        assert (connection_id(conn) == old) == reused
        assert query_one(conn, "SELECT @@in_transaction AS t") == {"t": 0}
        assert query_one(conn, "SELECT 1 AS one") == {"one": 1}
    assert hits(db_conn, "x") is None  # nothing of the failed work was committed
    if not reused:
        wait_gone(db_conn, [old])


def test_close_closes_idle_connections_and_lent_ones_when_given_back(make_db, db_conn):
    db = make_db()
    ids = []

    def borrow():
        with db.connection() as conn:
            ids.append(connection_id(conn))

    with db.connection() as conn:
        ids.append(connection_id(conn))
        t = threading.Thread(target=borrow)
        t.start()
        t.join(5)
        assert len(set(ids)) == 2
        db.close()
        wait_gone(db_conn, ids[1:])  # the idle one
    wait_gone(db_conn, ids[:1])  # the lent one, given back after close()
    with db.connection() as conn:  # still usable
        assert connection_id(conn) not in ids


# -- under gevent ------------------------------------------------------------------------------

GEVENT_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, sys, time
import gevent
from shared.config import DatabaseUrl
from shared.db import Database, execute, query_one
from shared.errors import DatabaseUnavailableError

url = DatabaseUrl.parse(sys.argv[1])
db = Database(url, max_connections=3, pool_timeout=10)
ids, nested = set(), []

def work():
    with db.connection() as conn:
        ids.add(query_one(conn, "SELECT CONNECTION_ID() AS id, SLEEP(0.04) AS s")["id"])
        with db.transaction() as inner:
            nested.append(inner is conn)

start = time.monotonic()
gevent.joinall([gevent.spawn(work) for _ in range(90)], raise_error=True)
elapsed = time.monotonic() - start

# A connection the server killed while idle: the peek sees it on a gevent socket too.
admin = Database(url)
with db.connection() as conn:
    old = query_one(conn, "SELECT CONNECTION_ID() AS id")["id"]
with admin.connection() as conn:
    execute(conn, f"KILL {old}")
gevent.sleep(0.3)
with db.connection() as conn:
    new = query_one(conn, "SELECT CONNECTION_ID() AS id")["id"]

# A greenlet that waits past the timeout gets a 503; the holder is not blocked meanwhile.
small = Database(url, max_connections=1, pool_timeout=0.2)
def late():
    try:
        with small.connection():
            return "connection"
    except DatabaseUnavailableError:
        return "503"
with small.connection():
    waiter = gevent.spawn(late)
    waiter.join(5)
print(json.dumps({"ids": len(ids), "nested": all(nested) and len(nested) == 90, "elapsed": elapsed,
                  "replaced": new != old, "late": waiter.value}))
"""


def test_under_gevent_greenlets_share_the_bounded_pool(database_url):
    url = (f"mysql://{database_url.user}:{database_url.password}@{database_url.host}:{database_url.port}/"
           f"{database_url.database}")
    done = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, url], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["ids"] == 3 and got["nested"] and got["replaced"] and got["late"] == "503"
    # 90 borrows of 40 ms over 3 connections: 1.2 s when the greenlets run side by side, 3.6 s one by one.
    assert got["elapsed"] < 2.4
