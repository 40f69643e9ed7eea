"""Bad input through both doors: every error in the contract's shape, never a 500."""

from __future__ import annotations

import json

import pytest

from functions.app import create_app
from shared.context import Context
from shared.http import Request, from_lambda_event, json_response, run, to_lambda
from shared.storage import StorageError


@pytest.fixture
def app_ctx(ctx):
    return ctx


@pytest.fixture
def client(app_ctx):
    return create_app(lambda: app_ctx).test_client()


@pytest.fixture
def token(client):
    r = client.post("/v1/auth/dev", json={"user": "alice"})
    assert r.status_code == 200
    return r.get_json()["token"]


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("body, raw, code, field", [
    (None, b"{not json", "invalid_json", None),
    (None, b"[1, 2]", "invalid_json", None),
    ({"workflow": "txt2img", "params": {"prompt": "x"}, "extra": 1}, None, "invalid_params", "extra"),
    ({"params": {"prompt": "x"}}, None, "invalid_params", "workflow"),
    ({"workflow": "nope", "params": {}}, None, "unknown_workflow", None),
    ({"workflow": "txt2img", "params": "x"}, None, "invalid_params", "params"),
    ({"workflow": "txt2img", "params": {}}, None, "invalid_params", "prompt"),
    ({"workflow": "txt2img", "params": {"prompt": "x", "width": 100}}, None, "invalid_params", "width"),
    ({"workflow": "txt2img", "params": {"prompt": "x", "steps": "many"}}, None, "invalid_params", "steps"),
    ({"workflow": "txt2img", "params": {"prompt": "x", "bogus": 1}}, None, "invalid_params", "bogus"),
    ({"workflow": "txt2img", "params": {"prompt": ["6", 0]}}, None, "invalid_params", "prompt"),
    # A lone UTF-16 surrogate is valid JSON but no text: 400, not a 500 or a 503 from the database.
    (None, b'{"workflow": "txt2img", "params": {"prompt": "a \\ud800 cat"}}', "invalid_json", None),
    (None, b'{"workflow": "txt2img", "params": {"prompt": "x"}, "\\udfff": 1}', "invalid_json", None),
    (None, b'{"workflow": "txt2img", "params": {"prompt": "x"}, "inputs": {"image": "\\ud83d"}}',
     "invalid_json", None),
    # The same surrogate as raw bytes (not valid UTF-8), and bodies that are not UTF-8 at all.
    (None, b'{"workflow": "txt2img", "params": {"prompt": "a \xed\xa0\x80 cat"}}', "invalid_json", None),
    (None, b'{"workflow": "txt2img", "params": {"prompt": "caf\xe9"}}', "invalid_json", None),
    (None, '{"workflow": "txt2img", "params": {"prompt": "x"}}'.encode("utf-16"), "invalid_json", None),
    # Nesting: far past the parser's stack (a RecursionError), and past the sane depth.
    pytest.param(None, b'{"params": ' + b"[" * 50000 + b"]" * 50000 + b"}", "invalid_json", None,
                 id="nested-50000"),
    pytest.param(None, b'{"workflow": "txt2img", "params": {"prompt": "x", "p": ' + b"[" * 40 + b"]" * 40 + b"}}",
                 "invalid_json", None, id="nested-40"),
])
def test_bad_submissions(client, token, body, raw, code, field):
    if raw is not None:
        r = client.post("/v1/jobs", data=raw, headers={**auth(token), "Content-Type": "application/json"})
    else:
        r = client.post("/v1/jobs", json=body, headers=auth(token))
    err = assert_error(r, 400, code)
    if field:
        assert field in err["details"]


def test_no_backend_is_503_and_no_job_is_kept(client, token, db_conn):
    r = client.post("/v1/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}}, headers=auth(token))
    assert_error(r, 503, "backend_unavailable")
    assert r.headers["Retry-After"]
    with db_conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM jobs")
        assert cur.fetchone()["n"] == 0


@pytest.mark.parametrize("headers, code", [
    ({}, "unauthorized"),
    ({"Authorization": "Basic abc"}, "unauthorized"),
    ({"Authorization": "Bearer nonsense"}, "unauthorized"),
    ({"Authorization": "Bearer eyJzdWIiOiJ4IiwiZXhwIjoxfQ.AAAA"}, "unauthorized"),
    ({"Authorization": "Bearer \u00e9.x"}, "unauthorized"),        # not ASCII: no 500 from the signer
    ({"Authorization": "Bearer eyJzdWIiOiJ4In0.\u00e9"}, "unauthorized"),  # nor from compare_digest
])
def test_bad_tokens(client, headers, code):
    assert_error(client.get("/v1/workflows", headers=headers), 401, code)


def test_expired_token(client, app_ctx):
    from shared.tokens import issue_token
    token, _ = issue_token(app_ctx.config.secret_key, "someone", 60, now=0)
    assert_error(client.get("/v1/workflows", headers=auth(token)), 401, "token_expired")


def test_unknown_job_and_routes(client, token):
    assert_error(client.get("/v1/jobs/does-not-exist", headers=auth(token)), 404, "not_found")
    assert_error(client.get("/v1/jobs/does-not-exist/result", headers=auth(token)), 404, "not_found")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.delete("/v1/jobs"), 405, "method_not_allowed")


def test_dev_login_is_404_unless_enabled(make_config, db_conn):
    ctx = Context(make_config(DEV_LOGIN="0"))
    client = create_app(lambda: ctx).test_client()
    assert_error(client.post("/v1/auth/dev", json={"user": "a"}), 404, "not_found")


@pytest.mark.parametrize("body", [{"user": ""}, {"user": "x" * 65}, {"user": 5}, {"name": "a"}, {},
                                  {"user": "alice "}, {"user": " alice"}])  # MySQL would pad "alice " to alice
def test_dev_login_validation(client, body):
    assert_error(client.post("/v1/auth/dev", json=body), 400, "invalid_params")


def test_dev_login_same_user_same_id(client):
    a = client.post("/v1/auth/dev", json={"user": "carol"}).get_json()
    b = client.post("/v1/auth/dev", json={"user": "carol"}).get_json()
    assert a["user"]["id"] == b["user"]["id"] and a["expires_at"].endswith("Z")


def test_body_too_large(client, token):
    r = client.post("/v1/jobs", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                    headers={**auth(token), "Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_wrong_content_type(client, token):
    r = client.post("/v1/jobs", data=b"workflow=txt2img", headers={**auth(token), "Content-Type": "text/plain"})
    assert_error(r, 400, "invalid_json")


def test_unexpected_exception_is_a_bare_500(app_ctx, caplog):
    def broken(ctx, req):
        raise RuntimeError("secret internals")
    resp = run(broken, lambda: app_ctx, Request(method="GET", path="/x"))
    body = json.loads(resp.body_bytes())
    assert resp.status == 500 and body == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "secret internals" in caplog.text  # logged once, with its traceback, never returned


def test_a_storage_failure_is_503_storage_unavailable(app_ctx):
    def storing(ctx, req):
        raise StorageError("s3 said SlowDown")
    resp = run(storing, lambda: app_ctx, Request(method="GET", path="/x"))
    body = json.loads(resp.body_bytes())
    assert resp.status == 503 and body["error"]["code"] == "storage_unavailable" and resp.headers["Retry-After"]
    assert "SlowDown" not in body["error"]["message"]


def test_a_lone_surrogate_in_an_answer_is_still_valid_json():
    resp = json_response(400, {"error": {"code": "invalid_params", "message": "x", "details": {"\ud800": "unknown"}}})
    assert json.loads(resp.body_bytes()) == resp.body


def test_database_down_is_503(make_config, db_conn):
    ctx = Context(make_config(DATABASE_URL="mysql://root:@127.0.0.1:1/nothing"))
    client = create_app(lambda: ctx).test_client()
    r = client.post("/v1/auth/dev", json={"user": "a"})
    assert_error(r, 503, "database_unavailable")


def test_lambda_event_round_trip():
    event = {"rawPath": "/v1/jobs/abc", "rawQueryString": "a=1&b=two", "headers": {"Content-Type": "application/json"},
             "pathParameters": {"id": "abc"}, "body": '{"x": 1}', "isBase64Encoded": False,
             "requestContext": {"http": {"method": "POST", "sourceIp": "198.51.100.7"}}}
    req = from_lambda_event(event)
    assert (req.method, req.path, req.query, req.path_params, req.source_ip) == \
        ("POST", "/v1/jobs/abc", {"a": "1", "b": "two"}, {"id": "abc"}, "198.51.100.7")
    assert req.json() == {"x": 1} and req.header("content-type") == "application/json"
    from shared.http import Response
    out = to_lambda(Response(status=200, body={"ok": True}))
    assert out == {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"ok":true}',
                   "isBase64Encoded": False}


def test_secret_key_rotation_keeps_old_tokens_valid(make_config, db_conn):
    old = Context(make_config(SECRET_KEY="old-key-0123456789abcdef"))
    token = create_app(lambda: old).test_client().post("/v1/auth/dev", json={"user": "r"}).get_json()["token"]
    rotated = Context(make_config(SECRET_KEY="new-key-0123456789abcdef", SECRET_KEY_PREVIOUS="old-key-0123456789abcdef"))
    assert create_app(lambda: rotated).test_client().get("/v1/workflows", headers=auth(token)).status_code == 200
    done = Context(make_config(SECRET_KEY="new-key-0123456789abcdef"))
    r = create_app(lambda: done).test_client().get("/v1/workflows", headers=auth(token))
    assert r.status_code == 401
