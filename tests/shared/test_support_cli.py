"""`gateway jobs show|cancel` and `gateway users show|limits` (shared/support.py) on a real stack:
`gateway serve` and `gateway listen` subprocesses, the fake ComfyUI, the commands as subprocesses."""

from __future__ import annotations

import json

import pytest
import requests

from shared import limits, users
from shared.errors import TooManyRequestsError
from tests.fakes.comfyui import FakeComfy
from tests.shared.test_cli import gateway
from tests.stack import start_api, start_listener, wait_for

TXT2IMG = {"workflow": "txt2img", "params": {"prompt": "a cat", "width": 64, "height": 64, "steps": 3}}
VOLATILE = ("poll_after_ms", "eta_seconds", "queue_position")


@pytest.fixture
def stack(make_config, db_conn, tmp_path):
    with FakeComfy(step_delay=0.02) as fake:
        cfg = make_config(COMFYUI_URLS=fake.base_url)  # MAX_ACTIVE_JOBS 3, DAILY_JOB_QUOTA 200
        api, base = start_api(cfg, tmp_path)
        listener = start_listener(cfg, tmp_path)
        try:
            wait_for(lambda: requests.get(base + "/healthz", timeout=5).json()["backends"][0]["listener_connected"],
                     30, "the listener did not connect")
            yield cfg, base, fake
        finally:
            listener.stop()
            api.stop()


class App:
    def __init__(self, base: str, user: str):
        self.base = base
        body = requests.post(base + "/v1/auth/dev", json={"user": user}, timeout=5).json()
        self.user_id, self.h = body["user"]["id"], {"Authorization": f"Bearer {body['token']}"}

    def submit(self) -> requests.Response:
        return requests.post(self.base + "/v1/jobs", json=TXT2IMG, headers=self.h, timeout=10)

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.base}/v1/jobs/{job_id}", headers=self.h, timeout=5).json()["job"]

    def wait(self, job_id: str, status: str) -> dict:
        return wait_for(lambda: (lambda j: j if j["status"] == status else None)(self.job(job_id)), 30,
                        f"job {job_id} not {status}: {self.job(job_id)}")


def run(cfg, *args) -> tuple[int, str, str]:
    out = gateway(cfg, *args)
    return out.returncode, out.stdout, out.stderr


def test_jobs_show_is_the_api_job_plus_operator_fields(stack):
    cfg, base, fake = stack
    app = App(base, "alice")
    job_id = app.submit().json()["job"]["id"]
    seen = app.wait(job_id, "succeeded")
    code, out, err = run(cfg, "jobs", "show", job_id)
    assert code == 0, err
    report = json.loads(out)
    strip = lambda j: {k: v for k, v in j.items() if k not in VOLATILE}  # noqa: E731
    assert strip(report["job"]) == strip(seen)
    op = report["operator"]
    assert op["status"] == "succeeded" and op["user"] == {"id": app.user_id, "provider": "dev", "subject": "alice"}
    assert op["backend"]["url"] == fake.base_url and op["error"] is None and not op["cancel_requested"]
    assert op["outputs"] and all(k.endswith(".png") and job_id in k for k in op["outputs"])
    assert op["usage"]["job_id"] == job_id and op["usage"]["images"] == len(op["outputs"])

    code, _, err = run(cfg, "jobs", "show", "00000000-0000-0000-0000-000000000000")
    assert code == 1 and "no job 00000000-0000-0000-0000-000000000000" in err


def test_jobs_cancel_goes_through_the_api_rules(stack):
    cfg, base, fake = stack
    app = App(base, "bob")
    fake.pause()  # held by the server, not started
    job_id = app.submit().json()["job"]["id"]
    wait_for(lambda: json.loads(run(cfg, "jobs", "show", job_id)[1])["operator"]["backend"], 10, "not sent")
    code, out, err = run(cfg, "jobs", "cancel", job_id)
    assert code == 0, err
    assert out.strip() == f"{job_id}: cancelled"
    assert app.job(job_id)["status"] == "cancelled"
    assert fake._call(lambda s: s.queue_remaining()) == 0  # taken off ComfyUI's queue
    report = json.loads(run(cfg, "jobs", "show", job_id)[1])
    assert report["operator"]["cancel_requested"] and report["operator"]["usage"]["status"] == "cancelled"

    code, _, err = run(cfg, "jobs", "cancel", job_id)  # a final state never changes
    assert code == 1 and f"job {job_id} is already cancelled; nothing to cancel" in err
    fake.resume()
    done = app.submit().json()["job"]["id"]
    app.wait(done, "succeeded")
    code, _, err = run(cfg, "jobs", "cancel", done)
    assert code == 1 and "already succeeded" in err and app.job(done)["status"] == "succeeded"
    code, _, err = run(cfg, "jobs", "cancel", "nope")
    assert code == 1 and "no job nope" in err


def test_users_show_by_id_and_by_subject(stack):
    cfg, base, _ = stack
    app = App(base, "carol")
    ids = [app.submit().json()["job"]["id"] for _ in range(2)]
    for job_id in ids:
        app.wait(job_id, "succeeded")
    code, out, err = run(cfg, "users", "show", "carol")
    assert code == 0, err
    report = json.loads(out)
    assert report["user"]["id"] == app.user_id and report["user"]["provider"] == "dev"
    assert [j["id"] for j in report["recent_jobs"]] == ids[::-1]  # newest first
    assert report["usage"]["succeeded"]["jobs"] == 2 and report["usage"]["succeeded"]["images"] == 2
    assert report["limits"] == {"max_active_jobs": 3, "daily_job_quota": 200, "active_jobs": 0, "jobs_today": 2,
                                "override": None}
    code, out, _ = run(cfg, "users", "show", app.user_id, "--jobs", "1")
    assert code == 0 and [j["id"] for j in json.loads(out)["recent_jobs"]] == ids[1:]
    code, _, err = run(cfg, "users", "show", "nobody")
    assert code == 1 and "no user with id or subject 'nobody'" in err


def test_users_limits_override_what_submit_enforces(stack):
    cfg, base, fake = stack
    app = App(base, "dave")
    code, out, err = run(cfg, "users", "limits", "dave", "--active", "1")
    assert code == 0, err
    assert out.strip() == f"{app.user_id} (dev dave): own limits; active jobs: 1, jobs per day: 200"
    fake.pause()
    first = app.submit()
    assert first.status_code == 202
    second = app.submit()
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_active_jobs"
    assert App(base, "erin").submit().status_code == 202  # others keep the settings

    code, out, _ = run(cfg, "users", "limits", "dave", "--daily", "2")  # --active 1 is kept
    assert code == 0 and out.strip().endswith("active jobs: 1, jobs per day: 2")
    report = json.loads(run(cfg, "users", "show", "dave")[1])["limits"]
    assert (report["override"]["max_active_jobs"], report["override"]["daily_job_quota"]) == (1, 2)

    code, out, _ = run(cfg, "users", "limits", app.user_id, "--active", "0")  # 0 = no limit
    assert code == 0 and "active jobs: no limit, jobs per day: 2" in out
    assert app.submit().status_code == 202
    third = app.submit()
    assert third.status_code == 429 and third.json()["error"]["code"] == "quota_exceeded"

    code, out, _ = run(cfg, "users", "limits", "dave", "--clear")
    assert code == 0 and "the settings apply again; active jobs: 3, jobs per day: 200" in out
    assert app.submit().status_code == 202
    assert json.loads(run(cfg, "users", "show", "dave")[1])["limits"]["override"] is None
    code, out, _ = run(cfg, "users", "limits", "dave", "--clear")
    assert code == 0 and "had no limits of its own" in out
    fake.resume()


@pytest.mark.parametrize("args, message", [
    ((), "give --active N and/or --daily N"),
    (("--clear", "--active", "2"), "give it alone"),
])
def test_users_limits_refuses_unclear_requests(make_config, db_conn, args, message):
    users.get_or_create_user(db_conn, provider="dev", subject="frank")
    code, _, err = run(make_config(), "users", "limits", "frank", *args)
    assert code == 1 and message in err


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_users_limits_refuses_a_bad_number(make_config, db_conn, value):
    users.get_or_create_user(db_conn, provider="dev", subject="frank")
    code, _, err = run(make_config(), "users", "limits", "frank", "--active", value)
    assert code == 2 and "a whole number from 0" in err


def test_a_subject_of_two_providers_must_be_named_by_id(make_config, db_conn):
    a = users.get_or_create_user(db_conn, provider="dev", subject="same")
    b = users.get_or_create_user(db_conn, provider="wechat", subject="same")
    code, _, err = run(make_config(), "users", "show", "same")
    assert code == 1 and a in err and b in err and "name one by id" in err
    code, out, _ = run(make_config(), "users", "show", b)
    assert code == 0 and json.loads(out)["user"]["provider"] == "wechat"


def test_check_job_limits_reads_the_override(db_conn):
    user = users.get_or_create_user(db_conn, provider="dev", subject="gina")
    limits.check_job_limits(db_conn, user, max_active=1, daily_quota=1)  # nothing yet: fine
    limits.set_override(db_conn, user, daily_quota=0)
    limits.set_override(db_conn, user, max_active=0)
    assert limits.effective_limits(limits.get_override(db_conn, user), max_active=3, daily_quota=9) == (0, 0)
    db_conn.cursor().execute("INSERT INTO jobs (id, user_id, workflow, params, prompt, status, created_at, "
                             "updated_at) VALUES (UUID(), %s, 'txt2img', '{}', '{}', 'queued', UTC_TIMESTAMP(3), "
                             "UTC_TIMESTAMP(3))", (user,))
    limits.check_job_limits(db_conn, user, max_active=1, daily_quota=1)  # the override says: no limits
    assert limits.clear_override(db_conn, user)
    with pytest.raises(TooManyRequestsError):
        limits.check_job_limits(db_conn, user, max_active=1, daily_quota=1)


@pytest.mark.parametrize("value", ["-1", "0", "1001", "x"])
def test_users_show_refuses_a_bad_number_of_jobs(make_config, db_conn, value):
    users.get_or_create_user(db_conn, provider="dev", subject="frank")
    code, _, err = run(make_config(), "users", "show", "frank", "--jobs", value)
    assert code == 2 and "a whole number from 1 to 1000" in err and "Traceback" not in err


def test_users_show_counts_what_submit_counts_as_active(db_conn):
    """A job whose images wait for their content check ('checking') is active for the limit and for the report."""
    user = users.get_or_create_user(db_conn, provider="dev", subject="hank")
    for status in ("queued", "running", "checking", "succeeded"):
        db_conn.cursor().execute("INSERT INTO jobs (id, user_id, workflow, params, prompt, status, created_at, "
                                 "updated_at) VALUES (UUID(), %s, 'txt2img', '{}', '{}', %s, UTC_TIMESTAMP(3), "
                                 "UTC_TIMESTAMP(3))", (user, status))
    assert limits.job_counts(db_conn, user) == {"active_jobs": 3, "jobs_today": 4}
    limits.check_job_limits(db_conn, user, max_active=4, daily_quota=0)
    with pytest.raises(TooManyRequestsError) as info:
        limits.check_job_limits(db_conn, user, max_active=3, daily_quota=0)
    assert info.value.message.startswith("you already have 3 jobs in progress")
