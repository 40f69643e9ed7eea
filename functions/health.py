"""GET /healthz: 200 when the database and storage answer, else 503."""

import logging

from shared import backends
from shared.db import isoformat, query_one
from shared.errors import ApiError
from shared.http import json_response, lambda_handler

log = logging.getLogger(__name__)


def health(ctx, req):
    body = {"status": "ok", "database": "ok", "storage": "ok", "backends": []}
    try:
        with ctx.db.connection() as conn:
            query_one(conn, "SELECT 1 AS ok")
            body["backends"] = [_public(b) for b in backends.pool_status(
                conn, ctx.config.comfyui_urls, default_slots=ctx.config.comfyui_slots, lease_s=ctx.config.lease_s)]
    except ApiError:
        body["database"] = "unavailable"
    except Exception:
        log.exception("health: database check failed")
        body["database"] = "unavailable"
    try:
        ctx.store.check()
    except Exception as e:
        log.warning("health: storage check failed: %s", type(e).__name__)
        body["storage"] = "unavailable"
    ok = body["database"] == "ok" and body["storage"] == "ok"
    body["status"] = "ok" if ok else "unavailable"
    return json_response(200 if ok else 503, body, None if ok else {"Retry-After": "5"})


def _public(backend: dict) -> dict:
    """One server as /healthz shows it: state, owner listener (and its host), slots in use, standby,
    last event; the ages are on the database's clock, so a listener that stopped renewing shows as
    not connected once its lease runs out (LEASE_S), whatever the hosts' clocks say."""
    keys = ("url", "state", "listener_connected", "owner", "standby_alive", "slots", "slots_in_use",
            "queue_remaining")
    return {**{k: backend[k] for k in keys}, "last_event_at": isoformat(backend["last_event_at"]),
            **{k: backend[k] for k in ("owner_host", "lease_age_s", "lease_expires_in_s", "last_event_age_s")}}


handler = lambda_handler(health)
