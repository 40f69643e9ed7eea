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
            body["backends"] = [{**b, "last_event_at": isoformat(b["last_event_at"])}
                                for b in backends.list_backends(conn, ctx.config.comfyui_urls)]
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


handler = lambda_handler(health)
