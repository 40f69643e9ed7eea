"""Log lines as text or JSON (LOG_FORMAT), request ids, and the job a line is about.

``setup(cfg)`` configures the root logger once per process (the `gateway` commands, Lambda's
first request). With ``LOG_FORMAT=json`` every line is one JSON object:

    {"time": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "listener.finalize",
     "message": "job 6f1...: succeeded with 2 image(s)", "job_id": "6f1...", "request_id": "..."}

``request_id`` is there inside a request (``REQUEST_ID``, set by both doors); ``job_id`` comes
from ``extra={"job_id": ...}``, else from the house form of a job line, ``log.info("job %s:
...", job_id, ...)``, else from ``JOB_ID`` (set by the code that handles one job); ``exception``
holds the traceback when there is one. Both formats take signatures out of the message and
the traceback (``redact``), so no format shows what the access log hides.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import uuid
from datetime import datetime, timezone

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# API Gateway's own ids are base64-ish (an HTTP API's look like 'JZ3QAjcvIAMEVfQ='): '=', '+' and
# '/' are allowed there, still no spaces or control characters.
_SANE_GATEWAY_ID = re.compile(r"[A-Za-z0-9._=+/-]{1,128}")

# Query parameters whose values sign or authorise a link: never written to a log.
_SECRET_PARAMS = re.compile(
    r"(?i)((?:^|[?&;])(?:signature|msg_signature|x-amz-signature|x-amz-credential|x-amz-security-token"
    r"|access_token|token)=)"
    r"[^&;\s\"]*")


def redact(text: str) -> str:
    """The text with the values of signing query parameters replaced by [redacted]."""
    return _SECRET_PARAMS.sub(r"\1[redacted]", text) if "=" in text else text


def request_id(given: str | None = None, fallback: str | None = None) -> str:
    """The id of a request: the caller's X-Request-Id when sane (<= 128 of [A-Za-z0-9._-]), else
    ``fallback`` (API Gateway's own id) when sane (<= 128 of [A-Za-z0-9._=+/-]), else a new one."""
    if given and _SANE_ID.fullmatch(given):
        return given
    if fallback and _SANE_GATEWAY_ID.fullmatch(fallback):
        return fallback
    return uuid.uuid4().hex


@contextlib.contextmanager
def job(job_id: str | None):
    """Lines logged inside the block are about this job (``job_id`` in JSON)."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


def job_of(record: logging.LogRecord) -> str | None:
    """The job a record is about: its ``extra``, else its own "job %s: ..." form, else the context."""
    job_id = getattr(record, "job_id", None)
    if job_id is None and record.args and isinstance(record.msg, str) and record.msg.startswith("job %s"):
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        job_id = args[0]
    if job_id is None:
        job_id = JOB_ID.get()
    return None if job_id is None else str(job_id)


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines, signatures redacted: for handlers whose format is not ours
    (Lambda's runtime installs its own, with the request id)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class TextFormatter(logging.Formatter):
    """The plain format, signatures redacted."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, job_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
               + f"{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": redact(record.getMessage())}
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid is None and record.name == "gunicorn.access" and isinstance(record.args, dict):
            rid = record.args.get("{x-request-id}o")  # written after the request: from its response header
        if rid:
            out["request_id"] = rid
        job_id = job_of(record)
        if job_id:
            out["job_id"] = job_id
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def setup(cfg) -> None:
    """Send the root logger's lines to stderr in LOG_FORMAT at LOG_LEVEL.

    Where a handler is there already (Lambda's runtime installs one) it stays, so lines still
    reach CloudWatch: text keeps its format (Lambda's line, with the request id) but redacted,
    json gives it the JSON formatter.
    """
    root = logging.getLogger()
    log_format = getattr(cfg, "log_format", "text")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
    elif log_format == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    else:
        for handler in root.handlers:
            if not isinstance(handler.formatter, (TextFormatter, JsonFormatter, RedactingFormatter)):
                handler.setFormatter(RedactingFormatter(handler.formatter))
    root.setLevel(cfg.log_level.upper())
