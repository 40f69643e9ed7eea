"""The mini-program's access token (shared/wechat_token.py) against the fake WeChat, shared through MySQL."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from shared.context import Context
from shared.db import query_one
from shared.subscribe import SubscribeClient
from shared.wechat import (WeChatConfigError, WeChatRateLimitedError, WeChatRefusedError, WeChatUnavailableError,
                           WeChatUnclearError)
from shared.wechat_token import AccessTokens
from tests.fakes.wechat import FakeWeChat

STABLE = "/cgi-bin/stable_token"


@pytest.fixture
def wx():
    with FakeWeChat(appid="wx-token-test", templates={"tmpl-1"}) as fake:
        yield fake


@pytest.fixture
def make_ctx(make_config, db_conn, wx):
    made = []

    def make(**env) -> Context:
        env = {"WECHAT_API_BASE": wx.url, "WECHAT_APPID": wx.appid, "WECHAT_SECRET": wx.secret,
               "WECHAT_TIMEOUT": "1", **env}
        made.append(Context(make_config(**env), bounded=False))
        return made[-1]
    yield make
    for c in made:
        c.db.close()


def tokens_of(ctx, **kw) -> AccessTokens:
    cfg = ctx.config
    return AccessTokens(ctx.db, ctx.session, cfg.wechat_api_base, cfg.wechat_appid, cfg.wechat_secret,
                        timeout=cfg.wechat_timeout, **kw)


def stored(db_conn, appid: str) -> dict | None:
    db_conn.commit()  # a fresh snapshot
    return query_one(db_conn, "SELECT * FROM wechat_tokens WHERE appid=%s", (appid,))


def test_fetches_as_wechat_documents_and_stores_it(make_ctx, wx, db_conn):
    ctx = make_ctx()
    token = ctx.wechat_tokens.access_token()
    assert token == wx.tokens_issued[0]
    [req] = wx.token_requests()
    assert (req.method, req.query) == ("POST", {})  # the secret is in the body, never in the URL
    assert req.json == {"grant_type": "client_credential", "appid": wx.appid, "secret": wx.secret,
                        "force_refresh": False}
    row = stored(db_conn, wx.appid)
    assert row["access_token"] == token and row["invalidated"] == 0
    life = (row["expires_at"] - row["fetched_at"]).total_seconds()
    early = (row["expires_at"] - row["refresh_at"]).total_seconds()
    assert 7199 <= life <= 7201 and early == pytest.approx(300, abs=0.01)


def test_two_contexts_share_one_fetch(make_ctx, wx):
    first, second = make_ctx(), make_ctx()
    assert first.wechat_tokens.access_token() == second.wechat_tokens.access_token() == wx.tokens_issued[0]
    assert second.wechat_tokens.access_token() == wx.tokens_issued[0]
    assert len(wx.token_requests()) == 1 and first.wechat_tokens.fetches == 1 and second.wechat_tokens.fetches == 0


def test_concurrent_callers_of_many_processes_cause_one_fetch(make_ctx, wx):
    """Under the named lock: callers that waited use what the holder fetched."""
    wx.delay = 0.3
    contexts = [make_ctx() for _ in range(3)]
    got, errors = [], []

    def call(ctx):
        try:
            got.append(ctx.wechat_tokens.access_token())
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)
    threads = [threading.Thread(target=call, args=(contexts[i % 3],)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and len(got) == 9 and set(got) == {wx.tokens_issued[0]}
    assert len(wx.token_requests()) == 1


def test_refreshed_before_it_expires(make_ctx, wx, db_conn):
    wx.token_expires_in, wx.renew_within_s = 4, 2.5
    tokens = tokens_of(make_ctx(), refresh_early_s=2)
    first = tokens.access_token()
    assert tokens.access_token() == first and len(wx.token_requests()) == 1  # before refresh_at: stored
    time.sleep(2.2)  # past refresh_at (2 s before expiry), before the expiry itself
    second = tokens.access_token()
    assert second != first and second == wx.tokens_issued[-1]
    assert [r.json["force_refresh"] for r in wx.token_requests()] == [False, False]  # early, never forced
    assert tokens.access_token() == second and len(wx.token_requests()) == 2


def test_a_token_handed_out_again_with_little_left_is_not_fetched_on_every_call(make_ctx, wx, db_conn):
    """WeChat may answer the same token with less than the early margin left: half its life is then used."""
    wx.token_expires_in, wx.renew_within_s = 4, 0
    tokens = tokens_of(make_ctx())  # 300 s early, more than the whole life
    token = tokens.access_token()
    row = stored(db_conn, wx.appid)
    assert (row["refresh_at"] - row["fetched_at"]).total_seconds() == pytest.approx(2, abs=0.01)
    for _ in range(5):
        assert tokens.access_token() == token
    assert len(wx.token_requests()) == 1


def test_invalidate_then_one_forced_refresh_for_everyone(make_ctx, wx, db_conn):
    first_ctx, second_ctx = make_ctx(), make_ctx()
    bad = first_ctx.wechat_tokens.access_token()
    wx.revoke_tokens()
    assert first_ctx.wechat_tokens.invalidate(bad) is True
    assert second_ctx.wechat_tokens.invalidate(bad) is False  # reported already: nothing more
    assert stored(db_conn, wx.appid)["invalidated"] == 1
    fresh = {second_ctx.wechat_tokens.access_token(), first_ctx.wechat_tokens.access_token()}
    assert fresh == {wx.tokens_issued[-1]} and bad not in fresh
    assert wx.force_refreshes == 1
    assert [r.json["force_refresh"] for r in wx.token_requests()] == [False, True]
    # A caller that got 40001 with the old token reports it late: the stored one is already new.
    assert first_ctx.wechat_tokens.invalidate(bad) is False
    assert first_ctx.wechat_tokens.access_token() == wx.tokens_issued[-1]
    assert wx.force_refreshes == 1 and len(wx.token_requests()) == 2


def test_a_failed_refresh_keeps_the_stored_token_until_it_expires(make_ctx, wx, caplog):
    wx.token_expires_in, wx.renew_within_s = 3, 5
    tokens = tokens_of(make_ctx(), refresh_early_s=1.5)
    token = tokens.access_token()
    time.sleep(1.6)
    wx.fail_next(-1, path=STABLE)
    with caplog.at_level(logging.WARNING, logger="shared.wechat_token"):
        assert tokens.access_token() == token  # still valid for about 1.4 s
    assert "refresh failed" in caplog.text
    time.sleep(1.6)  # now expired
    wx.fail_next(-1, path=STABLE)
    with pytest.raises(WeChatUnavailableError, match="errcode -1"):
        tokens.access_token()
    assert tokens.access_token() != token  # WeChat is back


def test_an_invalidated_token_is_not_used_when_the_refresh_fails(make_ctx, wx):
    tokens = make_ctx().wechat_tokens
    bad = tokens.access_token()
    tokens.invalidate(bad)
    wx.outage(503)
    with pytest.raises(WeChatUnavailableError, match="HTTP 503"):
        tokens.access_token()
    wx.restore()
    assert tokens.access_token() not in (bad, None) and wx.force_refreshes == 1


@pytest.mark.parametrize("inject, exc, errcode", [
    ({"errcode": 40013}, WeChatConfigError, 40013),
    ({"errcode": 40125}, WeChatConfigError, 40125),
    ({"errcode": 40164}, WeChatConfigError, 40164),
    ({"errcode": 99999}, WeChatConfigError, 99999),
    ({"errcode": 45009}, WeChatRateLimitedError, 45009),
    ({"errcode": 45011}, WeChatRateLimitedError, 45011),
    ({"errcode": -1}, WeChatUnavailableError, -1),
    ({"raw": (502, "<html>bad gateway</html>")}, WeChatUnavailableError, None),
    ({"raw": (200, '{"expires_in": 7200}')}, WeChatUnavailableError, None),
    ({"raw": (200, '{"access_token": "", "expires_in": 7200}')}, WeChatUnavailableError, None),
    ({"raw": (200, '{"access_token": "a b", "expires_in": 7200}')}, WeChatUnavailableError, None),
    ({"raw": (200, '{"access_token": "tok", "expires_in": "7200"}')}, WeChatUnavailableError, None),
    ({"raw": (200, '{"access_token": "tok", "expires_in": 0}')}, WeChatUnavailableError, None),
])
def test_errors_are_classified_and_nothing_is_stored(make_ctx, wx, db_conn, inject, exc, errcode):
    if "errcode" in inject:
        wx.fail_next(inject["errcode"], path=STABLE)
    else:
        wx.raw_next(*inject["raw"], content_type="text/plain", path=STABLE)
    with pytest.raises(exc) as e:
        make_ctx().wechat_tokens.access_token()
    assert type(e.value) is exc and e.value.errcode == errcode
    assert stored(db_conn, wx.appid) is None


def test_wrong_credentials_are_the_operators_to_fix(make_ctx, wx):
    with pytest.raises(WeChatConfigError, match="40125"):
        make_ctx(WECHAT_SECRET="not-the-secret").wechat_tokens.access_token()
    with pytest.raises(WeChatConfigError, match="40013"):
        make_ctx(WECHAT_APPID="wx-other").wechat_tokens.access_token()


def test_slow_or_dead_wechat_is_unavailable_never_unclear(make_ctx, wx):
    wx.delay = 3
    start = time.monotonic()
    with pytest.raises(WeChatUnavailableError) as e:
        make_ctx().wechat_tokens.access_token()
    assert not isinstance(e.value, WeChatUnclearError)  # a fetch can always be made again
    assert time.monotonic() - start < 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(WeChatUnavailableError) as e:
        make_ctx(WECHAT_API_BASE=dead).wechat_tokens.access_token()
    assert e.value.__cause__ is None and e.value.__context__ is None


def test_a_refresh_held_elsewhere_too_long(make_ctx, wx, database_url):
    """Another process holds the lock past the wait and no usable token is stored: unavailable, not a hang."""
    from shared.db import connect
    tokens = make_ctx(WECHAT_TIMEOUT="0.2").wechat_tokens
    other = connect(database_url)
    try:
        assert query_one(other, "SELECT GET_LOCK(%s, 5) AS got", (f"wechat_token:{wx.appid}",))["got"] == 1
        start = time.monotonic()
        with pytest.raises(WeChatUnavailableError, match="another process"):
            tokens.access_token()
        assert time.monotonic() - start < 4
    finally:
        other.close()
    assert wx.token_requests() == []
    assert tokens.access_token() == wx.tokens_issued[0]


def test_neither_token_nor_secret_is_ever_logged(make_ctx, wx, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3's request lines included
    ctx = make_ctx()
    tokens = ctx.wechat_tokens
    first = tokens.access_token()
    wx.subscribe("o-1", "tmpl-1")
    client = SubscribeClient(ctx.session, wx.url, tokens, timeout=1)
    body = {"touser": "o-1", "template_id": "tmpl-1", "page": "pages/index/index?job=j",
            "data": {"thing1": {"value": "ok"}}, "miniprogram_state": "formal", "lang": "zh_CN"}
    wx.revoke_tokens()
    client.send(body)  # 40001 with the first, reported, then a forced refresh and a second send
    assert len(wx.pushes) == 1 and len(wx.send_requests()) == 2 and wx.force_refreshes == 1
    wx.raw_next(200, '{"errcode": 40125, "errmsg": "invalid appsecret ' + wx.secret + ' access_token='
                + wx.tokens_issued[-1] + '"}', "text/plain", path=STABLE)
    tokens.invalidate(wx.tokens_issued[-1])
    with pytest.raises(WeChatRefusedError) as e:
        tokens.access_token()
    tokens.access_token()  # forced again, now answered
    wx.raw_next(200, '{"errcode": 47003, "errmsg": "argument invalid ' + wx.tokens_issued[-1] + '"}',
                "text/plain", path="/cgi-bin/message/subscribe/send")
    with pytest.raises(WeChatRefusedError) as refused:
        client.send(body)
    secrets = [wx.secret, *wx.tokens_issued]
    texts = [caplog.text, str(e.value), e.value.errmsg, str(refused.value), repr(tokens), repr(client)]
    assert first in wx.tokens_issued and len(wx.tokens_issued) == 3
    assert not [s for s in secrets for t in texts if s in t]
    assert "access_token=***" in caplog.text  # urllib3's DEBUG line of the send, redacted
    assert "/cgi-bin/message/subscribe/send" in caplog.text
