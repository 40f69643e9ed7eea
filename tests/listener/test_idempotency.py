"""Idempotency-Key on submit: same key and body → the same job (200); another body → 409;
two concurrent requests with one key → one job, one generation."""

from __future__ import annotations

import threading

from functions.app import create_app
from shared.tokens import issue_token


def client_and_headers(harness):
    token, _ = issue_token(harness.ctx.config.secret_key, harness.user, 600)
    return create_app(lambda: harness.ctx).test_client(), {"Authorization": f"Bearer {token}"}


def test_replay_and_conflict(harness, fake):
    client, h = client_and_headers(harness)
    body = {"workflow": "txt2img", "params": {"prompt": "a cat", "width": 64, "height": 64, "steps": 2}}
    first = client.post("/v1/jobs", json=body, headers={**h, "Idempotency-Key": "k-1"})
    assert first.status_code == 202
    again = client.post("/v1/jobs", json=body, headers={**h, "Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again.get_json()["job"]["id"] == first.get_json()["job"]["id"]
    # The drawn seed is part of the job, so a replay shows the same one.
    assert again.get_json()["job"]["params"]["seed"] == first.get_json()["job"]["params"]["seed"]
    other = client.post("/v1/jobs", json={**body, "params": {**body["params"], "prompt": "a dog"}},
                        headers={**h, "Idempotency-Key": "k-1"})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_conflict"
    assert [p["prompt_id"] for p in fake.prompts].count(first.get_json()["job"]["id"]) == 1
    too_long = client.post("/v1/jobs", json=body, headers={**h, "Idempotency-Key": "x" * 256})
    assert too_long.status_code == 400


def test_two_concurrent_requests_with_one_key_make_one_job(harness, fake):
    client, h = client_and_headers(harness)
    body = {"workflow": "txt2img", "params": {"prompt": "race", "width": 64, "height": 64, "steps": 2}}
    answers = []

    def go(c):
        answers.append(c.post("/v1/jobs", json=body, headers={**h, "Idempotency-Key": "same"}))

    for _ in range(5):
        # Flask apps are built here: building routes in threads trips a CPython 3.11.7 ast bug.
        clients = [create_app(lambda: harness.ctx).test_client() for _ in range(4)]
        threads = [threading.Thread(target=go, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(answers) == 20
    ids = {a.get_json()["job"]["id"] for a in answers}
    assert len(ids) == 1 and sorted(a.status_code for a in answers).count(202) == 1
    assert harness.sql("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 1
    assert [p["prompt_id"] for p in fake.prompts].count(ids.pop()) == 1
