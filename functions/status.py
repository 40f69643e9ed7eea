"""GET /v1/jobs/{id}: the job object, with an ETag (304 when unchanged)."""

import time

from shared import jobs
from shared.auth import authenticate
from shared.errors import NotFoundError
from shared.http import Response, json_response, lambda_handler


def render(ctx, row: dict) -> dict:
    """The contract's job object for a row, with a freshly signed preview URL.

    Everything comes from the row (the listener stores the title of the node in progress) and the
    link is signed in-process (shared/storage/sigv4.py): a poll loads neither workflows nor boto3.
    With MODERATION set no preview is shown (it would be an unchecked image).
    """
    preview = None
    # Under content security a live preview would be an image nobody checked: none is shown.
    if row["status"] == "running" and row["preview_key"] and ctx.config.moderation == "none":
        preview, _ = ctx.store.signed_url(row["preview_key"], ctx.config.signed_url_ttl)
    return jobs.job_object(row, preview_url=preview)


def etag(ctx, row: dict) -> str:
    """A weak tag: every change of the job or its queue position changes it, but not eta_seconds alone
    (a new mean run time after some other job finished is not worth a full answer to every poller)."""
    # A preview URL is re-signed every half TTL, so the tag changes before an app's copy expires.
    window = int(time.time() // max(ctx.config.signed_url_ttl // 2, 1)) if row["preview_key"] else 0
    return f'W/"{row["id"][:8]}-{row["version"]}-{row["ahead"] or 0}-{window}"'


def _matches(tag: str, header: str | None) -> bool:
    """If-None-Match: any listed tag (compared weakly, W/ or not) or *."""
    listed = [t.strip().removeprefix("W/") for t in (header or "").split(",")]
    return "*" in listed or tag.removeprefix("W/") in listed


def get_status(ctx, req):
    user_id = authenticate(ctx, req)
    with ctx.db.connection() as conn:
        row = jobs.get_job(conn, req.path_params.get("id", ""), user_id)
    if row is None:
        raise NotFoundError("no such job")
    tag = etag(ctx, row)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if _matches(tag, req.header("if-none-match")):
        return Response(status=304, headers=headers)
    return json_response(200, {"job": render(ctx, row)}, headers)


handler = lambda_handler(get_status)
