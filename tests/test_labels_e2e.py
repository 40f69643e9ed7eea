"""Stored outputs carry the AI-content label and not ComfyUI's graph: the listener against the fake ComfyUI,
over real HTTP and WebSocket, into local storage and a real S3 API."""

from __future__ import annotations

import time

import pytest
import requests

from shared.context import Context
from shared.labels import aigc_label
from tests.fakes.comfyui import FakeComfy
from tests.listener.conftest import FAST, Harness, txt2img
from tests.shared.test_labels import chunks, idat, keywords, label_of_png

PROVIDER = "示例科技有限公司"


@pytest.fixture
def fake():
    with FakeComfy(step_delay=0.02) as f:
        yield f


@pytest.fixture(params=["local", "s3"])
def storage_env(request) -> dict:
    if request.param == "local":
        return {}
    s3 = request.getfixturevalue("s3rver")
    return {"STORAGE_URL": f"s3://{s3.bucket}/labels-{time.time_ns()}", "S3_ENDPOINT_URL": s3.endpoint_url}


@pytest.fixture
def run_job(make_config, db_conn, database_url, fake):
    """Run one two-image job through a listener with the given settings; yield (job id, outputs, harness)."""
    made = []

    def run(**env):
        cfg = make_config(COMFYUI_URLS=fake.base_url, AIGC_PROVIDER=PROVIDER, **{**FAST, **env})
        harness = Harness(Context(cfg), database_url)
        made.append(harness)
        harness.start_listener()
        job_id = harness.submit(txt2img(seed=11, steps=3, batch_size=2))
        assert harness.wait_final(job_id)["status"] == "succeeded"
        return job_id, harness.outputs(job_id), harness
    yield run
    for harness in made:
        harness.stop_listener()
        harness.ctx.db.close()


def originals(fake: FakeComfy, job_id: str) -> list[bytes]:
    history = requests.get(f"{fake.base_url}/history/{job_id}", timeout=5).json()[job_id]
    return [fake.output_bytes(ref["filename"], ref["subfolder"]) for ref in history["outputs"]["9"]["images"]]


def test_stored_images_carry_the_label_and_not_the_graph(run_job, storage_env, fake):
    job_id, outputs, harness = run_job(**storage_env)
    assert len(outputs) == 2
    for out, original in zip(outputs, originals(fake, job_id)):
        with harness.ctx.store.open(out["object_key"]) as f:
            stored = f.read()
        assert "prompt" in keywords(original)  # what ComfyUI's SaveImage wrote
        assert keywords(stored) == ["AIGC"] and b"KSampler" not in stored
        assert label_of_png(stored) == aigc_label(job_id=job_id, provider=PROVIDER)
        assert idat(stored) == idat(original) and chunks(stored)[0] == chunks(original)[0]
        assert out["bytes"] == len(stored) == harness.ctx.store.head(out["object_key"])["bytes"]
        assert (out["content_type"], out["width"], out["height"]) == ("image/png", 64, 64)


def test_keep_comfy_metadata_keeps_the_graph_beside_the_label(run_job, fake):
    job_id, outputs, harness = run_job(KEEP_COMFY_METADATA="1")
    for out, original in zip(outputs, originals(fake, job_id)):
        with harness.ctx.store.open(out["object_key"]) as f:
            stored = f.read()
        assert keywords(stored) == ["AIGC", "prompt"]
        assert stored == original[:33] + stored[33:len(stored) - len(original) + 33] + original[33:]
        assert label_of_png(stored)["ProduceID"] == job_id and out["bytes"] == len(stored)
