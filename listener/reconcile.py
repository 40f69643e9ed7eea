"""Compare what the database believes with what ComfyUI knows, and settle the difference.

Run on every (re)connect and periodically. For each job the database holds as
active on a backend:

* in history → finalize it (success, error or interruption, read from history);
* in the queue → keep it (a row still ``submitting`` learns its number, one in
  ``queue_running`` is marked running so its run limit applies, one whose
  cancel was asked is deleted from the queue or interrupted);
* in neither → ComfyUI forgot it (restart) or never got it (a crash between
  the claim and POST /prompt): it goes back to the gateway queue, to run on
  whichever capable server has a slot first; one that had started there goes
  back only ``LOST_JOB_RETRIES`` times, then fails with ``backend_lost``.

A bad answer about one job (5xx, HTML, a timeout) skips that job until the
next pass; the others are still settled.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from listener.finalize import HistoryPendingError, current_attempt, finalize
from shared.usage import close_job
from shared import jobs
from shared.comfy import ComfyError
from shared.db import query_one, utcnow
from shared.pool import queue

log = logging.getLogger(__name__)

def reconcile(ctx, backend: dict, comfy, *, submit_grace_s: float,
              finalize_job=None, missing: dict | None = None, settle_s: float = 0.0, clock=time.monotonic,
              tick=None) -> dict:
    """Settle every active job of one backend; return counts of what was done.

    A job found in neither the queue nor the history is only declared gone once it
    has been missing for ``settle_s`` (ComfyUI writes history a moment after a
    prompt leaves the queue); ``missing`` remembers since when, across calls.
    Prompts ComfyUI still holds for jobs that are already final (failed while the
    server could not be reached, say) are taken off it. ``tick()`` is called
    between jobs (the listener renews its lease there).
    """
    missing = {} if missing is None else missing
    finalize_job = finalize_job or (lambda job_id, entry: finalize(ctx, job_id, comfy=comfy,
                                                                   backend_url=backend["url"], entry=entry))
    counts = {"checked": 0, "finalized": 0, "kept": 0, "requeued": 0, "lost": 0, "errors": 0}
    with ctx.db.connection() as conn:
        active = jobs.jobs_on_backend(conn, backend["id"])
    running, pending = comfy.queue()
    started = {e.prompt_id for e in running}
    in_queue = {e.prompt_id: e for e in running + pending}
    counts["stopped"] = _stop_settled(ctx, backend, comfy, set(in_queue) - {j["id"] for j in active}, started)
    if not active:
        return counts
    now = utcnow()
    for job_id in set(missing) - {j["id"] for j in active}:
        missing.pop(job_id, None)  # settled elsewhere: forget it (nothing grows without bound)
    for job in active:
        counts["checked"] += 1
        if tick is not None:
            tick()
        try:
            entry = comfy.history(job["id"])
            if entry is not None and not current_attempt(entry, job):
                entry = None  # an earlier run of this prompt id here: not what became of this attempt
            if entry is not None or job["id"] in in_queue:
                missing.pop(job["id"], None)
            if entry is not None:
                counts[_finalize(finalize_job, job["id"], entry)] += 1
            elif job["id"] in in_queue:
                _track_queued(ctx, comfy, job, in_queue[job["id"]], started=job["id"] in started)
                counts["kept"] += 1
            else:
                counts[_settle_missing(ctx, backend, job, now=now, submit_grace_s=submit_grace_s,
                                       missing=missing, settle_s=settle_s, clock=clock)] += 1
        except ComfyError as e:
            # One bad answer about one job: keep it for the next pass and settle the others.
            counts["errors"] += 1
            log.warning("job %s: not reconciled this time: %s", job["id"], e)
    return counts


def _stop_settled(ctx, backend: dict, comfy, prompt_ids: set, started: set) -> int:
    """Take off ComfyUI the prompts of jobs that are already final, or run elsewhere now; return how many."""
    if not prompt_ids:
        return 0
    with ctx.db.connection() as conn:
        final = jobs.settled_job_ids(conn, sorted(prompt_ids), backend["id"])
    for job_id in final:
        try:
            if job_id in started:
                comfy.interrupt(job_id)
            else:
                comfy.delete([job_id])
            log.info("job %s: final or moved, taken off %s", job_id, backend["url"])
        except ComfyError as e:
            log.warning("job %s: could not be taken off ComfyUI: %s (next pass tries again)", job_id, e)
    return len(final)


def _finalize(finalize_job, job_id: str, entry: dict) -> str:
    try:
        finalize_job(job_id, entry)
        return "finalized"
    except HistoryPendingError:
        return "kept"


def _track_queued(ctx, comfy, job: dict, entry, *, started: bool) -> None:
    """A job ComfyUI holds: record its number, whether it started, and stop it if a cancel was asked."""
    job_id = job["id"]
    if job["status"] == "submitting" or job["number"] != entry.number:
        with ctx.db.connection() as conn:
            jobs.mark_submitted(conn, job_id, entry.number, job["backend_id"])
    if started and job["status"] != "running":
        # Submitted under an older clientId it sends us no events: without this its run limit never applies.
        with ctx.db.connection() as conn:
            if jobs.mark_running(conn, job_id, nodes_total=len(job["prompt"] or {})):
                log.info("job %s: running (found in ComfyUI's queue_running)", job_id)
    if job["cancel_requested"]:
        if started:
            comfy.interrupt(job_id)  # history then says interrupted: finalized as cancelled
            log.info("job %s: interrupted (cancel was requested)", job_id)
        else:
            comfy.delete([job_id])  # gone from the queue: the next pass marks it cancelled
            log.info("job %s: deleted from ComfyUI's queue (cancel was requested)", job_id)


def _settle_missing(ctx, backend: dict, job: dict, *, now, submit_grace_s: float, missing: dict,
                    settle_s: float, clock) -> str:
    """A job in neither the queue nor the history: wait, cancel, requeue or fail it."""
    job_id = job["id"]
    if job["status"] == "submitting" and now - job["updated_at"] < timedelta(seconds=submit_grace_s):
        return "kept"  # its POST /prompt may still be in flight (even if a cancel is asked)
    if job["cancel_requested"]:
        with ctx.db.transaction() as conn:
            jobs.mark_cancelled(conn, job_id, on=backend["id"])
            close_job(conn, job_id, backend["url"])
        return "finalized"
    first_missed = missing.setdefault(job_id, clock())
    if clock() - first_missed < settle_s:
        return "kept"  # maybe its history is not written yet: look again later
    missing.pop(job_id, None)
    return release_job(ctx, backend, job)


def release_job(ctx, backend: dict, job: dict) -> str:
    """A job its server no longer has (or cannot be asked about): back to the gateway queue, or failed.

    One that never started goes back to the queue; one that was running goes back
    while it has retries left (``LOST_JOB_RETRIES``), else fails with ``backend_lost``.
    Returns "requeued" or "lost".
    """
    started = job["status"] == "running"
    if not started or job["lost_retries"] < ctx.config.lost_job_retries:
        with ctx.db.transaction() as conn:
            if queue.requeue(conn, job["id"], backend["id"], lost=started):
                log.warning("job %s: %s no longer has it (%s); back in the gateway queue", job["id"], backend["url"],
                            "it was running" if started else "not started")
            elif _cancel_asked(conn, job["id"]) and jobs.mark_cancelled(conn, job["id"], on=backend["id"]):
                close_job(conn, job["id"], backend["url"])  # a cancel came meanwhile: nothing left to run
        return "requeued"
    with ctx.db.transaction() as conn:
        if jobs.mark_failed(conn, job["id"], code="backend_lost", on=backend["id"],
                            message="the ComfyUI server running this job went away (it restarted or was lost)"):
            log.warning("job %s: lost by %s", job["id"], backend["url"])
        close_job(conn, job["id"], backend["url"])
    return "lost"


def _cancel_asked(conn, job_id: str) -> bool:
    row = query_one(conn, "SELECT cancel_requested FROM jobs WHERE id=%s", (job_id,))
    return bool(row and row["cancel_requested"])


def release_held(ctx, backend: dict) -> int:
    """The server is gone: release every job it holds (see ``release_job``); return how many.

    Safe to call again: a job released already is no longer the server's.
    """
    with ctx.db.connection() as conn:
        held = jobs.jobs_on_backend(conn, backend["id"])
    for job in held:
        if job["cancel_requested"]:
            with ctx.db.transaction() as conn:
                jobs.mark_cancelled(conn, job["id"], on=backend["id"])
                close_job(conn, job["id"], backend["url"])
        else:
            release_job(ctx, backend, job)
    return len(held)


def enforce_timeouts(ctx, backend: dict, comfy, *, queue_timeout_s: float, default_run_timeout_s: float,
                     busy=None, finalize_job=None, history_grace_s: float = 30.0, tick=None,
                     history_failing: dict | None = None, clock=time.monotonic) -> int:
    """Fail jobs waiting or running past their limits (stopping them on ComfyUI); return how many.

    ComfyUI's history has the last word: a job it has finished, or whose
    finalization is under way (``busy(job_id)``), is left to the finalizer
    however late it is (``finalize_job(job_id, entry)`` is handed the ones found
    here). If /history keeps failing for an overdue job, it is stopped and failed
    once it has failed for ``history_grace_s`` on end (``history_failing`` remembers
    since when, across calls): one bad answer never decides. With ``comfy`` None the server
    cannot be reached: nothing can be asked or stopped there, so overdue jobs are
    failed in the database only (reconciliation takes their prompts off ComfyUI
    when it answers again).
    """
    now = utcnow()
    failed = 0
    failing = {} if history_failing is None else history_failing
    with ctx.db.connection() as conn:
        active = jobs.jobs_on_backend(conn, backend["id"])
    for job_id in set(failing) - {j["id"] for j in active}:
        failing.pop(job_id, None)  # settled: forget it (nothing grows without bound)
    for job in active:
        overdue = _overdue(ctx, job, now, queue_timeout_s=queue_timeout_s, default_run_timeout_s=default_run_timeout_s)
        if overdue is None or (busy is not None and busy(job["id"])):
            continue
        message = overdue[0]
        if tick is not None:
            tick()
        if comfy is not None:
            try:
                finished = _finished_on_comfy(comfy, job, finalize_job)
                failing.pop(job["id"], None)
                if finished:
                    continue
            except ComfyError as e:
                failing_s = clock() - failing.setdefault(job["id"], clock())
                if failing_s < history_grace_s:
                    log.warning("job %s: past its limit but /history failed: %s (next pass decides)", job["id"], e)
                    continue
                log.warning("job %s: past its limit and /history failing for %.0fs (%s): stopped", job["id"],
                            failing_s, e)
                failing.pop(job["id"], None)
            _stop(comfy, job)
        with ctx.db.transaction() as conn:
            if jobs.mark_failed(conn, job["id"], code="timeout", message=message, on=backend["id"]):
                failed += 1
                log.warning("job %s: %s", job["id"], message)
            close_job(conn, job["id"], backend["url"])
    return failed


def _overdue(ctx, job: dict, now, *, queue_timeout_s: float,
             default_run_timeout_s: float) -> tuple[str, float] | None:
    """(why, seconds past the limit) for a job past its time limit, or None while it is within it."""
    if job["status"] == "running":
        wf = ctx.workflows.get(job["workflow"])
        run_limit = (wf.timeout_s if wf and wf.timeout_s else None) or default_run_timeout_s
        over = (now - job["started_at"]).total_seconds() - run_limit if job["started_at"] else 0.0
        if over > 0:
            return f"the job ran longer than {run_limit:.0f}s", over
    elif job["status"] in ("submitting", "queued"):
        over = (now - job["created_at"]).total_seconds() - queue_timeout_s
        if over > 0:
            return f"the job waited in the queue longer than {queue_timeout_s:.0f}s", over
    return None


def _finished_on_comfy(comfy, job: dict, finalize_job) -> bool:
    """True when ComfyUI has history of the job's current attempt (then its finalization, not the clock, decides)."""
    entry = comfy.history(job["id"])
    if entry is None or not current_attempt(entry, job):
        return False
    if finalize_job is not None:
        _finalize(finalize_job, job["id"], entry)
    return True


def _stop(comfy, job: dict) -> None:
    """Take an overdue job off ComfyUI: out of the queue, and interrupted in case it has started."""
    if job["status"] in ("submitting", "queued"):
        try:
            comfy.delete([job["id"]])
        except ComfyError as e:
            log.warning("job %s: queue delete failed: %s", job["id"], e)
    try:
        comfy.interrupt(job["id"])
    except ComfyError as e:
        log.warning("job %s: interrupt failed: %s", job["id"], e)
