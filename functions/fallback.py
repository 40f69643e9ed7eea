"""Every request no function serves: OPTIONS (CORS preflight), and the contract's 404 or 405.

On Lambda this is the `$default` route; the Flask app (functions/app.py) sends the
same requests here, so both doors answer them alike.
"""

from functions.paths import methods_for
from shared import cors
from shared.errors import MethodNotAllowedError, NotFoundError
from shared.http import Response, lambda_handler


def no_route(ctx, req):
    allowed = methods_for(req.path)
    if not allowed or req.method in allowed:  # (a route this deployment does not serve, e.g. /v1/files on Lambda)
        raise NotFoundError("no such endpoint")
    if req.method == "OPTIONS":
        return Response(status=204, headers=cors.preflight_headers(ctx.config.cors_origins, req.header("origin"),
                                                                   allowed))
    raise MethodNotAllowedError(f"{req.method} is not allowed here; use {', '.join(sorted(allowed))}",
                                allow=sorted(allowed | {"OPTIONS"}))


handler = lambda_handler(no_route)
