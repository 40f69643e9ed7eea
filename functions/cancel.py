"""POST /v1/jobs/{id}/cancel: take a queued job off ComfyUI's queue, or interrupt a running one."""

from shared.auth import authenticate
from shared.limits import limit_user
from shared.cancellation import cancel
from shared.errors import NotFoundError
from shared.http import json_response, lambda_handler
from functions.status import render


def cancel_job(ctx, req):
    user_id = authenticate(ctx, req)
    limit_user(ctx, user_id)
    row = cancel(ctx, req.path_params.get("id", ""), user_id)
    if row is None:
        raise NotFoundError("no such job")
    return json_response(202, {"job": render(ctx, row)})


handler = lambda_handler(cancel_job)
