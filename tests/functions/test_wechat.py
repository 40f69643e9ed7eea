"""POST /v1/auth/wechat through the Flask door (and once through the Lambda door), against a fake WeChat."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from functions import auth
from functions.app import ROUTES, create_app
from shared.context import Context
from shared.db import query_one
from shared.http import from_lambda_event, run, to_lambda
from tests.fakes.wechat import FakeWeChat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def wx():
    with FakeWeChat(appid="wx-gateway-test") as fake:
        yield fake


@pytest.fixture
def make_ctx(make_config, db_conn, wx):
    contexts = []

    def make(**env):
        env = {"WECHAT_API_BASE": wx.url, "WECHAT_APPID": wx.appid, "WECHAT_SECRET": wx.secret,
               "WECHAT_TIMEOUT": "2", **env}
        contexts.append(Context(make_config(**env)))
        return contexts[-1]
    yield make
    for c in contexts:
        c.db.close()


@pytest.fixture
def wx_ctx(make_ctx):
    return make_ctx()


@pytest.fixture
def client(wx_ctx):
    return create_app(lambda: wx_ctx).test_client()


def login(client, code):
    return client.post("/v1/auth/wechat", json={"code": code})


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def user_row(db_conn, openid):
    db_conn.commit()  # a fresh snapshot
    return query_one(db_conn, "SELECT id, provider, subject, unionid FROM users WHERE provider='wechat' "
                              "AND subject=%s", (openid,))


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- success ------------------------------------------------------------------------------------

def test_login_gives_a_working_token(client, wx, db_conn):
    session_key = wx.add_code("code-a", openid="openid-alice", unionid="union-alice")
    r = login(client, "code-a")
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert set(body) == {"token", "expires_at", "user"} and set(body["user"]) == {"id"}
    assert body["expires_at"].endswith("Z")
    assert session_key not in r.get_data(as_text=True) and wx.secret not in r.get_data(as_text=True)
    # The token is accepted: an unknown job is 404, not 401.
    r = client.get("/v1/jobs/x", headers={"Authorization": f"Bearer {body['token']}"})
    assert_error(r, 404, "not_found")
    row = user_row(db_conn, "openid-alice")
    assert row == {"id": body["user"]["id"], "provider": "wechat", "subject": "openid-alice",
                   "unionid": "union-alice"}
    [req] = wx.requests
    assert (req.method, req.path) == ("GET", "/sns/jscode2session")
    assert req.query == {"appid": wx.appid, "secret": wx.secret, "js_code": "code-a",
                         "grant_type": "authorization_code"}


def test_one_user_per_openid(client, wx, db_conn):
    wx.add_code("c1", openid="openid-bob")
    wx.add_code("c2", openid="openid-bob", unionid="union-bob")
    wx.add_code("c3", openid="openid-carol")
    first = login(client, "c1").get_json()["user"]["id"]
    assert user_row(db_conn, "openid-bob")["unionid"] is None
    second = login(client, "c2").get_json()["user"]["id"]
    other = login(client, "c3").get_json()["user"]["id"]
    assert first == second != other
    assert user_row(db_conn, "openid-bob")["unionid"] == "union-bob"  # kept once WeChat gives it


def test_wechat_users_are_not_dev_users(client, wx):
    wx.add_code("c", openid="alice")
    wechat_id = login(client, "c").get_json()["user"]["id"]
    dev_id = client.post("/v1/auth/dev", json={"user": "alice"}).get_json()["user"]["id"]
    assert wechat_id != dev_id


def test_first_logins_racing_make_one_user(wx_ctx, wx):
    codes = [f"race-{i}" for i in range(6)]
    for code in codes:
        wx.add_code(code, openid="openid-racer")
    ids, barrier = [], threading.Barrier(len(codes), timeout=30)
    # The apps are built first, one after the other: building Flask's URL map compiles code, and
    # CPython 3.11's compiler is not safe to run from several threads at once (gh-106905).
    clients = [create_app(lambda: wx_ctx).test_client() for _ in codes]

    def one(code, c):
        barrier.wait()
        r = login(c, code)
        ids.append((r.status_code, r.get_json()["user"]["id"]))
    threads = [threading.Thread(target=one, args=(code, c)) for code, c in zip(codes, clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == len(codes) and {s for s, _ in ids} == {200} and len({i for _, i in ids}) == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/json"])
def test_json_whatever_wechat_calls_it(client, wx, content_type):
    wx.content_type = content_type
    wx.add_code("c", openid="o")
    assert login(client, "c").status_code == 200


# -- WeChat's errcodes --------------------------------------------------------------------------

# errcode → (status, code, Retry-After?)
ERRCODES = [
    (40029, 401, "invalid_code", None),          # invalid code
    (40163, 401, "invalid_code", None),          # code been used
    (41008, 401, "invalid_code", None),          # missing code
    (40226, 401, "invalid_code", None),          # high-risk user: WeChat blocks the login
    (45011, 429, "rate_limited", "60"),          # too many logins of this user
    (-1, 503, "backend_unavailable", "5"),       # system busy
    (40013, 503, "backend_unavailable", None),   # invalid appid: the operator's problem
    (40125, 503, "backend_unavailable", None),   # invalid appsecret
    (40164, 503, "backend_unavailable", None),   # server IP not whitelisted
    (40002, 503, "backend_unavailable", None),   # invalid grant_type
    (47001, 503, "backend_unavailable", None),   # not listed: never blamed on the app
]


@pytest.mark.parametrize("errcode, status, code, retry_after", ERRCODES)
def test_errcodes(client, wx, db_conn, errcode, status, code, retry_after):
    wx.add_code("c", openid="o")
    wx.fail_next(errcode)
    r = login(client, "c")
    err = assert_error(r, status, code)
    assert r.headers.get("Retry-After") == retry_after
    if status in (401, 429) or errcode == -1:
        assert err["details"] == {"wechat_errcode": errcode}
    assert user_row(db_conn, "o") is None


def test_config_errcodes_are_logged_as_errors_for_the_operator(client, wx, caplog):
    wx.fail_next(40125)
    assert_error(login(client, "c"), 503, "backend_unavailable")
    [rec] = [r for r in caplog.records if r.name == "functions.auth"]
    assert rec.levelno == logging.ERROR and "40125" in rec.getMessage() and "WECHAT_SECRET" in rec.getMessage()


def test_code_reuse_is_401(client, wx):
    wx.add_code("once", openid="o")
    assert login(client, "once").status_code == 200
    err = assert_error(login(client, "once"), 401, "invalid_code")
    assert err["details"] == {"wechat_errcode": 40163} and "wx.login" in err["message"]


def test_unknown_code_is_401(client, wx):
    err = assert_error(login(client, "never-issued"), 401, "invalid_code")
    assert err["details"] == {"wechat_errcode": 40029}


@pytest.mark.parametrize("env", [{"WECHAT_APPID": "wx-not-ours"}, {"WECHAT_SECRET": "not-the-secret"}])
def test_wrong_credentials_are_503(make_ctx, wx, env):
    wx.add_code("c", openid="o")
    client = create_app(lambda c=make_ctx(**env): c).test_client()
    assert_error(login(client, "c"), 503, "backend_unavailable")


# -- WeChat slow, down, or talking nonsense -----------------------------------------------------

def test_slow_wechat_is_503_within_the_timeout(make_ctx, wx):
    wx.add_code("c", openid="o")
    wx.delay = 10
    client = create_app(lambda c=make_ctx(WECHAT_TIMEOUT="0.3"): c).test_client()
    start = time.monotonic()
    r = login(client, "c")
    elapsed = time.monotonic() - start
    assert_error(r, 503, "backend_unavailable")
    assert r.headers["Retry-After"] and elapsed < 2, elapsed


def test_wechat_down_is_503(make_ctx):
    client = create_app(lambda c=make_ctx(WECHAT_API_BASE=dead_url()): c).test_client()
    start = time.monotonic()
    r = login(client, "c")
    assert_error(r, 503, "backend_unavailable")
    assert r.headers["Retry-After"] and time.monotonic() - start < 3


@pytest.mark.parametrize("status, body, content_type", [
    (502, "<html><body>502 Bad Gateway</body></html>", "text/html"),
    (200, "<html>maintenance</html>", "text/html"),
    (200, '{"session_key": "k"}', "text/plain"),
])
def test_junk_from_wechat_is_503(client, wx, status, body, content_type):
    wx.raw_next(status, body, content_type)
    assert_error(login(client, "c"), 503, "backend_unavailable")


# -- the request --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, raw, status, code", [
    ({}, None, 400, "invalid_params"),
    ({"code": ""}, None, 400, "invalid_params"),
    ({"code": None}, None, 400, "invalid_params"),
    ({"code": 12345}, None, 400, "invalid_params"),
    ({"code": ["a"]}, None, 400, "invalid_params"),
    ({"code": "x" * 129}, None, 400, "invalid_params"),
    ({"code": "has space"}, None, 400, "invalid_params"),
    ({"code": "tab\there"}, None, 400, "invalid_params"),
    ({"code": "nön-ascii"}, None, 400, "invalid_params"),
    ({"code": "abc", "extra": 1}, None, 400, "invalid_params"),
    ({"user": "alice"}, None, 400, "invalid_params"),
    (None, b"{not json", 400, "invalid_json"),
    (None, b"[1, 2]", 400, "invalid_json"),
    (None, b"", 400, "invalid_json"),
])
def test_body_validation(client, wx, body, raw, status, code):
    if raw is not None:
        r = client.post("/v1/auth/wechat", data=raw, headers={"Content-Type": "application/json"})
    else:
        r = client.post("/v1/auth/wechat", json=body)
    err = assert_error(r, status, code)
    if code == "invalid_params":
        field = "extra" if "extra" in (body or {}) else "user" if "user" in (body or {}) else "code"
        assert field in err["details"]
    assert wx.requests == []  # WeChat is not asked about a malformed request


def test_wrong_content_type(client, wx):
    r = client.post("/v1/auth/wechat", data="code=abc", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 400, "invalid_json")
    assert wx.requests == []


def test_longest_code_is_passed_on(client, wx):
    wx.add_code("x" * 128, openid="o")
    assert login(client, "x" * 128).status_code == 200


def test_wrong_method(client):
    assert_error(client.get("/v1/auth/wechat"), 405, "method_not_allowed")


@pytest.mark.parametrize("env", [{}, {"WECHAT_APPID": "", "WECHAT_SECRET": ""}])
def test_not_configured_is_404(make_config, db_conn, wx, env):
    ctx = Context(make_config(**env))
    try:
        client = create_app(lambda: ctx).test_client()
        assert_error(client.post("/v1/auth/wechat", json={"code": "abc"}), 404, "not_found")
        assert_error(client.post("/v1/auth/wechat", json={"bogus": 1}), 404, "not_found")
    finally:
        ctx.db.close()
    assert wx.requests == []


# -- secrets ------------------------------------------------------------------------------------

def test_no_secret_in_any_answer_or_log_line(make_ctx, wx, caplog, capfd):
    """session_key and AppSecret: in no response body and no log record, with every logger at DEBUG."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.DEBUG, logger="requests")
    ctx = make_ctx(LOG_LEVEL="DEBUG")
    slow = make_ctx(WECHAT_TIMEOUT="0.2")
    down = make_ctx(WECHAT_API_BASE=dead_url())
    wrong = make_ctx(WECHAT_APPID="wx-not-ours")
    client = create_app(lambda: ctx).test_client()
    answers = []

    def call(c, code):
        r = login(c, code)
        answers.append((r.status_code, r.get_data(as_text=True), dict(r.headers)))
        return r

    wx.add_code("ok-1", openid="o-1", unionid="u-1")
    wx.add_code("ok-2", openid="o-2")
    assert call(client, "ok-1").status_code == 200
    assert call(client, "ok-2").status_code == 200
    assert call(client, "ok-1").status_code == 401                       # reused
    for errcode in (40029, 45011, -1, 40013, 40125, 40226, 47001):
        wx.fail_next(errcode)
        call(client, "ok-2")
    # WeChat's errmsg echoing our secret (and a session_key) back at us
    wx.raw_next(200, json.dumps({"errcode": 40125, "errmsg": f"invalid appsecret {wx.secret} "
                                 f"session_key={wx.session_keys[0]}"}), "text/plain")
    call(client, "ok-2")
    wx.raw_next(502, f"<html>bad gateway {wx.secret}</html>", "text/html")
    call(client, "ok-2")
    wx.add_code("ok-3", openid="o-3")
    wx.delay = 3
    assert call(create_app(lambda: slow).test_client(), "not-registered").status_code == 503
    wx.delay = 0
    assert call(create_app(lambda: down).test_client(), "ok-3").status_code == 503
    assert call(create_app(lambda: wrong).test_client(), "ok-3").status_code == 503

    secrets_ = [wx.secret, *wx.session_keys]
    assert len(wx.session_keys) == 2
    for status, text, headers in answers:
        for s in secrets_:
            assert s not in text and s not in json.dumps(headers), (status, text)
    lines = [r.getMessage() for r in caplog.records] + [caplog.text]
    for s in secrets_:
        assert not any(s in line for line in lines), [line for line in lines if s in line]
    out, err = capfd.readouterr()
    for s in secrets_:
        assert s not in out and s not in err
    # The check is not vacuous: urllib3 did log each request line, query string included, redacted.
    request_lines = [r.getMessage() for r in caplog.records
                     if r.name.startswith("urllib3") and "jscode2session" in r.getMessage()]
    assert request_lines and all("secret=***" in line for line in request_lines)
    assert any(r.name == "functions.auth" for r in caplog.records)


# -- doors --------------------------------------------------------------------------------------

def test_lambda_door(wx_ctx, wx):
    wx.add_code("c", openid="o-lambda")
    event = {"rawPath": "/v1/auth/wechat", "headers": {"content-type": "application/json"},
             "body": json.dumps({"code": "c"}), "isBase64Encoded": False,
             "requestContext": {"http": {"method": "POST", "sourceIp": "198.51.100.7"}}}
    out = to_lambda(run(auth.wechat_handler.core, lambda: wx_ctx, from_lambda_event(event)))
    assert out["statusCode"] == 200 and json.loads(out["body"])["user"]["id"]
    out = to_lambda(run(auth.wechat_handler.core, lambda: wx_ctx, from_lambda_event(event)))
    assert out["statusCode"] == 401 and json.loads(out["body"])["error"]["code"] == "invalid_code"


def test_route_and_serverless_function():
    assert ("POST", "/v1/auth/wechat", auth.wechat_login) in ROUTES
    assert auth.wechat_handler.core is auth.wechat_login
    text = (ROOT / "serverless.yml").read_text(encoding="utf-8")
    block = text.split("\n  authWechat:\n", 1)[1].split("\n  ", 1)[0] if "\n  authWechat:\n" in text else ""
    assert "handler: functions/auth.wechat_handler" in block
    assert "- httpApi: {method: POST, path: /v1/auth/wechat}" in text
    for name in ("WECHAT_API_BASE", "WECHAT_APPID", "WECHAT_SECRET", "WECHAT_TIMEOUT"):
        assert f"\n    {name}: ${{env:{name}" in text
