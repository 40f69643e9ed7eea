"""The jscode2session client alone, against the fake WeChat server; the WECHAT_* settings."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import requests

from shared.config import Config, ConfigError
from shared.wechat import (WeChatClient, WeChatCodeError, WeChatConfigError, WeChatRateLimitedError,
                           WeChatRefusedError, WeChatUnavailableError, _RedactQuery)
from tests.fakes.wechat import FakeWeChat


@pytest.fixture
def wx():
    with FakeWeChat(appid="wx-client-test") as fake:
        yield fake


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


@pytest.fixture
def client(wx, session):
    return WeChatClient(session, wx.url, wx.appid, wx.secret, timeout=2.0)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_success_sends_what_wechat_documents(wx, client):
    wx.add_code("c-1", openid="o-1", unionid="u-1")
    wx.add_code("c-2", openid="o-2")
    assert client.code_to_session("c-1") == ("o-1", "u-1")
    assert client.code_to_session("c-2") == ("o-2", None)
    req = wx.requests[0]
    assert (req.method, req.path) == ("GET", "/sns/jscode2session")
    assert req.query == {"appid": wx.appid, "secret": wx.secret, "js_code": "c-1",
                         "grant_type": "authorization_code"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "text/html; charset=utf-8", ""])
def test_json_whatever_the_content_type(wx, client, content_type):
    wx.content_type = content_type
    wx.add_code("c", openid="o")
    assert client.code_to_session("c") == ("o", None)


def test_json_with_bom(wx, client):
    wx.raw_next(200, "\ufeff" + '{"openid": "o-bom", "session_key": "k"}', "text/plain")
    assert client.code_to_session("any") == ("o-bom", None)


def test_success_with_errcode_zero(wx, client):
    wx.raw_next(200, '{"errcode": 0, "errmsg": "ok", "openid": "o-z", "session_key": "k"}', "text/plain")
    assert client.code_to_session("any") == ("o-z", None)


def test_a_code_works_once(wx, client):
    wx.add_code("once", openid="o")
    client.code_to_session("once")
    with pytest.raises(WeChatCodeError) as e:
        client.code_to_session("once")
    assert e.value.errcode == 40163 and "code been used" in e.value.errmsg


@pytest.mark.parametrize("errcode, exc", [
    (40029, WeChatCodeError), (40163, WeChatCodeError), (41008, WeChatCodeError), (40226, WeChatCodeError),
    (45011, WeChatRateLimitedError),
    (40013, WeChatConfigError), (40125, WeChatConfigError), (40164, WeChatConfigError),
    (12345, WeChatRefusedError),
    (-1, WeChatUnavailableError),
])
def test_errcodes_are_classified(wx, client, errcode, exc):
    wx.fail_next(errcode)
    with pytest.raises(exc) as e:
        client.code_to_session("x")
    assert type(e.value) is exc and e.value.errcode == errcode


def test_unknown_code_and_bad_credentials(wx, session):
    good = WeChatClient(session, wx.url, wx.appid, wx.secret)
    with pytest.raises(WeChatCodeError, match="40029"):
        good.code_to_session("never-issued")
    wx.add_code("c", openid="o")
    with pytest.raises(WeChatConfigError, match="40013"):
        WeChatClient(session, wx.url, "wx-other", wx.secret).code_to_session("c")
    with pytest.raises(WeChatConfigError, match="40125"):
        WeChatClient(session, wx.url, wx.appid, "wrong-secret").code_to_session("c")
    assert good.code_to_session("c") == ("o", None)  # refused attempts did not use the code


@pytest.mark.parametrize("status, body, content_type", [
    (502, "<html><body>502 Bad Gateway</body></html>", "text/html"),
    (200, "<html>maintenance</html>", "text/html"),
    (200, "[1, 2]", "text/plain"),
    (200, '{"session_key": "k"}', "text/plain"),                   # no openid
    (200, '{"openid": "", "session_key": "k"}', "text/plain"),
    (200, '{"openid": 5, "session_key": "k"}', "text/plain"),
    (200, '{"openid": "' + "o" * 129 + '"}', "text/plain"),        # longer than users.subject
    (200, '{"openid": "o", "unionid": 7}', "text/plain"),
    (200, '{"errcode": "40029", "errmsg": "x"}', "text/plain"),     # errcode not a number
    (500, '{"openid": "o"}', "application/json"),
    (200, "\xff\xfe", "text/plain"),
])
def test_junk_answers_are_unavailable(wx, client, status, body, content_type):
    wx.raw_next(status, body.encode("latin-1") if body == "\xff\xfe" else body, content_type)
    with pytest.raises(WeChatUnavailableError):
        client.code_to_session("x")


def test_redirects_are_not_followed(wx, client):
    # Following one would send the secret wherever the Location points.
    wx.raw_next(302, "", "text/plain", headers={"Location": wx.url + "/elsewhere"})
    with pytest.raises(WeChatUnavailableError, match="HTTP 302"):
        client.code_to_session("x")
    assert [r.path for r in wx.requests] == ["/sns/jscode2session"]


def test_an_oversized_answer_is_refused(wx, client):
    wx.raw_next(200, '{"openid": "o", "pad": "' + "x" * 100_000 + '"}', "text/plain")
    with pytest.raises(WeChatUnavailableError, match="too large"):
        client.code_to_session("x")


def test_slow_wechat_times_out_in_bounded_time(wx, session):
    wx.delay = 5
    client = WeChatClient(session, wx.url, wx.appid, wx.secret, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(WeChatUnavailableError, match="no answer within"):
        client.code_to_session("x")
    assert time.monotonic() - start < 1.5


def test_dead_port_is_unavailable_and_the_error_carries_no_url(session):
    client = WeChatClient(session, dead_url(), "wx-a", "the-very-secret", timeout=1)
    with pytest.raises(WeChatUnavailableError) as e:
        client.code_to_session("the-code")
    # requests' own exception text holds the URL with the secret: it must not ride along.
    assert e.value.__cause__ is None and e.value.__context__ is None
    assert "the-very-secret" not in str(e.value) and "the-code" not in str(e.value)


def test_errmsg_echoing_the_secret_is_redacted(wx, client):
    wx.raw_next(200, '{"errcode": 40125, "errmsg": "invalid appsecret ' + wx.secret + ' secret=' + wx.secret
                + '"}', "text/plain")
    with pytest.raises(WeChatConfigError) as e:
        client.code_to_session("x")
    assert wx.secret not in str(e.value) and wx.secret not in e.value.errmsg


def test_repr_hides_the_secret(client, wx):
    assert wx.secret not in repr(client) and "***" in repr(client)


def test_redact_filter():
    record = logging.LogRecord("urllib3.connectionpool", logging.DEBUG, __file__, 1,
                               '%s://%s:%s "%s %s %s" %s %s',
                               ("https", "api.weixin.qq.com", 443, "GET",
                                "/sns/jscode2session?appid=wx1&secret=S3CR3T&js_code=CODE&grant_type=authorization_code",
                                "HTTP/1.1", 200, None), None)
    assert _RedactQuery().filter(record) is True
    message = record.getMessage()
    assert "S3CR3T" not in message and "CODE&" not in message
    assert "appid=wx1&secret=***&js_code=***&grant_type=authorization_code" in message


def test_redact_filter_is_on_urllib3():
    assert any(isinstance(f, _RedactQuery) for f in logging.getLogger("urllib3.connectionpool").filters)


# -- settings -----------------------------------------------------------------------------------

def test_wechat_settings():
    cfg = Config.from_env({})
    assert (cfg.wechat_api_base, cfg.wechat_appid, cfg.wechat_secret, cfg.wechat_timeout) == \
        ("https://api.weixin.qq.com", None, None, 5.0)
    cfg = Config.from_env({"WECHAT_API_BASE": "http://127.0.0.1:9/", "WECHAT_APPID": "wx1",
                           "WECHAT_SECRET": "topsecretvalue", "WECHAT_TIMEOUT": "2.5"})
    assert (cfg.wechat_api_base, cfg.wechat_appid, cfg.wechat_timeout) == ("http://127.0.0.1:9", "wx1", 2.5)
    assert "topsecretvalue" not in repr(cfg)


@pytest.mark.parametrize("env, variable", [
    ({"WECHAT_APPID": "wx1"}, "WECHAT_SECRET"),
    ({"WECHAT_SECRET": "s"}, "WECHAT_APPID"),
    ({"WECHAT_TIMEOUT": "0"}, "WECHAT_TIMEOUT"),
    ({"WECHAT_TIMEOUT": "soon"}, "WECHAT_TIMEOUT"),
    ({"WECHAT_API_BASE": "api.weixin.qq.com"}, "WECHAT_API_BASE"),
])
def test_invalid_wechat_settings(env, variable):
    with pytest.raises(ConfigError, match=f"^{variable}:"):
        Config.from_env(env)
