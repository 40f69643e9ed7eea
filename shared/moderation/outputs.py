"""The checks of a job's output images in MySQL, and the verdict that settles the job.

One ``moderation_checks`` row per stored image (sql/0012_moderation.sql), written in the
transaction that records the outputs. Its life: ``pending`` (to be asked: listener/moderation_sender.py
claims it) → ``sent`` (WeChat took it, its ``trace_id`` is known; the push brings the verdict) →
``done`` (``suggest`` set, or NULL when no verdict came: ``last_error`` says why). A rejected job's
rows become ``withdraw`` until their objects are deleted.

``settle(ctx, job_id)`` turns the rows into the job's verdict once it is known, in one
transaction holding the job row: every image answered, or one risky (no need to wait for the
rest), or one without a verdict under MODERATION_FAIL=closed. Then ``hold`` jobs (status
``checking``) succeed or fail with ``content_rejected``; ``publish`` jobs (already succeeded) keep
their state, and the result of a rejected one answers 409 ``content_rejected``. The usage record
is written there, with the verdict, once. Any number of callers (the push, the sender, its sweep)
may call it: only the one that finds ``moderation='pending'`` acts.

Times are the database's clock (UTC).
"""

from __future__ import annotations

import logging

from shared import jobs, metrics, outbox
from shared.db import execute, query, query_one, utcnow
from shared.moderation import PASSED, PENDING, REJECTED, REVIEW, UNCHECKED
from shared.usage import close_job

log = logging.getLogger(__name__)

REJECTED_MESSAGE = {"risky": "the content check rejected the image",
                    "none": "the image could not be checked in time (MODERATION_FAIL=closed)"}


def begin(conn, job_id: str, keys: list[str], deadline_s: float) -> None:
    """Ask for a verdict on each stored image (in the transaction that recorded them)."""
    for key in keys:
        execute(conn, """INSERT IGNORE INTO moderation_checks (job_id, object_key, state, next_attempt_at, deadline_at,
                         created_at) VALUES (%s, %s, 'pending', UTC_TIMESTAMP(3),
                         UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND, UTC_TIMESTAMP(3))""",
                (job_id, key, int(deadline_s * 1e6)))


def hold(conn, job_id: str, *, on: int | None, gpu_seconds: float, queue_seconds: float,
         ended_at: float | None = None) -> bool:
    """A job whose run succeeded waits for its images' verdict (hold): running → checking, at 100%.
    ``ended_at``: ComfyUI's end of the run (epoch seconds), for the completion latency at the verdict."""
    now = utcnow()
    return execute(conn, f"""UPDATE jobs SET status='checking', moderation='pending', progress_percent=100,
                             progress_node=NULL, progress_title=NULL, progress_value=0, progress_max=0,
                             gpu_seconds=%s, queue_seconds=%s, run_ended_at=%s, version=version+1, updated_at=%s
                             WHERE id=%s AND status IN ('submitting','queued','running') {jobs._HELD_BY}""",
                   (gpu_seconds, queue_seconds, ended_at, now, job_id, on, on)) == 1


def publish(conn, job_id: str, *, on: int | None, gpu_seconds: float, queue_seconds: float,
            ended_at: float | None = None) -> bool:
    """A job whose run succeeded is shown at once (publish); its verdict is pending. (``ended_at`` is not
    kept: the job is visible now, and finalize observes its completion latency.)"""
    if not jobs.mark_succeeded(conn, job_id, on=on):
        return False
    execute(conn, "UPDATE jobs SET moderation='pending', gpu_seconds=%s, queue_seconds=%s WHERE id=%s",
            (gpu_seconds, queue_seconds, job_id))
    return True


# -- verdicts ---------------------------------------------------------------------------------------

def store_verdict(conn, trace_id: str, suggest: str | None, label: int | None, errcode: int = 0) -> None:
    """Keep WeChat's pushed verdict (a repeated push changes nothing)."""
    execute(conn, """INSERT IGNORE INTO moderation_verdicts (trace_id, suggest, label, errcode, received_at)
                     VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(3))""", (trace_id[:128], suggest, label, errcode))


def apply_verdict(conn, trace_id: str) -> str | None:
    """Give a sent check the verdict stored for its trace_id, whichever of the two came first; return
    the job id when a check was answered now."""
    changed = execute(conn, """UPDATE moderation_checks c JOIN moderation_verdicts v ON v.trace_id=c.trace_id
                               SET c.state='done', c.suggest=v.suggest, c.label=v.label,
                                   c.answered_at=UTC_TIMESTAMP(3), c.next_attempt_at=NULL,
                                   c.last_error=IF(v.suggest IS NULL, CONCAT('no verdict: WeChat errcode ', v.errcode),
                                                   NULL)
                               WHERE c.trace_id=%s AND c.state='sent'""", (trace_id,))
    if not changed:
        return None
    return query_one(conn, "SELECT job_id FROM moderation_checks WHERE trace_id=%s", (trace_id,))["job_id"]


def apply_stored(conn, limit: int = 100) -> list[str]:
    """Give sent checks the verdicts stored for them that were not applied (a listener that died between
    the two, or the push's and the sender's transactions crossing); return their jobs."""
    rows = query(conn, """SELECT c.trace_id FROM moderation_checks c JOIN moderation_verdicts v ON v.trace_id=c.trace_id
                          WHERE c.state='sent' LIMIT %s""", (limit,))
    return sorted({job for r in rows if (job := apply_verdict(conn, r["trace_id"])) is not None})


def close_open(conn, why: str, limit: int = 100) -> list[str]:
    """Close every open check without a verdict (MODERATION turned off); return their jobs."""
    rows = query(conn, "SELECT id, job_id FROM moderation_checks WHERE state IN ('pending','sent') LIMIT %s", (limit,))
    for r in rows:
        answer(conn, r["id"], None, why)
    return sorted({r["job_id"] for r in rows})


def answer(conn, check_id: int, suggest: str | None, error: str | None = None, label: int | None = None) -> bool:
    """Record a check's verdict (the webhook's answer), or that none will come (``suggest`` None, ``error`` why)."""
    return execute(conn, """UPDATE moderation_checks SET state='done', suggest=%s, label=%s, last_error=%s,
                            answered_at=UTC_TIMESTAMP(3), next_attempt_at=NULL
                            WHERE id=%s AND state IN ('pending','sent')""",
                   (suggest, label, error[:255] if error else None, check_id)) == 1


def expire(conn, limit: int = 100) -> list[str]:
    """Close the checks whose deadline passed without a verdict; return their jobs."""
    rows = query(conn, """SELECT id, job_id FROM moderation_checks WHERE state IN ('pending','sent')
                          AND deadline_at <= UTC_TIMESTAMP(3) ORDER BY deadline_at LIMIT %s""", (limit,))
    for r in rows:
        answer(conn, r["id"], None, "no verdict before the deadline (MODERATION_DEADLINE_S)")
    return sorted({r["job_id"] for r in rows})


def unsettled(conn, limit: int = 100) -> list[str]:
    """Jobs still pending whose checks all have an answer (their settle was interrupted)."""
    return [r["id"] for r in query(conn, """SELECT j.id FROM jobs j WHERE j.moderation='pending' AND NOT EXISTS
                                            (SELECT 1 FROM moderation_checks c WHERE c.job_id=j.id
                                             AND c.state IN ('pending','sent')) LIMIT %s""", (limit,))]


# -- the job's verdict ---------------------------------------------------------------------------------

def verdict(checks: list[dict], fail: str) -> tuple[str, str] | None:
    """(the job's moderation, why) once it is decided by its checks, else None (wait for more)."""
    if any(c["suggest"] == "risky" for c in checks):
        return REJECTED, "risky"
    unchecked = [c for c in checks if c["state"] == "done" and c["suggest"] is None]
    if unchecked and fail == "closed":
        return REJECTED, "none"
    if any(c["state"] in ("pending", "sent") for c in checks):
        return None
    if unchecked:
        return UNCHECKED, "none"
    return (REVIEW if any(c["suggest"] == "review" for c in checks) else PASSED), "pass"


def settle(ctx, job_id: str) -> str | None:
    """Apply the job's verdict if it is known; return it (None: not yet, or someone else did)."""
    with ctx.db.transaction() as conn:
        job = query_one(conn, "SELECT id, status, moderation, backend_id, run_ended_at FROM jobs WHERE id=%s "
                              "FOR UPDATE", (job_id,))
        if job is None or job["moderation"] != PENDING:
            return None
        checks = query(conn, "SELECT id, state, suggest, last_error FROM moderation_checks WHERE job_id=%s", (job_id,))
        # Checks left from when MODERATION was set are let through once it is none: nobody asks any more.
        decided = verdict(checks, ctx.config.moderation_fail if ctx.config.moderation != "none" else "open")
        if decided is None:
            return None
        outcome, why = decided
        if job["status"] == "checking":
            if outcome == REJECTED:
                jobs.mark_failed(conn, job_id, code="content_rejected", message=REJECTED_MESSAGE[why],
                                 from_states=("checking",))
            else:
                _succeed(conn, job_id)
        execute(conn, "UPDATE jobs SET moderation=%s, version=version+1, updated_at=%s WHERE id=%s",
                (outcome, utcnow(), job_id))
        if outcome == REJECTED:  # every image of the job goes, not only the risky one
            execute(conn, "UPDATE moderation_checks SET state='withdraw' WHERE job_id=%s", (job_id,))
            if job["status"] == "succeeded":  # published: its job.succeeded went out, say the images are gone
                outbox.job_withdrawn(conn, job_id)
        else:
            _close_checks(conn, job_id)
        backend = query_one(conn, "SELECT url FROM backends WHERE id=%s", (job["backend_id"],)) \
            if job["backend_id"] else None
        close_job(conn, job_id, backend["url"] if backend else "")
    if outcome == UNCHECKED:
        log.warning("job %s: images not checked (%s); let through (MODERATION_FAIL=open)", job_id,
                    "; ".join(sorted({c["last_error"] or "?" for c in checks if c["suggest"] is None})))
    else:
        log.info("job %s: content check %s", job_id, outcome)
    if outcome == REJECTED:
        withdraw(ctx, job_id)
    elif job["status"] == "checking":  # held until now: its images become visible here
        metrics.completed(job["run_ended_at"])
    return outcome


def _succeed(conn, job_id: str) -> bool:
    now = utcnow()
    return execute(conn, """UPDATE jobs SET status='succeeded', finished_at=%s, version=version+1, updated_at=%s
                            WHERE id=%s AND status='checking'""", (now, now, job_id)) == 1


def withdraw(ctx, job_id: str | None = None, limit: int = 50) -> int:
    """Delete the objects of rejected images (one job's, or any waiting); return how many went.
    A delete that fails is left for the next call (the sender's loop)."""
    with ctx.db.connection() as conn:
        sql, args = "SELECT id, object_key FROM moderation_checks WHERE state='withdraw'", []
        if job_id is not None:
            sql += " AND job_id=%s"
            args.append(job_id)
        rows = query(conn, sql + " LIMIT %s", [*args, limit])
    gone = 0
    for r in rows:
        try:
            ctx.store.delete(r["object_key"])
        except Exception as e:  # storage down: the sender tries again
            log.warning("rejected image %s not deleted yet: %s", r["object_key"], e)
            continue
        with ctx.db.connection() as conn:
            execute(conn, "UPDATE moderation_checks SET state='done' WHERE id=%s AND state='withdraw'", (r["id"],))
        gone += 1
    return gone


def cancel_checking(conn, job_id: str) -> bool:
    """Cancel a job waiting for its verdict (nothing runs on a server any more): it ends now."""
    now = utcnow()
    changed = execute(conn, """UPDATE jobs SET status='cancelled', moderation=NULL, finished_at=%s,
                               version=version+1, updated_at=%s WHERE id=%s AND status='checking'""",
                      (now, now, job_id)) == 1
    if changed:
        _close_checks(conn, job_id)
    return changed


def _close_checks(conn, job_id: str) -> None:
    """A job's checks still open are not needed any more (its verdict is known, or it ended)."""
    execute(conn, "UPDATE moderation_checks SET state='done' WHERE job_id=%s AND state IN ('pending','sent')",
            (job_id,))
