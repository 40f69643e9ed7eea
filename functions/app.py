"""The Flask app that mounts every function core (the gunicorn door).

``functions.routes.ROUTES`` (from ``functions.paths.TABLE``) is the HTTP API; serverless.yml
maps the same paths to each module's Lambda ``handler`` (tests keep them in step).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response as FlaskResponse, request

from functions import demo, fallback, files, metrics as metrics_endpoint
from functions.routes import ROUTES
from shared import metrics
from shared.errors import ApiError, InvalidParamsError, PayloadTooLargeError, render_error
from shared.http import Request, Response, run
from shared.logs import REQUEST_ID, request_id

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
        out = FlaskResponse(data, status=resp.status, content_type=resp.content_type)
        if not data:  # a 204 or 304 has no body to type
            del out.headers["Content-Type"]
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


def read_body(environ: dict, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes, else 413: also for chunked bodies, which
    announce no length (the server ends the stream), so they are read to one byte past the limit."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        try:
            n = int(length)
        except ValueError:
            raise InvalidParamsError("invalid Content-Length") from None
        if n > limit:
            raise PayloadTooLargeError(f"request body is over {limit} bytes")
        want = n
    elif environ.get("wsgi.input_terminated") and stream is not None:
        want = limit + 1
    else:
        return b""
    try:
        data = stream.read(want) if want else b""
    except (OSError, ValueError) as e:  # a broken chunked encoding, or the client went away mid-body
        raise InvalidParamsError("the request body could not be read") from e
    if len(data) > limit:
        raise PayloadTooLargeError(f"request body is over {limit} bytes")
    return data


def observe(app: Flask) -> None:
    """Every answer carries X-Request-Id (the caller's when sane, else a new one) and every line
    logged meanwhile its request_id; every request is counted by route (the Flask rule: a
    bounded set), method and status, with the time to its status line."""
    inner = app.wsgi_app

    @app.before_request
    def route():
        rule = request.url_rule
        request.environ["gateway.route"] = rule.rule if rule is not None else None

    def wsgi_app(environ, start_response):
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        started = time.perf_counter()
        token = REQUEST_ID.set(rid)

        def start(status, headers, exc_info=None):
            headers.append(("X-Request-Id", rid))
            metrics.http_request(environ.get("gateway.route"), environ.get("REQUEST_METHOD", ""), status[:3],
                                 time.perf_counter() - started)
            return start_response(status, headers, exc_info)
        try:
            return inner(environ, start)
        finally:
            REQUEST_ID.reset(token)
    app.wsgi_app = wsgi_app


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
    metrics.enable(multiprocess=True)  # PROMETHEUS_MULTIPROC_DIR: set by `gateway serve` for its workers
    observe(app)
    # A local-storage image upload is the one large body; every other request fits in 1 MB
    # (JSON bodies have their own, smaller limit).
    upload_limit = max(MAX_REQUEST_BYTES, _max_upload(ctx_factory) + 64 * 1024)

    def call(core, path_params, limit):
        try:
            body = read_body(request.environ, limit) if limit else b""
        except ApiError as e:
            return _error(e)
        req = Request(method=request.method, path=request.path, path_params=path_params,
                      query=request.args.to_dict(), headers={k.lower(): v for k, v in request.headers.items()},
                      body=body, source_ip=request.remote_addr or "")
        return _to_flask(run(core, ctx_factory, req))

    for method, rule, core in ROUTES:
        limit = upload_limit if core is files.upload else MAX_REQUEST_BYTES
        view = (lambda core, limit: lambda **params: call(core, params, limit))(core, limit)
        name = f"{core.__module__}.{core.__name__}"
        app.add_url_rule(rule, endpoint=name, view_func=view, methods=[method], provide_automatic_options=False)

    for rule in ("/demo", "/demo/", "/demo/<path:name>"):  # the H5 demo page (404 unless DEV_LOGIN=1)
        app.add_url_rule(rule, endpoint=f"demo {rule}", view_func=lambda **params: call(demo.serve, params, None),
                         methods=["GET"], provide_automatic_options=False, merge_slashes=False)

    # The workers' metrics (operator token); not in the route table: Lambda has no /metrics.
    app.add_url_rule("/metrics", endpoint="metrics", methods=["GET"], provide_automatic_options=False,
                     view_func=lambda: call(metrics_endpoint.get_metrics, {}, None))

    def no_route(_=None):
        return call(fallback.no_route, {}, None)  # answered without reading a body

    for rule in dict.fromkeys(rule for _, rule, _ in ROUTES):  # OPTIONS: CORS preflights, answered from the table
        app.add_url_rule(rule, endpoint=f"options {rule}", view_func=lambda **_: no_route(),
                         methods=["OPTIONS"], provide_automatic_options=False)
    app.register_error_handler(404, no_route)
    app.register_error_handler(405, no_route)

    @app.errorhandler(413)
    def too_large(_):
        return _error(PayloadTooLargeError())

    @app.errorhandler(500)
    def internal(_):
        return _error(ApiError())

    return app
