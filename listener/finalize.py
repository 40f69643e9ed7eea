"""Finish a job from ComfyUI's history: copy its images, record outputs and usage.

Idempotent: the final transaction (outputs, state, usage record) is all or
nothing and every statement in it is conditional or keyed, so running it twice
changes nothing. Images are written under deterministic keys before that
transaction, so a crash in between leaves objects that the rerun overwrites and
nothing half-written referenced.
"""

from __future__ import annotations

import logging
import time

from shared import jobs, metrics, moderation, outbox
from shared.comfy import ComfyError, ComfyNotFoundError, ComfyProtocolError
from shared.images import HeadCapture, sniff
from shared.labels import LabelingReader
from shared.moderation import outputs
from shared.pool.dispatch import ATTEMPT_KEY
from shared.usage import close_job, write_usage

log = logging.getLogger(__name__)

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


class HistoryPendingError(Exception):
    """ComfyUI has no history for the prompt yet (or any more)."""


class OutputCopyError(Exception):
    """An output could not be copied into object storage."""


class CopyDeadlineError(Exception):
    """The copy deadline passed while an image was still streaming."""


class DeadlineReader:
    """A source stream that hands over whatever has arrived and fails once the deadline has passed.

    /view has a timeout per read only: a slow but steady stream would never end.
    Reading with ``read1`` returns each piece as it comes instead of waiting for a
    whole chunk, so the deadline is checked between the pieces.
    """

    def __init__(self, raw, deadline: float, *, clock=time.monotonic):
        self.raw = raw
        self.deadline = deadline
        self.clock = clock

    def read(self, size: int = -1) -> bytes:
        if self.clock() > self.deadline:
            raise CopyDeadlineError("the copy deadline passed while the image was still streaming")
        read1 = getattr(self.raw, "read1", None)
        data = read1(size) if read1 is not None and size and size > 0 else self.raw.read(size)
        return data or b""


def output_key(job: dict, node_id: str, index: int, content_type: str) -> str:
    """The deterministic object key of one output image."""
    ext = EXTENSIONS.get(content_type, ".png")
    return f"users/{job['user_id']}/jobs/{job['id']}/{node_id}_{index}{ext}"


def preview_key(job: dict, content_type: str) -> str:
    return f"users/{job['user_id']}/jobs/{job['id']}/preview{EXTENSIONS.get(content_type, '.jpg')}"


def saved_images(entry: dict) -> list[tuple[str, int, dict]]:
    """(node_id, index, image ref) of every saved output (type "output"), in node order."""
    out = []
    outputs = entry.get("outputs") or {}
    for node_id in sorted(outputs, key=jobs.node_order):
        images = [i for i in (outputs[node_id] or {}).get("images") or []
                  if isinstance(i, dict) and i.get("type") == "output" and i.get("filename")]
        out += [(node_id, idx, img) for idx, img in enumerate(images)]
    return out


def _messages(entry: dict) -> dict:
    found = {}
    for item in (entry.get("status") or {}).get("messages") or []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):
            found.setdefault(item[0], item[1])
    return found


def current_attempt(entry: dict, job: dict) -> bool:
    """Whether a history entry is of the job's current attempt, not of an earlier run of the same prompt id
    on this server (one that was taken off it while the job went to the gateway queue, then came back).

    Entries without the attempt tag (prompts sent before the tag existed) count as current.
    """
    prompt = entry.get("prompt") if isinstance(entry, dict) else None
    extra = prompt[3] if isinstance(prompt, list) and len(prompt) > 3 and isinstance(prompt[3], dict) else {}
    attempt = extra.get(ATTEMPT_KEY)
    return attempt is None or attempt == job["submit_attempts"]


def outcome(entry: dict) -> str:
    """'succeeded', 'failed' or 'cancelled', read from a history entry's status."""
    msgs = _messages(entry)
    if "execution_interrupted" in msgs:
        return "cancelled"
    status = entry.get("status") or {}
    if status.get("status_str") == "error" or "execution_error" in msgs:
        return "failed"
    return "succeeded"


def fetch_history(comfy, prompt_id: str, *, wait_s: float, sleep=time.sleep) -> dict:
    """Read /history/{id}, retrying with backoff for up to wait_s (history may lag the event)."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            entry = comfy.history(prompt_id)
        except ComfyError as e:
            entry = None
            log.warning("job %s: /history failed: %s", prompt_id, e)
        if entry is not None and (entry.get("status") or {}).get("completed") is not None:
            return entry
        if entry is not None and entry.get("outputs") is not None and entry.get("status"):
            return entry
        if time.monotonic() + delay > deadline:
            raise HistoryPendingError(prompt_id)
        sleep(delay)
        delay = min(delay * 2, 2.0)


def copy_output(comfy, store, job: dict, node_id: str, index: int, image: dict, *,
                deadline: float | None = None, provider: str = "comfy-gateway",
                keep_comfy_metadata: bool = False) -> dict:
    """Stream one image from ComfyUI's /view into object storage, labeled as AI-generated; return its output record.

    ``deadline`` (a time.monotonic() value) bounds the whole copy, not just each read.
    The label names ``provider``; ComfyUI's graph is left out unless ``keep_comfy_metadata``.
    """
    with comfy.view(image["filename"], image.get("subfolder") or "", image.get("type") or "output") as (raw, ctype, _):
        source = DeadlineReader(raw, deadline) if deadline is not None else raw
        # The capture counts and sniffs what is stored: the labeled image.
        capture = HeadCapture(LabelingReader(source, ctype, job_id=job["id"], provider=provider,
                                             keep_comfy_metadata=keep_comfy_metadata))
        # The key's extension follows the declared type; the record keeps what the bytes really are.
        declared = ctype.split(";")[0].strip().lower()
        key = output_key(job, node_id, index, declared)
        store.put_stream(key, capture, declared if declared in EXTENSIONS else "image/png")
    sniffed = sniff(bytes(capture.head))
    if sniffed is None and not declared.startswith("image/"):
        # A proxy's or server's error page with status 200: not the image history lists (retried).
        raise ComfyProtocolError(f"/view {image['filename']}: answered {declared or 'no type'}, not an image")
    content_type, width, height = sniffed if sniffed else (declared, None, None)
    return {"node_id": node_id, "index": index, "key": key, "content_type": content_type,
            "size": capture.total, "width": width, "height": height}


def copy_outputs(comfy, store, job: dict, images, *, deadline_s: float, sleep=time.sleep,
                 provider: str = "comfy-gateway", keep_comfy_metadata: bool = False) -> list[dict]:
    """Copy every image, retrying failures with backoff until deadline_s; raise OutputCopyError after."""
    deadline = time.monotonic() + deadline_s
    records = []
    for node_id, index, image in images:
        delay = 0.2
        while True:
            try:
                records.append(copy_output(comfy, store, job, node_id, index, image, deadline=deadline,
                                           provider=provider, keep_comfy_metadata=keep_comfy_metadata))
                metrics.copied(records[-1]["size"])
                break
            except ComfyNotFoundError as e:
                metrics.copy_failed(gave_up=True)
                raise OutputCopyError(f"ComfyUI no longer has {image['filename']}") from e
            except Exception as e:  # ComfyUI or storage trouble: retry until the deadline
                metrics.copy_failed(gave_up=time.monotonic() + delay > deadline)
                if time.monotonic() + delay > deadline:
                    # The app sees the job's error: no bucket, key, endpoint or path in it (the log has them).
                    log.warning("job %s: giving up on %s: %s", job["id"], image["filename"], e)
                    raise OutputCopyError(f"output image {node_id}/{index} could not be saved in time; "
                                          "storage or ComfyUI kept failing") from e
                log.warning("job %s: copying %s failed (%s); retrying", job["id"], image["filename"], e)
                sleep(delay)
                delay = min(delay * 2, 5.0)
    return records


def _ended_at(entry: dict) -> float | None:
    """When ComfyUI says the prompt's execution ended successfully (epoch seconds), if it says."""
    stamp = (_messages(entry).get("execution_success") or {}).get("timestamp")
    return stamp / 1000.0 if isinstance(stamp, (int, float)) else None


def _timing(entry: dict) -> tuple[float, float]:
    msgs = _messages(entry)
    start = (msgs.get("execution_start") or {}).get("timestamp")
    end = None
    for name in ("execution_success", "execution_error", "execution_interrupted"):
        if name in msgs and msgs[name].get("timestamp"):
            end = msgs[name]["timestamp"]
    prompt = entry.get("prompt") or []
    created = prompt[3].get("create_time") if len(prompt) > 3 and isinstance(prompt[3], dict) else None
    gpu = (end - start) / 1000.0 if start and end else 0.0
    queue = (start - created) / 1000.0 if start and created else 0.0
    return gpu, queue


def _succeed(ctx, conn, job: dict, records: list[dict], *, on: int | None, checked: bool, gpu: float,
             queue: float, ended: float | None) -> bool:
    """Record a successful run and its images: the job succeeds, or (``checked``) waits for the content
    check (hold) or succeeds with its verdict pending (publish). False if another final state won."""
    if not checked:
        changed = jobs.mark_succeeded(conn, job["id"], on=on)
    else:
        mode = outputs.hold if ctx.config.moderation_outputs == "hold" else outputs.publish
        changed = mode(conn, job["id"], on=on, gpu_seconds=gpu, queue_seconds=queue, ended_at=ended)
    if changed:
        jobs.record_run_time(conn, job["workflow"], gpu)
        for r in records:
            jobs.add_output(conn, job_id=job["id"], node_id=r["node_id"], index=r["index"], key=r["key"],
                            content_type=r["content_type"], size=r["size"], width=r["width"], height=r["height"])
        if checked:
            outputs.begin(conn, job["id"], [r["key"] for r in records], ctx.config.moderation_deadline_s)
    return changed


def apply_hint(ctx, job_id: str, hint: dict, backend_url: str, on: int | None = None) -> str:
    """Finish a job from what its final event said, when ComfyUI has no history of it."""
    with ctx.db.transaction() as conn:
        if hint["status"] == "cancelled":
            jobs.mark_cancelled(conn, job_id, on=on)
        else:
            jobs.mark_failed(conn, job_id, code=hint["code"], message=hint["message"],
                             node_id=hint.get("node_id"), node_type=hint.get("node_type"), on=on)
        close_job(conn, job_id, backend_url)
    return hint["status"]


def finalize(ctx, job_id: str, *, comfy, backend_url: str, entry: dict | None = None, hint: dict | None = None,
             history_wait_s: float | None = None, copy_deadline_s: float = 120.0, backend_id: int | None = None) -> str:
    """Bring a job to its final state from its history entry; return the resulting status.

    ``hint`` is what a final event said (error or interruption); it decides when
    history never shows up. Without one, raises HistoryPendingError when ComfyUI
    has no history for the job yet. With ``backend_id``, a job that has moved to
    another server (it was requeued when this one went away) is left alone, and
    no state is recorded unless this server still holds the job when it is: only
    the run on the server that holds it counts.
    """
    with ctx.db.connection() as conn:
        job = jobs.get_row(conn, job_id)
    if job is None:
        return "unknown"
    if backend_id is not None and job["status"] not in jobs.FINAL and job["backend_id"] != backend_id:
        log.info("job %s: finished on %s but it runs elsewhere now; ignored", job_id, backend_url)
        return "moved"
    if job["status"] == "checking":  # run and images recorded: the content check settles it
        return "checking"
    if job["status"] in jobs.FINAL:
        with ctx.db.transaction() as conn:
            if write_usage(conn, job_id, backend_url):  # a record that was missing: its event too
                outbox.job_finished(conn, job_id)
        return job["status"]
    if entry is None:
        wait = ctx.config.history_retry_s if history_wait_s is None else history_wait_s
        try:
            entry = fetch_history(comfy, job_id, wait_s=wait)
        except HistoryPendingError:
            if hint is None:
                raise
            return apply_hint(ctx, job_id, hint, backend_url, on=backend_id)
    if not current_attempt(entry, job):
        raise HistoryPendingError(f"job {job_id}: the history entry is of an earlier attempt")
    result = outcome(entry)
    gpu, queue = _timing(entry)
    if result == "succeeded":
        try:
            records = copy_outputs(comfy, ctx.store, job, saved_images(entry), deadline_s=copy_deadline_s,
                                   provider=ctx.config.aigc_provider,
                                   keep_comfy_metadata=ctx.config.keep_comfy_metadata)
        except OutputCopyError as e:
            log.error("job %s: %s", job_id, e)
            with ctx.db.transaction() as conn:
                jobs.mark_failed(conn, job_id, code="output_copy_failed", message=str(e), on=backend_id)
                close_job(conn, job_id, backend_url, gpu_seconds=gpu, queue_seconds=queue)
            return "failed"
        checked = moderation.enabled(ctx.config) and bool(records)
        with ctx.db.transaction() as conn:
            # Only the call that wins the state change records outputs (a cancel may have won).
            changed = _succeed(ctx, conn, job, records, on=backend_id, checked=checked, gpu=gpu, queue=queue,
                               ended=_ended_at(entry))
            if not (changed and checked):
                # the events of whichever final state won, once
                close_job(conn, job_id, backend_url, gpu_seconds=gpu, queue_seconds=queue)
            elif ctx.config.moderation_outputs == "publish":
                outbox.job_finished(conn, job_id)  # shown now: its events now, its usage record at the verdict
        if changed and checked and ctx.config.moderation_outputs == "hold":
            log.info("job %s: %d image(s) stored, waiting for the content check", job_id, len(records))
            return "checking"
        if changed:
            metrics.completed(_ended_at(entry))
            log.info("job %s: succeeded with %d image(s)", job_id, len(records))
        return "succeeded" if changed else "unchanged"
    with ctx.db.transaction() as conn:
        if result == "cancelled":
            jobs.mark_cancelled(conn, job_id, on=backend_id)
        else:
            err = _messages(entry).get("execution_error") or {}
            jobs.mark_failed(conn, job_id, code="execution_error",
                             message=(err.get("exception_message") or "ComfyUI reported an error").strip(),
                             node_id=err.get("node_id"), node_type=err.get("node_type"), on=backend_id)
        close_job(conn, job_id, backend_url, gpu_seconds=gpu, queue_seconds=queue)
    log.info("job %s: %s", job_id, result)
    return result
