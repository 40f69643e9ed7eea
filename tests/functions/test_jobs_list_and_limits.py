"""GET /v1/jobs paging, and the per-user limits (rate, active jobs, daily quota)."""

from __future__ import annotations

import uuid

from datetime import datetime, timedelta

import pytest

from functions.app import create_app
from shared import jobs, limits
from shared.context import Context
from shared.errors import TooManyRequestsError


def login(client, name):
    body = client.post("/v1/auth/dev", json={"user": name}).get_json()
    return body["user"]["id"], {"Authorization": f"Bearer {body['token']}"}


def add_job(conn, user_id, status="queued"):
    job_id = str(uuid.uuid4())
    jobs.create_job(conn, job_id=job_id, user_id=user_id, workflow="txt2img", params={"prompt": "x"},
                    prompt={}, backend_id=1, client_id="c")
    if status != "submitting":
        conn.cursor().execute("UPDATE jobs SET status=%s WHERE id=%s", (status, job_id))
    return job_id


def test_list_pages_newest_first_and_only_own(ctx, db_conn):
    client = create_app(lambda: ctx).test_client()
    alice, h = login(client, "alice")
    bob, _ = login(client, "bob")
    mine = [add_job(db_conn, alice) for _ in range(7)]
    add_job(db_conn, bob)
    seen, cursor = [], None
    while True:
        url = "/v1/jobs?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url, headers=h).get_json()
        seen += [j["id"] for j in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(mine) and len(seen) == 7
    created = [j["created_at"] for j in client.get("/v1/jobs?limit=100", headers=h).get_json()["jobs"]]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "cursor=%%%", "cursor=bm90LWEtY3Vyc29y"])
def test_list_rejects_bad_query(ctx, query):
    client = create_app(lambda: ctx).test_client()
    _, h = login(client, "alice")
    r = client.get(f"/v1/jobs?{query}", headers=h)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_params"


def test_rate_limit_window(db_conn):
    for _ in range(3):
        limits.hit(db_conn, "user:x", 3)
    with pytest.raises(TooManyRequestsError) as info:
        limits.hit(db_conn, "user:x", 3)
    assert info.value.code == "rate_limited" and 1 <= info.value.retry_after <= 60
    limits.hit(db_conn, "user:y", 3)  # other buckets are unaffected


def test_rate_limit_counters_do_not_pile_up(db_conn):
    start = datetime(2026, 11, 30, 6, 0, 30)
    for minute in range(5):
        for _ in range(2):
            limits.hit(db_conn, "ip:203.0.113.5", 3, now=start + timedelta(minutes=minute))
    with db_conn.cursor() as cur:
        cur.execute("SELECT window_start, hits FROM rate_limits WHERE bucket='ip:203.0.113.5'")
        assert list(cur.fetchall()) == [{"window_start": datetime(2026, 11, 30, 6, 4), "hits": 2}]


def test_login_rate_limit_per_ip(make_config, db_conn):
    ctx = Context(make_config(LOGIN_RATE_LIMIT_PER_MINUTE="2"))
    client = create_app(lambda: ctx).test_client()
    for _ in range(2):
        assert client.post("/v1/auth/dev", json={"user": "a"}).status_code == 200
    r = client.post("/v1/auth/dev", json={"user": "a"})
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("proxies, forwarded, separate", [
    (0, ["198.51.100.1", "198.51.100.2", "198.51.100.3"], False),  # no proxy trusted: the peer is the client
    (1, ["198.51.100.1", "198.51.100.2", "198.51.100.3"], True),   # one proxy: its X-Forwarded-For entry
    (1, ["6.6.6.6, 198.51.100.9"] * 3, False),                     # a client's own entry is not believed
])
def test_login_rate_limit_behind_proxies(make_config, db_conn, proxies, forwarded, separate):
    ctx = Context(make_config(LOGIN_RATE_LIMIT_PER_MINUTE="2"))
    client = create_app(lambda: ctx, trusted_proxies=proxies).test_client()
    codes = [client.post("/v1/auth/dev", json={"user": "a"}, headers={"X-Forwarded-For": f}).status_code
             for f in forwarded]
    assert codes == ([200, 200, 200] if separate else [200, 200, 429])


def test_active_jobs_and_daily_quota(make_config, db_conn):
    ctx = Context(make_config(MAX_ACTIVE_JOBS="2", DAILY_JOB_QUOTA="3"))
    client = create_app(lambda: ctx).test_client()
    user, _ = login(client, "alice")
    add_job(db_conn, user)
    add_job(db_conn, user, status="running")
    with pytest.raises(TooManyRequestsError) as info:
        limits.check_job_limits(db_conn, user, max_active=2, daily_quota=3)
    assert info.value.code == "too_many_active_jobs"
    db_conn.cursor().execute("UPDATE jobs SET status='succeeded' WHERE user_id=%s", (user,))
    add_job(db_conn, user, status="failed")
    with pytest.raises(TooManyRequestsError) as info:
        limits.check_job_limits(db_conn, user, max_active=2, daily_quota=3)
    assert info.value.code == "quota_exceeded" and info.value.retry_after > 0
    limits.check_job_limits(db_conn, user, max_active=0, daily_quota=0)  # 0 = unlimited
