"""POST /v1/auth/dev: log in by name (only when DEV_LOGIN=1)."""

from shared.auth import login
from shared.limits import limit_login
from shared.errors import InvalidParamsError, NotFoundError
from shared.http import check_fields, json_response, lambda_handler


def dev_login(ctx, req):
    if not ctx.config.dev_login:
        raise NotFoundError("no such endpoint")
    limit_login(ctx, req)
    body = req.json()
    check_fields(body, {"user"})
    name = body.get("user")
    if not isinstance(name, str) or not (1 <= len(name) <= 64) or not name.isprintable():
        raise InvalidParamsError("user must be a name of 1 to 64 characters", details={"user": "1 to 64 characters"})
    return json_response(200, login(ctx, provider="dev", subject=name))


dev_handler = lambda_handler(dev_login)
