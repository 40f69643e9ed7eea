"""Jobs always settle: time limits against what ComfyUI's history says, servers that cannot be
reached, bad answers about one job, sockets and events that must not be dropped, cancels racing
submissions. Real parts throughout (fake ComfyUI over HTTP/WebSocket, real MariaDB)."""

from __future__ import annotations

import json
import time
import uuid

import requests

from listener.connection import FINALIZE_THREADS, FIRST_DELAY_S, Listener
from listener.reconcile import enforce_timeouts
from shared import backends, jobs
from shared.config import PROJECT_ROOT
from shared.db import connect, execute, utcnow
from shared.pool import queue
from shared.usage import write_usage
from tests.fakes.comfyui import FakeComfy
from tests.listener.conftest import txt2img
from tests.stack import wait_for

OLD_CLIENT = "an-older-socket"


def limited_workflows(tmp_path, timeout_s: int) -> str:
    """A workflows folder whose txt2img has its own run limit."""
    spec = json.loads((PROJECT_ROOT / "workflows" / "txt2img.json").read_text())
    spec["timeout_s"] = timeout_s
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "txt2img.json").write_text(json.dumps(spec))
    return str(folder)


def old_job(h, fake, seed, *, steps=4, client_id=OLD_CLIENT, send=True, age_s=60.0) -> str:
    """A job submitted under another clientId (an older socket's): this listener gets none of its events."""
    job_id = str(uuid.uuid4())
    graph, params = h.ctx.workflows["txt2img"].fill(txt2img(seed=seed, steps=steps)["params"])
    conn = connect(h.database_url)
    try:
        backend_id = backends.ensure_backend(conn, fake.base_url)
        jobs.create_job(conn, job_id=job_id, user_id=h.user, workflow="txt2img", params=params, prompt=graph,
                        backend_id=backend_id, client_id=client_id)
        execute(conn, "UPDATE jobs SET created_at = created_at - INTERVAL %s SECOND WHERE id=%s", (age_s, job_id))
        if send:
            number = h.ctx.comfy(fake.base_url).submit(graph, client_id=client_id, prompt_id=job_id)
            jobs.mark_submitted(conn, job_id, number)
    finally:
        conn.close()
    return job_id


def history(fake, job_id) -> dict | None:
    return requests.get(f"{fake.base_url}/history/{job_id}", timeout=5).json().get(job_id)


def interrupted(entry: dict) -> bool:
    return any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])


def in_comfy_queue(fake, job_id) -> bool:
    return job_id in requests.get(f"{fake.base_url}/queue", timeout=5).text


# 1. A finished job's history beats the clock ------------------------------------------------------------

def test_job_that_finished_while_the_listener_was_down_succeeds_even_past_its_limit(harness_factory, tmp_path):
    with FakeComfy(step_delay=0.02) as fake:  # 60 steps: ~1.2 s, within the 2 s limit
        h = harness_factory(fake, WORKFLOWS_DIR=limited_workflows(tmp_path, 2), OUTPUT_COPY_DEADLINE_S="5")
        h.start_listener()
        job_id = h.submit(txt2img(seed=201, steps=60))
        wait_for(lambda: h.job(job_id)["status"] == "running", 10, "never ran")
        h.stop_listener()
        wait_for(lambda: history(fake, job_id), 10, "never finished on ComfyUI")
        started = h.job(job_id)["started_at"]
        wait_for(lambda: (utcnow() - started).total_seconds() > 2.2, 5, "limit not passed")
        fake.slow_view(0.5)  # the copy is still under way when the first timeout check runs
        h.start_listener()
        job = h.wait_final(job_id)
        assert (job["status"], job["error_code"]) == ("succeeded", None)
        assert len(h.outputs(job_id)) == 1 and len(h.usage(job_id)) == 1


# 2. A server the listener cannot reach ------------------------------------------------------------------

def test_jobs_of_an_unreachable_server_still_time_out(harness_factory, tmp_path):
    with FakeComfy(step_delay=0.05) as fake:  # 60 steps: 3 s, past the 1 s run limit
        # WATCHDOG_S: how long the server must have been unreachable before jobs fail in the database alone.
        h = harness_factory(fake, WORKFLOWS_DIR=limited_workflows(tmp_path, 1), QUEUE_TIMEOUT_S="1", WATCHDOG_S="1")
        h.start_listener()
        running = h.submit(txt2img(seed=202, steps=60))
        queued = h.submit(txt2img(seed=203))
        wait_for(lambda: h.job(running)["status"] == "running", 10, "never ran")
        fake.reject_connections(True)
        fake.drop_sockets()
        for job_id in (running, queued):
            job = h.wait_final(job_id, 10)
            assert (job["status"], job["error_code"]) == ("failed", "timeout")
            assert len(h.usage(job_id)) == 1
        assert not h.backend(fake.base_url)["connected"]


def test_a_short_outage_does_not_fail_a_job_comfyui_finished(harness_factory, fake):
    """Past its limit in the database, finished on ComfyUI, then a blip: history decides, not the clock."""
    h = harness_factory(fake, QUEUE_TIMEOUT_S="1", RECONCILE_INTERVAL_S="1000", WATCHDOG_S="60")
    h.start_listener()
    fake.go_silent(True)  # the completion frames are lost
    job_id = h.submit(txt2img(seed=206))
    wait_for(lambda: requests.get(f"{fake.base_url}/history/{job_id}", timeout=5).json(), 10, "never ran")
    time.sleep(1.2)  # past the queue limit, still queued in the database
    fake.reject_connections(True)
    fake.drop_sockets()
    wait_for(lambda: not h.backend(fake.base_url)["connected"], 10, "the socket stayed up")
    time.sleep(1.0)  # a few failed connects
    assert h.job(job_id)["status"] == "queued"
    fake.reject_connections(False)
    fake.go_silent(False)
    job = h.wait_final(job_id, 15)
    assert job["status"] == "succeeded" and len(h.outputs(job_id)) == 1


def test_prompts_of_jobs_failed_while_unreachable_are_taken_off_comfyui(harness_factory, fake):
    h = harness_factory(fake, QUEUE_TIMEOUT_S="1", RECONCILE_INTERVAL_S="0.3", WATCHDOG_S="1")
    h.start_listener()
    fake.pause()
    job_id = h.submit(txt2img(seed=207))
    fake.reject_connections(True)
    fake.drop_sockets()
    assert h.wait_final(job_id, 10)["error_code"] == "timeout"  # failed in the database alone
    assert job_id in fake._call(lambda server: [run.prompt_id for run in server.pending])  # ComfyUI still has it
    fake.reject_connections(False)
    wait_for(lambda: job_id not in requests.get(f"{fake.base_url}/queue", timeout=5).text, 10,
             "the failed job's prompt stayed in ComfyUI's queue (it would run for nothing)")
    fake.resume()


def test_an_overdue_job_whose_history_keeps_failing_is_still_stopped(harness_factory, fake):
    h = harness_factory(fake, QUEUE_TIMEOUT_S="1", RECONCILE_INTERVAL_S="0.3", HISTORY_RETRY_S="1")
    h.start_listener()
    fake.pause()
    job_id = h.submit(txt2img(seed=208))
    fake.fail_http(f"/history/{job_id}", status=500, times=10**6)
    job = h.wait_final(job_id, 10)
    assert (job["status"], job["error_code"]) == ("failed", "timeout")
    assert job_id not in requests.get(f"{fake.base_url}/queue", timeout=5).text
    fake.resume()


def test_the_lease_holds_through_a_slow_reconciliation(harness_factory, fake, monkeypatch):
    """Every /history call hangs for a while: the owner renews between jobs and never looks gone."""
    from shared import comfy as comfy_mod
    slow = {"on": False}
    real = comfy_mod.ComfyClient.history

    def history(self, prompt_id):
        if slow["on"]:
            time.sleep(0.5)
            raise comfy_mod.ComfyTimeoutError("GET /history: no answer within 0.5s")
        return real(self, prompt_id)
    monkeypatch.setattr(comfy_mod.ComfyClient, "history", history)
    h = harness_factory(fake, LEASE_S="3", RECONCILE_INTERVAL_S="0.3", COMFYUI_TIMEOUT="0.5")
    h.start_listener()
    fake.pause()
    for i in range(8):
        h.submit(txt2img(seed=210 + i))
    slow["on"] = True
    lapsed = 0
    for _ in range(30):
        row = h.sql("SELECT connected, lease_until > UTC_TIMESTAMP(3) AS live FROM backends")[0]
        lapsed += bool(row["connected"] and not row["live"])
        time.sleep(0.2)
    slow["on"] = False
    fake.resume()
    assert lapsed == 0, f"connected without a live lease in {lapsed} of 30 looks (the API would answer 503)"


def test_a_transient_history_error_never_fails_a_job_that_succeeded(harness_factory, tmp_path):
    """Finished on ComfyUI while the listener was down, well past its limit; /history then fails twice."""
    with FakeComfy(step_delay=0.02) as fake:
        h = harness_factory(fake, WORKFLOWS_DIR=limited_workflows(tmp_path, 2), HISTORY_RETRY_S="1")
        h.start_listener()
        job_id = h.submit(txt2img(seed=209, steps=60))
        wait_for(lambda: h.job(job_id)["status"] == "running", 10, "never ran")
        h.stop_listener()
        wait_for(lambda: requests.get(f"{fake.base_url}/history/{job_id}", timeout=5).json(), 10, "never finished")
        started = h.job(job_id)["started_at"]
        wait_for(lambda: (utcnow() - started).total_seconds() > 3.5, 10, "limit not passed")
        fake.fail_http(f"/history/{job_id}", status=502, times=2)
        h.start_listener()
        job = h.wait_final(job_id, 15)
        assert (job["status"], job["error_code"]) == ("succeeded", None)


def test_a_lost_job_waits_in_the_gateway_queue_while_its_server_has_no_socket(harness_factory, fake):
    """ComfyUI restarted (queue lost) and its WebSocket is refused while HTTP answers: the job goes back
    to the gateway queue (no backend_lost) and runs once the server takes jobs again."""
    h = harness_factory(fake, HISTORY_RETRY_S="1", RECONNECT_MAX_S="0.5")
    h.start_listener()
    fake.pause()
    job_id = h.submit(txt2img(seed=219))
    fake.fail_http("/ws", status=502, times=10**6)  # a proxy refuses the upgrade
    fake.restart()
    wait_for(lambda: not h.backend(fake.base_url)["connected"], 10, "the socket stayed up")
    time.sleep(3)  # several reconciliations over HTTP, past the history grace
    job = h.job(job_id)
    assert (job["status"], job["backend_id"]) == ("queued", None)  # waiting: no server takes jobs without a socket
    fake._call(lambda server: server.fail_rules.clear())
    fake.resume()
    job = h.wait_final(job_id, 20)
    assert job["status"] == "succeeded" and job["submit_attempts"] == 2


# 3. Bad answers about one job ---------------------------------------------------------------------------

def test_a_bad_history_answer_for_one_job_does_not_hold_up_the_others(harness_factory, fake):
    h = harness_factory(fake, RECONCILE_INTERVAL_S="0.3")
    h.start_listener()
    bad = old_job(h, fake, 204, age_s=120)  # the oldest: reconciled first
    good = old_job(h, fake, 205, age_s=60)
    fake.fail_http(f"/history/{bad}", status=502, times=10_000, html=True)
    assert h.wait_final(good, 10)["status"] == "succeeded"
    assert len(h.outputs(good)) == 1
    assert h.job(bad)["status"] in jobs.ACTIVE  # kept for a later pass, not failed


def test_timeouts_are_enforced_when_reconciliation_cannot_read_the_queue(harness_factory, fake):
    h = harness_factory(fake, QUEUE_TIMEOUT_S="1", RECONCILE_INTERVAL_S="0.3")
    h.start_listener()
    fake.pause()
    job_id = h.submit(txt2img(seed=206))
    fake.fail_http("/queue", status=500, times=10_000)
    job = h.wait_final(job_id, 10)
    assert (job["status"], job["error_code"]) == ("failed", "timeout")


# 4. The watchdog and the backoff ------------------------------------------------------------------------

def test_watchdog_ignores_jobs_running_under_an_older_socket(harness_factory):
    with FakeComfy(step_delay=0.04) as fake:  # 60 steps: 2.4 s, longer than the watchdog period
        h = harness_factory(fake, WATCHDOG_S="1")
        h.start_listener()
        worker = h.listener.workers[0]
        job_id = h.submit(txt2img(seed=207, steps=60))
        wait_for(lambda: h.job(job_id)["status"] == "running", 10, "never ran")
        old = h.backend(fake.base_url)["client_id"]
        fake.drop_sockets()
        new = wait_for(lambda: (h.backend(fake.base_url)["client_id"] or old) != old
                       and h.backend(fake.base_url)["client_id"], 10, "no reconnect")
        reconnects = worker.stats["reconnects"]
        assert h.wait_final(job_id)["status"] == "succeeded"
        # The new socket hears nothing of the old job: that silence is no reason to replace it.
        assert h.backend(fake.base_url)["client_id"] == new and worker.stats["reconnects"] == reconnects


def test_backoff_starts_over_once_a_connection_has_held(harness_factory, fake):
    h = harness_factory(fake, RECONNECT_MAX_S="4")
    h.listener = Listener(h.ctx)
    worker = h.listener.workers[0]
    worker.stable_s = 0.3
    h.listener.start()
    wait_for(lambda: h.backend(fake.base_url) and h.backend(fake.base_url)["connected"], 20, "no connect")
    fake.reject_connections(True)
    fake.drop_sockets()
    wait_for(lambda: worker.backoff >= 2, 10, "no backoff while the server refused")
    fake.reject_connections(False)
    wait_for(lambda: h.backend(fake.base_url)["connected"] and worker.backoff == FIRST_DELAY_S, 10,
             "the backoff did not start over once connected")
    old = h.backend(fake.base_url)["client_id"]
    fake.drop_sockets()
    # Reconnected after the first delay, not after the 4 s the failures had built up.
    wait_for(lambda: (h.backend(fake.base_url)["client_id"] or old) != old, 2.5, "slow reconnect after a drop")


# 5. Jobs found running by reconciliation ---------------------------------------------------------------------

def test_job_running_under_an_older_client_id_gets_its_run_limit(harness_factory, tmp_path):
    with FakeComfy(step_delay=0.05) as fake:  # 60 steps: 3 s, past the 1 s limit
        h = harness_factory(fake, WORKFLOWS_DIR=limited_workflows(tmp_path, 1), RECONCILE_INTERVAL_S="0.3")
        h.start_listener()
        job_id = old_job(h, fake, 208, steps=60)
        wait_for(lambda: h.job(job_id)["status"] == "running", 5, "not marked running from queue_running")
        job = h.wait_final(job_id, 10)
        assert (job["status"], job["error_code"]) == ("failed", "timeout")
        assert interrupted(wait_for(lambda: history(fake, job_id), 5, "not stopped on ComfyUI"))


def test_queue_timeout_interrupts_a_job_that_started_unseen(harness_factory):
    with FakeComfy(step_delay=0.05) as fake:  # 60 steps: 3 s
        h = harness_factory(fake)
        job_id = old_job(h, fake, 209, steps=60, age_s=120)  # 'queued' here, running on ComfyUI
        wait_for(lambda: h.ctx.comfy(fake.base_url).queue()[0], 5, "never started")
        backend = {"id": h.job(job_id)["backend_id"], "url": fake.base_url}
        assert enforce_timeouts(h.ctx, backend, h.ctx.comfy(fake.base_url), queue_timeout_s=60,
                                default_run_timeout_s=600) == 1
        assert h.job(job_id)["error_code"] == "timeout" and len(h.usage(job_id)) == 1
        assert interrupted(wait_for(lambda: history(fake, job_id), 5, "not stopped on ComfyUI"))


# 6. Copies: a total deadline, and one pool per server ------------------------------------------------------

def test_slow_but_steady_view_stream_fails_at_the_copy_deadline(harness_factory, fake):
    h = harness_factory(fake, OUTPUT_COPY_DEADLINE_S="1")
    h.start_listener()
    fake.drip_view(512, 0.2)  # ~13 KB image: ~5 s, every read well within COMFYUI_TIMEOUT
    job_id = h.submit(txt2img(seed=210))
    started = time.monotonic()
    job = h.wait_final(job_id, 10)
    assert (job["status"], job["error_code"]) == ("failed", "output_copy_failed")
    assert time.monotonic() - started < 4
    assert h.outputs(job_id) == [] and len(h.usage(job_id)) == 1


def test_slow_copies_on_one_server_do_not_hold_up_another(harness_factory, fake):
    with FakeComfy(step_delay=0.01) as slow:
        h = harness_factory(slow, fake, OUTPUT_COPY_DEADLINE_S="5")
        h.start_listener()
        slow.slow_view(2.5)
        for n in range(FINALIZE_THREADS):
            old_job(h, slow, 211 + n)
        wait_for(lambda: slow.view_requests >= FINALIZE_THREADS, 10, "the slow copies never started")
        job_id = h.submit(txt2img(seed=220))  # the idle server gets it
        assert h.job(job_id)["backend_id"] == h.backend(fake.base_url)["id"]
        assert h.wait_final(job_id, 1.5)["status"] == "succeeded"
        h.stop_listener()  # while the slow server is still there to finish its copies


# 7. An event the database refuses -------------------------------------------------------------------------

def test_an_event_that_cannot_be_applied_costs_the_event_not_the_socket(harness_factory):
    with FakeComfy(step_delay=0.05) as fake:  # 40 steps: 2 s
        h = harness_factory(fake)
        h.start_listener()
        worker = h.listener.workers[0]
        client_id = h.backend(fake.base_url)["client_id"]
        job_id = h.submit(txt2img(seed=221, steps=40))
        wait_for(lambda: h.job(job_id)["status"] == "running", 10, "never ran")
        fake.send_raw(json.dumps({"type": "progress", "data": {"value": 10**12, "max": 10**12, "node": "3",
                                                                "prompt_id": job_id}}))  # out of INT range
        wait_for(lambda: worker.stats["event_errors"] == 1, 5, f"not counted: {worker.stats}")
        assert h.wait_final(job_id)["status"] == "succeeded"
        assert h.backend(fake.base_url)["client_id"] == client_id  # the same socket all along


# 8. Cancels racing submissions ---------------------------------------------------------------------------------

def test_a_job_is_not_requeued_once_a_cancel_is_asked(harness_factory, fake):
    h = harness_factory(fake)
    job_id = old_job(h, fake, 222, send=False)
    conn = connect(h.database_url)
    try:
        seen = jobs.get_job(conn, job_id)  # what a reconcile pass read before the cancel landed
        execute(conn, "UPDATE jobs SET cancel_requested=1 WHERE id=%s", (job_id,))
        assert not queue.requeue(conn, job_id, seen["backend_id"])
    finally:
        conn.close()
    job = h.job(job_id)
    assert (job["client_id"], job["backend_id"], job["status"]) == (OLD_CLIENT, seen["backend_id"], "submitting")


def test_prompt_of_an_already_cancelled_job_is_interrupted_when_it_starts(harness_factory):
    with FakeComfy(step_delay=0.05) as fake:  # 60 steps: 3 s
        h = harness_factory(fake)
        h.start_listener()
        client_id = h.backend(fake.base_url)["client_id"]
        job_id = old_job(h, fake, 223, steps=60, client_id=client_id, send=False)
        with h.ctx.db.transaction() as conn:  # the cancel landed while POST /prompt was in flight
            execute(conn, "UPDATE jobs SET cancel_requested=1 WHERE id=%s", (job_id,))
            jobs.mark_cancelled(conn, job_id)
            write_usage(conn, job_id, fake.base_url)
        h.ctx.comfy(fake.base_url).submit(json.loads(h.job(job_id)["prompt"]), client_id=client_id,
                                          prompt_id=job_id)
        assert interrupted(wait_for(lambda: history(fake, job_id), 5, "never stopped"))
        assert h.job(job_id)["status"] == "cancelled" and len(h.usage(job_id)) == 1


def test_cancel_requested_job_still_in_the_queue_is_removed_and_cancelled(harness_factory, fake):
    h = harness_factory(fake, RECONCILE_INTERVAL_S="0.3")
    h.start_listener()
    fake.pause()
    job_id = old_job(h, fake, 224)
    # The cancel was recorded but its own delete did not reach ComfyUI.
    h.sql("UPDATE jobs SET cancel_requested=1 WHERE id=%s", (job_id,))
    job = h.wait_final(job_id, 5)
    assert job["status"] == "cancelled" and len(h.usage(job_id)) == 1
    assert not in_comfy_queue(fake, job_id)


def test_an_earlier_attempts_history_never_settles_the_job_sent_again(harness_factory, fake):
    """The job ran here, was taken off (it went back to the gateway queue) and came back to this server:
    the interrupted first run's history is not what became of the second attempt."""
    h = harness_factory(fake, RECONCILE_INTERVAL_S="0.3")
    job_id = old_job(h, fake, 230, steps=40, send=False, age_s=0)
    graph = json.loads(h.job(job_id)["prompt"])
    comfy = h.ctx.comfy(fake.base_url)
    comfy.submit(graph, client_id=OLD_CLIENT, prompt_id=job_id, extra_data={"gateway_attempt": 1})
    wait_for(lambda: job_id in requests.get(f"{fake.base_url}/queue", timeout=5).json()["queue_running"][0][1:2],
             10, "the first attempt never started")
    comfy.interrupt(job_id)
    wait_for(lambda: history(fake, job_id), 10, "no history of the first attempt")
    assert interrupted(history(fake, job_id))
    fake.pause()
    number = comfy.submit(graph, client_id=OLD_CLIENT, prompt_id=job_id, extra_data={"gateway_attempt": 2})
    conn = connect(h.database_url)
    try:
        execute(conn, "UPDATE jobs SET status='queued', number=%s, submit_attempts=2 WHERE id=%s", (number, job_id))
    finally:
        conn.close()
    h.start_listener()
    time.sleep(1.5)  # several reconciliations see the old entry
    assert h.job(job_id)["status"] == "queued"
    fake.resume()
    job = h.wait_final(job_id, 20)
    assert job["status"] == "succeeded" and len(h.outputs(job_id)) == 1
