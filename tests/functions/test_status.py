"""GET /v1/jobs/{id}: ETag and If-None-Match as apps and proxies send them."""

from __future__ import annotations

import uuid

import pytest

from functions.app import create_app
from shared import jobs


@pytest.fixture
def polled(ctx, db_conn):
    client = create_app(lambda: ctx).test_client()
    body = client.post("/v1/auth/dev", json={"user": "alice"}).get_json()
    job_id = str(uuid.uuid4())
    jobs.create_job(db_conn, job_id=job_id, user_id=body["user"]["id"], workflow="txt2img", params={"prompt": "x"},
                    prompt={}, backend_id=None, client_id="c")
    return client, {"Authorization": f"Bearer {body['token']}"}, job_id


@pytest.mark.parametrize("header, status", [
    ("{tag}", 304),
    ("{strong}", 304),                   # a client that dropped the W/
    ('"other", {tag}', 304),
    ("*", 304),
    ('"other"', 200),
    ("{tag}x", 200),
])
def test_if_none_match(polled, header, status):
    client, h, job_id = polled
    tag = client.get(f"/v1/jobs/{job_id}", headers=h).headers["ETag"]
    assert tag.startswith('W/"')
    r = client.get(f"/v1/jobs/{job_id}", headers={**h, "If-None-Match": header.format(tag=tag, strong=tag[2:])})
    assert r.status_code == status
    if status == 304:
        assert r.data == b"" and r.headers["ETag"] == tag


def test_every_change_of_the_job_changes_the_tag_and_every_instance_agrees(polled, ctx, db_conn, monkeypatch):
    client, h, job_id = polled
    tag = client.get(f"/v1/jobs/{job_id}", headers=h).headers["ETag"]
    assert jobs.mark_submitted(db_conn, job_id, 5)  # ComfyUI took it: the answer changes
    tag2 = client.get(f"/v1/jobs/{job_id}", headers=h).headers["ETag"]
    assert tag2 != tag
    # A new mean run time (another job finished) moves eta_seconds, not the tag.
    assert client.get(f"/v1/jobs/{job_id}", headers=h).get_json()["job"]["eta_seconds"] is None
    jobs.record_run_time(db_conn, "txt2img", 4.0)
    other = client.get(f"/v1/jobs/{job_id}", headers=h)
    assert other.headers["ETag"] == tag2 and other.get_json()["job"]["eta_seconds"] == 6.0  # 4 s × (0 ahead + 1.5)
    assert client.get(f"/v1/jobs/{job_id}", headers={**h, "If-None-Match": tag2}).status_code == 304
    # Every instance reads the same shared state: a second app gives the same answer.
    second = create_app(lambda: type(ctx)(ctx.config)).test_client().get(f"/v1/jobs/{job_id}", headers=h)
    assert second.headers["ETag"] == tag2 and second.get_json()["job"]["eta_seconds"] == 6.0


def test_a_final_job_keeps_its_tag_while_the_queue_moves(polled, ctx, db_conn):
    """A job that never got a number (refused at submit) is final: the queue is none of its business."""
    client, h, job_id = polled
    with db_conn.cursor() as cur:
        cur.execute("UPDATE jobs SET status='failed', backend_id=1 WHERE id=%s", (job_id,))
    tag = client.get(f"/v1/jobs/{job_id}", headers=h).headers["ETag"]
    other = str(uuid.uuid4())
    jobs.create_job(db_conn, job_id=other, user_id="someone", workflow="txt2img", params={}, prompt={},
                    backend_id=1, client_id="c")
    jobs.mark_submitted(db_conn, other, 1)
    assert client.get(f"/v1/jobs/{job_id}", headers=h).headers["ETag"] == tag
