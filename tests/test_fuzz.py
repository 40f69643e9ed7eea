"""Fuzz the running API against its own OpenAPI description (schemathesis).

The real processes: `gateway serve` (gunicorn) and `gateway listen` as
subprocesses (tests/stack.py), the test MariaDB, local-folder storage, a fake
ComfyUI (so submissions are accepted and run) and a fake WeChat (so
/v1/auth/wechat is the real code path, not a 404). The limits are off so the
fuzzer is never answered 429 for its own volume.

The description is loaded from the server itself (`GET /v1/openapi.json`) and
requests carry a real dev-login token (ADMIN_TOKEN for /v1/usage).

* ``test_the_running_api_matches_its_description``: every operation with the
  description's examples, schemathesis' coverage cases and Hypothesis-generated
  valid and invalid requests, under a fixed seed, derandomized, at most
  MAX_EXAMPLES generated cases per operation.
* ``test_real_jobs_match_the_description``: generated ids almost never name a
  job, so the id operations are also called on real jobs in every state the
  fake can hold still (queued, succeeded, failed, cancelled, another user's).

Every response must: not be a 5xx, have a documented status code, content
type, headers and body, and, when it is an error, have the contract's one
error shape with a code the description lists for that status.
"""

from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from schemathesis import checks as st

from shared.openapi import load_spec, resolve, validate
from tests.fakes.comfyui import FakeComfy
from tests.fakes.wechat import FakeWeChat
from tests.stack import start_api, start_listener, wait_for

SEED = 20261125
MAX_EXAMPLES = 200  # generated cases per operation (the examples and coverage phases add their own, ~10-80)

NO_LIMITS = {"RATE_LIMIT_PER_MINUTE": "0", "MAX_ACTIVE_JOBS": "0", "DAILY_JOB_QUOTA": "0",
             "LOGIN_RATE_LIMIT_PER_MINUTE": "0"}
WECHAT_EXAMPLE_CODE = "0a1b2c3d"  # WechatLoginRequest's example in the description: it logs in once

SPEC = load_spec()
ERROR_CODES = set(SPEC["components"]["schemas"]["ErrorCode"]["enum"])
FINAL = ("succeeded", "failed", "cancelled")


# -- the stack ------------------------------------------------------------------------

def _listener_connected(base: str) -> bool:
    backends = requests.get(base + "/healthz", timeout=5).json()["backends"]
    return bool(backends) and all(b["listener_connected"] for b in backends)


class Stack:
    """The running API with a logged-in user; small helpers to make jobs over real HTTP."""

    def __init__(self, base: str, token: str, admin: str, fake: FakeComfy):
        self.base, self.token, self.admin, self.fake = base, token, admin, fake

    def auth(self, token: str | None = None) -> dict:
        return {"Authorization": f"Bearer {token or self.token}"}

    def login(self, user: str) -> str:
        r = requests.post(self.base + "/v1/auth/dev", json={"user": user}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def submit(self, token: str | None = None, **params) -> dict:
        body = {"workflow": "txt2img", "params": {"prompt": "a cat", "width": 64, "height": 64, "steps": 3,
                                                  **params}}
        r = requests.post(self.base + "/v1/jobs", json=body, headers=self.auth(token), timeout=10)
        assert r.status_code == 202, r.text
        return r.json()["job"]

    def job(self, job_id: str, token: str | None = None) -> dict:
        r = requests.get(f"{self.base}/v1/jobs/{job_id}", headers=self.auth(token), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["job"]

    def wait_final(self, job_id: str, token: str | None = None) -> dict:
        return wait_for(lambda: (lambda j: j if j["status"] in FINAL else None)(self.job(job_id, token)), 30,
                        f"job {job_id} did not finish", interval=0.05)


@pytest.fixture
def stack(make_config, db_conn, tmp_path, monkeypatch):
    """`gateway serve` and `gateway listen` on a fake ComfyUI and a fake WeChat, limits off."""
    with FakeComfy(step_delay=0.001) as fake, FakeWeChat() as wx:
        wx.add_code(WECHAT_EXAMPLE_CODE, openid="o-fuzz")
        env = {"COMFYUI_URLS": fake.base_url, "WECHAT_APPID": wx.appid, "WECHAT_SECRET": wx.secret,
               "WECHAT_API_BASE": wx.url, **NO_LIMITS}
        cfg = make_config(**env)
        for name in ("WECHAT_APPID", "WECHAT_SECRET", "WECHAT_API_BASE", *NO_LIMITS):
            monkeypatch.setenv(name, env[name])  # tests/stack.py forwards only the core settings
        listener = start_listener(cfg, tmp_path)
        api, base = start_api(cfg, tmp_path)
        try:
            wait_for(lambda: _listener_connected(base), 30, f"listener never connected: {listener.log()}")
            s = Stack(base, "", cfg.admin_token, fake)
            s.token = s.login("fuzzer")
            yield s
        finally:
            api.stop()
            listener.stop()
        for proc in (api, listener):
            assert "Traceback" not in proc.log(), proc.log()


@pytest.fixture
def api_schema(stack):
    """The description as the running server serves it, set up for a seeded, bounded run."""
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": stack.base,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "auth": {"openapi": {"bearerAuth": {"bearer": stack.token}, "operatorToken": {"bearer": stack.admin}}},
        "request-timeout": 30,
    })
    schema = schemathesis.openapi.from_url(stack.base + "/v1/openapi.json", config=config)
    assert schema.raw_schema == SPEC, "the server does not serve shared/openapi.json"
    return schema


# -- checks ---------------------------------------------------------------------------

def _documented(method: str, path: str, status: int) -> dict | None:
    op = SPEC["paths"].get(path, {}).get(method.lower())
    if op is None:
        return None
    resp = op["responses"].get(str(status))
    return resolve(resp["$ref"], SPEC) if resp and "$ref" in resp else resp


def error_shape(ctx, response, case):
    """Every 4xx/5xx is the contract's error object, with a code the description lists for its status."""
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype.split(";")[0].strip() == "application/json", f"an error with Content-Type {ctype!r}"
    body = json.loads(response.content)
    if (case.operation.path, response.status_code) == ("/healthz", 503):  # the health body names what is down
        return None
    problems = validate(body, {"$ref": "#/components/schemas/Error"}, SPEC)
    assert not problems, f"error body not in the contract's shape: {problems}: {body}"
    code = body["error"]["code"]
    assert code in ERROR_CODES, code
    listed = (_documented(case.method, case.operation.path, response.status_code) or {}).get("x-error-codes")
    if listed:
        assert code in listed, f"{response.status_code} {code!r} is not one of the documented {listed}"
    if response.status_code >= 500:
        message = body["error"]["message"]
        assert "Traceback" not in message and 'File "' not in message, f"a 5xx leaks internals: {message}"
    if response.status_code == 429:
        assert response.headers.get("retry-after"), "429 without Retry-After"
    return None


CHECKS = [st.not_a_server_error, st.status_code_conformance, st.content_type_conformance,
          st.response_schema_conformance, st.response_headers_conformance, st.ignored_auth, error_shape]

schema = schemathesis.pytest.from_fixture("api_schema")


# -- the tests ------------------------------------------------------------------------

@schema.parametrize()
def test_the_running_api_matches_its_description(case):
    case.call_and_validate(checks=CHECKS)


def test_real_jobs_match_the_description(api_schema, stack):
    """Call every operation on real objects: jobs in each state, pages, usage records, an upload."""
    fake = stack.fake
    done = stack.wait_final(stack.submit(seed=1, batch_size=2)["id"])
    assert done["status"] == "succeeded", done
    fake.fail_next(at_step=1, message="fuzz failure")
    failed = stack.wait_final(stack.submit(seed=2)["id"])
    assert failed["status"] == "failed", failed
    fake.pause()
    try:
        queued = stack.submit(seed=3)
        doomed = stack.submit(seed=4)
        assert queued["status"] == doomed["status"] == "queued"
        r = requests.post(f"{stack.base}/v1/jobs/{doomed['id']}/cancel", headers=stack.auth(), timeout=10)
        assert r.status_code == 202, r.text
        cancelled = stack.wait_final(doomed["id"])
        assert cancelled["status"] == "cancelled", cancelled
        theirs = stack.submit(stack.login("someone-else"), seed=5)
        seen = []

        def call(path, method="GET", expect=None, token=None, **kw):
            op = api_schema[path][method]
            case = op.Case(**kw)
            response = case.call_and_validate(headers=stack.auth(token), checks=CHECKS)
            seen.append((method, path, response.status_code))
            if expect is not None:
                assert response.status_code == expect, (method, path, kw, response.status_code, response.text)
            return response

        for job, result_status in ((done, 200), (failed, 409), (queued, 409), (cancelled, 409)):
            got = call("/v1/jobs/{id}", path_parameters={"id": job["id"]}, expect=200)
            call("/v1/jobs/{id}", path_parameters={"id": job["id"]}, headers={"If-None-Match": got.headers["etag"][0]},
                 expect=304)
            call("/v1/jobs/{id}/result", path_parameters={"id": job["id"]}, expect=result_status)
        for job in (done, failed, cancelled):
            call("/v1/jobs/{id}/cancel", "POST", path_parameters={"id": job["id"]}, expect=409)
        for path, method in (("/v1/jobs/{id}", "GET"), ("/v1/jobs/{id}/result", "GET"),
                             ("/v1/jobs/{id}/cancel", "POST")):
            call(path, method, path_parameters={"id": theirs["id"]}, expect=404)

        page = call("/v1/jobs", query={"limit": 2}, expect=200).json()
        assert len(page["jobs"]) == 2 and page["next_cursor"]
        call("/v1/jobs", query={"limit": 2, "cursor": page["next_cursor"]}, expect=200)

        body = {"workflow": "txt2img", "params": {"prompt": "a dog", "width": 64, "height": 64, "seed": 6}}
        first = call("/v1/jobs", "POST", headers={"Idempotency-Key": "fuzz-1"}, body=body, expect=202)
        again = call("/v1/jobs", "POST", headers={"Idempotency-Key": "fuzz-1"}, body=body, expect=200)
        assert again.json()["job"]["id"] == first.json()["job"]["id"]
        call("/v1/jobs", "POST", headers={"Idempotency-Key": "fuzz-1"}, body={**body, "params": {"prompt": "x"}},
             expect=409)

        call("/v1/uploads", "POST", body={"content_type": "image/webp", "size": 1000}, expect=201)
        call("/v1/workflows", expect=200)
        call("/v1/openapi.json", expect=200)
        call("/healthz", expect=200)
    finally:
        fake.resume()
    stack.wait_final(queued["id"])
    records = call("/v1/usage", query={"after_id": 0, "limit": 2}, token=stack.admin, expect=200).json()
    assert len(records["records"]) == 2
    call("/v1/usage", query={"after_id": records["next_after_id"]}, token=stack.admin, expect=200)
    call("/v1/usage", expect=403)  # a user token is not the operator's
    assert len(seen) >= 30
