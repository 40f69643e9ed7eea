"""Compare what the database believes with what ComfyUI knows, and settle the difference.

Run on every (re)connect and periodically. For each job the database holds as
active on a backend:

* in history → finalize it (success, error or interruption, read from history);
* in the queue → keep it (a row still ``submitting`` learns its number);
* in neither → ComfyUI forgot it (restart) or never got it (a crash between
  the row and POST /prompt): resubmit once under the current clientId if it
  never started, else fail it with ``backend_lost``.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from listener.finalize import HistoryPendingError, finalize
from shared.usage import write_usage
from shared import jobs
from shared.comfy import ComfyError, ComfyRejectedError
from shared.db import execute, utcnow

log = logging.getLogger(__name__)

MAX_SUBMIT_ATTEMPTS = 2


def claim_resubmit(conn, job: dict, client_id: str) -> bool:
    """Take the one right to resubmit a job (guards against two reconcilers)."""
    return execute(conn, """UPDATE jobs SET client_id=%s, submit_attempts=submit_attempts+1, status='submitting',
                            version=version+1, updated_at=%s
                            WHERE id=%s AND status IN ('submitting','queued') AND submit_attempts=%s""",
                   (client_id, utcnow(), job["id"], job["submit_attempts"])) == 1


def reconcile(ctx, backend: dict, comfy, client_id: str | None, *, submit_grace_s: float,
              finalize_job=None, missing: dict | None = None, settle_s: float = 0.0, clock=time.monotonic) -> dict:
    """Settle every active job of one backend; return counts of what was done.

    A job found in neither the queue nor the history is only declared gone once it
    has been missing for ``settle_s`` (ComfyUI writes history a moment after a
    prompt leaves the queue); ``missing`` remembers since when, across calls.
    """
    missing = {} if missing is None else missing
    finalize_job = finalize_job or (lambda job_id, entry: finalize(ctx, job_id, comfy=comfy,
                                                                   backend_url=backend["url"], entry=entry))
    counts = {"checked": 0, "finalized": 0, "kept": 0, "resubmitted": 0, "lost": 0}
    with ctx.db.connection() as conn:
        active = jobs.jobs_on_backend(conn, backend["id"])
    if not active:
        return counts
    running, pending = comfy.queue()
    in_queue = {e.prompt_id: e for e in running + pending}
    now = utcnow()
    for job_id in set(missing) - {j["id"] for j in active}:
        missing.pop(job_id, None)  # settled elsewhere: forget it (nothing grows without bound)
    for job in active:
        counts["checked"] += 1
        job_id = job["id"]
        entry = comfy.history(job_id)
        if entry is not None or job_id in in_queue:
            missing.pop(job_id, None)
        if entry is not None:
            try:
                finalize_job(job_id, entry)
                counts["finalized"] += 1
            except HistoryPendingError:
                counts["kept"] += 1
            continue
        queued = in_queue.get(job_id)
        if queued is not None:
            if job["status"] == "submitting" or job["number"] != queued.number:
                with ctx.db.connection() as conn:
                    jobs.mark_submitted(conn, job_id, queued.number)
            counts["kept"] += 1
            continue
        if job["cancel_requested"]:
            with ctx.db.transaction() as conn:
                jobs.mark_cancelled(conn, job_id)
                write_usage(conn, job_id, backend["url"])
            counts["finalized"] += 1
            continue
        if job["status"] == "submitting" and now - job["updated_at"] < timedelta(seconds=submit_grace_s):
            counts["kept"] += 1  # its POST /prompt may still be in flight
            continue
        first_missed = missing.setdefault(job_id, clock())
        if clock() - first_missed < settle_s:
            counts["kept"] += 1  # maybe its history is not written yet: look again later
            continue
        missing.pop(job_id, None)
        if job["status"] in ("submitting", "queued") and job["submit_attempts"] < MAX_SUBMIT_ATTEMPTS and client_id:
            if _resubmit(ctx, comfy, job, client_id):
                counts["resubmitted"] += 1
                continue
        with ctx.db.transaction() as conn:
            if jobs.mark_failed(conn, job_id, code="backend_lost",
                                message="the ComfyUI server lost this job (it restarted or dropped its queue)"):
                log.warning("job %s: lost by %s", job_id, backend["url"])
            write_usage(conn, job_id, backend["url"])
        counts["lost"] += 1
    return counts


def _resubmit(ctx, comfy, job: dict, client_id: str) -> bool:
    with ctx.db.connection() as conn:
        if not claim_resubmit(conn, job, client_id):
            return True  # someone else settled it meanwhile
    try:
        number = comfy.submit(job["prompt"], client_id=client_id, prompt_id=job["id"])
    except ComfyRejectedError as e:
        with ctx.db.transaction() as conn:
            jobs.mark_failed(conn, job["id"], code="execution_error", message=f"ComfyUI rejected the workflow: {e}")
        return True
    except ComfyError as e:
        log.warning("job %s: resubmission failed: %s (next reconcile settles it)", job["id"], e)
        return True
    with ctx.db.connection() as conn:
        jobs.mark_submitted(conn, job["id"], number)
    log.info("job %s: resubmitted as number %s", job["id"], number)
    return True


def enforce_timeouts(ctx, backend: dict, comfy, *, queue_timeout_s: float, default_run_timeout_s: float) -> int:
    """Fail jobs waiting or running past their limits (interrupting them on ComfyUI)."""
    now = utcnow()
    failed = 0
    with ctx.db.connection() as conn:
        active = jobs.jobs_on_backend(conn, backend["id"])
    for job in active:
        wf = ctx.workflows.get(job["workflow"])
        run_limit = (wf.timeout_s if wf and wf.timeout_s else None) or default_run_timeout_s
        if job["status"] == "running" and job["started_at"] and now - job["started_at"] > timedelta(seconds=run_limit):
            message = f"the job ran longer than {run_limit:.0f}s"
            try:
                comfy.interrupt(job["id"])
            except ComfyError as e:
                log.warning("job %s: interrupt failed: %s", job["id"], e)
        elif job["status"] in ("submitting", "queued") and now - job["created_at"] > timedelta(seconds=queue_timeout_s):
            message = f"the job waited in the queue longer than {queue_timeout_s:.0f}s"
            try:
                comfy.delete([job["id"]])
            except ComfyError as e:
                log.warning("job %s: queue delete failed: %s", job["id"], e)
        else:
            continue
        with ctx.db.transaction() as conn:
            if jobs.mark_failed(conn, job["id"], code="timeout", message=message):
                failed += 1
                log.warning("job %s: %s", job["id"], message)
            write_usage(conn, job["id"], backend["url"])
    return failed
