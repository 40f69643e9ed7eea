"""ComfyUI backend rows: which listener holds which server, under which clientId.

A submission may only use a backend whose listener is connected and whose
lease is fresh (the listener renews it while it lives), and must submit with
that socket's clientId so the events come back to it.

Lease times are taken, renewed and compared on the database's clock
(``UTC_TIMESTAMP(3)``), never a host's: hosts whose clocks disagree still agree
on who owns a backend, so two owners never overlap.
"""

from __future__ import annotations

import json

from shared.db import execute, query, query_one, utcnow

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
    """Take or renew the ownership of a backend; False while another live listener holds it.

    Taking it over from another listener drops that one's socket (``connected``, ``client_id``):
    it died with its listener, and until the new owner connects no job may be sent to it and
    /healthz must not call the server connected. (MySQL applies SET left to right: they are
    compared with the old owner before it changes.)
    """
    if execute(conn, "UPDATE backends SET connected=IF(owner <=> %s, connected, 0), "
                     "client_id=IF(owner <=> %s, client_id, NULL), owner=%s, "
                     "lease_until=UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND, updated_at=UTC_TIMESTAMP(3) "
                     "WHERE id=%s AND (owner=%s OR owner IS NULL OR lease_until IS NULL "
                     "OR lease_until < UTC_TIMESTAMP(3))",
               (owner, owner, owner, int(seconds * 1_000_000), backend_id, owner)) == 1:
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


# last_event_at is on the database's clock, as the lease is: /healthz tells its age from one clock.
def record_status(conn, backend_id: int, queue_remaining: int) -> None:
    execute(conn, "UPDATE backends SET queue_remaining=%s, last_event_at=UTC_TIMESTAMP(3) WHERE id=%s",
            (queue_remaining, backend_id))


def touch(conn, backend_id: int) -> None:
    execute(conn, "UPDATE backends SET last_event_at=UTC_TIMESTAMP(3) WHERE id=%s", (backend_id,))


def heartbeat(conn, backend_id: int, owner: str) -> None:
    """Say that this listener (owner or standby) serves the backend and is alive."""
    execute(conn, "INSERT INTO backend_listeners (backend_id, owner, seen_at) VALUES (%s, %s, UTC_TIMESTAMP(3)) "
                  "ON DUPLICATE KEY UPDATE seen_at=VALUES(seen_at)", (backend_id, owner))
    # Listeners killed without a goodbye leave a row: gone after a day (a few rows per backend at most).
    execute(conn, "DELETE FROM backend_listeners WHERE backend_id=%s AND seen_at < UTC_TIMESTAMP(3) - INTERVAL 1 DAY",
            (backend_id,))


def forget_listener(conn, backend_id: int, owner: str) -> None:
    execute(conn, "DELETE FROM backend_listeners WHERE backend_id=%s AND owner=%s", (backend_id, owner))


# The backends that take new jobs: configured, connected under a live lease, not draining,
# capabilities known. Their active jobs are counted against their slots.
_SERVING = """SELECT b.id, b.url, b.client_id, b.slots, b.last_model, b.capabilities_hash FROM backends b
              WHERE b.url IN ({marks}) AND b.connected=1 AND b.client_id IS NOT NULL
              AND b.lease_until > UTC_TIMESTAMP(3) AND b.state='active' AND b.capabilities_hash IS NOT NULL
              ORDER BY b.id"""


def serving(conn, urls, *, lock: bool = False) -> list[dict]:
    """The backends that take new jobs now, with ``active`` (jobs they hold); ``lock`` locks their rows."""
    if not urls:
        return []
    marks = ",".join(["%s"] * len(urls))
    rows = query(conn, _SERVING.format(marks=marks) + (" FOR UPDATE" if lock else ""), tuple(urls))
    if rows:
        ids = [r["id"] for r in rows]
        counts = {r["backend_id"]: r["n"] for r in query(
            conn, f"SELECT backend_id, COUNT(*) AS n FROM jobs WHERE backend_id IN ({','.join(['%s'] * len(ids))}) "
                  "AND status IN ('submitting','queued','running') GROUP BY backend_id", ids)}
        for r in rows:
            r["active"] = counts.get(r["id"], 0)
    return rows


def known(conn, urls) -> list[dict]:
    """Every configured backend whose capabilities are known, whatever its state (reconnecting, draining...)."""
    if not urls:
        return []
    marks = ",".join(["%s"] * len(urls))
    return query(conn, f"SELECT id, url, capabilities_hash FROM backends WHERE url IN ({marks}) "
                       "AND capabilities_hash IS NOT NULL ORDER BY id", tuple(urls))


def capabilities(conn, rows: list[dict], cache) -> dict[int, dict]:
    """The parsed capabilities of these backend rows, read from the database only when they changed."""
    out, wanted = {}, []
    for r in rows:
        caps = cache.get(r["capabilities_hash"]) if r.get("capabilities_hash") else None
        if caps is None:
            wanted.append(r["id"])
        else:
            out[r["id"]] = caps
    if wanted:
        marks = ",".join(["%s"] * len(wanted))
        for r in query(conn, f"SELECT id, capabilities, capabilities_hash FROM backends WHERE id IN ({marks}) "
                             "AND capabilities IS NOT NULL", wanted):
            caps = json.loads(r["capabilities"])
            cache.put(r["capabilities_hash"], caps)
            out[r["id"]] = caps
    return out


def store_capabilities(conn, backend_id: int, owner: str, caps: dict, digest: str) -> bool:
    """Record what the server offers now (only its owner may); clears a pending refresh request."""
    return execute(conn, "UPDATE backends SET capabilities=%s, capabilities_hash=%s, "
                         "capabilities_at=UTC_TIMESTAMP(3), refresh_requested=0 WHERE id=%s AND owner=%s",
                   (json.dumps(caps, separators=(",", ":")), digest, backend_id, owner)) == 1


def forget_capabilities(conn, backend_id: int) -> None:
    """The server refused what its capabilities promised: take no jobs there until they are read again."""
    execute(conn, "UPDATE backends SET capabilities_hash=NULL, refresh_requested=1 WHERE id=%s", (backend_id,))


def refresh_requested(conn, backend_id: int) -> bool:
    row = query_one(conn, "SELECT refresh_requested FROM backends WHERE id=%s", (backend_id,))
    return bool(row and row["refresh_requested"])


def set_last_model(conn, backend_id: int, model: str | None) -> None:
    if model is not None:
        execute(conn, "UPDATE backends SET last_model=%s WHERE id=%s AND NOT (last_model <=> %s)",
                (model, backend_id, model))


# -- operators ------------------------------------------------------------------

def find(conn, url: str) -> dict | None:
    return query_one(conn, "SELECT * FROM backends WHERE url=%s", (url,))


def set_state(conn, url: str, state: str) -> bool:
    """Drain (take no new jobs) or resume a backend; held in MySQL for every instance."""
    ensure_backend(conn, url)
    return execute(conn, "UPDATE backends SET state=%s, updated_at=%s WHERE url=%s", (state, utcnow(), url)) >= 0


def set_slots(conn, url: str, slots: int | None) -> None:
    ensure_backend(conn, url)
    execute(conn, "UPDATE backends SET slots=%s WHERE url=%s", (slots, url))


def request_refresh(conn, urls) -> None:
    for url in urls:
        ensure_backend(conn, url)
        execute(conn, "UPDATE backends SET refresh_requested=1 WHERE url=%s", (url,))


def slot_use(conn, urls, *, default_slots: int) -> list[dict]:
    """Each configured backend's url, slots, slots_in_use and state (connected, draining, down), in one
    query that reads no capabilities (the listener's metrics, at each scrape)."""
    if not urls:
        return []
    marks = ",".join(["%s"] * len(urls))
    rows = query(conn, f"""
        SELECT b.url, b.slots, b.state, b.connected AND COALESCE(b.lease_until > UTC_TIMESTAMP(3), 0) AS live,
               (SELECT COUNT(*) FROM jobs j WHERE j.backend_id=b.id AND j.status IN ('submitting','queued','running'))
               AS active
        FROM backends b WHERE b.url IN ({marks}) ORDER BY b.id""", tuple(urls))
    found = {r["url"]: r for r in rows}
    return [{"url": url, "slots": (found.get(url) or {}).get("slots") or default_slots,
             "slots_in_use": int((found.get(url) or {}).get("active") or 0),
             "state": ("draining" if found[url]["state"] == "draining" else "connected")
             if url in found and found[url]["live"] else "down"} for url in urls]


def pool_status(conn, urls, *, default_slots: int, lease_s: float) -> list[dict]:
    """Every configured backend as operators see it (`gateway backends list`, /healthz)."""
    if not urls:
        return []
    marks = ",".join(["%s"] * len(urls))
    rows = {r["url"]: r for r in query(conn, f"""
        SELECT b.*, COALESCE(b.lease_until > UTC_TIMESTAMP(3), 0) AS leased,
               (SELECT COUNT(*) FROM jobs j WHERE j.backend_id=b.id AND j.status IN ('submitting','queued','running'))
               AS active,
               (SELECT COUNT(*) FROM backend_listeners l WHERE l.backend_id=b.id AND NOT (l.owner <=> b.owner)
                  AND l.seen_at > UTC_TIMESTAMP(3) - INTERVAL %s MICROSECOND) AS standbys,
               TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(3), b.lease_until) AS lease_left_us,
               (SELECT TIMESTAMPDIFF(MICROSECOND, l.seen_at, UTC_TIMESTAMP(3)) FROM backend_listeners l
                  WHERE l.backend_id=b.id AND l.owner=b.owner) AS owner_seen_us,
               TIMESTAMPDIFF(MICROSECOND, b.last_event_at, UTC_TIMESTAMP(3)) AS event_age_us
        FROM backends b WHERE b.url IN ({marks})""", (int(lease_s * 1_000_000), *urls))}
    out = []
    for url in urls:
        r = rows.get(url) or {}
        live = bool(r.get("connected") and r.get("leased"))
        caps = json.loads(r["capabilities"]) if r.get("capabilities") else {}
        checkpoints = sorted({c for key, options in (caps.get("choices") or {}).items()
                              if key.rpartition(".")[2] in ("ckpt_name", "unet_name") for c in options})
        out.append({
            "url": url,
            "state": ("draining" if r.get("state") == "draining" else "connected") if live else "down",
            "draining": r.get("state") == "draining",
            "listener_connected": live,
            "owner": r.get("owner") if r.get("leased") else None,
            "standby_alive": bool(r.get("standbys")),
            "slots": r.get("slots") or default_slots,
            "slots_in_use": r.get("active", 0),
            "queue_remaining": r.get("queue_remaining", 0),
            "checkpoints": checkpoints,
            "capabilities_at": r.get("capabilities_at"),
            "last_event_at": r.get("last_event_at"),
            **_ages(r, lease_s),
        })
    return out


def _ages(r: dict, lease_s: float) -> dict:
    """The owner's host and how old its lease and the server's last event are, on the database's clock."""
    leased = bool(r.get("leased"))
    seen, left = r.get("owner_seen_us"), r.get("lease_left_us")
    if seen is None and left is not None:
        seen = lease_s * 1_000_000 - left  # renewed without a heartbeat row: the lease says when
    event = r.get("event_age_us")
    return {"owner_host": r["owner"].split(":")[0] if leased and r.get("owner") else None,
            "lease_age_s": round(max(seen, 0) / 1e6, 1) if leased and seen is not None else None,
            "lease_expires_in_s": round(left / 1e6, 1) if leased and left is not None else None,
            "last_event_age_s": round(max(event, 0) / 1e6, 1) if event is not None else None}
