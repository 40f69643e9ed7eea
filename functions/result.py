"""GET /v1/jobs/{id}/result: the saved images as freshly signed URLs."""

from shared import jobs
from shared.auth import authenticate
from shared.db import isoformat
from shared.errors import ConflictError, NotFoundError
from shared.http import json_response, lambda_handler


def get_result(ctx, req):
    user_id = authenticate(ctx, req)
    with ctx.db.connection() as conn:
        row = jobs.get_job(conn, req.path_params.get("id", ""), user_id)
        if row is None:
            raise NotFoundError("no such job")
        status = jobs.public_status(row["status"])
        if status == "failed":
            raise ConflictError("the job failed", code="job_failed",
                                details=jobs.job_object(row)["error"])
        if status == "cancelled":
            raise ConflictError("the job was cancelled", code="job_cancelled")
        if status != "succeeded":
            raise ConflictError("the job is not finished yet", code="job_not_finished")
        if row["moderation"] == "rejected":  # MODERATION_OUTPUTS=publish: its images were withdrawn
            raise ConflictError("the content check rejected this job's images; they were withdrawn",
                                code="content_rejected")
        outputs = jobs.list_outputs(conn, row["id"])
    images = []
    for out in outputs:
        url, expires = ctx.store.signed_url(out["object_key"], ctx.config.signed_url_ttl)
        images.append({"url": url, "expires_at": isoformat(expires), "content_type": out["content_type"],
                       "bytes": out["bytes"], "width": out["width"], "height": out["height"],
                       "node_id": out["node_id"], "index": out["idx"]})
    return json_response(200, {"job_id": row["id"], "images": images})


handler = lambda_handler(get_result)
