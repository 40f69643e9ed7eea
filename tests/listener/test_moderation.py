"""Content security end to end: the real listener on the fake ComfyUI, the fake WeChat checking texts
and images (it fetches each image through its signed URL and pushes its verdict, signed and
encrypted, to the gateway's push endpoint served on loopback), real MySQL and local storage."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from functions.app import create_app
from listener import moderation_sender
from shared.errors import BackendUnavailableError, ContentRejectedError
from shared.submission import submit
from shared.users import get_or_create_user
from shared.wxpush import new_aes_key, seal
from tests.fakes.wechat import FakeWeChat
from tests.listener.conftest import txt2img
from tests.stack import wait_for

OPENID = "o-moderated-user-01"
TOKEN = "push-token-0123456789"
AES_KEY = new_aes_key()
PUSH = "/v1/wechat/push"


@pytest.fixture(autouse=True)
def fast_sender(monkeypatch):
    for name, value in {"POLL_S": 0.05, "SWEEP_EVERY_S": 0.1, "FIRST_DELAY_S": 0.1, "MAX_DELAY_S": 0.3}.items():
        monkeypatch.setattr(moderation_sender, name, value)


@pytest.fixture
def wx():
    with FakeWeChat(appid="wx-moderation") as fake:
        yield fake


class Api:
    """The Flask app of the gateway on a loopback port (the fake WeChat fetches images and pushes here)."""

    def __init__(self):
        self.ctx = None
        self.server = make_server("127.0.0.1", 0, create_app(lambda: self.ctx), threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def api():
    served = Api()
    yield served
    served.stop()


@pytest.fixture
def moderated(harness_factory, fake, wx, api):
    """A listener with MODERATION=wechat, the gateway's API on loopback, a user logged in through WeChat."""
    def make(start: bool = True, **env):
        settings = {"MODERATION": "wechat", "WECHAT_API_BASE": wx.url, "WECHAT_APPID": wx.appid,
                    "WECHAT_SECRET": wx.secret, "WECHAT_TIMEOUT": "1", "WECHAT_PUSH_TOKEN": TOKEN,
                    "WECHAT_PUSH_AES_KEY": AES_KEY, "PUBLIC_BASE_URL": api.url, **env}
        h = harness_factory(fake, **settings)
        api.ctx = h.ctx
        wx.configure_push(api.url + PUSH, token=TOKEN, aes_key=AES_KEY, appid=wx.appid)
        with h.ctx.db.connection() as conn:
            h.user = get_or_create_user(conn, provider="wechat", subject=OPENID)
        h.client = create_app(lambda: h.ctx).test_client()
        if start:
            h.start_listener()
        return h
    return make


def checks(h, job_id):
    return h.sql("SELECT * FROM moderation_checks WHERE job_id=%s ORDER BY id", (job_id,))


def stored(h, job_id) -> list[bool]:
    """Whether each output object of the job is still in storage."""
    return [h.ctx.store.head(o["object_key"]) is not None for o in h.outputs(job_id)]


def result(h, job_id):
    from shared.tokens import issue_token
    token, _ = issue_token(h.ctx.config.secret_key, h.user, ttl=600)
    return h.client.get(f"/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {token}"})


def test_a_risky_prompt_is_refused_and_no_job_is_made(moderated, wx):
    h = moderated()
    with pytest.raises(ContentRejectedError) as refused:
        submit(h.ctx, h.user, txt2img(prompt="a RISKY cat"))
    assert refused.value.status == 422 and refused.value.details == {"prompt": "rejected by the content check"}
    assert h.sql("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 0
    asked = wx.sec_check_requests()
    assert [(r.json["content"], r.json["openid"], r.json["version"]) for r in asked] == \
        [("a RISKY cat", OPENID, 2)]
    # a harmless one passes; so does one WeChat wants a person to look at (let through, logged)
    assert submit(h.ctx, h.user, txt2img(prompt="a cat, REVIEW me"))[0] == 202


def test_a_risky_text_wins_over_one_that_could_not_be_checked(moderated, wx):
    h = moderated()
    wx.fail_next(-1, times=1, path="/wxa/msg_sec_check")  # the first text asked gets "system busy"
    open_ = h.ctx.__class__(h.ctx.config.replace(moderation_fail="open"))
    with pytest.raises(ContentRejectedError) as refused:
        submit(open_, h.user, txt2img(prompt="a cat", negative_prompt="RISKY words"))
    assert set(refused.value.details) == {"negative_prompt"}
    assert [r.json["content"] for r in wx.sec_check_requests()] == ["a cat", "RISKY words"]
    assert h.sql("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 0


def test_the_text_checks_of_a_submit_have_a_time_budget(moderated, wx, monkeypatch):
    from shared.moderation import text
    h = moderated()
    ticks = iter([0.0, 0.0, 11.0, 11.0])  # the second text would start after the budget
    with pytest.raises(BackendUnavailableError):
        text.check_submission(h.ctx, h.user, h.ctx.workflows["txt2img"], {"prompt": "a cat", "negative_prompt": "x"},
                              clock=lambda: next(ticks))
    assert [r.json["content"] for r in wx.sec_check_requests()] == ["a cat"]


def test_a_wechat_outage_at_submit_follows_the_policy(moderated, wx):
    h = moderated()
    wx.outage()
    with pytest.raises(BackendUnavailableError):
        submit(h.ctx, h.user, txt2img(prompt="a cat"))
    assert h.sql("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 0
    h.ctx = h.ctx.__class__(h.ctx.config.replace(moderation_fail="open"))
    assert submit(h.ctx, h.user, txt2img(prompt="a cat"))[0] == 202


def completions() -> float:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value("gateway_completion_latency_seconds_count") or 0.0


def test_hold_a_passed_image_succeeds_after_its_verdict(moderated, wx):
    from shared import metrics
    metrics.enable()
    h = moderated()
    wx.push_delay = 0.5
    job_id = h.submit(txt2img(prompt="a cat"))
    job = wait_for(lambda: (j := h.job(job_id))["status"] == "checking" and j, 30, "not checking")
    assert job["moderation"] == "pending" and h.usage(job_id) == []  # no record before the verdict
    with h.ctx.db.connection() as conn:
        from shared import jobs
        shown = jobs.job_object(jobs.get_job(conn, job_id))
    assert shown["status"] == "running" and shown["progress"]["node_title"] == "content_check"
    assert shown["progress"]["percent"] == 100.0 and shown["preview_url"] is None
    assert result(h, job_id).status_code == 409  # nothing reachable yet
    observed = completions()  # held: its completion (ComfyUI's end → images visible) is not over yet
    job = h.wait_final(job_id)
    assert completions() == observed + 1 and job["run_ended_at"] > 0
    assert job["status"] == "succeeded" and job["moderation"] == "passed"
    fetched = wx.media_fetches
    assert fetched and all(f["status"] == 200 and f["length"] > 0 for f in fetched)  # the signed URL works
    assert [c["suggest"] for c in checks(h, job_id)] == ["pass"] * len(h.outputs(job_id))
    usage = h.usage(job_id)
    assert len(usage) == 1 and usage[0]["moderation"] == "passed" and usage[0]["status"] == "succeeded"
    answer = result(h, job_id)
    assert answer.status_code == 200 and len(answer.get_json()["images"]) == len(h.outputs(job_id))


def test_hold_a_risky_image_is_never_reachable(moderated, wx, storage):
    h = moderated(**storage)
    wx.image_judge = lambda url, data: "risky"
    job_id = h.submit(txt2img(prompt="a cat"))
    job = h.wait_final(job_id)
    assert job["status"] == "failed" and job["error_code"] == "content_rejected"
    assert job["moderation"] == "rejected"
    wait_for(lambda: not any(stored(h, job_id)), 10, "rejected images still stored")
    answer = result(h, job_id)
    assert answer.status_code == 409 and answer.get_json()["error"]["details"]["code"] == "content_rejected"
    usage = h.usage(job_id)
    assert len(usage) == 1 and usage[0]["moderation"] == "rejected" and usage[0]["status"] == "failed"


@pytest.fixture(params=["local", "s3"])
def storage(request):
    if request.param == "local":
        return {}
    s3 = request.getfixturevalue("s3rver")
    return {"STORAGE_URL": f"s3://{s3.bucket}/moderation-{time.time_ns()}", "S3_ENDPOINT_URL": s3.endpoint_url}


def test_publish_a_risky_image_is_withdrawn(moderated, wx, storage):
    # a webhook receiver that never answers: the events stay in the outbox to be read
    h = moderated(MODERATION_OUTPUTS="publish", WEBHOOK_URL="http://127.0.0.1:9/hooks", WEBHOOK_SECRET="x" * 24,
                  **storage)
    gate = threading.Event()
    wx.image_judge = lambda url, data: gate.wait(20) and "risky"
    job_id = h.submit(txt2img(prompt="a cat"))
    job = h.wait_final(job_id)
    assert job["status"] == "succeeded" and job["moderation"] == "pending"
    first = result(h, job_id)
    assert first.status_code == 200
    links = [i["url"] for i in first.get_json()["images"]]
    assert all(requests.get(u, timeout=5).status_code == 200 for u in links)
    gate.set()
    wait_for(lambda: h.job(job_id)["moderation"] == "rejected", 20, "not withdrawn")
    answer = result(h, job_id)
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "content_rejected"
    wait_for(lambda: all(requests.get(u, timeout=5).status_code == 404 for u in links), 10, "links still work")
    usage = h.usage(job_id)
    assert len(usage) == 1 and usage[0]["moderation"] == "rejected" and usage[0]["status"] == "succeeded"
    events = [e["event_type"] for e in h.sql("SELECT event_type FROM outbox WHERE job_id=%s AND kind='webhook' "
                                             "ORDER BY id", (job_id,))]
    assert events == ["job.succeeded", "job.withdrawn", "usage.recorded"]


@pytest.mark.parametrize("policy, status, outcome", [("closed", "failed", "rejected"),
                                                     ("open", "succeeded", "unchecked")])
def test_no_verdict_before_the_deadline_follows_the_policy(moderated, wx, policy, status, outcome):
    h = moderated(MODERATION_DEADLINE_S="2", MODERATION_FAIL=policy)
    wx.drop_pushes(100)  # WeChat never answers
    job_id = h.submit(txt2img(prompt="a cat"))
    job = h.wait_final(job_id, timeout=30)
    assert (job["status"], job["moderation"]) == (status, outcome)
    assert all(c["suggest"] is None and "deadline" in c["last_error"] for c in checks(h, job_id))
    assert len(h.usage(job_id)) == 1


def test_a_repeated_push_changes_nothing(moderated, wx):
    h = moderated()
    wx.duplicate_pushes = True
    job_id = h.submit(txt2img(prompt="a cat"))
    job = h.wait_final(job_id)
    assert job["status"] == "succeeded"
    version = job["version"]
    trace = checks(h, job_id)[0]["trace_id"]
    assert wx.push(trace)  # delivered (answered "success") once more
    assert h.job(job_id)["version"] == version and len(h.usage(job_id)) == 1
    assert h.sql("SELECT COUNT(*) AS n FROM moderation_verdicts WHERE trace_id=%s", (trace,))[0]["n"] == 1


def test_a_cancel_while_checking_ends_the_job(moderated, wx):
    h = moderated()
    wx.drop_pushes(100)
    job_id = h.submit(txt2img(prompt="a cat"))
    wait_for(lambda: h.job(job_id)["status"] == "checking", 30, "not checking")
    from shared.cancellation import cancel
    assert cancel(h.ctx, job_id, h.user)["status"] == "cancelled"
    usage = h.usage(job_id)
    assert len(usage) == 1 and usage[0]["status"] == "cancelled" and usage[0]["gpu_seconds"] > 0


def test_the_push_endpoint_checks_signatures(moderated, wx, api):
    moderated(start=False)
    good = {"signature": "", "timestamp": "1700000000", "nonce": "n1", "echostr": "hello"}
    from shared.wxpush import signature
    good["signature"] = signature(TOKEN, good["timestamp"], good["nonce"])
    assert requests.get(api.url + PUSH, params=good, timeout=5).text == "hello"
    assert requests.get(api.url + PUSH, params={**good, "nonce": "n2"}, timeout=5).status_code == 401
    event = {"Event": "wxa_media_check", "trace_id": "t-unknown", "result": {"suggest": "risky", "label": 1}}
    query, body = seal(TOKEN, AES_KEY, wx.appid, event)
    assert requests.post(api.url + PUSH, params=query, data=body, timeout=5).text == "success"
    forged, _ = seal(TOKEN, new_aes_key(), wx.appid, event)
    assert requests.post(api.url + PUSH, params=forged, data=body, timeout=5).status_code == 401
    plain = requests.post(api.url + PUSH, params={k: good[k] for k in ("signature", "timestamp", "nonce")},
                          json=event, timeout=5)
    assert plain.status_code == 401  # safe mode configured: a plain push is refused
    assert plain.json()["error"]["code"] == "unauthorized"


# -- the operator's own moderation (MODERATION=webhook) -------------------------------------------

HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def judge(event):
    """The operator's rule: prompts with "RISKY" and every image of a job whose prompt said "dark" are risky."""
    data = event["data"]
    if event["type"] == "moderation.text":
        return {"suggest": "risky" if any("RISKY" in t for t in data["texts"].values()) else "pass"}
    return {"suggest": "risky" if requests.get(data["url"], timeout=5).status_code != 200 else "pass"}


def test_the_webhook_answers_both_questions(harness_factory, fake, api):
    from tests.fakes.webhooks import FakeReceiver
    with FakeReceiver(HOOK_SECRET, answer=judge) as rx:
        h = harness_factory(fake, MODERATION="webhook", MODERATION_WEBHOOK_URL=rx.url,
                            MODERATION_WEBHOOK_SECRET=HOOK_SECRET, PUBLIC_BASE_URL=api.url)
        api.ctx = h.ctx
        h.start_listener()
        with pytest.raises(ContentRejectedError):
            submit(h.ctx, h.user, txt2img(prompt="RISKY"))
        job_id = h.submit(txt2img(prompt="a cat"))
        rx.fail_next(2, status=503)  # the image question (asked once the job ran) is asked again until answered
        job = h.wait_final(job_id)
        assert (job["status"], job["moderation"]) == ("succeeded", "passed")
        kinds = [d.type for d in rx.deliveries]
        assert kinds.count("moderation.text") == 2 and kinds.count("moderation.image") >= 3
        assert all(d.verified for d in rx.deliveries)  # signed as webhooks are
        image_ids = {d.id for d in rx.deliveries if d.type == "moderation.image"}
        assert len(image_ids) == len(h.outputs(job_id))  # the same webhook-id on every retry
        text = next(d.event["data"] for d in rx.deliveries if d.type == "moderation.text")
        assert text["texts"] == {"prompt": "RISKY"} and text["workflow"] == "txt2img"


# -- what WeChat refuses or loses ------------------------------------------------------------------

def checking_job(h, job_id: str, trace_id: str, suggest: str, label: int) -> None:
    """A job whose one image waits for its verdict, and that verdict already pushed (kept by trace_id)."""
    from shared.moderation import outputs
    h.sql("INSERT INTO jobs (id, user_id, workflow, params, prompt, status, moderation, created_at, updated_at) "
          "VALUES (%s, %s, 'txt2img', '{}', '{}', 'checking', 'pending', UTC_TIMESTAMP(3), UTC_TIMESTAMP(3))",
          (job_id, h.user))
    with h.ctx.db.transaction() as conn:
        outputs.begin(conn, job_id, [f"users/x/jobs/{job_id}/9_0.png"], 60)
        outputs.store_verdict(conn, trace_id, suggest, label)


def test_a_verdict_pushed_before_its_trace_id_was_stored_is_kept(moderated, wx):
    """WeChat may push faster than the listener commits the trace_id it answered: the verdict waits."""
    from shared.moderation import outputs
    h = moderated(start=False)
    job_id = "00000000-0000-4000-8000-00000000abcd"
    checking_job(h, job_id, "trace-early", "pass", 100)  # the push, first
    with h.ctx.db.transaction() as conn:
        assert outputs.apply_verdict(conn, "trace-early") is None  # no check has this trace_id yet
    h.sql("UPDATE moderation_checks SET state='sent', trace_id='trace-early' WHERE job_id=%s", (job_id,))
    with h.ctx.db.transaction() as conn:
        assert outputs.apply_verdict(conn, "trace-early") == job_id  # what the sender does after storing it
    assert outputs.settle(h.ctx, job_id) == "passed"
    assert h.job(job_id)["status"] == "succeeded" and len(h.usage(job_id)) == 1
    assert outputs.settle(h.ctx, job_id) is None  # once


def test_wechat_trouble_while_asking_is_retried(moderated, wx):
    h = moderated()
    wx.fail_next(-1, times=2, path="/wxa/media_check_async")  # busy, twice
    job_id = h.submit(txt2img(prompt="a cat"))
    job = h.wait_final(job_id)
    assert (job["status"], job["moderation"]) == ("succeeded", "passed")
    assert max(c["attempts"] for c in checks(h, job_id)) >= 2


def test_a_user_without_an_openid_cannot_be_checked_by_wechat(moderated, wx):
    h = moderated()
    with h.ctx.db.connection() as conn:
        h.user = get_or_create_user(conn, provider="dev", subject="no-openid")
    with pytest.raises(BackendUnavailableError):  # MODERATION_FAIL=closed
        submit(h.ctx, h.user, txt2img(prompt="a cat"))


@pytest.mark.parametrize("checks_, fail, expected", [
    ([("done", "pass"), ("done", "review")], "closed", ("review", "pass")),
    ([("done", "pass"), ("sent", None)], "closed", None),
    ([("sent", None), ("done", "risky")], "open", ("rejected", "risky")),
    ([("done", None), ("sent", None)], "closed", ("rejected", "none")),
    ([("done", None), ("sent", None)], "open", None),
    ([("done", None), ("done", "pass")], "open", ("unchecked", "none")),
])
def test_the_verdict_of_a_job(checks_, fail, expected):
    from shared.moderation.outputs import verdict
    assert verdict([{"state": s, "suggest": g} for s, g in checks_], fail) == expected


def test_checks_left_open_when_moderation_is_turned_off_are_closed(moderated, wx):
    from listener.moderation_sender import ModerationSender
    h = moderated()
    wx.drop_pushes(100)
    job_id = h.submit(txt2img(prompt="a cat"))
    wait_for(lambda: h.job(job_id)["status"] == "checking", 30, "not checking")
    h.stop_listener()
    off = h.ctx.__class__(h.ctx.config.replace(moderation="none"))
    sender = ModerationSender(off)
    sender.close_leftovers()
    job = h.job(job_id)
    assert (job["status"], job["moderation"]) == ("succeeded", "unchecked")
    assert all(c["state"] == "done" and "MODERATION is none" in c["last_error"] for c in checks(h, job_id))
    assert len(h.usage(job_id)) == 1


def test_a_stored_verdict_is_applied_by_the_sweep(moderated, wx):
    """The listener died after storing the trace_id and before applying a verdict already pushed."""
    from listener.moderation_sender import ModerationSender
    h = moderated(start=False)
    job_id = "00000000-0000-4000-8000-00000000beef"
    checking_job(h, job_id, "trace-stranded", "risky", 20002)
    h.sql("UPDATE moderation_checks SET state='sent', trace_id='trace-stranded' WHERE job_id=%s", (job_id,))
    ModerationSender(h.ctx).sweep()
    job = h.job(job_id)
    assert (job["status"], job["error_code"], job["moderation"]) == ("failed", "content_rejected", "rejected")


def test_verdicts_still_settle_jobs_after_the_listener_is_killed(make_config, fake, wx, api, db_conn, tmp_path):
    """The verdict goes to the API, not to the listener: a listener killed with -9 while its jobs wait
    for theirs loses nothing, and nothing is asked twice."""
    from shared.context import Context
    from shared.db import connect, query
    from tests.listener.conftest import FAST
    from tests.stack import Process, config_env
    moderation = {"MODERATION": "wechat", "WECHAT_API_BASE": wx.url, "WECHAT_APPID": wx.appid,
                  "WECHAT_SECRET": wx.secret, "WECHAT_TIMEOUT": "1", "WECHAT_PUSH_TOKEN": TOKEN,
                  "WECHAT_PUSH_AES_KEY": AES_KEY}
    cfg = make_config(COMFYUI_URLS=fake.base_url, PUBLIC_BASE_URL=api.url, **moderation, **FAST)
    api.ctx = ctx = Context(cfg)
    wx.configure_push(api.url + PUSH, token=TOKEN, aes_key=AES_KEY, appid=wx.appid)
    gate = threading.Event()
    wx.image_judge = lambda url, data: gate.wait(30) and "pass"  # verdicts held back until the kill
    with ctx.db.connection() as conn:
        user = get_or_create_user(conn, provider="wechat", subject=OPENID)
    listener = Process(["listen"], {**config_env(cfg), **moderation}, tmp_path / "listener.log").start()
    conn = connect(cfg.database_url)

    def rows(sql, args=()):
        conn.commit()
        return query(conn, sql, args)
    try:
        wait_for(lambda: rows("SELECT connected FROM backends WHERE url=%s", (fake.base_url,)) == [{"connected": 1}],
                 30, f"listener not connected: {listener.log()}")
        job_ids = [submit(ctx, user, txt2img(seed=i, prompt="a cat"))[1]["id"] for i in range(3)]
        wait_for(lambda: len(rows("SELECT id FROM moderation_checks WHERE state='sent'")) >= 3
                 and not rows("SELECT id FROM moderation_checks WHERE state='pending'")
                 and not rows("SELECT id FROM jobs WHERE status NOT IN ('checking')"), 30,
                 f"not all waiting for a verdict: {rows('SELECT id, status FROM jobs')}")
        listener.kill()  # SIGKILL, no listener from here on
        gate.set()
        wait_for(lambda: {r["status"] for r in rows("SELECT status FROM jobs")} == {"succeeded"}, 30,
                 f"jobs not settled without a listener: {rows('SELECT id, status, moderation FROM jobs')}")
        assert {r["moderation"] for r in rows("SELECT moderation FROM jobs")} == {"passed"}
        assert sorted(r["job_id"] for r in rows("SELECT job_id FROM usage_records")) == sorted(job_ids)
        images = rows("SELECT COUNT(*) AS n FROM job_outputs")[0]["n"]
        assert len(wx.media_check_requests()) == images  # each image asked once
    finally:
        listener.stop()  # already dead: closes its log
        conn.close()
