"""The fake WeChat's content security: msg_sec_check verdicts and errcodes, media_check_async, and the
verdict pushed (signed, encrypted, retried, lost, doubled) to a small receiver that opens it with shared.wxpush."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shared.wxpush import PushError, new_aes_key, open_message
from tests.fakes.wechat import FakeWeChat
from tests.fakes.wechat_moderation import MEDIA_CHECK, SEC_CHECK

PUSH_TOKEN = "push-token"
IMAGE = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
RISKY_IMAGE = b"\x89PNG\r\n\x1a\n" + b"risky!" * 100
OPENID = "o-alice_0123456789abcdefghij"


class Receiver:
    """The gateway's side, reduced: serves images and opens pushes with shared.wxpush."""

    def __init__(self, appid: str, aes_key: str | None):
        self.appid, self.aes_key = appid, aes_key
        self.answers: list[tuple[int, bytes]] = []  # answered first, then 200 "success"
        self.messages: list[dict] = []
        self.raw: list[tuple[dict, bytes]] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = {"/image.png": IMAGE, "/risky.png": RISKY_IMAGE}.get(urlsplit(self.path).path)
                self.answer(200 if body else 403, body or b"<Error>AccessDenied</Error>")

            def do_POST(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.raw.append((query, body))
                    status, answer = receiver.answers.pop(0) if receiver.answers else (200, b"success")
                try:
                    message = open_message(PUSH_TOKEN, receiver.aes_key, receiver.appid, query, body)
                except PushError as exc:
                    with receiver.lock:
                        receiver.refused.append(str(exc))
                    return self.answer(400, b"refused")
                if status == 200:
                    with receiver.lock:
                        receiver.messages.append(message)
                self.answer(status, answer)

            def answer(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def wx():
    with FakeWeChat(appid="wx-moderation") as fake:
        fake.push_retry_s = 0.05
        yield fake


@pytest.fixture
def receiver(wx):
    r = Receiver(wx.appid, new_aes_key())
    wx.configure_push(r.url + "/wechat/push", token=PUSH_TOKEN, aes_key=r.aes_key)
    yield r
    r.close()


@pytest.fixture
def token(wx):
    answer = requests.post(wx.url + "/cgi-bin/stable_token", json={"grant_type": "client_credential",
                                                                   "appid": wx.appid, "secret": wx.secret}, timeout=5)
    return answer.json()["access_token"]


def call(wx, path, token, body, **kw) -> dict:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{wx.url}{path}", params={"access_token": token}, data=data, timeout=5, **kw).json()


def text(content, **extra) -> dict:
    return {"content": content, "version": 2, "scene": 2, "openid": OPENID, **extra}


def media(url, **extra) -> dict:
    return {"media_url": url, "media_type": 2, "version": 2, "scene": 1, "openid": OPENID, **extra}


# -- msg_sec_check ------------------------------------------------------------------------------

@pytest.mark.parametrize("body, suggest, label", [
    (text("a quiet landscape"), "pass", 100),
    (text("a RISKY landscape"), "risky", 20002),
    (text("please REVIEW this"), "review", 21000),
    (text("REVIEW first, RISKY later"), "risky", 20002),
    (text("fine", title="RISKY title"), "risky", 20002),
    (text("fine", nickname="REVIEW-nick"), "review", 21000),
    (text("x" * 2500), "pass", 100),
])
def test_sec_check_verdicts_come_from_the_words(wx, token, body, suggest, label):
    answer = call(wx, SEC_CHECK, token, body)
    assert (answer["errcode"], answer["errmsg"]) == (0, "ok")
    assert answer["result"] == {"suggest": suggest, "label": label}
    assert answer["detail"][0] == {"strategy": "content_model", "errcode": 0, "suggest": suggest, "label": label,
                                   "prob": 90}
    assert len(answer["trace_id"].split("-")) == 3
    assert wx.sec_check_requests()[-1].json == body


def test_sec_check_words_can_be_set_with_labels(wx, token):
    wx.text_verdicts = {"广告": "review", "赌博": ("risky", 20006)}
    assert call(wx, SEC_CHECK, token, text("加我看广告"))["result"] == {"suggest": "review", "label": 21000}
    assert call(wx, SEC_CHECK, token, text("赌博广告"))["result"] == {"suggest": "risky", "label": 20006}
    assert call(wx, SEC_CHECK, token, text("RISKY"))["result"]["suggest"] == "pass"
    a, b = call(wx, SEC_CHECK, token, text("x")), call(wx, SEC_CHECK, token, text("x"))
    assert a["trace_id"] != b["trace_id"]


@pytest.mark.parametrize("body, errcode", [
    ({k: v for k, v in text("hi").items() if k != "openid"}, 40003),
    (text("hi", openid="not an openid!"), 40003),
    (text("hi", scene=5), 40129),
    (text("hi", scene="2"), 40129),
    (text("x" * 2501), 47001),
    (text(""), 44002),
    ({k: v for k, v in text("hi").items() if k != "content"}, 44002),
    (text(["hi"]), 47001),
    (text("hi", title=3), 47001),
    (text("hi", version=3), 47001),
    ("this is not json", 47001),
    ("[1, 2]", 47001),
    ("", 44002),
])
def test_sec_check_refuses_bad_bodies(wx, token, body, errcode):
    assert call(wx, SEC_CHECK, token, body)["errcode"] == errcode


def test_sec_check_without_a_version_answers_as_the_retired_one(wx, token):
    assert call(wx, SEC_CHECK, token, {"content": "RISKY"})["errcode"] == 87014
    assert call(wx, SEC_CHECK, token, {"content": "REVIEW"}) == {"errcode": 0, "errmsg": "ok"}


def test_errcodes_can_be_injected_per_path(wx, token, receiver):
    wx.fail_next(61010, path=SEC_CHECK)
    wx.fail_next(-1, path=MEDIA_CHECK)
    assert call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))["errcode"] == -1
    answer = call(wx, SEC_CHECK, token, text("hi"))
    assert answer["errcode"] == 61010 and "result" not in answer
    assert call(wx, SEC_CHECK, token, text("hi"))["errcode"] == 0
    wx.fail_next(45009, times=2)
    assert [call(wx, p, token, text("hi"))["errcode"] for p in (SEC_CHECK, SEC_CHECK, SEC_CHECK)] == [45009, 45009, 0]
    wx.wait_idle()
    assert wx.media_fetches == [] and wx.push_attempts == []  # the refused media check started nothing


def test_tokens_are_checked_like_subscribe_send(wx, token, receiver):
    for path, body in ((SEC_CHECK, text("hi")), (MEDIA_CHECK, media(receiver.url + "/image.png"))):
        assert call(wx, path, "not-a-token", body)["errcode"] == 40001
        assert call(wx, path, "", body)["errcode"] == 40001
    wx.expire_tokens()
    assert call(wx, SEC_CHECK, token, text("hi"))["errcode"] == 42001
    wx.revoke_tokens()
    assert call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))["errcode"] == 40001
    wx.wait_idle()
    assert wx.media_fetches == []


def test_get_is_refused(wx, token):
    answer = requests.get(wx.url + SEC_CHECK, params={"access_token": token}, timeout=5).json()
    assert answer["errcode"] == 43302


# -- media_check_async and the push ---------------------------------------------------------------

@pytest.mark.parametrize("body, errcode", [
    (media("ftp://host/image.png"), 47001),
    (media(None), 47001),
    (media("http://x/a.png", media_type=3), 47001),
    (media("http://x/a.png", scene=0), 40129),
    (media("http://x/a.png", openid=""), 40003),
    ("{", 47001),
])
def test_media_check_refuses_bad_bodies(wx, token, body, errcode):
    assert call(wx, MEDIA_CHECK, token, body)["errcode"] == errcode


@pytest.mark.parametrize("mode, fmt", [("safe", "json"), ("safe", "xml"), ("plain", "json"), ("plain", "xml")])
def test_a_verdict_arrives_signed_and_as_configured(wx, token, mode, fmt):
    receiver = Receiver(wx.appid, new_aes_key() if mode == "safe" else None)
    try:
        wx.configure_push(receiver.url + "/wechat/push?x=1", token=PUSH_TOKEN, aes_key=receiver.aes_key, mode=mode,
                          fmt=fmt)
        seen = []
        wx.image_judge = lambda url, data: seen.append((url, data)) or ("risky" if data == RISKY_IMAGE else "pass")
        answer = call(wx, MEDIA_CHECK, token, media(receiver.url + "/risky.png"))
        assert set(answer) == {"errcode", "errmsg", "trace_id"} and answer["errcode"] == 0
        attempts = wx.wait_pushes(1)
        assert [(a["trace_id"], a["attempt"], a["status"], a["delivered"]) for a in attempts] == [
            (answer["trace_id"], 1, 200, True)]
        assert seen == [(receiver.url + "/risky.png", RISKY_IMAGE)]
        assert wx.media_fetches == [{"trace_id": answer["trace_id"], "url": receiver.url + "/risky.png",
                                     "status": 200, "length": len(RISKY_IMAGE), "ok": True}]
        (message,) = receiver.messages
        assert (message["Event"], message["trace_id"], message["FromUserName"], message["appid"]) == (
            "wxa_media_check", answer["trace_id"], OPENID, wx.appid)
        assert message["result"]["suggest"] == "risky" and str(message["result"]["label"]) == "20002"
        (query, body), = receiver.raw
        assert query["x"] == "1" and query["signature"]
        if mode == "safe":
            assert query["encrypt_type"] == "aes" and query["msg_signature"] and b"wxa_media_check" not in body
        else:
            assert "encrypt_type" not in query and b"wxa_media_check" in body
        assert body.lstrip().startswith(b"{" if fmt == "json" else b"<xml>")
        if fmt == "json":
            assert message == wx.verdicts[answer["trace_id"]]
    finally:
        receiver.close()


def test_a_push_under_the_wrong_key_is_refused_by_the_receiver(wx, token, receiver):
    wx.configure_push(receiver.url + "/wechat/push", token=PUSH_TOKEN, aes_key=new_aes_key())
    call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))
    attempts = wx.wait_pushes(3, delivered=False)
    assert [a["status"] for a in attempts] == [400, 400, 400] and not receiver.messages
    assert receiver.refused and all("decrypt" in r for r in receiver.refused)


def test_a_failing_receiver_gets_three_attempts(wx, token, receiver):
    receiver.answers = [(500, b"oops"), (200, b"not now")]
    answer = call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))
    attempts = wx.wait_pushes(1)
    assert [(a["attempt"], a["status"], a["delivered"]) for a in attempts] == [(1, 500, False), (2, 200, False),
                                                                               (3, 200, True)]
    assert {a["trace_id"] for a in attempts} == {answer["trace_id"]}

    receiver.answers = [(500, b"down")] * 5
    call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))
    wx.wait_idle()
    assert [(a["attempt"], a["status"]) for a in wx.push_attempts[3:]] == [(1, 500), (2, 500), (3, 500)]
    assert len(receiver.raw) == 6 and receiver.answers == [(500, b"down")] * 2


def test_an_empty_answer_counts_as_delivered(wx, token, receiver):
    receiver.answers = [(200, b"")]
    call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))
    assert [a["delivered"] for a in wx.wait_pushes(1)] == [True]


def test_dropped_duplicated_and_pushed_again(wx, token, receiver):
    wx.drop_pushes(1)
    lost = call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))["trace_id"]
    wx.wait_idle()
    kept = call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))["trace_id"]
    wx.wait_pushes(1)
    assert wx.dropped == [lost] and [m["trace_id"] for m in receiver.messages] == [kept]
    assert lost in wx.verdicts  # judged, never sent

    wx.duplicate_pushes = True
    twice = call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))["trace_id"]
    wx.wait_pushes(3)
    assert [m["trace_id"] for m in receiver.messages] == [kept, twice, twice]

    assert wx.push(lost) is True
    assert [m["trace_id"] for m in receiver.messages][-1] == lost and wx.errors == []


def test_an_unreadable_image_pushes_nothing(wx, token, receiver):
    judged = []
    wx.image_judge = lambda url, data: judged.append(url) or "risky"
    trace_id = call(wx, MEDIA_CHECK, token, media(receiver.url + "/forbidden.png"))["trace_id"]
    wx.wait_idle()
    assert wx.media_fetches == [{"trace_id": trace_id, "url": receiver.url + "/forbidden.png", "status": 403,
                                 "length": len(b"<Error>AccessDenied</Error>"), "ok": False}]
    assert wx.push_attempts == [] and receiver.raw == [] and judged == []

    wx.push_on_fetch_failure = True
    trace_id = call(wx, MEDIA_CHECK, token, media(receiver.url + "/forbidden.png"))["trace_id"]
    wx.wait_pushes(1)
    assert receiver.messages[0]["trace_id"] == trace_id and receiver.messages[0]["result"]["suggest"] == "pass"
    assert judged == []


def test_the_retired_media_check_pushes_the_old_event(wx, token, receiver):
    wx.image_judge = lambda url, data: "risky"
    call(wx, MEDIA_CHECK, token, {"media_url": receiver.url + "/image.png", "media_type": 2})
    wx.wait_pushes(1)
    (message,) = receiver.messages
    assert message["isrisky"] == 1 and "result" not in message and "version" not in message


def test_a_bad_judge_is_kept_in_errors(wx, token, receiver):
    wx.image_judge = lambda url, data: "maybe"
    call(wx, MEDIA_CHECK, token, media(receiver.url + "/image.png"))
    wx.wait_idle()
    assert len(wx.errors) == 1 and "maybe" in wx.errors[0] and receiver.raw == []


def test_stop_ends_pending_checks_and_retries(receiver):
    fake = FakeWeChat(appid="wx-stop").start()
    fake.configure_push(receiver.url + "/wechat/push", token=PUSH_TOKEN, aes_key=receiver.aes_key)
    answer = requests.post(fake.url + "/cgi-bin/stable_token", json={"grant_type": "client_credential",
                                                                     "appid": fake.appid, "secret": fake.secret})
    fake_token = answer.json()["access_token"]
    fake.push_delay = 30
    call(fake, MEDIA_CHECK, fake_token, media(receiver.url + "/image.png"))
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    assert not any(job.is_alive() for job in fake._jobs) and fake.media_fetches == []
