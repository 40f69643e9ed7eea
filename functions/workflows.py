"""GET /v1/workflows: what the app can ask for, with each parameter's rules."""

from shared.auth import authenticate
from shared.backends import pick_backend
from shared.http import json_response, lambda_handler


def list_workflows(ctx, req):
    authenticate(ctx, req)
    with ctx.db.connection() as conn:
        backend = pick_backend(conn, ctx.config.comfyui_urls)
    # No server connected: no choices to offer (and none to wait for); enum_from params show no enum.
    choices = ctx.choices_for(backend["url"]) if backend else None
    items = [wf.public(choices) for _, wf in sorted(ctx.workflows.items())]
    return json_response(200, {"workflows": items})


handler = lambda_handler(list_workflows)
