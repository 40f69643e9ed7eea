"""shared/logs.py: the JSON line, the job and request a line is about, redaction; X-Request-Id in both doors."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pytest

from shared import logs
from shared.config import Config
from shared.context import Context, set_context
from shared.http import Response, lambda_handler

JOB = "6f1c2a4e-1111-4000-8000-000000000001"


@pytest.fixture
def capture():
    """A logger whose lines are formatted by the JSON formatter; returns a function giving the lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_a_json_line_has_its_fields(capture):
    log, lines = capture
    log.info("job %s: sent to %s as number %s", JOB, "http://gpu:8188", 3)
    log.warning("no job in this one")
    first, second = lines()
    assert first["message"] == f"job {JOB}: sent to http://gpu:8188 as number 3"
    assert (first["level"], first["logger"], first["job_id"]) == ("INFO", "tests.logs", JOB)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert "job_id" not in second and "request_id" not in second and "exception" not in second


def test_job_and_request_come_from_extra_or_the_context(capture):
    log, lines = capture
    log.info("copied %d bytes", 10, extra={"job_id": JOB})
    with logs.job("from-context"):
        log.info("a line inside a job's handling")
        log.info("job %s: a line about another job names that one", "other")
    token = logs.REQUEST_ID.set("req-1")
    try:
        log.info("inside a request")
    finally:
        logs.REQUEST_ID.reset(token)
    log.info("after the request")
    got = lines()
    assert [x.get("job_id") for x in got] == [JOB, "from-context", "other", None, None]
    assert [x.get("request_id") for x in got] == [None, None, None, "req-1", None]


def test_exceptions_and_signatures(capture):
    log, lines = capture
    secret = "0123456789abcdef" * 4
    try:
        raise RuntimeError(f"GET https://b.s3.amazonaws.com/k?X-Amz-Signature={secret}&X-Amz-Credential=AKIA/x failed")
    except RuntimeError:
        log.exception("job %s: copy failed for /v1/files/k?expires=1&signature=%s", JOB, secret)
    (line,) = lines()
    assert "RuntimeError" in line["exception"] and "Traceback" in line["exception"]
    assert secret not in json.dumps(line) and "AKIA" not in json.dumps(line)
    assert "signature=[redacted]" in line["message"] and "X-Amz-Signature=[redacted]" in line["exception"]
    text = logging.LogRecord("x", logging.INFO, __file__, 1, "url ?token=%s", (secret,), None)
    assert secret not in logs.TextFormatter().format(text)


def test_gunicorn_access_lines_take_the_request_id_of_their_response():
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "%(r)s %(s)s",
                               ({"r": "GET /healthz HTTP/1.1", "s": "200", "{x-request-id}o": "rid-9"},), None)
    line = json.loads(logs.JsonFormatter().format(record))
    assert (line["message"], line["request_id"]) == ("GET /healthz HTTP/1.1 200", "rid-9")


@pytest.mark.parametrize("given, fallback, kept", [
    ("abc-123", None, "abc-123"),
    ("A.b_c-9" * 18, None, "A.b_c-9" * 18),  # 126 characters
    ("x" * 129, None, None),
    ("has space", None, None),
    ("semi;colon", "apigw-id;", None),
    # API Gateway's HTTP API request ids are base64-ish: kept as the fallback, not from a caller
    (None, "JZ3QAjcvIAMEVfQ=", "JZ3QAjcvIAMEVfQ="),
    ("bad value!", "a+b/c=", "a+b/c="),
    ("JZ3QAjcvIAMEVfQ=", None, None),
    (None, "has space=", None),
    (None, "ctl\x01=", None),
    (None, "=" * 129, None),
    ("", "apigw-Id_1", "apigw-Id_1"),
    (None, None, None),
    ("é", None, None),
])
def test_request_ids_are_kept_only_when_sane(given, fallback, kept):
    rid = logs.request_id(given, fallback)
    if kept is None:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
    else:
        assert rid == kept


def test_setup_writes_json_to_stderr(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = []
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        logs.setup(Config.from_env({"LOG_FORMAT": "json", "LOG_LEVEL": "warning"}))
        logging.getLogger("tests.setup").info("not shown")
        logging.getLogger("tests.setup").warning("job %s: shown", JOB)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["logger"], line["level"], line["job_id"]) == ("tests.setup", "WARNING", JOB)


def test_setup_redacts_and_levels_a_handler_that_was_there_in_text(monkeypatch):
    """Lambda's runtime installs its own handler: LOG_FORMAT=text keeps its format but redacted, at LOG_LEVEL."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    runtime = logging.StreamHandler(stream)
    runtime.setFormatter(logging.Formatter("[%(levelname)s]\tRUNTIME\t%(message)s"))
    root.handlers[:] = [runtime]
    root.setLevel(logging.WARNING)
    secret = "0123456789abcdef" * 2
    try:
        logs.setup(Config.from_env({"LOG_FORMAT": "text", "LOG_LEVEL": "info"}))
        logs.setup(Config.from_env({"LOG_FORMAT": "text", "LOG_LEVEL": "info"}))  # a second call adds nothing
        assert root.level == logging.INFO
        log = logging.getLogger("tests.setup")
        log.debug("not shown")
        log.info("push /wx?timestamp=1&nonce=2&msg_signature=%s&signature=%s", secret, secret)
        try:
            raise RuntimeError(f"GET /v1/files/k?expires=1&signature={secret}")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text = stream.getvalue()
    assert secret not in text, text
    assert "[INFO]\tRUNTIME\tpush /wx?timestamp=1&nonce=2&msg_signature=[redacted]&signature=[redacted]" in text
    assert "Traceback" in text and "signature=[redacted]" in text.split("Traceback")[1]
    assert "not shown" not in text


# -- both doors ------------------------------------------------------------------------------------

@pytest.fixture
def offline_ctx():
    """A context whose database is never reached (the requests below need none)."""
    ctx = Context(Config.from_env({"SECRET_KEY": "s" * 20, "ADMIN_TOKEN": "adm",
                                   "DATABASE_URL": "mysql://u:p@127.0.0.1:1/none"}))
    set_context(ctx)
    yield ctx
    set_context(None)


def _event(headers: dict, request_id: str | None = "apigw-req-1") -> dict:
    return {"rawPath": "/v1/nothing", "headers": headers, "requestContext": {
        "http": {"method": "GET", "path": "/v1/nothing", "sourceIp": "203.0.113.9"},
        **({"requestId": request_id} if request_id else {})}}


def test_lambda_answers_carry_the_request_id(offline_ctx, capture):
    log, lines = capture
    seen = []

    def core(ctx, req):
        seen.append(logs.REQUEST_ID.get())
        log.info("inside")
        return Response(status=204)
    handler = lambda_handler(core)
    assert handler(_event({"X-Request-Id": "from-app.1"}), None)["headers"]["X-Request-Id"] == "from-app.1"
    assert handler(_event({"x-request-id": "bad value!"}), None)["headers"]["X-Request-Id"] == "apigw-req-1"
    # what a real HTTP API puts in requestContext.requestId
    assert handler(_event({}, request_id="JZ3QAjcvIAMEVfQ="), None)["headers"]["X-Request-Id"] == "JZ3QAjcvIAMEVfQ="
    made = handler(_event({}, request_id=None), None)["headers"]["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert seen == ["from-app.1", "apigw-req-1", "JZ3QAjcvIAMEVfQ=", made] and logs.REQUEST_ID.get() is None
    assert [x["request_id"] for x in lines()] == seen
    from functions import fallback  # the $default route (404s, preflights) too
    answer = fallback.handler(_event({"x-request-id": "fallback-1"}), None)
    assert answer["statusCode"] == 404 and answer["headers"]["X-Request-Id"] == "fallback-1"


def test_flask_answers_carry_the_request_id(offline_ctx):
    from functions.app import create_app
    client = create_app(lambda: offline_ctx).test_client()
    r = client.get("/v1/nothing", headers={"X-Request-Id": "flask-1"})
    assert r.status_code == 404 and r.headers["X-Request-Id"] == "flask-1"
    r = client.options("/v1/jobs", headers={"X-Request-Id": "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
    first, second = (client.get("/v1/openapi.json").headers["X-Request-Id"] for _ in range(2))
    assert first != second
    assert client.get("/metrics").status_code == 401  # and /metrics wants the operator token
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 403
    r = client.get("/metrics", headers={"Authorization": "Bearer adm"})
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    assert 'gateway_http_requests_total{method="GET",route="/v1/nothing"' not in r.get_data(as_text=True)
    assert 'route="unmatched",status="404"' in r.get_data(as_text=True)
