"""ComfyUI backend rows: which listener holds which server, under which clientId.

A submission may only use a backend whose listener is connected and whose
lease is fresh (the listener renews it while it lives), and must submit with
that socket's clientId so the events come back to it.

Lease times are taken, renewed and compared on the database's clock
(``UTC_TIMESTAMP(3)``), never a host's: hosts whose clocks disagree still agree
on who owns a backend, so two owners never overlap.
"""

from __future__ import annotations

from shared.db import execute, query, query_one, utcnow

ACTIVE = ("submitting", "queued", "running")


def ensure_backend(conn, url: str) -> int:
    """Return the id of a backend row, creating it if needed."""
    row = query_one(conn, "SELECT id FROM backends WHERE url=%s", (url,))
    if row:
        return row["id"]
    execute(conn, "INSERT IGNORE INTO backends (url, updated_at) VALUES (%s, %s)", (url, utcnow()))
    return query_one(conn, "SELECT id FROM backends WHERE url=%s", (url,))["id"]


def get_backend(conn, backend_id: int) -> dict | None:
    return query_one(conn, "SELECT * FROM backends WHERE id=%s", (backend_id,))


def acquire_lease(conn, backend_id: int, owner: str, seconds: float) -> bool:
    """Take or renew the ownership of a backend; False while another live listener holds it."""
    if execute(conn, "UPDATE backends SET owner=%s, "
                     "lease_until=UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND, updated_at=UTC_TIMESTAMP(3) "
                     "WHERE id=%s AND (owner=%s OR owner IS NULL OR lease_until IS NULL "
                     "OR lease_until < UTC_TIMESTAMP(3))",
               (owner, int(seconds * 1_000_000), backend_id, owner)) == 1:
        return True
    # No row changed: either another owner holds it, or ours was renewed within the same
    # millisecond (identical values count as no change). Only the first is a loss.
    row = query_one(conn, "SELECT owner = %s AND lease_until >= UTC_TIMESTAMP(3) AS ours FROM backends WHERE id=%s",
                    (owner, backend_id))
    return bool(row and row["ours"])


def release_lease(conn, backend_id: int, owner: str) -> None:
    execute(conn, "UPDATE backends SET owner=NULL, lease_until=NULL, connected=0, updated_at=%s "
                  "WHERE id=%s AND owner=%s", (utcnow(), backend_id, owner))


def set_connected(conn, backend_id: int, owner: str, client_id: str | None) -> bool:
    """Record the listener's current socket (client_id None = disconnected)."""
    return execute(conn, "UPDATE backends SET client_id=%s, connected=%s, updated_at=%s "
                         "WHERE id=%s AND owner=%s",
                   (client_id, 1 if client_id else 0, utcnow(), backend_id, owner)) == 1


def record_status(conn, backend_id: int, queue_remaining: int) -> None:
    now = utcnow()
    execute(conn, "UPDATE backends SET queue_remaining=%s, last_event_at=%s WHERE id=%s",
            (queue_remaining, now, backend_id))


def touch(conn, backend_id: int) -> None:
    execute(conn, "UPDATE backends SET last_event_at=%s WHERE id=%s", (utcnow(), backend_id))


def pick_backend(conn, urls) -> dict | None:
    """The connected backend (among the configured URLs) with the least work queued."""
    if not urls:
        return None
    marks = ",".join(["%s"] * len(urls))
    rows = query(conn, f"""
        SELECT b.id, b.url, b.client_id, b.queue_remaining,
               (SELECT COUNT(*) FROM jobs j WHERE j.backend_id=b.id AND j.status IN ('submitting','queued','running'))
               AS active
        FROM backends b
        WHERE b.url IN ({marks}) AND b.connected=1 AND b.client_id IS NOT NULL AND b.lease_until > UTC_TIMESTAMP(3)
        """, tuple(urls))
    if not rows:
        return None
    return min(rows, key=lambda r: (max(r["queue_remaining"], r["active"]), r["active"], r["id"]))


def list_backends(conn, urls) -> list[dict]:
    """Every configured backend with its listener state (for /healthz)."""
    if not urls:
        return []
    marks = ",".join(["%s"] * len(urls))
    rows = {r["url"]: r for r in query(conn, "SELECT *, COALESCE(lease_until > UTC_TIMESTAMP(3), 0) AS leased "
                                             f"FROM backends WHERE url IN ({marks})", tuple(urls))}
    out = []
    for url in urls:
        r = rows.get(url)
        live = bool(r and r["connected"] and r["leased"])
        out.append({"url": url, "listener_connected": live,
                    "queue_remaining": r["queue_remaining"] if r else 0,
                    "last_event_at": r["last_event_at"] if r else None})
    return out
