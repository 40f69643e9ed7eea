"""The Flask app that mounts every function core (the gunicorn door).

``functions.routes.ROUTES`` is the one table of the HTTP API; serverless.yml
maps the same paths to each module's Lambda ``handler`` (tests keep them in step).
"""

from __future__ import annotations

import logging

from flask import Flask, Response as FlaskResponse, request

from functions.routes import ROUTES
from shared.errors import ApiError, MethodNotAllowedError, NotFoundError, PayloadTooLargeError, render_error
from shared.http import Request, Response, run

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024


def _to_flask(resp: Response) -> FlaskResponse:
    if resp.stream is not None:
        def chunks(f=resp.stream):
            try:
                while block := f.read(64 * 1024):
                    yield block
            finally:
                f.close()
        out = FlaskResponse(chunks(), status=resp.status, content_type=resp.content_type)
    else:
        data = resp.body_bytes()
        out = FlaskResponse(data, status=resp.status, content_type=resp.content_type if data else None)
    for name, value in resp.headers.items():
        out.headers[name] = value
    return out


def _error(exc: ApiError) -> FlaskResponse:
    status, headers, body = render_error(exc)
    return _to_flask(Response(status=status, body=body, headers=headers))


def _max_upload(ctx_factory) -> int:
    try:
        return ctx_factory().config.max_upload_bytes
    except Exception:  # the config is reported properly on the first request
        return 10 * 1024 * 1024


def create_app(ctx_factory=None, *, trusted_proxies: int = 0) -> Flask:
    """Build the Flask app; ``ctx_factory`` returns the Context (default: from the environment).

    With ``trusted_proxies`` > 0 the client address is taken from X-Forwarded-For,
    that many hops from the right (what the proxies appended, not what a client wrote).
    """
    if ctx_factory is None:
        from shared.context import get_context
        ctx_factory = get_context
    app = Flask(__name__)
    if trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=trusted_proxies, x_proto=0, x_host=0, x_port=0, x_prefix=0)
    # Large enough for a local-storage image upload; JSON bodies have their own, smaller limit.
    app.config["MAX_CONTENT_LENGTH"] = max(MAX_REQUEST_BYTES, _max_upload(ctx_factory) + 64 * 1024)

    def mount(method, rule, core):
        def view(**path_params):
            req = Request(method=request.method, path=request.path, path_params=path_params,
                          query=request.args.to_dict(), headers={k.lower(): v for k, v in request.headers.items()},
                          body=request.get_data(cache=False), source_ip=request.remote_addr or "")
            return _to_flask(run(core, ctx_factory, req))
        view.__name__ = f"{core.__module__}.{core.__name__}"
        app.add_url_rule(rule, endpoint=view.__name__, view_func=view, methods=[method])

    for method, rule, core in ROUTES:
        mount(method, rule, core)

    @app.errorhandler(404)
    def not_found(_):
        return _error(NotFoundError("no such endpoint"))

    @app.errorhandler(405)
    def not_allowed(_):
        return _error(MethodNotAllowedError())

    @app.errorhandler(413)
    def too_large(_):
        return _error(PayloadTooLargeError())

    @app.errorhandler(500)
    def internal(_):
        return _error(ApiError())

    return app
