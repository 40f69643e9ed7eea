"""Usage records: written once per final job; a billing reader paging while jobs finish misses nothing;
billable: the user's login and the credits the workflow's price gives."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from functions.app import create_app
from shared import jobs
from shared.db import connect, query_one, utcnow
from shared.openapi import validate_response
from shared.usage import compute_credits, record_usage, write_usage
from shared.users import get_or_create_user
from shared.workflows import Price
from tests.stack import PROJECT_ROOT, config_env


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
                        "gpu_seconds", "queue_seconds", "backend", "created_at", "finished_at",
                        "provider", "subject", "credits", "price", "moderation"}
    assert (rec["provider"], rec["subject"], rec["credits"], rec["price"]) == (None, None, None, None)  # no such user
    assert client.get("/v1/usage?until=2000-01-01T00:00:00Z", headers=headers).get_json()["records"] == []
    for bad in ("after_id=x", "limit=0", "limit=100000", "since=yesterday"):
        r = client.get(f"/v1/usage?{bad}", headers=headers)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_params", bad


# --- billing: credits, the user's login, write-once -------------------------------

FULL = Price(per_job=1, per_image=2, per_megapixel=0.5, per_gpu_second=0.1)
# A succeeded job of 2 images of 512x512 (0.524288 MP, recorded as 0.5243) that ran 7.41 s on the GPU.
SUCCEEDED = dict(images=2, megapixels=0.5243, gpu_seconds=7.41)
NOTHING = dict(images=0, megapixels=0.0, gpu_seconds=7.41)  # what a failed or cancelled job records


@pytest.mark.parametrize("price, status, usage, credits", [
    # succeeded: every part; 6.00315 rounds half up
    (FULL, "succeeded", SUCCEEDED, "6.0032"),
    (Price(per_job=1), "succeeded", SUCCEEDED, "1.0000"),
    (Price(per_image=2), "succeeded", SUCCEEDED, "4.0000"),
    (Price(per_megapixel=0.5), "succeeded", SUCCEEDED, "0.2622"),  # 0.26215
    (Price(per_gpu_second=0.1), "succeeded", SUCCEEDED, "0.7410"),
    (Price(per_job=0), "succeeded", SUCCEEDED, "0.0000"),
    # failed and cancelled: the GPU time only, 0 without per_gpu_second
    (FULL, "failed", NOTHING, "0.7410"),
    (Price(per_job=1), "failed", NOTHING, "0.0000"),
    (Price(per_image=2), "failed", NOTHING, "0.0000"),
    (Price(per_megapixel=0.5), "failed", NOTHING, "0.0000"),
    (Price(per_gpu_second=0.1), "failed", NOTHING, "0.7410"),
    (FULL, "cancelled", NOTHING, "0.7410"),
    (Price(per_job=1, per_image=2, per_megapixel=0.5), "cancelled", NOTHING, "0.0000"),
    (Price(per_gpu_second=0.1), "cancelled", dict(NOTHING, gpu_seconds=0.0), "0.0000"),  # cancelled while queued
    # even the GPU part of a failed job ignores images a record could carry
    (FULL, "failed", SUCCEEDED, "0.7410"),
    # half up, not half even; exact decimals, not binary floats (1 + 0.00005 is 1.0000499... as floats)
    (Price(per_gpu_second=0.0001), "succeeded", dict(NOTHING, gpu_seconds=2.5), "0.0003"),
    (Price(per_job=1, per_gpu_second=0.00005), "succeeded", dict(NOTHING, gpu_seconds=1.0), "1.0001"),
    (Price(per_image=0.1), "succeeded", dict(NOTHING, images=3, gpu_seconds=0), "0.3000"),
    (None, "succeeded", SUCCEEDED, None),
    (None, "failed", NOTHING, None),
])
def test_compute_credits(price, status, usage, credits):
    got = compute_credits(price, status, **usage)
    assert got == (None if credits is None else Decimal(credits))
    if got is not None:
        assert str(got) == credits  # always 4 places


OPENID = "oGZUI0egBJY1zhBYw2KhdUfwVJJE"


def write_workflow(folder: Path, name: str, price: dict | None) -> Path:
    """A real workflow file (the shipped txt2img) with the given price, or none."""
    doc = json.loads((PROJECT_ROOT / "workflows" / "txt2img.json").read_text(encoding="utf-8"))
    if price is not None:
        doc["price"] = price
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def workflows_dir(tmp_path) -> Path:
    folder = tmp_path / "workflows"
    folder.mkdir()
    write_workflow(folder, "priced", FULL.to_json())
    write_workflow(folder, "gpu-only", {"per_gpu_second": 0.1})
    write_workflow(folder, "free", {"per_job": 0})
    write_workflow(folder, "unpriced", None)
    return folder


@pytest.fixture
def wechat_user(db_conn) -> str:
    return get_or_create_user(db_conn, provider="wechat", subject=OPENID)


def final_job(conn, user_id: str, status: str, *, workflow: str = "priced", images: int = 2) -> str:
    """A job row in a final state, with its saved images when it succeeded."""
    job_id = str(uuid.uuid4())
    jobs.create_job(conn, job_id=job_id, user_id=user_id, workflow=workflow, params={},
                    prompt={"3": {"class_type": "KSampler", "inputs": {"steps": 20}}}, backend_id=None, client_id="c")
    now = utcnow()
    conn.cursor().execute("UPDATE jobs SET status=%s, error_code=IF(%s='failed','execution_error',NULL), "
                          "started_at=%s, finished_at=%s WHERE id=%s", (status, status, now, now, job_id))
    if status == "succeeded":
        for n in range(images):
            jobs.add_output(conn, job_id=job_id, node_id="9", index=n, key=f"outputs/{job_id}/9_{n}.png",
                            content_type="image/png", size=1000, width=512, height=512)
    return job_id


def record(conn, job_id: str) -> dict:
    return query_one(conn, "SELECT * FROM usage_records WHERE job_id=%s", (job_id,))


@pytest.mark.parametrize("workflow, status, credits, price", [
    ("priced", "succeeded", "6.0032", FULL.to_json()),
    ("priced", "failed", "0.7410", FULL.to_json()),
    ("priced", "cancelled", "0.7410", FULL.to_json()),
    ("gpu-only", "succeeded", "0.7410", {"per_gpu_second": 0.1}),
    ("gpu-only", "failed", "0.7410", {"per_gpu_second": 0.1}),
    ("free", "succeeded", "0.0000", {"per_job": 0}),
    ("free", "cancelled", "0.0000", {"per_job": 0}),
    ("unpriced", "succeeded", None, None),
    ("unpriced", "failed", None, None),
])
def test_write_usage_fills_the_billing_fields(db_conn, wechat_user, workflows_dir, workflow, status, credits, price):
    job_id = final_job(db_conn, wechat_user, status, workflow=workflow)
    assert write_usage(db_conn, job_id, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir)) is True
    row = record(db_conn, job_id)
    assert (row["provider"], row["subject"], row["user_id"]) == ("wechat", OPENID, wechat_user)
    assert row["credits"] == (None if credits is None else Decimal(credits))
    assert (None if row["price"] is None else json.loads(row["price"])) == price
    assert (row["images"], row["megapixels"], row["gpu_seconds"]) == \
        ((2, 0.5243, 7.41) if status == "succeeded" else (0, 0.0, 7.41))


def test_written_once_even_when_the_price_and_the_login_change(db_conn, wechat_user, workflows_dir):
    job_id = final_job(db_conn, wechat_user, "succeeded")
    assert write_usage(db_conn, job_id, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir)) is True
    first = record(db_conn, job_id)
    write_workflow(workflows_dir, "priced", {"per_job": 100, "per_image": 50})
    db_conn.cursor().execute("UPDATE users SET subject='someone-else' WHERE id=%s", (wechat_user,))
    assert write_usage(db_conn, job_id, "http://other", gpu_seconds=99.0, workflows_dir=str(workflows_dir)) is False
    assert record(db_conn, job_id) == first
    assert first["credits"] == Decimal("6.0032") and first["subject"] == OPENID
    # the next job gets the new price: no restart needed
    later = final_job(db_conn, wechat_user, "succeeded")
    assert write_usage(db_conn, later, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir)) is True
    assert record(db_conn, later)["credits"] == Decimal("200.0000")
    assert json.loads(record(db_conn, later)["price"]) == {"per_job": 100, "per_image": 50}


def test_a_workflow_file_gone_at_write_time_gives_no_credits_and_one_warning(db_conn, wechat_user, workflows_dir,
                                                                             caplog):
    path = workflows_dir / "priced.json"
    saved = path.read_bytes()
    path.unlink()
    caplog.set_level(logging.WARNING, logger="shared.usage")
    first, second = (final_job(db_conn, wechat_user, "succeeded") for _ in range(2))
    for job_id in (first, second, first):
        write_usage(db_conn, job_id, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir))
    for job_id in (first, second):
        row = record(db_conn, job_id)
        assert (row["credits"], row["price"], row["provider"], row["subject"]) == (None, None, "wechat", OPENID)
        assert row["images"] == 2  # the record itself is whole
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert first in warnings[0].getMessage() and "priced.json" in warnings[0].getMessage()

    path.write_bytes(saved)  # back: priced again, and a later loss is told again
    third = final_job(db_conn, wechat_user, "succeeded")
    write_usage(db_conn, third, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir))
    assert record(db_conn, third)["credits"] == Decimal("6.0032")
    path.unlink()
    fourth = final_job(db_conn, wechat_user, "succeeded")
    write_usage(db_conn, fourth, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir))
    assert record(db_conn, fourth)["credits"] is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_a_price_broken_at_write_time_gives_no_credits_and_says_why(db_conn, wechat_user, workflows_dir, caplog):
    write_workflow(workflows_dir, "priced", {"per_job": -1})
    caplog.set_level(logging.WARNING, logger="shared.usage")
    job_id = final_job(db_conn, wechat_user, "succeeded")
    write_usage(db_conn, job_id, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir))
    assert record(db_conn, job_id)["credits"] is None
    assert "price.per_job: must be at least 0" in caplog.text


def test_the_rest_of_the_file_broken_at_write_time_still_bills(db_conn, wechat_user, workflows_dir):
    (workflows_dir / "priced.json").write_text(json.dumps({"graph": {}, "price": {"per_job": 3}}), encoding="utf-8")
    job_id = final_job(db_conn, wechat_user, "succeeded")
    write_usage(db_conn, job_id, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir))
    assert record(db_conn, job_id)["credits"] == Decimal("3.0000")


def test_workflows_dir_defaults_to_the_process_setting(db_conn, wechat_user, workflows_dir, monkeypatch):
    monkeypatch.setenv("WORKFLOWS_DIR", str(workflows_dir))
    job_id = final_job(db_conn, wechat_user, "failed")
    assert write_usage(db_conn, job_id, "http://b", gpu_seconds=2.0) is True
    assert record(db_conn, job_id)["credits"] == Decimal("0.2000")


def test_jobs_that_are_not_final_get_no_record(db_conn, wechat_user, workflows_dir):
    job_id = final_job(db_conn, wechat_user, "succeeded")
    db_conn.cursor().execute("UPDATE jobs SET status='running' WHERE id=%s", (job_id,))
    assert write_usage(db_conn, job_id, "http://b", workflows_dir=str(workflows_dir)) is False
    assert record(db_conn, job_id) is None


@pytest.fixture
def billed(db_conn, wechat_user, workflows_dir) -> dict:
    """Three records: a priced success, a priced failure, an unpriced success; status -> job id."""
    ids = {"succeeded": final_job(db_conn, wechat_user, "succeeded"),
           "failed": final_job(db_conn, wechat_user, "failed"),
           "unpriced": final_job(db_conn, wechat_user, "succeeded", workflow="unpriced")}
    for job_id in ids.values():
        write_usage(db_conn, job_id, "http://b", gpu_seconds=7.41, workflows_dir=str(workflows_dir))
    return ids


def test_the_api_shows_the_billing_fields(ctx, billed):
    client = create_app(lambda: ctx).test_client()
    r = client.get("/v1/usage", headers={"Authorization": f"Bearer {ctx.config.admin_token}"})
    assert r.status_code == 200
    body = r.get_json()
    assert validate_response("GET", "/v1/usage", 200, body) == []
    by_job = {rec["job_id"]: rec for rec in body["records"]}
    ok, failed, unpriced = (by_job[billed[k]] for k in ("succeeded", "failed", "unpriced"))
    assert list(ok)[-5:] == ["provider", "subject", "credits", "price", "moderation"]  # added after the others
    assert (ok["provider"], ok["subject"], ok["credits"], ok["price"]) == ("wechat", OPENID, 6.0032, FULL.to_json())
    assert (failed["status"], failed["credits"], failed["images"]) == ("failed", 0.741, 0)
    assert (unpriced["provider"], unpriced["credits"], unpriced["price"]) == ("wechat", None, None)


def gateway(cfg, *args):
    env = {**os.environ, **config_env(cfg)}
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_export_carries_the_billing_fields(make_config, billed, tmp_path):
    cfg = make_config()
    out = gateway(cfg, "usage", "export", "--format", "csv")
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split(",")
    assert header[-5:] == ["provider", "subject", "credits", "price", "moderation"]  # new columns last
    rows = {r["job_id"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    ok, failed, unpriced = (rows[billed[k]] for k in ("succeeded", "failed", "unpriced"))
    assert (ok["provider"], ok["subject"], ok["credits"]) == ("wechat", OPENID, "6.0032")
    assert json.loads(ok["price"]) == FULL.to_json()
    assert failed["credits"] == "0.7410"
    assert (unpriced["credits"], unpriced["price"], unpriced["provider"]) == ("", "", "wechat")

    target = tmp_path / "usage.jsonl"
    out = gateway(cfg, "usage", "export", "--format", "jsonl", "--output", str(target))
    assert out.returncode == 0, out.stderr
    lines = {rec["job_id"]: rec for rec in map(json.loads, target.read_text().splitlines())}
    assert {k: lines[billed["succeeded"]][k] for k in ("provider", "subject", "credits", "price")} == \
        {"provider": "wechat", "subject": OPENID, "credits": 6.0032, "price": FULL.to_json()}
    assert (lines[billed["unpriced"]]["credits"], lines[billed["unpriced"]]["price"]) == (None, None)


def test_jobs_finished_is_counted_where_the_record_is_written_once(db_conn, wechat_user, workflows_dir):
    """The listener's backfill calls write_usage without close_job: it counts too, and only once."""
    from prometheus_client import REGISTRY

    from shared import metrics
    metrics.enable()

    def finished(outcome):
        return REGISTRY.get_sample_value("gateway_jobs_finished_total",
                                         {"workflow": "priced", "outcome": outcome}) or 0.0
    before = {o: finished(o) for o in ("succeeded", "failed")}
    done, failed = final_job(db_conn, wechat_user, "succeeded"), final_job(db_conn, wechat_user, "failed")
    for _ in range(2):
        write_usage(db_conn, done, "http://b", workflows_dir=str(workflows_dir))
        write_usage(db_conn, failed, "http://b", workflows_dir=str(workflows_dir))
    assert finished("succeeded") == before["succeeded"] + 1
    assert finished("failed") == before["failed"] + 1
