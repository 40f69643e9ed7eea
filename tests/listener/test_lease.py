"""The backend lease runs on the database's clock: listeners whose host clocks disagree still
agree on who owns a backend, and never both at once."""

from __future__ import annotations

from datetime import timedelta

from shared import backends
from shared.db import execute, utcnow
from tests.stack import wait_for

URL = "http://comfy.lease.test:8188"


def skew(monkeypatch, seconds: float) -> None:
    """Make this host's clock run ``seconds`` ahead (or behind) the database's."""
    monkeypatch.setattr(backends, "utcnow", lambda: utcnow() + timedelta(seconds=seconds))


def test_a_fast_clock_cannot_take_a_live_lease(db_conn, monkeypatch):
    backend_id = backends.ensure_backend(db_conn, URL)
    assert backends.acquire_lease(db_conn, backend_id, "a", 10)
    skew(monkeypatch, 3600)  # b's host is an hour ahead: a's lease looks long expired to it
    assert not backends.acquire_lease(db_conn, backend_id, "b", 10)
    assert backends.get_backend(db_conn, backend_id)["owner"] == "a"


def test_a_slow_clock_still_renews_a_lease_that_holds(db_conn, monkeypatch):
    backend_id = backends.ensure_backend(db_conn, URL)
    skew(monkeypatch, -3600)  # a's host is an hour behind: its lease must not be born expired
    assert backends.acquire_lease(db_conn, backend_id, "a", 10)
    assert backends.set_connected(db_conn, backend_id, "a", "client-a")
    monkeypatch.undo()
    assert not backends.acquire_lease(db_conn, backend_id, "b", 10)
    assert backends.get_backend(db_conn, backend_id)["client_id"] == "client-a"
    [seen] = backends.pool_status(db_conn, [URL], default_slots=2, lease_s=10)
    assert seen["listener_connected"] and seen["owner"] == "a" and seen["state"] == "connected"


def test_an_expired_lease_is_taken_over(db_conn):
    backend_id = backends.ensure_backend(db_conn, URL)
    assert backends.acquire_lease(db_conn, backend_id, "a", 0.3)
    assert not backends.acquire_lease(db_conn, backend_id, "b", 10)
    wait_for(lambda: backends.acquire_lease(db_conn, backend_id, "b", 10), 5, "the expired lease was not taken")
    assert not backends.acquire_lease(db_conn, backend_id, "a", 10)
    [seen] = backends.pool_status(db_conn, [URL], default_slots=2, lease_s=10)
    assert seen["owner"] == "b" and seen["state"] == "down"  # b owns it but has no socket yet


def test_renewing_our_own_lease_twice_in_a_millisecond_is_not_a_loss(db_conn):
    backend_id = backends.ensure_backend(db_conn, "http://renew.test")
    for _ in range(200):
        assert backends.acquire_lease(db_conn, backend_id, "me", 10)
        assert backends.acquire_lease(db_conn, backend_id, "me", 10)
    assert not backends.acquire_lease(db_conn, backend_id, "someone-else", 10)


def test_taking_over_drops_the_dead_owners_socket(db_conn, monkeypatch):
    """The new owner has not connected yet: nothing is sent to the old clientId, /healthz says down."""
    backend_id = backends.ensure_backend(db_conn, URL)
    assert backends.acquire_lease(db_conn, backend_id, "a", 0.3)
    assert backends.set_connected(db_conn, backend_id, "a", "client-of-a")
    execute(db_conn, "UPDATE backends SET state='active', capabilities_hash='x' WHERE id=%s", (backend_id,))
    assert [b["client_id"] for b in backends.serving(db_conn, [URL])] == ["client-of-a"]
    wait_for(lambda: backends.acquire_lease(db_conn, backend_id, "b", 10), 5, "the expired lease was not taken")
    [seen] = backends.pool_status(db_conn, [URL], default_slots=2, lease_s=10)
    assert (seen["owner"], seen["listener_connected"], seen["state"]) == ("b", False, "down")
    assert backends.serving(db_conn, [URL]) == []
    assert backends.acquire_lease(db_conn, backend_id, "b", 10)  # renewing keeps its own socket
    assert backends.set_connected(db_conn, backend_id, "b", "client-of-b")
    assert backends.acquire_lease(db_conn, backend_id, "b", 10)
    [seen] = backends.pool_status(db_conn, [URL], default_slots=2, lease_s=10)
    assert (seen["owner"], seen["listener_connected"]) == ("b", True)
    assert [b["client_id"] for b in backends.serving(db_conn, [URL])] == ["client-of-b"]


def test_lease_and_event_ages_are_read_on_the_database_clock(db_conn, monkeypatch):
    skew(monkeypatch, -3600)  # the host is an hour behind: the ages must not say an hour
    backend_id = backends.ensure_backend(db_conn, URL)
    backends.heartbeat(db_conn, backend_id, "gpu-1:42:abcd")
    assert backends.acquire_lease(db_conn, backend_id, "gpu-1:42:abcd", 10)
    backends.touch(db_conn, backend_id)
    [seen] = backends.pool_status(db_conn, [URL], default_slots=2, lease_s=10)
    assert seen["owner_host"] == "gpu-1"
    assert 0 <= seen["lease_age_s"] < 2 and 8 < seen["lease_expires_in_s"] <= 10
    assert 0 <= seen["last_event_age_s"] < 2
    execute(db_conn, "UPDATE backends SET lease_until=UTC_TIMESTAMP(3) - INTERVAL 1 SECOND WHERE id=%s",
                     (backend_id,))
    [seen] = backends.pool_status(db_conn, [URL], default_slots=2, lease_s=10)
    assert (seen["owner"], seen["owner_host"], seen["lease_age_s"], seen["lease_expires_in_s"]) == (
        None, None, None, None)
