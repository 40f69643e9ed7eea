"""Webhooks end to end: outbox rows written with the final state, sent by the listener's sender thread
to a fake receiver, retried, given up, replayed; at least once, the same webhook-id every time."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest

from listener import outbox_sender
from listener.finalize import finalize
from listener.outbox_sender import OutboxSender
from shared import jobs, outbox, usage
from shared.cancellation import cancel
from shared.config import ConfigError
from shared.db import query_one
from shared.webhooks import WebhookClient, verify
from tests.fakes.webhooks import FakeReceiver
from tests.listener.conftest import txt2img
from tests.stack import PROJECT_ROOT, config_env, wait_for

SECRET = "whsec_" + "c2VjcmV0LWtleS1vZi10aGUtd2ViaG9vay10ZXN0cw=="


@pytest.fixture
def receiver():
    with FakeReceiver(secret=SECRET) as rx:
        yield rx


@pytest.fixture(autouse=True)
def fast_sender(monkeypatch):
    """Seconds instead of minutes: the same code, quicker timings."""
    for name, value in {"POLL_S": 0.05, "FIRST_DELAY_S": 0.1, "MAX_DELAY_S": 0.4, "TIMEOUT_S": 1.0}.items():
        monkeypatch.setattr(outbox_sender, name, value)


@pytest.fixture
def hooked(harness_factory, fake, receiver):
    """A listener whose WEBHOOK_URL is the fake receiver."""
    def make(**env):
        h = harness_factory(fake, WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET, **env)
        h.start_listener()
        return h
    return make


def events(h, job_id=None) -> list[dict]:
    with h.ctx.db.connection() as conn:
        return outbox.list_events(conn, job_id=job_id)


def delivered(receiver, n: int, timeout: float = 20.0) -> list:
    return wait_for(lambda: len(receiver.accepted_ids) >= n and receiver.accepted, timeout,
                    f"not {n} events delivered: {[(d.type, d.status) for d in receiver.deliveries]}")


def test_a_success_delivers_one_job_succeeded_and_one_usage_recorded(hooked, receiver):
    h = hooked()
    job_id = h.submit(txt2img(seed=1, batch_size=2))
    assert h.wait_final(job_id)["status"] == "succeeded"
    delivered(receiver, 2)
    wait_for(lambda: all(e["sent_at"] for e in events(h)), 10, "not marked sent")
    assert sorted(d.type for d in receiver.accepted) == ["job.succeeded", "usage.recorded"]
    assert all(d.verified and verify(SECRET, d.headers, d.body, now=int(d.headers["webhook-timestamp"]))
               for d in receiver.deliveries)
    rows = {e["event_type"]: e for e in events(h)}
    assert {d.id for d in receiver.accepted} == {e["event_id"] for e in rows.values()}
    assert all(e["attempts"] == 1 and e["last_error"] is None and e["next_attempt_at"] is None for e in rows.values())

    [job_event] = receiver.of_type("job.succeeded")
    assert job_event.event["timestamp"].endswith("Z")
    data = job_event.event["data"]
    with h.ctx.db.connection() as conn:
        row = jobs.get_row(conn, job_id)
        expected = jobs.job_object(row)
        record = usage.usage_object(query_one(conn, "SELECT * FROM usage_records WHERE job_id=%s", (job_id,)))
    assert {k: v for k, v in data.items() if k not in ("user_id", "images")} == expected
    assert data["user_id"] == h.user and data["status"] == "succeeded" and data["poll_after_ms"] is None
    # Images as storage keys, never signed URLs (they would expire before a retry or a replay).
    assert [(i["key"], i["width"], i["index"]) for i in data["images"]] == \
        [(o["object_key"], 64, o["idx"]) for o in h.outputs(job_id)]
    assert "X-Amz" not in job_event.body.decode() and "signature=" not in job_event.body.decode()

    [usage_event] = receiver.of_type("usage.recorded")
    assert usage_event.event["data"] == record
    assert usage_event.event["data"]["job_id"] == job_id and usage_event.event["data"]["images"] == 2


def test_receiver_down_then_up_is_delivered_after_retries_with_the_same_id(hooked, receiver):
    h = hooked()
    receiver.down()
    job_id = h.submit(txt2img(seed=2))
    h.wait_final(job_id)
    wait_for(lambda: len(events(h)) == 2 and all(e["attempts"] >= 2 for e in events(h)), 20, "not retried")
    failing = events(h)
    assert all(e["sent_at"] is None and e["last_error"].startswith("no connection") for e in failing)
    receiver.up()
    delivered(receiver, 2)
    wait_for(lambda: all(e["sent_at"] for e in events(h)), 10, "not marked sent")
    assert sorted(receiver.accepted_ids) == sorted(e["event_id"] for e in failing)


def test_failing_and_hanging_answers_are_retried_with_the_same_id(hooked, receiver):
    receiver.fail_next(2, status=503)
    receiver.hang_next(1, seconds=2.5)  # past the sender's 1 s timeout
    receiver.fail_next(1, status=302)
    h = hooked()
    job_id = h.submit(txt2img(seed=3))
    h.wait_final(job_id)
    delivered(receiver, 2)
    wait_for(lambda: all(e["sent_at"] for e in events(h)), 20, "not marked sent")
    by_id: dict[str, list] = {}
    for d in receiver.deliveries:
        by_id.setdefault(d.id, []).append(d)
    assert set(by_id) == {e["event_id"] for e in events(h)}  # every attempt of an event: its one id
    assert sorted(d.status for d in receiver.deliveries if d.status >= 300) == [302, 503, 503]
    assert all(d.verified for d in receiver.deliveries)
    attempts = sum(e["attempts"] for e in events(h))
    assert attempts >= 2 + 4  # two successes, four failures (the hung one answered after the sender gave up)


def test_events_of_a_listener_that_died_before_sending_are_sent_by_the_next(hooked, receiver, monkeypatch):
    """Finalized, then killed before its sender ran: the next listener's sender delivers."""
    with monkeypatch.context() as m:
        m.setattr(OutboxSender, "start", lambda self: self)  # this listener never sends
        h = hooked()
        job_id = h.submit(txt2img(seed=4))
        h.wait_final(job_id)
        h.stop_listener()
    waiting = events(h, job_id)
    assert [e["event_type"] for e in waiting] == ["job.succeeded", "usage.recorded"]
    assert all(e["sent_at"] is None and e["attempts"] == 0 for e in waiting) and receiver.deliveries == []

    # A second one claims an event and dies mid-send: it comes back once the hold has passed.
    with h.ctx.db.transaction(isolation="READ COMMITTED") as conn:
        held = outbox.claim_due(conn, hold_s=1.0, retry_for_s=60)
    sender = OutboxSender(h.ctx).start()
    try:
        delivered(receiver, 2)
    finally:
        sender.stop()
    assert [d.id for d in receiver.accepted][-1] == held["event_id"]  # the held one went last
    assert {d.id for d in receiver.accepted} == {e["event_id"] for e in waiting}
    assert {e["event_id"]: e["attempts"] for e in events(h, job_id)}[held["event_id"]] == 2


def test_finalization_run_twice_writes_each_event_once(hooked, receiver, fake):
    h = hooked()
    job_id = h.submit(txt2img(seed=5))
    h.wait_final(job_id)
    delivered(receiver, 2)
    before = events(h, job_id)
    assert finalize(h.ctx, job_id, comfy=h.ctx.comfy(fake.base_url), backend_url=fake.base_url) == "succeeded"
    with h.ctx.db.transaction() as conn:
        outbox.job_finished(conn, job_id)
        outbox.job_finished(conn, job_id)
    assert events(h, job_id) == before


def test_cancel_emits_job_cancelled_with_its_usage(hooked, receiver, fake):
    fake.pause()
    h = hooked(COMFYUI_SLOTS="1")
    held = h.submit(txt2img(seed=6))          # on ComfyUI's paused queue
    waiting = h.submit(txt2img(seed=7))       # in the gateway queue (the only slot is taken)
    wait_for(lambda: h.job(held)["status"] == "queued" and h.job(held)["backend_id"], 10, "not sent")
    assert h.job(waiting)["backend_id"] is None
    assert cancel(h.ctx, waiting, h.user)["status"] == "cancelled"
    assert cancel(h.ctx, held, h.user)["status"] == "cancelled"
    fake.resume()
    delivered(receiver, 4)
    for job_id in (held, waiting):
        got = {d.type: d.event["data"] for d in receiver.accepted if d.event["data"].get("job_id", d.event[
            "data"].get("id")) == job_id}
        assert got["job.cancelled"]["status"] == "cancelled" and got["job.cancelled"]["images"] == []
        assert got["usage.recorded"]["status"] == "cancelled"


def test_failures_emit_job_failed(hooked, receiver, fake):
    h = hooked()
    fake.fail_next(at_step=2, message="CUDA out of memory")
    job_id = h.submit(txt2img(seed=8))
    assert h.wait_final(job_id)["status"] == "failed"
    delivered(receiver, 2)
    [failed] = receiver.of_type("job.failed")
    assert failed.event["data"]["error"] == {"code": "execution_error", "message": "CUDA out of memory",
                                             "node_id": "3", "node_type": "KSampler"}
    assert receiver.of_type("usage.recorded")[0].event["data"]["status"] == "failed"


def test_timeouts_in_comfyui_and_in_the_gateway_queue_emit_job_failed(hooked, receiver, fake):
    """Held by a paused server past the limit (reconciliation), and waiting in the gateway queue past it
    (the sweep): both fail with timeout, each with its events."""
    fake.pause()
    h = hooked(COMFYUI_SLOTS="1", QUEUE_TIMEOUT_S="1", DISPATCH_SWEEP_S="0.2")
    held = h.submit(txt2img(seed=9))
    waiting = h.submit(txt2img(seed=10))
    for job_id in (held, waiting):
        job = h.wait_final(job_id, timeout=20)
        assert (job["status"], job["error_code"]) == ("failed", "timeout")
    fake.resume()
    delivered(receiver, 4)
    failed = {d.event["data"]["id"]: d.event["data"] for d in receiver.of_type("job.failed")}
    assert set(failed) == {held, waiting} and all(f["error"]["code"] == "timeout" for f in failed.values())
    assert len(receiver.of_type("usage.recorded")) == 2


def test_replay_sends_the_same_events_again(hooked, receiver):
    h = hooked()
    job_id = h.submit(txt2img(seed=11))
    h.wait_final(job_id)
    delivered(receiver, 2)
    wait_for(lambda: all(e["sent_at"] for e in events(h)), 10, "not marked sent")
    first = [d.id for d in receiver.accepted]
    env = {**os.environ, **config_env(h.ctx.config)}

    def replay(*args):
        out = subprocess.run([sys.executable, "-m", "shared.cli", "webhooks", "replay", *args], env=env,
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "replaying 0 webhook event(s)" in replay("--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02")
    assert "replaying 2 webhook event(s)" in replay("--since", "2000-01-01T00:00:00Z")
    wait_for(lambda: len(receiver.accepted) == 4, 10, "not sent again")
    again = [d.id for d in receiver.accepted[2:]]
    assert sorted(again) == sorted(first)  # the same webhook-ids: receivers see a redelivery
    assert [d.status for d in receiver.accepted[2:]] == [200, 200]  # the receiver knew them
    wait_for(lambda: all(e["sent_at"] and e["attempts"] == 1 for e in events(h)), 10, "not marked sent again")


# -- the sender on its own ------------------------------------------------------------------------------

def add(ctx, n: int, prefix: str = "job") -> None:
    with ctx.db.transaction() as conn:
        for i in range(n):
            outbox.add_event(conn, "job.succeeded", f"{prefix}-{i:04d}", {"id": f"{prefix}-{i:04d}", "n": i})


def test_given_up_after_its_day_with_one_error_line_then_replayed(make_config, db_conn, receiver, monkeypatch,
                                                                   caplog):
    from shared.context import Context
    monkeypatch.setattr(outbox_sender, "RETRY_FOR_S", 0.5)
    ctx = Context(make_config(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET))
    add(ctx, 1)
    receiver.fail_next(1000, status=500)
    caplog.set_level(logging.INFO, logger="listener.outbox_sender")
    sender = OutboxSender(ctx).start()
    try:
        wait_for(lambda: events_of(ctx)[0]["given_up_at"], 10, "never given up")
        attempts = events_of(ctx)[0]["attempts"]
        sender.stopping.wait(0.3)
        assert events_of(ctx)[0]["attempts"] == attempts  # nothing more once given up
    finally:
        sender.stop()
    [event] = events_of(ctx)
    assert event["sent_at"] is None and event["next_attempt_at"] is None and event["last_error"] == "HTTP 500"
    assert attempts >= 3 and len(receiver.deliveries) == attempts
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "given up" in errors[0].getMessage() and event["event_id"] in errors[0].getMessage()
    assert SECRET not in caplog.text and "v1," not in caplog.text and receiver.url not in caplog.text

    with receiver._lock:
        receiver._forced.clear()
    with ctx.db.connection() as conn:
        assert outbox.replay(conn, since=event["created_at"]) == 1
    sender = OutboxSender(ctx).start()
    try:
        wait_for(lambda: events_of(ctx)[0]["sent_at"], 10, "replay not sent")
    finally:
        sender.stop()
    assert receiver.accepted_ids == [event["event_id"]] and events_of(ctx)[0]["given_up_at"] is None
    ctx.db.close()


def events_of(ctx) -> list[dict]:
    with ctx.db.connection() as conn:
        return outbox.list_events(conn)


def test_two_senders_never_send_one_event_at_the_same_time(make_config, db_conn, receiver):
    from shared.context import Context
    receiver.delay = 0.02
    ctxs = [Context(make_config(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET), bounded=False) for _ in range(2)]
    add(ctxs[0], 40)
    senders = [OutboxSender(c) for c in ctxs]
    threads = [threading.Thread(target=s.send_due, args=(WebhookClient(c.session, receiver.url, SECRET),))
               for s, c in zip(senders, ctxs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ids = [d.id for d in receiver.deliveries]
    assert len(ids) == 40 and len(set(ids)) == 40  # each exactly once
    assert all(s.stats["sent"] > 0 for s in senders)  # both took part
    assert all(e["sent_at"] and e["attempts"] == 1 for e in events_of(ctxs[0]))
    for c in ctxs:
        c.db.close()


def test_without_webhook_url_events_are_discarded(make_config, db_conn):
    from shared.context import Context
    ctx = Context(make_config())
    add(ctx, 3)
    sender = OutboxSender(ctx).start()
    try:
        wait_for(lambda: events_of(ctx) == [], 5, "not discarded")
    finally:
        sender.stop()
    assert sender.stats["discarded"] == 3
    ctx.db.close()


def test_retry_delays_double_with_jitter_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(outbox_sender, "FIRST_DELAY_S", 5.0)
    monkeypatch.setattr(outbox_sender, "MAX_DELAY_S", 3600.0)
    assert [outbox_sender.retry_delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 20)] == [5.0, 10.0, 20.0, 3600.0]
    assert outbox_sender.retry_delay(3, rng=lambda: 0.0) == 10.0


def test_a_malformed_secret_is_logged_once_and_the_events_wait(make_config, db_conn, receiver, caplog):
    from shared.context import Context
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET: whsec_ must be followed by base64"):
        make_config(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET="whsec_not*base64*at-all-0123456789")
    # Start-up refuses it; a config built past that check (Config.replace) still sends nothing.
    ctx = Context(make_config().replace(webhook_url=receiver.url, webhook_secret="whsec_not*base64*at-all-0123456789"))
    add(ctx, 2)
    sender = OutboxSender(ctx).start()
    sender.join(5)
    assert not sender.thread.is_alive()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == \
        ["webhooks not sent: WEBHOOK_SECRET: whsec_ must be followed by base64"]
    assert len(events_of(ctx)) == 2 and all(e["attempts"] == 0 for e in events_of(ctx))
    assert receiver.deliveries == []
    ctx.db.close()


def test_prune_keeps_what_is_waiting_and_what_is_recent(make_config, db_conn):
    from datetime import timedelta

    from shared.context import Context
    from shared.db import execute, utcnow
    ctx = Context(make_config())
    add(ctx, 4)
    with ctx.db.connection() as conn:
        rows = outbox.list_events(conn)
        old = utcnow() - timedelta(days=40)
        execute(conn, "UPDATE outbox SET created_at=%s WHERE id IN (%s, %s, %s)", (old, *[r["id"] for r in rows[:3]]))
        assert outbox.mark_sent(conn, rows[0]["id"]) and outbox.mark_sent(conn, rows[3]["id"])
        execute(conn, "UPDATE outbox SET given_up_at=%s, next_attempt_at=NULL WHERE id=%s", (utcnow(), rows[1]["id"]))
        assert outbox.prune(conn, utcnow() - timedelta(days=30)) == 2  # old and sent, old and given up
        assert [r["id"] for r in outbox.list_events(conn)] == [rows[2]["id"], rows[3]["id"]]  # waiting; recent
        assert outbox.replay(conn, since=utcnow() - timedelta(days=1)) == 1  # the window: only the recent one
    ctx.db.close()
