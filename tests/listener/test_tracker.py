"""The tracker alone: events of the recordings' shapes applied to a real job row."""

from __future__ import annotations

import uuid

import pytest

from listener import protocol as p
from listener.tracker import Tracker
from shared import backends, jobs
from shared.context import Context
from shared.users import get_or_create_user

GRAPH = {"3": {"class_type": "KSampler", "inputs": {"steps": 20}},
         "4": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
         "8": {"class_type": "VAEDecode", "inputs": {}},
         "9": {"class_type": "SaveImage", "inputs": {}}}


@pytest.fixture
def tracked(make_config, db_conn):
    ctx = Context(make_config())
    with ctx.db.connection() as conn:
        user = get_or_create_user(conn, provider="dev", subject="t")
        backend_id = backends.ensure_backend(conn, "http://127.0.0.1:1")
        job_id = str(uuid.uuid4())
        jobs.create_job(conn, job_id=job_id, user_id=user, workflow="txt2img", params={}, prompt=GRAPH,
                        backend_id=backend_id, client_id="c")
        jobs.mark_submitted(conn, job_id, 0)
    finals = []
    tracker = Tracker(ctx, backend_id, "http://127.0.0.1:1", lambda job_id, hint: finals.append(job_id),
                      clock=lambda: 0.0)
    yield tracker, job_id, ctx
    ctx.db.close()


def state(job_id, **nodes) -> p.ProgressState:
    return p.ProgressState(prompt_id=job_id, nodes={n: p.NodeState(node_id=n, value=v, max=m, state=s)
                                                    for n, (s, v, m) in nodes.items()})


def progress(ctx, job_id) -> tuple:
    with ctx.db.connection() as conn:
        j = jobs.get_job(conn, job_id)
    return j["progress_percent"], j["progress_node"], j["progress_value"], j["progress_max"]


def test_progress_state_moves_the_whole_job_percent(tracked):
    tracker, job_id, ctx = tracked
    tracker.handle(p.ExecutionStart(prompt_id=job_id))
    # Loader done (executing events missed), sampler at 10 of 20: (1 + 10) / 23 of the job.
    tracker.handle(state(job_id, **{"4": ("finished", 1.0, 1.0), "3": ("running", 10, 20)}))
    percent, node, value, max_ = progress(ctx, job_id)
    assert (node, value, max_) == ("3", 10, 20)
    assert percent == pytest.approx(100 * 11 / 23, abs=0.01)
    # Nodes the graph does not have (a subgraph's inner ids) do not count.
    tracker.handle(state(job_id, **{"4": ("finished", 1, 1), "3": ("finished", 20, 20), "77:1": ("finished", 1, 1),
                                    "8": ("running", 0, 1)}))
    percent, node, _, _ = progress(ctx, job_id)
    assert node == "8" and percent == pytest.approx(100 * 21 / 23, abs=0.01)
    # Never backwards, and never 100 before the job is final.
    tracker.handle(state(job_id, **{"3": ("running", 1, 20)}))
    assert progress(ctx, job_id)[0] == pytest.approx(100 * 21 / 23, abs=0.01)


def test_last_event_at_follows_the_frames_of_a_long_run(harness, fake):
    """/healthz's last_event_at moves while a job runs, not only when ComfyUI's queue changes."""
    from tests.stack import wait_for
    fake.step_delay = 0.25
    job_id = harness.submit(steps=24, seed=3)  # ~6 s of sampler steps, no status frame meanwhile
    wait_for(lambda: harness.job(job_id)["status"] == "running", 10, "job never ran")
    url = harness.ctx.config.comfyui_urls[0]
    first = harness.backend(url)["last_event_at"]
    wait_for(lambda: harness.backend(url)["last_event_at"] > first, 5, "last_event_at did not move during the run")
    assert harness.job(job_id)["status"] == "running"
