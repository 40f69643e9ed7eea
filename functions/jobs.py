"""GET /v1/jobs: the caller's own jobs, newest first, with a cursor."""

import base64
import binascii
from datetime import datetime

from shared import jobs
from shared.auth import authenticate
from shared.errors import InvalidParamsError
from shared.http import json_response, lambda_handler, query_int
from functions.status import render


def encode_cursor(row: dict) -> str:
    text = f"{row['created_at'].isoformat(timespec='milliseconds')}|{row['id']}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = text.split("|", 1)
        return datetime.fromisoformat(stamp), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParamsError("cursor is not valid", details={"cursor": "not a cursor from this API"}) from None


def list_jobs(ctx, req):
    user_id = authenticate(ctx, req)
    limit = query_int(req, "limit", 20, 1, 100)
    cursor = req.query.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    with ctx.db.connection() as conn:
        rows = jobs.list_user_jobs(conn, user_id, limit=limit + 1, before=before)
    page = rows[:limit]
    return json_response(200, {"jobs": [render(ctx, r) for r in page],
                                "next_cursor": encode_cursor(page[-1]) if len(rows) > limit else None})


handler = lambda_handler(list_jobs)
