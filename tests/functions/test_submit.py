"""POST /v1/jobs when ComfyUI answers badly: rejected graphs, refused connections, unclear answers.

The API runs in-process (Flask door) with a real listener thread on a fake ComfyUI,
so the backend is connected and submissions really reach the fake.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from functions.app import create_app
from listener.connection import Listener
from shared.comfy import ComfyClient, ComfyUnavailableError, ComfyUnreachableError
from shared.context import Context
from shared.localdb import free_port
from tests.fakes.comfyui import FakeComfy
from tests.listener.conftest import FAST
from tests.stack import wait_for

ROOT = Path(__file__).resolve().parents[2]
BODY = {"workflow": "txt2img", "params": {"prompt": "a cat", "width": 64, "height": 64, "steps": 2}}


@pytest.fixture
def fake():
    with FakeComfy(step_delay=0.01) as f:
        yield f


@pytest.fixture
def workflows_dir(tmp_path):
    """The shipped workflows plus `broken`: txt2img with a checkpoint no server has, fixed in the graph,
    and `invalid`: txt2img with a denoise ComfyUI refuses (over its maximum)."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    for f in (ROOT / "workflows").glob("*.json"):
        shutil.copy(f, folder / f.name)
    wf = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    wf["graph"]["4"]["inputs"]["ckpt_name"] = "no-such-model.safetensors"
    del wf["params"]["checkpoint"]
    (folder / "broken.json").write_text(json.dumps(wf))
    wf = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    wf["graph"]["3"]["inputs"]["denoise"] = 5.0
    (folder / "invalid.json").write_text(json.dumps(wf))
    return folder


@pytest.fixture
def stack(make_config, db_conn, fake, workflows_dir):
    ctx = Context(make_config(COMFYUI_URLS=fake.base_url, WORKFLOWS_DIR=str(workflows_dir), **FAST))
    listener = Listener(ctx)
    listener.start()
    client = create_app(lambda: ctx).test_client()
    wait_for(lambda: client.get("/healthz").get_json()["backends"][0]["listener_connected"], 20, "no listener")
    token = client.post("/v1/auth/dev", json={"user": "alice"}).get_json()["token"]
    yield ctx, client, {"Authorization": f"Bearer {token}"}
    listener.stop()


def rows(db_conn, sql, args=()):
    with db_conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def test_a_rejected_graph_is_422_with_node_errors_and_a_failed_billed_job(stack, fake, db_conn):
    ctx, client, h = stack
    r = client.post("/v1/jobs", json={**BODY, "workflow": "invalid"}, headers=h)
    assert r.status_code == 422, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == "workflow_rejected"
    assert error["details"]["error"]["type"] == "prompt_outputs_failed_validation"
    node = error["details"]["node_errors"]["3"]
    assert node["class_type"] == "KSampler"
    assert any("denoise" in e["details"] for e in node["errors"])
    [job] = rows(db_conn, "SELECT id, status, error_code FROM jobs")
    assert (job["status"], job["error_code"]) == ("failed", "execution_error")
    [usage] = rows(db_conn, "SELECT job_id, status, images FROM usage_records")
    assert (usage["job_id"], usage["status"], usage["images"]) == (job["id"], "failed", 0)
    assert fake.prompts == []


def test_a_job_no_server_can_run_is_503_names_what_is_missing_and_is_never_sent(stack, fake, db_conn):
    """A checkpoint fixed in the graph that no server has: never sent (ComfyUI would refuse it)."""
    ctx, client, h = stack
    r = client.post("/v1/jobs", json={**BODY, "workflow": "broken"}, headers=h)
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.headers["Retry-After"]
    error = r.get_json()["error"]
    assert error["code"] == "backend_unavailable" and "no-such-model.safetensors" in error["message"]
    assert rows(db_conn, "SELECT id FROM jobs") == ()
    assert fake.prompts == [] and fake.refusals == 0


def test_an_unclear_answer_keeps_the_job_for_the_sweep(stack, fake, db_conn):
    """A proxy's 502 on POST /prompt: ComfyUI may have queued it, so the job is kept, never deleted."""
    ctx, client, h = stack
    fake.pause()
    first = client.post("/v1/jobs", json=BODY, headers=h).get_json()["job"]
    fake.fail_http("/prompt", status=502, html=True)
    r = client.post("/v1/jobs", json=BODY, headers=h)
    assert r.status_code == 202, r.get_data(as_text=True)
    job = r.get_json()["job"]
    assert job["status"] == "queued"
    assert job["queue_position"] == 1  # behind the first, though ComfyUI gave it no number yet
    assert dict((row["id"], row["status"]) for row in rows(db_conn, "SELECT id, status FROM jobs")) == {
        first["id"]: "queued", job["id"]: "submitting"}
    fake.resume()


def test_a_refused_connection_puts_the_job_back_in_the_queue_and_it_runs_later(make_config, db_conn, fake, stack):
    """Nothing reached ComfyUI: the job goes back to the gateway queue (202), and runs once the server answers."""
    ctx, client, h = stack
    fresh = Context(ctx.config)  # no kept-alive connection to the fake: the next one is refused
    fresh_client = create_app(lambda: fresh).test_client()
    fake.reject_connections(True)
    try:
        r = fresh_client.post("/v1/jobs", json=BODY, headers=h)
        assert r.status_code == 202, r.get_data(as_text=True)
        job = r.get_json()["job"]
        assert job["status"] == "queued"
        [row] = rows(db_conn, "SELECT status, backend_id FROM jobs")
        assert row["backend_id"] is None or row["status"] != "submitting"  # waiting, or resent by the listener
    finally:
        fake.reject_connections(False)
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}", headers=h).get_json()["job"]["status"] == "succeeded", 30,
             "the requeued job never ran")
    assert [p["prompt_id"] for p in fake.prompts] == [job["id"]]
    fresh.db.close()


def test_the_client_tells_refused_from_unclear(fake):
    import requests
    with requests.Session() as s:
        dead = ComfyClient(s, f"http://127.0.0.1:{free_port()}", timeout=2)
        with pytest.raises(ComfyUnreachableError):
            dead.queue()
        fake.fail_http("/queue", status=502)
        with pytest.raises(ComfyUnavailableError) as e:
            ComfyClient(s, fake.base_url, timeout=2).queue()
        assert not isinstance(e.value, ComfyUnreachableError)


def test_concurrent_replays_at_the_active_job_limit_are_replays_not_429(stack, fake, make_config, workflows_dir):
    """With one active job allowed, requests racing with one Idempotency-Key all get that job."""
    import threading
    ctx, _, h = stack
    limited = Context(make_config(COMFYUI_URLS=fake.base_url, WORKFLOWS_DIR=str(workflows_dir),
                                  MAX_ACTIVE_JOBS="1", RATE_LIMIT_PER_MINUTE="0"))
    fake.pause()  # the job stays active throughout
    clients = [create_app(lambda: limited).test_client() for _ in range(4)]
    answers = []
    for c in clients:
        c.get("/healthz")  # warm each app before the race
    threads = [threading.Thread(target=lambda c=c: answers.append(
        c.post("/v1/jobs", json=BODY, headers={**h, "Idempotency-Key": "one"}))) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fake.resume()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 202], [a.get_json() for a in answers]
    assert len({a.get_json()["job"]["id"] for a in answers}) == 1
    other = clients[0].post("/v1/jobs", json=BODY, headers={**h, "Idempotency-Key": "two"})
    assert other.status_code == 429 and other.get_json()["error"]["code"] == "too_many_active_jobs"
    limited.db.close()


def test_queue_positions_agree_in_the_list_the_status_and_a_replay(stack, fake):
    ctx, client, h = stack
    fake.pause()
    first = client.post("/v1/jobs", json=BODY, headers=h).get_json()["job"]
    second = client.post("/v1/jobs", json=BODY, headers={**h, "Idempotency-Key": "k2"}).get_json()["job"]
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    listed = {j["id"]: j["queue_position"] for j in client.get("/v1/jobs", headers=h).get_json()["jobs"]}
    assert listed == {first["id"]: 0, second["id"]: 1}
    replay = client.post("/v1/jobs", json=BODY, headers={**h, "Idempotency-Key": "k2"})
    assert replay.status_code == 200 and replay.get_json()["job"]["queue_position"] == 1
    fake.resume()


def test_workflows_without_a_connected_server_offer_no_choices_and_wait_for_none(make_config, db_conn):
    from shared.localdb import free_port
    ctx = Context(make_config(COMFYUI_URLS=f"http://127.0.0.1:{free_port()}"))
    client = create_app(lambda: ctx).test_client()
    token = client.post("/v1/auth/dev", json={"user": "a"}).get_json()["token"]
    r = client.get("/v1/workflows", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    checkpoint = {w["name"]: w for w in r.get_json()["workflows"]}["txt2img"]["params"]["checkpoint"]
    assert "enum" not in checkpoint and checkpoint["default"] == "v1-5-pruned-emaonly.safetensors"
    assert {w["name"]: w for w in r.get_json()["workflows"]}["txt2img"]["available"] is False
    ctx.db.close()


# -- notify: a WeChat subscribe message when the job is final ----------------------------------------------

def wechat_headers(ctx, openid: str = "o-notify-user") -> dict:
    from shared.tokens import issue_token
    from shared.users import get_or_create_user
    with ctx.db.connection() as conn:
        user_id = get_or_create_user(conn, provider="wechat", subject=openid)
    token, _ = issue_token(ctx.config.secret_key, user_id, 600)
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("value", ["yes", 1, 0, None, [], {}])
def test_notify_must_be_a_boolean(stack, db_conn, value):
    ctx, client, _ = stack
    r = client.post("/v1/jobs", json={**BODY, "notify": value}, headers=wechat_headers(ctx))
    assert r.status_code == 400, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == "invalid_params" and error["details"] == {"notify": "must be a boolean"}
    assert rows(db_conn, "SELECT id FROM jobs") == ()


def test_notify_needs_a_wechat_login(stack, db_conn):
    """A dev-login user has no openid to push to: said at once, not silently ignored."""
    ctx, client, h = stack
    r = client.post("/v1/jobs", json={**BODY, "notify": True}, headers=h)
    assert r.status_code == 400, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == "invalid_params" and "WeChat login" in error["message"]
    assert error["details"] == {"notify": "only for users logged in through WeChat"}
    assert rows(db_conn, "SELECT id FROM jobs") == ()
    r = client.post("/v1/jobs", json={**BODY, "notify": False}, headers=h)
    assert r.status_code == 202
    assert [row["notify"] for row in rows(db_conn, "SELECT notify FROM jobs")] == [0]


def test_notify_is_stored_and_part_of_the_idempotency_comparison(stack, db_conn):
    ctx, client, _ = stack
    h = wechat_headers(ctx)
    first = client.post("/v1/jobs", json={**BODY, "notify": True}, headers={**h, "Idempotency-Key": "n-1"})
    assert first.status_code == 202, first.get_data(as_text=True)
    job_id = first.get_json()["job"]["id"]
    assert "notify" not in first.get_json()["job"]  # the job object is unchanged
    assert rows(db_conn, "SELECT notify FROM jobs WHERE id=%s", (job_id,))[0]["notify"] == 1
    again = client.post("/v1/jobs", json={**BODY, "notify": True}, headers={**h, "Idempotency-Key": "n-1"})
    assert again.status_code == 200 and again.get_json()["job"]["id"] == job_id
    other = client.post("/v1/jobs", json=BODY, headers={**h, "Idempotency-Key": "n-1"})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_conflict"
    # "notify": false is the same request as no notify at all.
    plain = client.post("/v1/jobs", json=BODY, headers={**h, "Idempotency-Key": "n-2"})
    assert plain.status_code == 202
    same = client.post("/v1/jobs", json={**BODY, "notify": False}, headers={**h, "Idempotency-Key": "n-2"})
    assert same.status_code == 200 and same.get_json()["job"]["id"] == plain.get_json()["job"]["id"]
    assert len(rows(db_conn, "SELECT id FROM jobs")) == 2
