"""GET /v1/workflows: what the app can ask for, with each parameter's rules."""

from shared import backends
from shared.auth import authenticate
from shared.http import json_response, lambda_handler
from shared.pool import capabilities


def list_workflows(ctx, req):
    authenticate(ctx, req)
    with ctx.db.connection() as conn:
        pool = backends.serving(conn, ctx.config.comfyui_urls)
        caps = list(backends.capabilities(conn, pool, ctx.capabilities_cache).values())
    # enum_from choices are the union over the servers taking jobs, as stored by their listeners
    # (nothing here asks ComfyUI); with none connected, enum_from params show no enum.
    choices = capabilities.union_choices(caps) if caps else None
    items = [{**wf.public(choices), "available": capabilities.available(wf, caps)}
             for _, wf in sorted(ctx.workflows.items())]
    return json_response(200, {"workflows": items})


handler = lambda_handler(list_workflows)
