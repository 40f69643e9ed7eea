"""Fault injection: every numbered failure of the issue, on real parts (fake ComfyUI over
HTTP/WebSocket, real MariaDB, the listener in-process or as a subprocess killed with -9)."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from shared import jobs
from shared.db import connect, execute
from tests.listener.conftest import FAST, txt2img
from tests.stack import start_listener, wait_for


# 1. Socket loss ---------------------------------------------------------------------------

def test_dropped_socket_reconnects_with_a_fresh_client_id_and_finishes_old_jobs(harness, fake):
    old_client = harness.backend(fake.base_url)["client_id"]
    job_id = harness.submit(txt2img(seed=11, steps=40))
    wait_for(lambda: harness.job(job_id)["status"] == "running", 10, "never ran")
    fake.drop_sockets()
    wait_for(lambda: (harness.backend(fake.base_url)["client_id"] or old_client) != old_client, 10,
             "no reconnect with a new clientId")
    job = harness.wait_final(job_id)
    assert job["status"] == "succeeded" and job["client_id"] == old_client
    assert len(harness.outputs(job_id)) == 1 and len(harness.usage(job_id)) == 1


def test_silent_socket_is_replaced_by_the_watchdog(harness_factory, fake):
    h = harness_factory(fake, WATCHDOG_S="1.5")
    h.start_listener()
    old_client = h.backend(fake.base_url)["client_id"]
    job_id = h.submit(txt2img(seed=12, steps=60))
    wait_for(lambda: h.job(job_id)["status"] == "running", 10, "never ran")
    fake.go_silent(True)
    wait_for(lambda: (h.backend(fake.base_url)["client_id"] or old_client) != old_client, 15,
             "watchdog did not reconnect")
    fake.go_silent(False)
    assert h.wait_final(job_id)["status"] == "succeeded"


# 2. Reconciliation after a ComfyUI restart ---------------------------------------------------

@pytest.mark.parametrize("retries", [0, 1])
def test_restart_requeues_never_started_jobs_and_retries_started_ones(harness_factory, fake, retries):
    """LOST_JOB_RETRIES=0: the running job fails backend_lost; 1 (the default): it runs again."""
    harness = harness_factory(fake, LOST_JOB_RETRIES=str(retries))
    harness.start_listener()
    running = harness.submit(txt2img(seed=21, steps=60))
    wait_for(lambda: harness.job(running)["status"] == "running", 10, "never ran")
    queued = harness.submit(txt2img(seed=22))
    fake.restart(downtime=0.3)
    lost = harness.wait_final(running)
    if retries:
        assert lost["status"] == "succeeded" and lost["lost_retries"] == 1
    else:
        assert lost["status"] == "failed" and lost["error_code"] == "backend_lost"
    again = harness.wait_final(queued)
    assert again["status"] == "succeeded" and again["submit_attempts"] == 2 and again["lost_retries"] == 0
    assert [p["prompt_id"] for p in fake.prompts].count(queued) == 2  # once before, once after the restart
    rows = harness.sql("SELECT COUNT(*) AS n FROM jobs WHERE user_id=%s", (harness.user,))
    assert rows[0]["n"] == 2  # no second job for the user
    assert len(harness.usage(running)) == 1 and len(harness.usage(queued)) == 1
    assert fake.refusals == 0


# 3. The history race -------------------------------------------------------------------------

def test_late_history_is_waited_for(harness, fake):
    fake.delay_history(1.5)
    job_id = harness.submit(txt2img(seed=31))
    job = harness.wait_final(job_id)
    assert job["status"] == "succeeded" and len(harness.outputs(job_id)) == 1


# 4. Crash-safe submit ----------------------------------------------------------------------------

def _orphan(harness, fake, seed, *, send: bool):
    """A row left in 'submitting' by a function that died before or after POST /prompt."""
    import uuid
    job_id = str(uuid.uuid4())
    wf = harness.ctx.workflows["txt2img"]
    graph, params = wf.fill(txt2img(seed=seed)["params"])
    backend = harness.backend(fake.base_url)
    conn = connect(harness.database_url)
    jobs.create_job(conn, job_id=job_id, user_id=harness.user, workflow="txt2img", params=params, prompt=graph,
                    backend_id=backend["id"], client_id=backend["client_id"])
    execute(conn, "UPDATE jobs SET updated_at = updated_at - INTERVAL 1 HOUR, created_at = created_at - "
                  "INTERVAL 1 MINUTE WHERE id=%s", (job_id,))
    conn.close()
    if send:
        harness.ctx.comfy(fake.base_url).submit(graph, client_id=backend["client_id"], prompt_id=job_id)
    return job_id


def test_sweeper_settles_rows_left_before_or_after_post_prompt(harness, fake):
    accepted = _orphan(harness, fake, 41, send=True)
    never_sent = _orphan(harness, fake, 42, send=False)
    assert harness.wait_final(accepted)["status"] == "succeeded"
    assert harness.wait_final(never_sent)["status"] == "succeeded"
    submitted = [p["prompt_id"] for p in fake.prompts]
    assert submitted.count(accepted) == 1 and submitted.count(never_sent) == 1


# 5. Crash-safe finalization: kill -9 of the listener subprocess at any moment -------------------------

@pytest.mark.parametrize("kill_when", ["mid_copy", "after_copy"])
def test_listener_killed_during_finalization(make_config, db_conn, database_url, fake, tmp_path, kill_when):
    from shared.context import Context
    from shared.submission import submit
    from shared.users import get_or_create_user
    cfg = make_config(COMFYUI_URLS=fake.base_url, **FAST)
    ctx = Context(cfg)
    first = start_listener(cfg, tmp_path, "listener1")
    try:
        wait_for(lambda: _connected(database_url, fake.base_url), 20, "listener not connected")
        user = get_or_create_user(db_conn, provider="dev", subject="k")
        fake.slow_view(1.0 if kill_when == "mid_copy" else 0.0)
        _, row = submit(ctx, user, txt2img(seed=51 if kill_when == "mid_copy" else 52, batch_size=3))
        if kill_when == "mid_copy":
            wait_for(lambda: fake.view_requests >= 1, 20, "copy never started")
        else:
            wait_for(lambda: fake.view_requests >= 3, 20, "copy never finished")
            time.sleep(0.01)
        first.kill(signal.SIGKILL)
    finally:
        first.kill(signal.SIGKILL)
    fake.slow_view(0.0)
    second = start_listener(cfg, tmp_path, "listener2")
    try:
        def final():
            j = connect(database_url)
            try:
                return jobs.get_job(j, row["id"])["status"] in jobs.FINAL
            finally:
                j.close()
        wait_for(final, 30, f"not finalized after restart: {second.log()}")
    finally:
        second.stop()
    outs = _rows(database_url, "SELECT * FROM job_outputs WHERE job_id=%s", row["id"])
    assert len(outs) == 3 and len(_rows(database_url, "SELECT * FROM usage_records WHERE job_id=%s", row["id"])) == 1
    for out in outs:
        head = ctx.store.head(out["object_key"])
        assert head is not None and head["bytes"] == out["bytes"]


def _rows(url, sql, *args):
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def _connected(url, base) -> bool:
    rows = _rows(url, "SELECT connected FROM backends WHERE url=%s", base)
    return bool(rows and rows[0]["connected"])


# 6. Two listeners --------------------------------------------------------------------------------------

def test_second_listener_is_standby_and_takes_over_within_15s(make_config, db_conn, database_url, fake, tmp_path):
    from shared.context import Context
    from shared.submission import submit
    from shared.users import get_or_create_user
    cfg = make_config(COMFYUI_URLS=fake.base_url, LEASE_S="3", **FAST)
    a = start_listener(cfg, tmp_path, "a")
    b = start_listener(cfg, tmp_path, "b")
    try:
        wait_for(lambda: _connected(database_url, fake.base_url), 20, "no listener connected")
        time.sleep(1.0)
        assert len(fake.connected_client_ids()) == 1  # only the owner holds a socket
        owner = _rows(database_url, "SELECT owner FROM backends WHERE url=%s", fake.base_url)[0]["owner"]
        victim, survivor = (a, b) if f":{a.pid}:" in owner else (b, a)
        victim.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: (r := _rows(database_url, "SELECT owner, connected FROM backends WHERE url=%s",
                                      fake.base_url)[0])["owner"] != owner and r["connected"], 15,
                 f"no takeover within 15s: {survivor.log()}")
        assert time.monotonic() - killed_at < 15
        user = get_or_create_user(db_conn, provider="dev", subject="two")
        _, row = submit(Context(cfg), user, txt2img(seed=61))
        wait_for(lambda: _rows(database_url, "SELECT status FROM jobs WHERE id=%s", row["id"])[0]["status"]
                 == "succeeded", 20, "job not finished by the new owner")
    finally:
        a.stop()
        b.stop()


# 7. Timeouts ---------------------------------------------------------------------------------------------

def test_run_timeout_interrupts_and_fails(harness_factory, tmp_path):
    import json
    from shared.config import PROJECT_ROOT
    from tests.fakes.comfyui import FakeComfy
    spec = json.loads((PROJECT_ROOT / "workflows" / "txt2img.json").read_text())
    spec["timeout_s"] = 1  # the workflow's own limit
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "txt2img.json").write_text(json.dumps(spec))
    with FakeComfy(step_delay=0.1) as slow:  # 60 steps: 6 s, well past the 1 s limit
        h = harness_factory(slow, WORKFLOWS_DIR=str(tmp_path / "wf"), RECONCILE_INTERVAL_S="0.3")
        h.start_listener()
        job_id = h.submit(txt2img(seed=71, steps=60))
        job = h.wait_final(job_id, 20)
        assert job["status"] == "failed" and job["error_code"] == "timeout"
        assert len(h.usage(job_id)) == 1
        wait_for(lambda: requests.get(f"{slow.base_url}/history/{job_id}", timeout=5).json(), 10, "not interrupted")
        status = requests.get(f"{slow.base_url}/history/{job_id}", timeout=5).json()[job_id]["status"]
        assert any(m[0] == "execution_interrupted" for m in status["messages"])
        h.stop_listener()


def test_queue_timeout_removes_from_comfyui_and_fails(harness_factory, fake):
    h = harness_factory(fake, QUEUE_TIMEOUT_S="1", RECONCILE_INTERVAL_S="0.3")
    h.start_listener()
    fake.pause()
    job_id = h.submit(txt2img(seed=72))
    job = h.wait_final(job_id, 20)
    assert job["status"] == "failed" and job["error_code"] == "timeout"
    assert job_id not in requests.get(f"{fake.base_url}/queue", timeout=5).text
    fake.resume()


# 9. Storage outage ---------------------------------------------------------------------------------------

def test_storage_outage_fails_with_output_copy_failed_after_the_deadline(harness_factory, fake, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the storage folder should be")
    h = harness_factory(fake, STORAGE_URL=blocked.as_uri(), OUTPUT_COPY_DEADLINE_S="1")
    h.start_listener()
    job_id = h.submit(txt2img(seed=91))
    job = h.wait_final(job_id, 20)
    assert job["status"] == "failed" and job["error_code"] == "output_copy_failed"
    assert h.outputs(job_id) == [] and len(h.usage(job_id)) == 1
    # The app reads this message: it names the image, never the storage's paths, bucket or endpoint.
    assert "could not be saved" in job["error_message"] and str(tmp_path) not in job["error_message"]


def test_transient_view_failures_are_retried(harness, fake):
    fake.fail_view(status=500, times=2)
    job_id = harness.submit(txt2img(seed=92))
    assert harness.wait_final(job_id)["status"] == "succeeded"


def test_an_error_page_with_status_200_is_not_taken_for_the_image(harness, fake):
    """A proxy answers /view 200 with HTML twice: retried, and only the real image is recorded."""
    fake.fail_http("/view", status=200, times=2, html=True)
    job_id = harness.submit(txt2img(seed=93))
    assert harness.wait_final(job_id)["status"] == "succeeded"
    [out] = harness.outputs(job_id)
    assert out["content_type"] == "image/png" and (out["width"], out["height"]) == (64, 64)


# 11. ComfyUI answers badly ----------------------------------------------------------------------------------

def test_html_and_5xx_from_history_do_not_stop_the_listener(harness, fake):
    fake.fail_http("/history", status=502, times=2, html=True)
    job_id = harness.submit(txt2img(seed=111))
    assert harness.wait_final(job_id)["status"] == "succeeded"
    other = harness.submit(txt2img(seed=112))
    assert harness.wait_final(other)["status"] == "succeeded"


def test_view_404_for_a_listed_file_fails_clearly(harness, fake):
    fake.fail_view(status=404, times=10)
    job_id = harness.submit(txt2img(seed=113))
    job = harness.wait_final(job_id)
    assert job["status"] == "failed" and job["error_code"] == "output_copy_failed"
    assert "no longer has" in job["error_message"]


def test_unreachable_backend_does_not_block_the_other(harness_factory, fake):
    from tests.fakes.comfyui import FakeComfy
    with FakeComfy(step_delay=0.01) as down:
        down.reject_connections(True)
        h = harness_factory(fake, down)
        h.listener = __import__("listener.connection", fromlist=["Listener"]).Listener(h.ctx)
        h.listener.start()
        wait_for(lambda: h.backend(fake.base_url) and h.backend(fake.base_url)["connected"], 20, "no connect")
        job_id = h.submit(txt2img(seed=114))
        assert h.wait_final(job_id)["status"] == "succeeded"
        assert not h.backend(down.base_url)["connected"]


# 10. Bad frames and floods ------------------------------------------------------------------------------------

def test_bad_frames_are_skipped_and_counted_never_fatal(harness, fake):
    import struct
    worker = harness.listener.workers[0]
    client_id = harness.backend(fake.base_url)["client_id"]
    junk = ['{"type": "executing", "data": {"node": "3"', "not json at all", '{"type": "mystery", "data": {}}',
            '{"type": "progress", "data": {"value": "x", "max": null}}', "[1, 2, 3]",
            b"\x00\x00", struct.pack(">II", 1, 9) + b"\xff\xd8", struct.pack(">I", 77) + b"abc",
            struct.pack(">II", 4, 1000) + b"{}"]
    junk += ['{"type": "executing", "data": {"node": "3", "prompt_id": "%s"}}' % f"unknown-{n}" for n in range(2000)]
    before = worker.stats["ignored"]
    for frame in junk:
        fake.send_raw(frame)
    wait_for(lambda: worker.stats["ignored"] - before >= 9, 10, f"bad frames not counted: {worker.stats}")
    job_id = harness.submit(txt2img(seed=101))
    assert harness.wait_final(job_id)["status"] == "succeeded"
    assert harness.backend(fake.base_url)["client_id"] == client_id  # the same socket survived it all
    from listener.tracker import UNKNOWN_IDS_KEPT
    assert worker.tracker_unknown_ids() <= UNKNOWN_IDS_KEPT  # nothing keyed by prompt id grows without bound


def test_oversized_binary_frames_are_skipped():
    from listener import protocol
    event = protocol.parse_frame(b"\x00\x00\x00\x01\x00\x00\x00\x01" + b"\xff" * 100, max_binary_bytes=50)
    assert isinstance(event, protocol.Ignored)
