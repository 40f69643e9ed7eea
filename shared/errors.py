"""The one error family of the API and its one renderer.

Every error any endpoint returns has the contract's shape::

    {"error": {"code": "...", "message": "...", "details": {...}}}

Raise an ``ApiError`` subclass anywhere below a function core; ``render_error``
turns it into (status, headers, body). Anything else is logged once with its
traceback and becomes a bare 500 ``internal_error``.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with a stable code that the app can act on."""

    status = 500
    code = "internal_error"
    message = "internal error"

    def __init__(self, message: str | None = None, *, details: dict | None = None,
                 code: str | None = None, retry_after: int | None = None):
        super().__init__(message or self.message)
        if message:
            self.message = message
        if code:
            self.code = code
        self.details = details
        self.retry_after = retry_after


class InvalidJsonError(ApiError):
    status, code, message = 400, "invalid_json", "request body is not valid JSON"


class InvalidParamsError(ApiError):
    status, code, message = 400, "invalid_params", "invalid parameters"


class UnknownWorkflowError(ApiError):
    status, code, message = 400, "unknown_workflow", "no such workflow"


class InvalidUploadError(ApiError):
    status, code, message = 400, "invalid_upload", "invalid upload"


class UnauthorizedError(ApiError):
    status, code, message = 401, "unauthorized", "missing or invalid token"


class InvalidCodeError(ApiError):
    status, code, message = 401, "invalid_code", "the login code was refused"


class TokenExpiredError(ApiError):
    status, code, message = 401, "token_expired", "the token has expired"


class ForbiddenError(ApiError):
    status, code, message = 403, "forbidden", "operator token required"


class NotFoundError(ApiError):
    status, code, message = 404, "not_found", "not found"


class MethodNotAllowedError(ApiError):
    status, code, message = 405, "method_not_allowed", "method not allowed"

    def __init__(self, message: str | None = None, *, allow=(), **kwargs):
        super().__init__(message, **kwargs)
        self.headers = {"Allow": ", ".join(allow)} if allow else {}


class ConflictError(ApiError):
    """409 with one of the contract's codes (job_not_finished, job_failed, ...)."""

    status, code, message = 409, "job_finished", "conflict"


class PayloadTooLargeError(ApiError):
    status, code, message = 413, "payload_too_large", "request body too large"


class WorkflowRejectedError(ApiError):
    status, code, message = 422, "workflow_rejected", "ComfyUI rejected the workflow"


class ContentRejectedError(ApiError):
    status, code, message = 422, "content_rejected", "the content security check rejected this request"


class TooManyRequestsError(ApiError):
    status, code, message = 429, "rate_limited", "too many requests"


class BackendUnavailableError(ApiError):
    status, code, message = 503, "backend_unavailable", "no ComfyUI server is available"


class StorageUnavailableError(ApiError):
    status, code, message = 503, "storage_unavailable", "object storage is unavailable"


class DatabaseUnavailableError(ApiError):
    status, code, message = 503, "database_unavailable", "the database is unavailable"


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    """Build the contract's error body."""
    err = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"error": err}


def render_error(exc: BaseException) -> tuple[int, dict, dict]:
    """Turn any exception into (status, headers, body) in the contract's shape."""
    if isinstance(exc, ApiError):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.retry_after is not None:
            headers["Retry-After"] = str(int(exc.retry_after))
        return exc.status, headers, error_body(exc.code, exc.message, exc.details)
    log.error("unhandled error", exc_info=exc)
    return 500, {}, error_body("internal_error", "internal error")
