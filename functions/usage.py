"""GET /v1/usage: usage records for billing (operator token), paged by after_id."""

from shared import usage
from shared.auth import require_admin
from shared.http import json_response, lambda_handler, query_int, query_time


def list_usage(ctx, req):
    require_admin(ctx, req)
    after_id = query_int(req, "after_id", 0, 0, 2**62)
    limit = query_int(req, "limit", 1000, 1, 1000)
    since, until = query_time(req, "since"), query_time(req, "until")
    usage.assign_sequence(ctx.db)
    with ctx.db.connection() as conn:
        rows = usage.list_usage(conn, after_id=after_id, limit=limit, since=since, until=until)
    records = [usage.usage_object(r) for r in rows]
    return json_response(200, {"records": records, "next_after_id": records[-1]["id"] if records else after_id})


handler = lambda_handler(list_usage)
