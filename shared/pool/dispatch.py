"""Send waiting jobs to servers with free slots: claim in one transaction, then POST each.

Anyone may dispatch: the API right after a submit (so a job goes out at once
when a slot is free), the listener when a job of its server ends, and the
listener's sweep as a safety net. The claim locks the serving backends' rows
(``FOR UPDATE``, in id order) and the waiting jobs it takes (``FOR UPDATE SKIP
LOCKED``), so concurrent dispatchers neither send one job twice nor give a
server more than its slots. Each job goes to a capable server with a free
slot: the one whose last job used the same model (a model switch costs seconds
on a GPU), else the one the fewest other waiting jobs could use (a server with
rare models or nodes is kept for the jobs only it can run), else the least busy.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from shared import backends, jobs, metrics
from shared.comfy import ComfyError, ComfyRejectedError, ComfyUnreachableError
from shared.pool import capabilities, queue
from shared.storage import StorageError
from shared.usage import close_job

log = logging.getLogger(__name__)

CAPABILITY_ERRORS = ("value_not_in_list",)
PAGE, MAX_PAGES = 100, 50  # a claim reads waiting jobs a page at a time, 5,000 at the most
ATTEMPT_KEY = "gateway_attempt"  # sent in extra_data: a history entry says which attempt of the job it is


@dataclass
class Outcome:
    """What became of one dispatched job: submitted, rejected (with ComfyUI's error), requeued, unclear
    (left to reconciliation) or moved (no longer this server's to send)."""

    job_id: str
    backend_url: str
    result: str
    error: ComfyRejectedError | None = None


def dispatch(ctx, *, until: str | None = None, most: int | None = None) -> dict[str, Outcome]:
    """Send waiting jobs to the free slots; return what became of each.

    ``until``: stop once this job is claimed; ``most``: claim at most this many (a submit request
    sends its own job and little else: the listener sends the rest).
    """
    claims = claim(ctx, until=until, most=most)
    return {job_id: send(ctx, job_id, backend) for job_id, backend in claims}


def claim(ctx, *, until: str | None = None, most: int | None = None) -> list[tuple[str, dict]]:
    """Assign waiting jobs to capable servers with free slots, in fair order; return (job id, backend)."""
    default_slots = ctx.config.comfyui_slots
    with ctx.db.transaction(isolation="READ COMMITTED") as conn:
        pool = backends.serving(conn, ctx.config.comfyui_urls, lock=True)
        free = {b["id"]: (b["slots"] or default_slots) - b["active"] for b in pool}
        if not any(n > 0 for n in free.values()):
            return []
        caps = backends.capabilities(conn, pool, ctx.capabilities_cache)
        waiting = queue.waiting(conn, lock=True, limit=PAGE)
        reach: dict[int, int] = {}  # how many waiting jobs each server can run (counted when first needed)

        def versatility(b: dict) -> int:
            if b["id"] not in reach:
                reach[b["id"]] = sum(capabilities.can_run(j["needs"], caps.get(b["id"])) for j in waiting)
            return reach[b["id"]]

        claims, seen = [], 0
        while seen < len(waiting) and any(n > 0 for n in free.values()):
            job = waiting[seen]
            seen += 1
            if seen == len(waiting) and len(waiting) % PAGE == 0 and len(waiting) < PAGE * MAX_PAGES:
                # Jobs the free servers can run may wait further back (the head needs busy servers): read on.
                waiting += queue.waiting(conn, lock=True, limit=PAGE, after=job)
            able = [b for b in pool if free[b["id"]] > 0 and capabilities.can_run(job["needs"], caps.get(b["id"]))]
            if not able:
                continue  # no free server can run this one: the next may run elsewhere
            # Same model first; then the server fewest other waiting jobs could use (keep the versatile ones
            # for the jobs only they can run); then the least busy.
            best = min(able, key=lambda b: (job["model"] is not None and b["last_model"] != job["model"],
                                            versatility(b) if len(able) > 1 else 0,
                                            b["active"] / (b["slots"] or default_slots), b["id"]))
            if queue.claim(conn, job, best):
                free[best["id"]] -= 1
                best["active"] += 1
                if job["model"] is not None and best["last_model"] != job["model"]:
                    best["last_model"] = job["model"]
                    backends.set_last_model(conn, best["id"], job["model"])
                claims.append((job["id"], best))
                if job["id"] == until or (most is not None and len(claims) >= most):
                    break
    return claims


def send(ctx, job_id: str, backend: dict) -> Outcome:
    """POST a claimed job (and its input images) to its server and record what happened."""
    url = backend["url"]
    with ctx.db.connection() as conn:
        job = queue.claimed(conn, job_id)
    if job is None or job["status"] != "submitting" or job["backend_id"] != backend["id"]:
        return Outcome(job_id, url, "moved")
    comfy = ctx.comfy(url)
    try:
        for spec in (job.get("inputs") or {}).values():
            with ctx.store.open(spec["key"]) as f:
                comfy.upload_image(spec["file"], f, spec["content_type"])
        number = comfy.submit(job["prompt"], client_id=backend["client_id"], prompt_id=job_id,
                              extra_data={ATTEMPT_KEY: job["submit_attempts"]})
    except ComfyRejectedError as e:
        if _capability_refusal(e):
            # The server no longer offers what its stored capabilities said: read them again, run elsewhere.
            log.warning("job %s: %s refused a value it was thought to offer (%s); requeued", job_id, url, e)
            with ctx.db.transaction() as conn:
                backends.forget_capabilities(conn, backend["id"])
                queue.requeue(conn, job_id, backend["id"])
            return Outcome(job_id, url, "requeued")
        log.info("job %s: ComfyUI rejected the prompt: %s", job_id, e)
        with ctx.db.transaction() as conn:
            jobs.mark_failed(conn, job_id, code="execution_error", message=f"ComfyUI rejected the workflow: {e}",
                             on=backend["id"])
            close_job(conn, job_id, url)
        return Outcome(job_id, url, "rejected", e)
    except ComfyUnreachableError as e:
        # Nothing was sent: back to the queue (the listener notices the server is gone).
        log.warning("job %s: %s unreachable (%s); requeued", job_id, url, e)
        with ctx.db.transaction() as conn:
            queue.requeue(conn, job_id, backend["id"])
        return Outcome(job_id, url, "requeued")
    except (ComfyError, StorageError, OSError) as e:
        # A read timeout, a reset, a proxy's 5xx, a garbled answer: ComfyUI may have queued it. The row
        # stays 'submitting'; the listener's reconciliation asks ComfyUI and settles it.
        log.warning("job %s: POST /prompt on %s ended unclear (%s); left for reconciliation", job_id, url, e)
        return Outcome(job_id, url, "unclear")
    with ctx.db.connection() as conn:
        jobs.mark_submitted(conn, job_id, number, backend["id"])
    metrics.dispatched(job.get("created_at"))
    log.info("job %s: sent to %s as number %s", job_id, url, number)
    return Outcome(job_id, url, "submitted")


def _capability_refusal(e: ComfyRejectedError) -> bool:
    """A refusal for a missing node class or a value the server does not offer (not the workflow's fault)."""
    error = e.error if isinstance(e.error, dict) else {}
    if error.get("type") in ("invalid_prompt", "missing_node_type") and "does not exist" in str(error.get("message")):
        return True
    for node in (e.node_errors or {}).values():
        for err in (node or {}).get("errors", []) if isinstance(node, dict) else []:
            if isinstance(err, dict) and err.get("type") in CAPABILITY_ERRORS:
                return True
    return False


def sweep(ctx) -> dict[str, Outcome]:
    """The safety net: fail waiting jobs past QUEUE_TIMEOUT_S, then dispatch."""
    limit = ctx.config.queue_timeout_s
    with ctx.db.connection() as conn:
        expired = queue.expired(conn, limit)
    for job_id in expired:
        with ctx.db.transaction() as conn:
            if queue.expire(conn, job_id, f"the job waited in the queue longer than {limit:.0f}s"):
                close_job(conn, job_id, "")
                log.warning("job %s: waited in the gateway queue longer than %.0fs", job_id, limit)
    return dispatch(ctx)


class Kicker:
    """Call it to dispatch soon on an executor's thread: at most one pass runs, and one more is queued
    for calls that come meanwhile (a burst of finished jobs costs two passes, not one each)."""

    def __init__(self, ctx, executor, stopping: threading.Event):
        self.ctx = ctx
        self.executor = executor
        self.stopping = stopping
        self._lock = threading.Lock()
        self._state = "idle"  # idle | running | again

    def __call__(self) -> None:
        with self._lock:
            if self._state != "idle":
                self._state = "again"
                return
            self._state = "running"
        try:
            self.executor.submit(self._run)
        except RuntimeError:  # the executor is shutting down
            with self._lock:
                self._state = "idle"

    def _run(self) -> None:
        while True:
            try:
                dispatch(self.ctx)
            except Exception as e:
                log.warning("dispatch failed: %s (the next pass retries)", e)
            with self._lock:
                if self._state == "again" and not self.stopping.is_set():
                    self._state = "running"
                    continue
                self._state = "idle"
                return
