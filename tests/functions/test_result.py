"""GET /v1/jobs/{id}/result in every state, and the signed links it hands out (local storage, Flask door)."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from functions.app import create_app
from shared import jobs
from tests.fakes.comfyui import make_png

PNG = make_png(16, 8, seed=3)


@pytest.fixture
def api(ctx, db_conn):
    client = create_app(lambda: ctx).test_client()
    body = client.post("/v1/auth/dev", json={"user": "alice"}).get_json()
    return client, {"Authorization": f"Bearer {body['token']}"}, body["user"]["id"]


def make_job(db_conn, user_id: str, status: str, **error) -> str:
    job_id = str(uuid.uuid4())
    jobs.create_job(db_conn, job_id=job_id, user_id=user_id, workflow="txt2img", params={"prompt": "x"},
                    prompt={}, backend_id=None, client_id="c")
    with db_conn.cursor() as cur:
        cur.execute("UPDATE jobs SET status=%s, error_code=%s, error_message=%s, error_node_id=%s, "
                    "error_node_type=%s WHERE id=%s",
                    (status, error.get("code"), error.get("message"), error.get("node_id"), error.get("node_type"),
                     job_id))
    return job_id


@pytest.mark.parametrize("status, code", [("submitting", "job_not_finished"), ("queued", "job_not_finished"),
                                          ("running", "job_not_finished"), ("cancelled", "job_cancelled")])
def test_unfinished_and_cancelled_jobs_have_no_result(api, db_conn, status, code):
    client, h, user_id = api
    r = client.get(f"/v1/jobs/{make_job(db_conn, user_id, status)}/result", headers=h)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == code


def test_a_failed_job_says_why(api, db_conn):
    client, h, user_id = api
    job_id = make_job(db_conn, user_id, "failed", code="execution_error", message="CUDA out of memory",
                      node_id="3", node_type="KSampler")
    r = client.get(f"/v1/jobs/{job_id}/result", headers=h)
    assert r.status_code == 409
    error = r.get_json()["error"]
    assert error["code"] == "job_failed"
    assert error["details"] == {"code": "execution_error", "message": "CUDA out of memory", "node_id": "3",
                                "node_type": "KSampler"}


def succeeded_with_image(ctx, db_conn, user_id) -> str:
    job_id = make_job(db_conn, user_id, "succeeded")
    key = f"users/{user_id}/jobs/{job_id}/9_0.png"
    ctx.store.put_bytes(key, PNG, "image/png")
    jobs.add_output(db_conn, job_id=job_id, node_id="9", index=0, key=key, content_type="image/png", size=len(PNG),
                    width=16, height=8)
    return job_id


def test_signed_links_work_expire_and_cannot_be_altered(api, ctx, db_conn):
    client, h, user_id = api
    job_id = succeeded_with_image(ctx, db_conn, user_id)
    first = client.get(f"/v1/jobs/{job_id}/result", headers=h).get_json()["images"]
    assert [(i["node_id"], i["index"], i["bytes"], i["width"], i["height"]) for i in first] == [("9", 0, len(PNG), 16, 8)]
    url = urlsplit(first[0]["url"])
    got = client.get(url.path + "?" + url.query)
    assert got.status_code == 200 and got.data == PNG and got.headers["Content-Type"] == "image/png"
    query = dict(parse_qsl(url.query))

    def fetch(**changes):
        return client.get(url.path + "?" + urlencode({**query, **changes}))
    for r in (fetch(expires=str(int(query["expires"]) + 3600)),           # a longer life
              fetch(signature="0" * len(query["signature"])),            # a forged signature
              client.get(url.path.replace("9_0", "9_1") + "?" + url.query)):  # another object
        assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    # An honestly signed link whose time is up.
    old_url, _ = ctx.store.signed_url(first[0]["url"].split("/v1/files/")[1].split("?")[0], 60,
                                      now=time.time() - 3600)
    old = urlsplit(old_url)
    r = client.get(old.path + "?" + old.query)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    # Each call signs afresh.
    time.sleep(1.1)
    again = client.get(f"/v1/jobs/{job_id}/result", headers=h).get_json()["images"]
    assert again[0]["url"] != first[0]["url"] and again[0]["expires_at"] > first[0]["expires_at"]


def test_another_users_result_is_404(api, ctx, db_conn):
    client, h, user_id = api
    job_id = succeeded_with_image(ctx, db_conn, user_id)
    other = client.post("/v1/auth/dev", json={"user": "mallory"}).get_json()["token"]
    r = client.get(f"/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
