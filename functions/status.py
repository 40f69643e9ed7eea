"""GET /v1/jobs/{id}: the job object, with an ETag (304 when unchanged)."""

import time

from shared import jobs
from shared.auth import authenticate
from shared.errors import NotFoundError
from shared.http import Response, json_response, lambda_handler


def run_seconds(ctx, row: dict) -> float | None:
    """The workflow's recent mean run time (for eta_seconds) while the job is not final."""
    return ctx.run_seconds(row["workflow"]) if row["status"] not in jobs.FINAL else None


def render(ctx, row: dict, run_s: float | None = None) -> dict:
    """The contract's job object for a row, with a freshly signed preview URL."""
    wf = ctx.workflows.get(row["workflow"])
    preview = None
    if row["status"] == "running" and row["preview_key"]:
        preview, _ = ctx.store.signed_url(row["preview_key"], ctx.config.signed_url_ttl)
    return jobs.job_object(row, node_title=wf.node_title if wf else None, preview_url=preview,
                           run_seconds=run_s if run_s is not None else run_seconds(ctx, row))


def etag(ctx, row: dict, run_s: float | None = None) -> str:
    # A preview URL is re-signed every half TTL, so the tag changes before an app's copy expires;
    # the estimate behind eta_seconds is part of the answer too.
    window = int(time.time() // max(ctx.config.signed_url_ttl // 2, 1)) if row["preview_key"] else 0
    eta = round(run_s) if run_s is not None else "-"
    return f'"{row["id"][:8]}-{row["version"]}-{row["ahead"] or 0}-{window}-{eta}"'


def _matches(tag: str, header: str | None) -> bool:
    """If-None-Match: any listed tag (weak or strong, as proxies may weaken it) or *."""
    listed = [t.strip().removeprefix("W/") for t in (header or "").split(",")]
    return "*" in listed or tag in listed


def get_status(ctx, req):
    user_id = authenticate(ctx, req)
    with ctx.db.connection() as conn:
        row = jobs.get_job(conn, req.path_params.get("id", ""), user_id)
    if row is None:
        raise NotFoundError("no such job")
    run_s = run_seconds(ctx, row)
    tag = etag(ctx, row, run_s)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if _matches(tag, req.header("if-none-match")):
        return Response(status=304, headers=headers)
    return json_response(200, {"job": render(ctx, row, run_s)}, headers)


handler = lambda_handler(get_status)
