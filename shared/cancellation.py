"""Cancelling a job, which races with ComfyUI starting or finishing it.

The request is recorded first (``cancel_requested``), so whoever sees the job
next — this call, the listener's tracker when it starts, or reconciliation —
knows to stop it. A queued prompt is deleted from ComfyUI's queue and the job
becomes ``cancelled`` at once; a running one is interrupted and becomes
``cancelled`` when ComfyUI confirms (``execution_interrupted``). Every state
change is conditional, so a completion racing with the cancel ends in exactly
one final state.
"""

from __future__ import annotations

import logging

from shared import backends, jobs
from shared.comfy import ComfyError
from shared.db import execute, utcnow
from shared.errors import BackendUnavailableError, ConflictError
from shared.moderation import outputs
from shared.usage import close_job

log = logging.getLogger(__name__)


def request_cancel(conn, job_id: str) -> bool:
    return execute(conn, "UPDATE jobs SET cancel_requested=1, version=version+1, updated_at=%s "
                         "WHERE id=%s AND status IN ('submitting','queued','running','checking')", (utcnow(), job_id)) == 1


def cancel(ctx, job_id: str, user_id: str) -> dict | None:
    """Cancel one of the user's jobs; return the job row after the attempt (None if not found)."""
    with ctx.db.connection() as conn:
        job = jobs.get_job(conn, job_id, user_id)
        if job is None:
            return None
        if job["status"] in jobs.FINAL or not request_cancel(conn, job_id):
            raise ConflictError("the job is already finished", code="job_finished")
        job = jobs.get_job(conn, job_id)  # after the request: a dispatcher can no longer claim it
        backend = backends.get_backend(conn, job["backend_id"]) if job["backend_id"] else None
    if backend is None or job["status"] == "checking":
        # Still in the gateway queue (no server has heard of it), or done there and waiting for the
        # content check's verdict (shown as running): it ends now.
        with ctx.db.transaction() as conn:
            if job["status"] == "checking":
                outputs.cancel_checking(conn, job_id)
            else:
                jobs.mark_cancelled(conn, job_id)
            close_job(conn, job_id, backend["url"] if backend else "")
    else:
        comfy = ctx.comfy(backend["url"])
        try:
            if job["status"] in ("submitting", "queued"):
                comfy.delete([job_id])
            running, pending = comfy.queue()
            if any(e.prompt_id == job_id for e in running):
                comfy.interrupt(job_id)  # the listener marks it cancelled on execution_interrupted
                log.info("job %s: interrupt requested", job_id)
            elif (job["status"] != "submitting"  # its POST may be in flight: the sweep settles it after the grace
                  and not any(e.prompt_id == job_id for e in pending) and comfy.history(job_id) is None):
                with ctx.db.transaction() as conn:
                    if jobs.mark_cancelled(conn, job_id):
                        log.info("job %s: cancelled", job_id)
                    close_job(conn, job_id, backend["url"])
        except ComfyError as e:
            # The request is recorded: the listener stops the job when it sees it.
            log.warning("job %s: cancel could not reach %s: %s", job_id, backend["url"], e)
            raise BackendUnavailableError("the ComfyUI server did not answer; the cancel will be retried",
                                          retry_after=5) from None
    with ctx.db.connection() as conn:
        return jobs.get_job(conn, job_id, user_id)

