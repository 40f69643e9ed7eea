"""The small request/response pair every function core speaks, and both doors.

A core is ``core(ctx, req) -> Response``. ``from_lambda_event`` builds a
``Request`` from an API Gateway HTTP API (payload 2.0) event and ``to_lambda``
renders a ``Response`` back; ``functions/app.py`` does the same for Flask.
``run`` is the one place that turns exceptions into the contract's errors.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from shared.errors import (ApiError, InvalidJsonError, PayloadTooLargeError, StorageUnavailableError,
                           UnauthorizedError, render_error)
from shared.logs import REQUEST_ID, request_id
from shared.storage import StorageError

log = logging.getLogger(__name__)

MAX_JSON_BODY = 256 * 1024
MAX_JSON_DEPTH = 32  # no request of the contract nests deeper than a few levels


@dataclass
class Request:
    method: str
    path: str
    path_params: dict = field(default_factory=dict)
    query: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    source_ip: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> dict:
        """Parse the body as a JSON object, or raise the contract's 400/413."""
        if len(self.body) > MAX_JSON_BODY:
            raise PayloadTooLargeError(f"request body is over {MAX_JSON_BODY} bytes")
        ctype = (self.header("content-type") or "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise InvalidJsonError("Content-Type must be application/json")
        try:
            # Strict UTF-8: json.loads(bytes) would let raw surrogate bytes (ED A0 80) through.
            data = json.loads((self.body or b"null").decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise InvalidJsonError() from None
        except RecursionError:  # nesting deeper than the parser's stack
            raise InvalidJsonError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
        if not isinstance(data, dict):
            raise InvalidJsonError("request body must be a JSON object")
        if not _shallow(data):
            raise InvalidJsonError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        if b"\\u" in self.body and not _is_text(data):
            # JSON can spell a lone UTF-16 surrogate ("\ud800"); it is no character and no
            # database, log line or response could hold it.
            raise InvalidJsonError("request body has an invalid \\u escape (a lone surrogate)")
        return data

    def bearer(self) -> str:
        """The bearer token, or 401."""
        auth = self.header("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("missing bearer token")
        return token.strip()


def _shallow(value, limit: int | None = None) -> bool:
    """True when no array or object in the value is nested deeper than ``limit`` (without recursion)."""
    limit = MAX_JSON_DEPTH if limit is None else limit
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return False
                stack.append((child, depth + 1))
    return True


def _is_text(value) -> bool:
    """True when every string (keys included) in a parsed JSON value is valid Unicode text."""
    if isinstance(value, str):
        return value.isascii() or _encodes(value)
    if isinstance(value, dict):
        return all(_is_text(k) and _is_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_text(v) for v in value)
    return True


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@dataclass
class Response:
    status: int
    body: dict | bytes | None = None
    headers: dict = field(default_factory=dict)
    content_type: str = "application/json"
    stream: object = None  # a file-like object for large bodies (local file downloads)

    def body_bytes(self) -> bytes:
        if self.stream is not None:
            try:
                return self.stream.read()
            finally:
                self.stream.close()
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        text = json.dumps(self.body, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from somewhere: keep it as its JSON escape
            return text.encode("utf-8", "backslashreplace")


def json_response(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(status=status, body=body, headers=dict(headers or {}))


def check_fields(data: dict, allowed: set[str]) -> None:
    """Reject unknown fields in a request object (the contract says 400)."""
    from shared.errors import InvalidParamsError
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidParamsError(f"unknown field: {unknown[0]}", details={k: "unknown field" for k in unknown})


def run(core, ctx_factory, req: Request) -> Response:
    """Call a core and turn any exception into the contract's error response (CORS headers added)."""
    ctx = None
    try:
        ctx = ctx_factory()
        resp = core(ctx, req)
    except Exception as exc:  # the one place errors are rendered
        if isinstance(exc, StorageError):
            log.warning("storage unavailable in %s %s: %s", req.method, req.path, exc)
            exc = StorageUnavailableError(retry_after=5)
        elif not isinstance(exc, ApiError):
            log.error("unhandled error in %s %s", req.method, req.path, exc_info=exc)
            exc = ApiError()
        status, headers, body = render_error(exc)
        resp = Response(status=status, body=body, headers=headers)
    if ctx is not None and ctx.config.cors_origins and req.method != "OPTIONS":
        from shared import cors
        cors.decorate(resp.headers, ctx.config.cors_origins, req.header("origin"))
    return resp


def from_lambda_event(event: dict) -> Request:
    """Build a Request from an API Gateway HTTP API payload 2.0 event."""
    http = event.get("requestContext", {}).get("http", {})
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8")
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    query = dict(parse_qsl(event.get("rawQueryString") or "", keep_blank_values=True))
    return Request(method=http.get("method", "GET").upper(), path=event.get("rawPath") or http.get("path", "/"),
                   path_params=dict(event.get("pathParameters") or {}), query=query, headers=headers,
                   body=raw, source_ip=http.get("sourceIp", ""))


def to_lambda(resp: Response) -> dict:
    """Render a Response as an API Gateway HTTP API payload 2.0 result."""
    data = resp.body_bytes()
    headers = dict(resp.headers)
    if data or resp.status != 304:
        headers.setdefault("Content-Type", resp.content_type)
    textual = resp.content_type.startswith(("application/json", "text/"))
    return {"statusCode": resp.status, "headers": headers,
            "body": data.decode("utf-8") if textual else base64.b64encode(data).decode("ascii"),
            "isBase64Encoded": not textual}


def lambda_handler(core):
    """Make a Lambda entry point ``handler(event, context)`` for a core."""
    from shared.context import get_context

    def handler(event, context):
        # The caller's X-Request-Id when sane, else API Gateway's own id for the request.
        given = next((v for k, v in (event.get("headers") or {}).items() if k.lower() == "x-request-id"), None)
        rid = request_id(given, (event.get("requestContext") or {}).get("requestId"))
        token = REQUEST_ID.set(rid)
        try:
            out = to_lambda(run(core, get_context, from_lambda_event(event)))
        finally:
            REQUEST_ID.reset(token)
        out["headers"]["X-Request-Id"] = rid
        return out
    handler.core = core
    return handler


def query_int(req: Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi], or 400 invalid_params."""
    from shared.errors import InvalidParamsError
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParamsError(f"{name} must be a whole number", details={name: "must be a whole number"}) from None
    if not lo <= value <= hi:
        raise InvalidParamsError(f"{name} must be between {lo} and {hi}", details={name: f"between {lo} and {hi}"})
    return value


def query_time(req: Request, name: str):
    """An ISO 8601 time query parameter as a naive UTC datetime (None if absent), or 400."""
    from datetime import datetime, timezone

    from shared.errors import InvalidParamsError
    raw = req.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidParamsError(f"{name} must be an ISO 8601 time", details={name: "ISO 8601 time"}) from None
    if value.tzinfo is not None:
        try:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:  # year 1 or 9999 pushed past the calendar by its offset
            raise InvalidParamsError(f"{name} is out of range", details={name: "ISO 8601 time"}) from None
    return value
