"""A job's life as the listener sees it, against the fake ComfyUI over real HTTP and WebSocket."""

from __future__ import annotations

import pytest
import requests

from listener.finalize import finalize
from shared.cancellation import cancel
from shared.labels import label_bytes
from tests.listener.conftest import txt2img
from tests.stack import wait_for


def test_success_records_outputs_usage_and_preview(harness, fake):
    job_id = harness.submit(txt2img(seed=3, steps=8, batch_size=2))
    job = harness.wait_final(job_id)
    assert job["status"] == "succeeded" and job["progress_percent"] == 100
    assert job["preview_key"] and job["preview_key"].endswith("preview.jpg")
    outs = harness.outputs(job_id)
    assert [(o["node_id"], o["idx"]) for o in outs] == [("9", 0), ("9", 1)]
    history = requests.get(f"{fake.base_url}/history/{job_id}", timeout=5).json()[job_id]
    for out, ref in zip(outs, history["outputs"]["9"]["images"]):
        with harness.ctx.store.open(out["object_key"]) as f:
            # ComfyUI's image as stored: its graph dropped, the AI-content label added (shared/labels.py)
            assert f.read() == label_bytes(fake.output_bytes(ref["filename"]), job_id=job_id, provider="comfy-gateway")
        assert (out["width"], out["height"], out["content_type"]) == (64, 64, "image/png")
    [usage] = harness.usage(job_id)
    assert (usage["status"], usage["images"], usage["steps"]) == ("succeeded", 2, 8)
    assert usage["megapixels"] == pytest.approx(2 * 64 * 64 / 1e6, abs=1e-4)
    assert usage["gpu_seconds"] > 0


def test_finalize_twice_changes_nothing(harness, fake):
    job_id = harness.submit(txt2img(seed=4))
    harness.wait_final(job_id)
    before = (harness.outputs(job_id), harness.usage(job_id), harness.job(job_id)["version"])
    assert finalize(harness.ctx, job_id, comfy=harness.ctx.comfy(fake.base_url), backend_url=fake.base_url) \
        == "succeeded"
    assert (harness.outputs(job_id), harness.usage(job_id), harness.job(job_id)["version"]) == before


def test_execution_error_fails_with_comfyui_message(harness, fake):
    fake.fail_next(at_step=2, message="CUDA out of memory")
    job_id = harness.submit(txt2img(seed=5))
    job = harness.wait_final(job_id)
    assert job["status"] == "failed" and job["error_code"] == "execution_error"
    assert job["error_message"] == "CUDA out of memory"
    assert (job["error_node_id"], job["error_node_type"]) == ("3", "KSampler")
    assert "Traceback" not in job["error_message"]
    assert harness.outputs(job_id) == []
    [usage] = harness.usage(job_id)
    assert usage["status"] == "failed" and usage["images"] == 0


def test_cached_rerun_still_has_outputs(harness, fake):
    first = harness.submit(txt2img(seed=6))
    harness.wait_final(first)
    second = harness.submit(txt2img(seed=6))
    assert harness.wait_final(second)["status"] == "succeeded"
    assert len(harness.outputs(second)) == 1


def test_cancel_queued_job_leaves_comfyui_queue(harness, fake):
    fake.pause()
    job_id = harness.submit(txt2img(seed=7))
    row = cancel(harness.ctx, job_id, harness.user)
    assert row["status"] == "cancelled"
    queue = requests.get(f"{fake.base_url}/queue", timeout=5).json()
    assert job_id not in str(queue)
    fake.resume()
    assert len(harness.usage(job_id)) == 1


def test_cancel_running_job_is_interrupted(harness, fake):
    job_id = harness.submit(txt2img(seed=8, steps=60))
    wait_for(lambda: harness.job(job_id)["status"] == "running", 10, "never ran")
    row = cancel(harness.ctx, job_id, harness.user)
    assert row["status"] in ("running", "cancelled")
    assert harness.wait_final(job_id)["status"] == "cancelled"
    assert harness.outputs(job_id) == [] and len(harness.usage(job_id)) == 1


def test_cancel_final_job_is_409(harness, fake):
    from shared.errors import ConflictError
    job_id = harness.submit(txt2img(seed=9))
    harness.wait_final(job_id)
    with pytest.raises(ConflictError) as info:
        cancel(harness.ctx, job_id, harness.user)
    assert info.value.code == "job_finished"


def test_cancel_racing_completion_ends_in_one_final_state(harness, fake):
    """Cancel at every moment of a short job: exactly one final state, outputs only if succeeded."""
    for steps in (1, 2, 3, 4):
        job_id = harness.submit(txt2img(seed=100 + steps, steps=steps))
        try:
            cancel(harness.ctx, job_id, harness.user)
        except Exception:
            pass  # 409 if it already finished
        job = harness.wait_final(job_id)
        outs = harness.outputs(job_id)
        assert (job["status"] == "succeeded") == bool(outs)
        assert len(harness.usage(job_id)) == 1
