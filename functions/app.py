"""The Flask app that mounts every function core (the gunicorn door).

``ROUTES`` is the one table of the HTTP API; serverless.yml maps the same
paths to each module's Lambda ``handler``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response as FlaskResponse, request

from functions import auth, cancel, files, health, jobs, openapi, result, status, submit, uploads, usage, workflows
from shared.errors import ApiError, MethodNotAllowedError, NotFoundError, PayloadTooLargeError, render_error
from shared.http import Request, Response, run

log = logging.getLogger(__name__)

# (method, Flask rule, core)
ROUTES = [
    ("POST", "/v1/auth/wechat", auth.wechat_login),
    ("POST", "/v1/auth/dev", auth.dev_login),
    ("GET", "/v1/workflows", workflows.list_workflows),
    ("POST", "/v1/jobs", submit.submit_job),
    ("GET", "/v1/jobs", jobs.list_jobs),
    ("GET", "/v1/jobs/<id>", status.get_status),
    ("POST", "/v1/jobs/<id>/cancel", cancel.cancel_job),
    ("GET", "/v1/jobs/<id>/result", result.get_result),
    ("POST", "/v1/uploads", uploads.new_upload),
    ("GET", "/v1/files/<path:key>", files.download),
    ("POST", "/v1/files", files.upload),
    ("GET", "/v1/usage", usage.list_usage),
    ("GET", "/healthz", health.health),
    ("GET", "/v1/openapi.json", openapi.get_openapi),
]

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


def create_app(ctx_factory=None) -> Flask:
    """Build the Flask app; ``ctx_factory`` returns the Context (default: from the environment)."""
    if ctx_factory is None:
        from shared.context import get_context
        ctx_factory = get_context
    app = Flask(__name__)
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
