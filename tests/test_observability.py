"""Logs and metrics of the real processes: `gateway serve` and `gateway listen --metrics-bind`
with LOG_FORMAT=json, the fake ComfyUI, jobs run through them.

Every line both processes write is a JSON object with the fields the README promises; the
request id a client sends comes back and names the lines of its request; /metrics wants the
operator token; the numbers of both scrapes move as jobs wait, run and finish.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.localdb import free_port
from tests.fakes.comfyui import FakeComfy
from tests.stack import Process, config_env, start_api, wait_for
from tests.test_end_to_end import TXT2IMG, Api, listener_connected, poll_until_final


def scrape(url: str, token: str | None = None) -> dict:
    """{(name, (label pairs)): value} of one scrape (sample names as exposed: _total, _count...)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include these."""
    return sum(v for (n, pairs), v in samples.items() if n == name and set(labels.items()) <= set(pairs))


def json_lines(text: str) -> list[dict]:
    """Every line of a log, each parsed as one JSON object (a line that is not one fails the test)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
    return out


@pytest.fixture
def fake():
    with FakeComfy(step_delay=0.03) as f:
        yield f


@pytest.fixture
def stack(make_config, db_conn, fake, tmp_path):
    cfg = make_config(COMFYUI_URLS=fake.base_url, COMFYUI_SLOTS=1, LOG_FORMAT="json", DISPATCH_SWEEP_S=0.2)
    port = free_port()
    env = {**config_env(cfg), "LOG_FORMAT": "json"}
    listener = Process(["listen", "--metrics-bind", f"127.0.0.1:{port}"], env, tmp_path / "listener.log").start()
    api, base = start_api(cfg, tmp_path, "--access-log")
    try:
        wait_for(lambda: listener_connected(base), 30, f"listener never connected: {listener.log()}")
        yield cfg, base, f"http://127.0.0.1:{port}/metrics", api, listener
    finally:
        api.stop()
        listener.stop()


def test_metrics_move_as_jobs_wait_run_and_finish(stack, fake):
    cfg, base, listener_url, api, listener = stack
    token = cfg.admin_token
    assert requests.get(base + "/metrics", timeout=10).status_code == 401
    wrong = requests.get(base + "/metrics", headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    api_before, listener_before = scrape(base + "/metrics", token), scrape(listener_url)
    assert value(listener_before, "gateway_queue_depth") == 0
    assert value(listener_before, "gateway_server_state", server=fake.base_url, state="connected") == 1
    assert value(listener_before, "gateway_server_slots", server=fake.base_url) == 1

    app = Api(base)
    app.login("metrics")
    fake.pause()  # one slot: the first job is held by the server, the second waits in the gateway queue
    first = app.call("POST", "/v1/jobs", TXT2IMG).json()["job"]
    second = app.call("POST", "/v1/jobs", {**TXT2IMG, "params": {**TXT2IMG["params"], "seed": 9}}).json()["job"]
    waiting = scrape(listener_url)
    assert value(waiting, "gateway_queue_depth") == 1
    assert value(waiting, "gateway_queue_oldest_age_seconds") > 0
    assert value(waiting, "gateway_server_slots_in_use", server=fake.base_url) == 1
    fake.resume()
    polls = 0
    for job in (first, second):
        seen = poll_until_final(lambda: app.call("GET", f"/v1/jobs/{job['id']}").json()["job"])
        polls += len(seen)
        assert seen[-1]["status"] == "succeeded"

    api_after = scrape(base + "/metrics", token)
    after = wait_for(lambda: (s := scrape(listener_url)) and value(s, "gateway_jobs_finished_total", workflow="txt2img",
                                                                   outcome="succeeded") >= 2 and s, 10,
                     "the listener never counted both jobs")
    delta = lambda samples, before, name, **labels: value(samples, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta(api_after, api_before, "gateway_jobs_submitted_total", workflow="txt2img") == 2
    assert delta(after, listener_before, "gateway_jobs_finished_total", workflow="txt2img", outcome="succeeded") == 2
    poll_route = dict(route="/v1/jobs/<id>", method="GET")
    assert delta(api_after, api_before, "gateway_http_requests_total", **poll_route, status="200") == polls
    assert delta(api_after, api_before, "gateway_http_request_duration_seconds_count", **poll_route) == polls
    assert value(api_after, "gateway_http_requests_total", route="/metrics", method="GET", status="401") >= 1
    # Sent at submit (the API) or by the listener when the slot freed: counted once each, somewhere.
    dispatched = sum(value(s, "gateway_dispatch_latency_seconds_count") - value(b, "gateway_dispatch_latency_seconds_count")
                     for s, b in ((api_after, api_before), (after, listener_before)))
    assert dispatched == 2
    assert delta(after, listener_before, "gateway_completion_latency_seconds_count") == 2
    assert delta(after, listener_before, "gateway_output_copy_bytes_total") > 0
    events = {t: total(after, "gateway_listener_events_total", server=fake.base_url, type=t)
              for t in ("ExecutionStart", "Progress", "Executing")}
    assert events["ExecutionStart"] >= 2 and events["Progress"] >= 2 and events["Executing"] >= 2, events
    assert value(after, "gateway_queue_depth") == 0 and value(after, "gateway_server_slots_in_use",
                                                                server=fake.base_url) == 0
    assert value(after, "gateway_db_errors_total", kind="lost") == 0
    assert not any(n == "gateway_http_requests_total" and dict(p)["route"] not in
                   {"/v1/auth/dev", "/v1/jobs", "/v1/jobs/<id>", "/healthz", "/metrics"}
                   for n, p in api_after)  # a route label is a rule, never a raw path


def test_json_logs_and_request_ids(stack, fake):
    cfg, base, _, api, listener = stack
    app = Api(base)
    app.login("logs")
    rid = "phone-7.req_42"
    r = app.call("POST", "/v1/jobs", TXT2IMG, headers={"X-Request-Id": rid})
    assert r.status_code == 202 and r.headers["X-Request-Id"] == rid
    job_id = r.json()["job"]["id"]
    poll_until_final(lambda: app.call("GET", f"/v1/jobs/{job_id}").json()["job"])
    made = requests.get(base + "/v1/nothing", headers={"X-Request-Id": "a b;<script>"}, timeout=10)
    assert made.status_code == 404 and re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])
    secret = "f00dcafe" * 8
    requests.get(f"{base}/v1/files/users/u/x.png?expires=9&signature={secret}", timeout=10)
    wait_for(lambda: f"job {job_id}: succeeded" in listener.log(), 10, "the listener never logged the success")
    api.stop()
    listener.stop()

    for line in json_lines(api.log()) + json_lines(listener.log()):
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert secret not in json.dumps(line) and cfg.admin_token not in json.dumps(line)
    api_lines = json_lines(api.log())
    submit = [x for x in api_lines if x["logger"] == "gunicorn.access" and '"POST /v1/jobs ' in x["message"]]
    assert [x["request_id"] for x in submit] == [rid]
    assert any(x["logger"] == "shared.submission" and x.get("job_id") == job_id and x.get("request_id") == rid
               for x in api_lines), "the submit's own line names neither its job nor its request"
    assert any(x["logger"] == "gunicorn.error" and x["message"].startswith("Booting worker") for x in api_lines)
    assert any("signature=[redacted]" in x["message"] and x.get("request_id") for x in api_lines)
    about_job = [x for x in json_lines(listener.log()) if x.get("job_id") == job_id]
    assert any(x["message"] == f"job {job_id}: succeeded with 2 image(s)" for x in about_job), about_job
    assert all("request_id" not in x for x in json_lines(listener.log()))  # no request there
