"""Every request API Gateway has no route for: the contract's 404 or 405 (Lambda's `$default` route).

Flask answers these itself (functions/app.py); this keeps the Lambda door the same.
"""

from functions.routes import methods_for
from shared.errors import MethodNotAllowedError, NotFoundError
from shared.http import lambda_handler


def no_route(ctx, req):
    allowed = methods_for(req.path)
    if allowed and req.method not in allowed:  # (a route this deployment does not serve, e.g. /v1/files, is 404)
        raise MethodNotAllowedError(f"{req.method} is not allowed here; use {', '.join(sorted(allowed))}")
    raise NotFoundError("no such endpoint")


handler = lambda_handler(no_route)
