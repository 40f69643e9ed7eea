"""WeChat subscribe messages end to end: a job submitted with notify by a WeChat user, run by the listener on
the fake ComfyUI, pushed by the listener's second outbox sender to the fake WeChat; at most once per job."""

from __future__ import annotations

import json
import logging
from datetime import timedelta, timezone

import pytest

from listener import outbox_sender
from listener.outbox_sender import IN_FLIGHT, SubscribeSender
from shared import outbox
from shared.cancellation import cancel
from shared.users import get_or_create_user
from tests.fakes.wechat import FakeWeChat
from tests.listener.conftest import txt2img
from tests.stack import wait_for

OPENID = "o-push-user-0001"
TEMPLATE = "tmpl-ready-1"
SEND = "/cgi-bin/message/subscribe/send"
DATA = {"thing1": "{workflow_title}", "phrase2": "{status_text}", "time3": "{finished_at}",
        "thing4": "{workflow_title} · {workflow} 完成了"}


@pytest.fixture
def wx():
    with FakeWeChat(appid="wx-push-test", templates={TEMPLATE}) as fake:
        yield fake


@pytest.fixture(autouse=True)
def fast_sender(monkeypatch):
    """Seconds instead of minutes: the same code, quicker timings."""
    for name, value in {"POLL_S": 0.05, "FIRST_DELAY_S": 0.1, "MAX_DELAY_S": 0.4}.items():
        monkeypatch.setattr(outbox_sender, name, value)


@pytest.fixture
def pushing(harness_factory, fake, wx):
    """A listener with WeChat and the subscribe template set, and a user logged in through WeChat."""
    def make(start: bool = True, **env):
        settings = {"WECHAT_API_BASE": wx.url, "WECHAT_APPID": wx.appid, "WECHAT_SECRET": wx.secret,
                    "WECHAT_TIMEOUT": "1", "WECHAT_SUBSCRIBE_TEMPLATE_ID": TEMPLATE,
                    "WECHAT_SUBSCRIBE_DATA": json.dumps(DATA, ensure_ascii=False),
                    "WECHAT_SUBSCRIBE_PAGE": "pages/job/job", "WECHAT_MINIPROGRAM_STATE": "trial", **env}
        h = harness_factory(fake, **{k: v for k, v in settings.items() if v is not None})
        with h.ctx.db.connection() as conn:
            h.user = get_or_create_user(conn, provider="wechat", subject=OPENID)
        if start:
            h.start_listener()
        return h
    return make


def notify(seed: int, **params) -> dict:
    return {**txt2img(seed=seed, **params), "notify": True}


def rows(h, job_id=None) -> list[dict]:
    with h.ctx.db.connection() as conn:
        return outbox.list_events(conn, job_id=job_id, kind=outbox.KIND_SUBSCRIBE)


def pushed(wx, n: int, timeout: float = 20.0) -> list[dict]:
    return wait_for(lambda: len(wx.pushes) >= n and wx.pushes, timeout, f"not {n} pushes: {wx.send_requests()}")


def settled(h, job_id: str, timeout: float = 20.0) -> dict:
    """The job's subscribe row once sent or given up."""
    def done():
        found = rows(h, job_id)
        return found and (found[0]["sent_at"] or found[0]["given_up_at"]) and found[0]
    return wait_for(done, timeout, f"push of {job_id} not settled: {rows(h, job_id)}")


def shanghai(dt) -> str:
    return dt.replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S")


def test_a_notify_job_that_succeeds_is_pushed_once(pushing, wx):
    wx.subscribe(OPENID, TEMPLATE, times=2)  # a spare one: a second push would be accepted, so it would show
    h = pushing()
    job_id = h.submit(notify(1))
    job = h.wait_final(job_id)
    assert job["status"] == "succeeded" and job["notify"] == 1
    [push] = pushed(wx, 1)
    title = h.ctx.workflows["txt2img"].title
    assert push == {"touser": OPENID, "template_id": TEMPLATE, "page": f"pages/job/job?job={job_id}",
                    "data": {"thing1": {"value": title}, "phrase2": {"value": "成功"},
                             "time3": {"value": shanghai(job["finished_at"])},
                             "thing4": {"value": f"{title} · txt2img 完成了"[:19] + "…"}},
                    "miniprogram_state": "trial", "lang": "zh_CN"}
    row = settled(h, job_id)
    assert row["sent_at"] and row["attempts"] == 1 and row["last_error"] is None
    assert row["event_type"] == "job.finished" and row["payload"]["touser"] == OPENID
    h.listener.pushes.stopping.wait(0.5)
    assert len(wx.pushes) == 1 and len(wx.send_requests()) == 1 and wx.subscriptions_left(OPENID, TEMPLATE) == 1
    assert len(wx.token_requests()) == 1
    # Finalization run again (reconciliation, a second listener) writes no second push.
    with h.ctx.db.transaction() as conn:
        outbox.job_finished(conn, job_id)
    assert len(rows(h, job_id)) == 1


def test_failed_and_cancelled_jobs_push_their_status(pushing, wx, fake):
    wx.subscribe(OPENID, TEMPLATE, times=3)
    h = pushing(COMFYUI_SLOTS="1")
    fake.fail_next(at_step=2, message="CUDA out of memory")
    failed = h.submit(notify(2))
    assert h.wait_final(failed)["status"] == "failed"
    fake.pause()
    held = h.submit(notify(3))       # on ComfyUI's paused queue
    waiting = h.submit(notify(4))    # in the gateway queue
    wait_for(lambda: h.job(held)["backend_id"] and h.job(held)["status"] == "queued", 10, "not sent")
    assert cancel(h.ctx, waiting, h.user)["status"] == "cancelled"
    assert cancel(h.ctx, held, h.user)["status"] == "cancelled"
    fake.resume()
    pushed(wx, 3)
    status = {p["page"].rsplit("=", 1)[1]: p["data"]["phrase2"]["value"] for p in wx.pushes}
    assert status == {failed: "失败", held: "已取消", waiting: "已取消"}
    assert all(settled(h, j)["sent_at"] for j in (failed, held, waiting))


def test_43101_is_given_up_with_a_warning_and_not_retried(pushing, wx, caplog):
    caplog.set_level(logging.WARNING, logger="listener.outbox_sender")
    h = pushing()  # the user accepted nothing: WeChat answers 43101
    job_id = h.submit(notify(5))
    h.wait_final(job_id)
    row = settled(h, job_id)
    assert row["given_up_at"] and row["sent_at"] is None and row["attempts"] == 1 and "43101" in row["last_error"]
    h.listener.pushes.stopping.wait(0.6)  # longer than a few retry delays
    assert len(wx.send_requests()) == 1 and wx.pushes == []
    [warning] = [r for r in caplog.records if "given up" in r.getMessage()]
    assert warning.levelno == logging.WARNING and job_id in warning.getMessage() and "43101" in warning.getMessage()


@pytest.mark.parametrize("break_tokens, errcode", [("revoke_tokens", 40001), ("expire_tokens", 42001)])
def test_a_refused_token_is_replaced_and_the_push_sent_once(pushing, wx, break_tokens, errcode):
    wx.subscribe(OPENID, TEMPLATE, times=2)
    h = pushing()
    stale = h.ctx.wechat_tokens.access_token()  # stored in MySQL, then WeChat stops taking it
    getattr(wx, break_tokens)()
    job_id = h.submit(notify(6))
    h.wait_final(job_id)
    pushed(wx, 1)
    row = settled(h, job_id)
    assert row["sent_at"] and row["attempts"] == 1  # sent again at once, within the one attempt
    sends = wx.send_requests()
    assert [r.query["access_token"] for r in sends] == [stale, wx.tokens_issued[-1]]
    assert wx.force_refreshes == 1 and [r.json["force_refresh"] for r in wx.token_requests()] == [False, True]
    assert h.ctx.wechat_tokens.access_token() == wx.tokens_issued[-1]
    h.listener.pushes.stopping.wait(0.3)
    assert len(wx.pushes) == 1


@pytest.mark.parametrize("trouble", ["busy", "outage", "token_unavailable"])
def test_wechat_busy_or_down_then_back_is_sent_once(pushing, wx, trouble):
    wx.subscribe(OPENID, TEMPLATE, times=2)
    h = pushing()
    if trouble == "busy":
        wx.fail_next(-1, times=2, path=SEND)             # WeChat's "system busy" on the send itself
    elif trouble == "outage":
        wx.outage(502)                                   # a proxy's error page for everything
    else:
        wx.fail_next(-1, times=3, path="/cgi-bin/stable_token")  # no access token to be had
    job_id = h.submit(notify(7))
    h.wait_final(job_id)
    if trouble == "outage":
        wait_for(lambda: rows(h, job_id) and rows(h, job_id)[0]["attempts"] >= 3, 20, f"not retried: {rows(h)}")
        assert wx.pushes == [] and "HTTP 502" in rows(h, job_id)[0]["last_error"]
        wx.restore()
    row = settled(h, job_id)
    assert row["sent_at"] and row["given_up_at"] is None and row["last_error"] is None
    assert row["attempts"] == {"busy": 3, "token_unavailable": 4}.get(trouble, row["attempts"]) >= 3
    h.listener.pushes.stopping.wait(0.5)
    assert len(wx.pushes) == 1


def test_a_listener_restarted_before_sending_sends_once(pushing, wx, monkeypatch):
    wx.subscribe(OPENID, TEMPLATE, times=2)
    with monkeypatch.context() as m:
        m.setattr(SubscribeSender, "start", lambda self: self)  # this listener never pushes
        h = pushing()
        job_id = h.submit(notify(8))
        h.wait_final(job_id)
        h.stop_listener()
    [waiting] = rows(h, job_id)
    assert waiting["sent_at"] is None and waiting["attempts"] == 0 and wx.send_requests() == []
    h.start_listener()
    pushed(wx, 1)
    assert settled(h, job_id)["sent_at"]
    h.listener.pushes.stopping.wait(0.5)
    assert len(wx.pushes) == 1 and len(wx.send_requests()) == 1


def test_a_push_without_an_answer_is_not_sent_again(pushing, wx, caplog):
    """WeChat pushed it but its answer came after the timeout: at most once, so it is given up, not resent."""
    caplog.set_level(logging.WARNING, logger="listener.outbox_sender")
    wx.subscribe(OPENID, TEMPLATE, times=2)
    wx.send_delay = 2.5  # past WECHAT_TIMEOUT=1
    h = pushing()
    job_id = h.submit(notify(9))
    h.wait_final(job_id)
    row = settled(h, job_id)
    assert row["given_up_at"] and row["sent_at"] is None and "may have been pushed" in row["last_error"]
    h.listener.pushes.stopping.wait(1.0)
    assert len(wx.send_requests()) == 1 and len(wx.pushes) == 1
    assert any("given up" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_push_interrupted_before_its_answer_was_recorded_is_not_sent_again(pushing, wx, monkeypatch):
    """A listener that claimed a push and died before recording WeChat's answer: the next one gives it up."""
    wx.subscribe(OPENID, TEMPLATE, times=2)
    with monkeypatch.context() as m:
        m.setattr(SubscribeSender, "start", lambda self: self)
        h = pushing()
        job_id = h.submit(notify(10))
        h.wait_final(job_id)
        h.stop_listener()
    with h.ctx.db.transaction(isolation="READ COMMITTED") as conn:  # the dead listener's claim
        claimed = outbox.claim_due(conn, kind=outbox.KIND_SUBSCRIBE, hold_s=0.3, retry_for_s=60, in_flight=IN_FLIGHT)
    assert claimed["job_id"] == job_id and not claimed["interrupted"]
    sender = SubscribeSender(h.ctx).start()
    try:
        row = settled(h, job_id)
    finally:
        sender.stop()
    assert row["given_up_at"] and row["attempts"] == 2 and "interrupted" in row["last_error"]
    assert wx.send_requests() == [] and wx.pushes == []


def test_a_job_without_notify_pushes_nothing(pushing, wx):
    wx.subscribe(OPENID, TEMPLATE)
    # A webhook receiver that never answers: the job's webhook events stay in the outbox to be read
    # (without WEBHOOK_URL the listener discards them, maybe before the assertion reads them).
    h = pushing(WEBHOOK_URL="http://127.0.0.1:9/hooks", WEBHOOK_SECRET="x" * 24)
    job_id = h.submit(txt2img(seed=11))
    assert h.wait_final(job_id)["notify"] == 0
    with h.ctx.db.connection() as conn:
        assert [e["event_type"] for e in outbox.list_events(conn, job_id=job_id)] == ["job.succeeded",
                                                                                        "usage.recorded"]
    h.listener.pushes.stopping.wait(0.5)
    assert rows(h) == [] and wx.send_requests() == [] and wx.token_requests() == []


def test_without_a_template_the_pushes_are_dropped(pushing, wx):
    wx.subscribe(OPENID, TEMPLATE)
    h = pushing(WECHAT_SUBSCRIBE_TEMPLATE_ID=None, WECHAT_SUBSCRIBE_DATA=None)
    job_id = h.submit(notify(12))  # accepted: the API does not know the listener's settings
    h.wait_final(job_id)
    wait_for(lambda: rows(h) == [] and h.listener.pushes.stats["discarded"] >= 1, 10, "not dropped")
    assert wx.send_requests() == [] and wx.token_requests() == []
