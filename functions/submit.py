"""POST /v1/jobs: submit a job (202), or replay it for a repeated Idempotency-Key (200)."""

from shared.auth import authenticate
from shared.limits import limit_user
from shared.http import json_response, lambda_handler
from shared.submission import submit
from functions.status import render


def submit_job(ctx, req):
    user_id = authenticate(ctx, req)
    limit_user(ctx, user_id)
    status, row = submit(ctx, user_id, req.json(), req.header("idempotency-key"))
    return json_response(status, {"job": render(ctx, row)})


handler = lambda_handler(submit_job)
