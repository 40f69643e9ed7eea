"""Usage records: written once per final job; a billing reader paging while jobs finish misses nothing."""

from __future__ import annotations

import random
import threading
import time
import uuid

from functions.app import create_app
from shared.db import connect, utcnow
from shared.usage import record_usage


def fake_job(user="u1"):
    now = utcnow()
    return {"id": str(uuid.uuid4()), "user_id": user, "workflow": "txt2img", "status": "succeeded",
            "created_at": now, "finished_at": now}


def test_written_once(db_conn):
    job = fake_job()
    args = dict(images=2, megapixels=0.5, steps=20, gpu_seconds=1.5, queue_seconds=0.2, backend_url="http://b")
    assert record_usage(db_conn, job, **args) is True
    assert record_usage(db_conn, job, **args) is False
    with db_conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM usage_records WHERE job_id=%s", (job["id"],))
        assert cur.fetchone()["n"] == 1


def test_reader_paging_during_out_of_order_commits_misses_nothing(ctx, database_url):
    """Writers hold their transactions open for random times, so auto-increment ids commit out of order."""
    client = create_app(lambda: ctx).test_client()
    headers = {"Authorization": f"Bearer {ctx.config.admin_token}"}
    writers, per_writer = 6, 15
    commit_order: list[int] = []
    lock = threading.Lock()

    def writer():
        conn = connect(database_url)
        for _ in range(per_writer):
            conn.begin()
            with conn.cursor() as cur:
                job = fake_job()
                cur.execute("INSERT INTO usage_records (job_id, user_id, workflow, status, images, megapixels, steps,"
                            " gpu_seconds, queue_seconds, backend, created_at, finished_at) VALUES "
                            "(%s, %s, 'txt2img', 'succeeded', 1, 0.1, 1, 0.1, 0, 'b', %s, %s)",
                            (job["id"], job["user_id"], job["created_at"], job["finished_at"]))
                row_id = cur.lastrowid
            time.sleep(random.uniform(0, 0.03))
            conn.commit()
            with lock:
                commit_order.append(row_id)
        conn.close()

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    seen: list[str] = []
    after = 0
    while True:
        done = not any(t.is_alive() for t in threads)
        r = client.get(f"/v1/usage?after_id={after}&limit=7", headers=headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        seen += [rec["job_id"] for rec in body["records"]]
        assert all(rec["id"] > after for rec in body["records"])
        after = body["next_after_id"]
        if done and not body["records"]:
            break
        time.sleep(0.005)
    total = writers * per_writer
    assert commit_order != sorted(commit_order), "the test did not produce out-of-order commits"
    assert len(seen) == total and len(set(seen)) == total


def test_usage_needs_the_operator_token(ctx):
    client = create_app(lambda: ctx).test_client()
    assert client.get("/v1/usage").status_code == 401
    r = client.get("/v1/usage", headers={"Authorization": "Bearer not-the-admin-token"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"


def test_usage_filters_and_validation(ctx, db_conn):
    client = create_app(lambda: ctx).test_client()
    headers = {"Authorization": f"Bearer {ctx.config.admin_token}"}
    for _ in range(3):
        record_usage(db_conn, fake_job(), images=1, megapixels=0.26, steps=20, gpu_seconds=2.0, queue_seconds=0.5,
                     backend_url="http://b")
    body = client.get("/v1/usage?since=2000-01-01T00:00:00Z", headers=headers).get_json()
    assert len(body["records"]) == 3 and body["next_after_id"] == body["records"][-1]["id"]
    rec = body["records"][0]
    assert set(rec) == {"id", "job_id", "user_id", "workflow", "status", "images", "megapixels", "steps",
                        "gpu_seconds", "queue_seconds", "backend", "created_at", "finished_at"}
    assert client.get("/v1/usage?until=2000-01-01T00:00:00Z", headers=headers).get_json()["records"] == []
    for bad in ("after_id=x", "limit=0", "limit=100000", "since=yesterday"):
        r = client.get(f"/v1/usage?{bad}", headers=headers)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_params", bad
