"""The whole path on real parts: app → API (gunicorn or Lambda handler) → MySQL →
fake ComfyUI over HTTP/WebSocket → listener subprocess → object storage → signed URLs."""

from __future__ import annotations

import base64
import json
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from functions import auth, result, status, submit, workflows
from shared.context import Context, set_context
from shared.labels import label_bytes
from tests.fakes.comfyui import FakeComfy
from tests.stack import start_api, start_listener, wait_for

TXT2IMG = {"workflow": "txt2img", "params": {"prompt": "a cat", "width": 64, "height": 64, "steps": 10,
                                              "batch_size": 2, "seed": 7}}


@pytest.fixture
def fake():
    with FakeComfy(step_delay=0.06) as f:
        yield f


@pytest.fixture(params=["local", "s3"])
def stack_config(request, make_config, db_conn, fake, tmp_path):  # db_conn: start from empty tables
    env = {"COMFYUI_URLS": fake.base_url}
    if request.param == "s3":
        s3 = request.getfixturevalue("s3rver")
        env.update(STORAGE_URL=f"s3://{s3.bucket}/e2e-{time.time_ns()}", S3_ENDPOINT_URL=s3.endpoint_url)
    return make_config(**env)


def listener_connected(base: str) -> bool:
    body = requests.get(base + "/healthz", timeout=5).json()
    return all(b["listener_connected"] for b in body["backends"]) and bool(body["backends"])


class Api:
    """A tiny app-side client over real HTTP."""

    def __init__(self, base: str):
        self.base = base
        self.token = None

    def call(self, method: str, path: str, body=None, headers=None, token=True):
        h = dict(headers or {})
        if token and self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return requests.request(method, self.base + path, json=body, headers=h, timeout=10)

    def login(self, user: str) -> str:
        r = self.call("POST", "/v1/auth/dev", {"user": user}, token=False)
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]
        return r.json()["user"]["id"]


def poll_until_final(get_job, timeout=30.0) -> list[dict]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job()
        seen.append(job)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job not final after {timeout}s; last: {seen[-1] if seen else None}")


def check_run(seen: list[dict]) -> None:
    statuses = [j["status"] for j in seen]
    assert statuses[-1] == "succeeded", seen[-1]
    assert "running" in statuses
    percents = [j["progress"]["percent"] for j in seen]
    assert percents == sorted(percents), "progress went backwards"
    assert percents[-1] == 100.0
    running = [j for j in seen if j["status"] == "running"]
    assert any(j["progress"]["node"] == "3" and j["progress"]["node_title"] == "KSampler" for j in running)
    assert any(j["preview_url"] for j in running), "no live preview while running"
    assert all(j["queue_position"] is None for j in running)
    final = seen[-1]
    assert final["finished_at"] and final["started_at"] and final["poll_after_ms"] is None
    assert final["params"]["seed"] == 7 and final["params"]["negative_prompt"] == ""


def check_images(images: list[dict], fake: FakeComfy, job_id: str) -> None:
    history = requests.get(f"{fake.base_url}/history/{job_id}", timeout=5).json()[job_id]
    saved = history["outputs"]["9"]["images"]
    assert [(i["node_id"], i["index"]) for i in images] == [("9", 0), ("9", 1)]
    for image, ref in zip(images, saved):
        data = requests.get(image["url"], timeout=10)
        assert data.status_code == 200
        stored = label_bytes(fake.output_bytes(ref["filename"], ref["subfolder"], ref["type"]), job_id=job_id,
                             provider="comfy-gateway")  # ComfyUI's graph dropped, the AI-content label added
        assert data.content == stored
        assert image["bytes"] == len(data.content)
        assert (image["content_type"], image["width"], image["height"]) == ("image/png", 64, 64)


def test_gunicorn_door_end_to_end(stack_config, fake, tmp_path):
    listener = start_listener(stack_config, tmp_path)
    api_proc, base = start_api(stack_config, tmp_path)
    try:
        wait_for(lambda: listener_connected(base), 30, f"listener never connected: {listener.log()}")
        app = Api(base)
        app.login("alice")
        listed = app.call("GET", "/v1/workflows").json()["workflows"]
        assert "txt2img" in [w["name"] for w in listed]

        fake.pause()  # hold ComfyUI's queue to see queue positions
        r = app.call("POST", "/v1/jobs", TXT2IMG)
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        assert job["status"] == "queued" and job["queue_position"] == 0 and job["poll_after_ms"] > 0
        second = app.call("POST", "/v1/jobs", {**TXT2IMG, "params": {**TXT2IMG["params"], "seed": 8}}).json()["job"]
        assert second["queue_position"] == 1
        fake.resume()
        seen = poll_until_final(lambda: app.call("GET", f"/v1/jobs/{job['id']}").json()["job"])
        check_run(seen)
        assert poll_until_final(lambda: app.call("GET", f"/v1/jobs/{second['id']}").json()["job"])[-1][
            "status"] == "succeeded"

        # ETag: the same state answers 304 with no body.
        first = app.call("GET", f"/v1/jobs/{job['id']}")
        again = app.call("GET", f"/v1/jobs/{job['id']}", headers={"If-None-Match": first.headers["ETag"]})
        assert again.status_code == 304 and again.content == b""

        res = app.call("GET", f"/v1/jobs/{job['id']}/result")
        assert res.status_code == 200, res.text
        check_images(res.json()["images"], fake, job["id"])

        # Another user sees nothing of it.
        other = Api(base)
        other.login("mallory")
        assert other.call("GET", f"/v1/jobs/{job['id']}").status_code == 404
        assert other.call("GET", f"/v1/jobs/{job['id']}/result").json()["error"]["code"] == "not_found"
    finally:
        api_proc.stop()
        listener.stop()
    assert "Traceback" not in listener.log(), listener.log()


def lambda_event(method: str, path: str, body=None, token=None, path_params=None, headers=None) -> dict:
    h = {"content-type": "application/json", **(headers or {})}
    if token:
        h["authorization"] = f"Bearer {token}"
    raw = json.dumps(body).encode() if body is not None else b""
    return {"version": "2.0", "routeKey": f"{method} {path}", "rawPath": path, "rawQueryString": "",
            "headers": h, "pathParameters": path_params or {},
            "requestContext": {"http": {"method": method, "path": path, "sourceIp": "203.0.113.9"}},
            "body": base64.b64encode(raw).decode(), "isBase64Encoded": True}


def test_lambda_door_end_to_end(make_config, db_conn, fake, s3rver, tmp_path):
    cfg = make_config(COMFYUI_URLS=fake.base_url, STORAGE_URL=f"s3://{s3rver.bucket}/lambda-{time.time_ns()}",
                      S3_ENDPOINT_URL=s3rver.endpoint_url)
    listener = start_listener(cfg, tmp_path)
    ctx = Context(cfg)
    set_context(ctx)
    try:
        health_ok = lambda: all(b["listener_connected"] for b in json.loads(
            __import__("functions.health", fromlist=["handler"]).handler(lambda_event("GET", "/healthz"), None)
            ["body"])["backends"])
        wait_for(health_ok, 30, "listener never connected")
        out = auth.dev_handler(lambda_event("POST", "/v1/auth/dev", {"user": "bob"}), None)
        assert out["statusCode"] == 200
        token = json.loads(out["body"])["token"]
        out = workflows.handler(lambda_event("GET", "/v1/workflows", token=token), None)
        assert out["statusCode"] == 200 and json.loads(out["body"])["workflows"]

        out = submit.handler(lambda_event("POST", "/v1/jobs", TXT2IMG, token=token), None)
        assert out["statusCode"] == 202, out
        job_id = json.loads(out["body"])["job"]["id"]

        def get_job():
            resp = status.handler(lambda_event("GET", f"/v1/jobs/{job_id}", token=token,
                                               path_params={"id": job_id}), None)
            assert resp["statusCode"] == 200
            return json.loads(resp["body"])["job"]
        check_run(poll_until_final(get_job))

        out = result.handler(lambda_event("GET", f"/v1/jobs/{job_id}/result", token=token,
                                          path_params={"id": job_id}), None)
        assert out["statusCode"] == 200
        images = json.loads(out["body"])["images"]
        check_images(images, fake, job_id)
        query = dict(p.split("=", 1) for p in urlsplit(images[0]["url"]).query.split("&"))
        assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    finally:
        set_context(None)
        listener.stop()
    assert "Traceback" not in listener.log(), listener.log()


def test_no_secret_reaches_an_answer_or_a_log_line(make_config, db_conn, fake, s3rver, tmp_path, monkeypatch):
    """SECRET_KEY, ADMIN_TOKEN and the S3 secret key appear in no response body or header and no log line.

    One pass over every endpoint (answers and errors, both storages' worth of links) with
    the API and the listener as real subprocesses; a failing job and a rejected graph make
    the error paths log too.
    """
    # s3rver's own secret equals its access key id (which signed URLs carry by design); it does
    # not check SigV4 signatures, so a distinctive secret key works and can be looked for.
    s3_secret = "s3-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_secret)
    cfg = make_config(COMFYUI_URLS=fake.base_url, STORAGE_URL=f"s3://{s3rver.bucket}/secrets-{time.time_ns()}",
                      S3_ENDPOINT_URL=s3rver.endpoint_url)
    secrets_ = {"SECRET_KEY": cfg.secret_key, "ADMIN_TOKEN": cfg.admin_token, "S3 secret": s3_secret}
    listener = start_listener(cfg, tmp_path)
    api_proc, base = start_api(cfg, tmp_path)
    answers = []

    def call(method, path, body=None, headers=None, token=None):
        h = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        r = requests.request(method, base + path, json=body, headers=h, timeout=10)
        answers.append((f"{method} {path} -> {r.status_code}", r.text + json.dumps(dict(r.headers))))
        return r

    try:
        wait_for(lambda: listener_connected(base), 30, f"listener never connected: {listener.log()}")
        token = call("POST", "/v1/auth/dev", {"user": "carol"}).json()["token"]
        call("GET", "/v1/workflows", token=token)
        job_id = call("POST", "/v1/jobs", TXT2IMG, token=token).json()["job"]["id"]
        poll_until_final(lambda: call("GET", f"/v1/jobs/{job_id}", token=token).json()["job"])
        for image in call("GET", f"/v1/jobs/{job_id}/result", token=token).json()["images"]:
            assert requests.get(image["url"], timeout=10).status_code == 200
        fake.fail_next(at_step=1, message="boom")
        failed = call("POST", "/v1/jobs", {**TXT2IMG, "params": {**TXT2IMG["params"], "seed": 9}}, token=token)
        poll_until_final(lambda: call("GET", f"/v1/jobs/{failed.json()['job']['id']}", token=token).json()["job"])
        call("GET", f"/v1/jobs/{failed.json()['job']['id']}/result", token=token)
        call("POST", "/v1/uploads", {"content_type": "image/png", "size": 1000}, token=token)
        call("POST", "/v1/uploads", {"content_type": {}, "size": 1000}, token=token)
        call("GET", "/v1/usage?after_id=0", token=cfg.admin_token)
        call("GET", "/v1/usage", token=token)
        call("GET", "/v1/jobs", token=token + "x")
        call("GET", "/v1/jobs", headers={"Authorization": f"Bearer {cfg.secret_key}"})
        call("GET", "/healthz")
        call("GET", "/v1/openapi.json")
        call("POST", "/v1/jobs", {"workflow": "txt2img", "params": {"prompt": 5}}, token=token)
        call("GET", "/v1/nowhere", token=token)
    finally:
        api_proc.stop()
        listener.stop()
    assert len(answers) >= 15
    logs = {"api": api_proc.log(), "listener": listener.log()}
    assert "job" in logs["api"] and "job" in logs["listener"], "the processes logged nothing: nothing was checked"
    for name, secret in secrets_.items():
        assert secret and len(secret) >= 8
        for what, text in answers:
            assert secret not in text, f"{name} in the answer to {what}"
        for proc, text in logs.items():
            assert secret not in text, f"{name} in the {proc} log"
