"""Submitting a job: validate, check some server can run it, write the row, then dispatch.

The order matters (see the ComfyUI facts in tests/fixtures/comfyui/README.md): the gateway chooses
the prompt_id and records the job *before* any ComfyUI hears of it. The job waits in the
gateway queue (MySQL); when a capable server has a free slot the same request sends it at
once, under the clientId of that server's listener socket so the events come back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid

import pymysql

from shared import backends, jobs, limits, metrics, users
from shared.errors import (BackendUnavailableError, ConflictError, InvalidParamsError, UnknownWorkflowError,
                           WorkflowRejectedError)
from shared.http import check_fields
from shared.moderation.text import check_submission
from shared.pool import capabilities, queue
from shared.pool.dispatch import dispatch
from shared.uploads import ALLOWED_TYPES, check_upload, comfy_name

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 255
SUBMIT_SENDS = 2  # prompts one submit request may send (its own, and one job fairly ahead of it at most)


def request_hash(body: dict) -> str:
    """What a replay must repeat: the body, with ``"notify": false`` the same as no ``notify`` (the
    same job), and ``"notify": true`` a different request (it changes what the job does)."""
    if body.get("notify") is False:
        body = {k: v for k, v in body.items() if k != "notify"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_notify(ctx, user_id: str, body: dict) -> bool:
    """``notify``: a boolean, and true only for a user logged in through WeChat (the push goes to the openid)."""
    notify = body.get("notify", False)
    if not isinstance(notify, bool):
        raise InvalidParamsError("notify must be true or false", details={"notify": "must be a boolean"})
    if notify:
        with ctx.db.connection() as conn:
            user = users.get_user(conn, user_id)
        if user is None or user["provider"] != "wechat":
            raise InvalidParamsError("notify needs a WeChat login (POST /v1/auth/wechat): the message goes to the "
                                     "user's openid", details={"notify": "only for users logged in through WeChat"})
    return notify


def _validate_body(ctx, body: dict):
    check_fields(body, {"workflow", "params", "inputs", "notify"})
    name = body.get("workflow")
    if not isinstance(name, str) or not name:
        raise InvalidParamsError("workflow is required", details={"workflow": "required string"})
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise InvalidParamsError("params must be an object", details={"params": "must be an object"})
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise InvalidParamsError("inputs must be an object", details={"inputs": "must be an object"})
    workflow = ctx.workflows.get(name)
    if workflow is None:
        raise UnknownWorkflowError(f"no workflow named {name!r}")
    return workflow, params, inputs


def submit(ctx, user_id: str, body: dict, idempotency_key: str | None = None) -> tuple[int, dict]:
    """Create a job in the gateway queue and dispatch at once; return (HTTP status, job row)."""
    workflow, params, inputs = _validate_body(ctx, body)
    notify = _check_notify(ctx, user_id, body)
    if idempotency_key is not None and not (0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY):
        raise InvalidParamsError("Idempotency-Key must be 1 to 255 characters",
                                 details={"Idempotency-Key": "1 to 255 characters"})
    digest = request_hash(body)
    if idempotency_key:
        with ctx.db.connection() as conn:
            existing = jobs.find_by_idempotency_key(conn, user_id, idempotency_key)
        if existing:
            return _replay(existing, digest)

    with ctx.db.connection() as conn:
        pool = backends.serving(conn, ctx.config.comfyui_urls)
        offered = backends.capabilities(conn, backends.known(conn, ctx.config.comfyui_urls), ctx.capabilities_cache)
    caps = {b["id"]: offered[b["id"]] for b in pool if b["id"] in offered}
    # Bad parameters are the caller's to fix whatever the servers do: check them first. A value is bad
    # (400) when no server of the pool offers it; one offered only by servers that cannot take jobs
    # this moment (reconnecting, draining) is a 503 below.
    choices = capabilities.union_choices(offered.values()) if offered else None
    _, resolved = workflow.fill(params, {name: "pending" for name in inputs}, choices=choices)
    check_submission(ctx, user_id, workflow, params)  # valid params only: risky text is 422, no job
    job_id = str(uuid.uuid4())
    with contextlib.ExitStack() as held:
        uploads = {}
        for name, value in inputs.items():
            uploads[name] = check_upload(ctx, user_id, value, f"inputs.{name}")
            held.callback(uploads[name]["file"].close)
        graph, resolved = workflow.fill(resolved, {name: comfy_name(u, job_id, name) for name, u in uploads.items()},
                                        choices=choices)
        needs = capabilities.needs_of(graph, {k for c in offered.values() for k in c.get("choices", {})},
                                      skip=workflow.input_targets())
        able = [b for b in pool if capabilities.can_run(needs, caps.get(b["id"]))]
        if not able:
            raise BackendUnavailableError(_why_none(pool, caps, needs), retry_after=5)
        stored = _store_inputs(ctx, user_id, job_id, uploads)
    try:
        with ctx.db.transaction() as conn:
            limits.lock_user(conn, user_id)
            # A request with the same key may have committed while this one waited for the lock:
            # it is a replay, not a job that counts against the limits.
            existing = jobs.find_by_idempotency_key(conn, user_id, idempotency_key) if idempotency_key else None
            if existing:
                _forget_inputs(ctx, stored)
                return _replay(existing, digest)
            limits.check_job_limits(conn, user_id, max_active=ctx.config.max_active_jobs,
                                    daily_quota=ctx.config.daily_job_quota)
            queue.enqueue(conn, job_id=job_id, user_id=user_id, workflow=workflow.name, params=resolved,
                          prompt=graph, needs=needs, model=capabilities.model_of(needs), inputs=stored,
                          servers=[b["id"] for b in able], idempotency_key=idempotency_key, request_hash=digest,
                          notify=notify)
    except pymysql.err.IntegrityError:
        # Another request with the same Idempotency-Key won the race.
        _forget_inputs(ctx, stored)
        with ctx.db.connection() as conn:
            existing = jobs.find_by_idempotency_key(conn, user_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, digest)
    except BaseException:
        _forget_inputs(ctx, stored)
        raise
    metrics.job_submitted(workflow.name)

    # A free slot takes the job now (no added latency); else it waits for the listener to send it.
    try:
        outcome = dispatch(ctx, until=job_id, most=SUBMIT_SENDS).get(job_id)
    except Exception as e:  # the job is safely queued: the listener's sweep sends it
        log.warning("job %s: dispatch at submit failed (%s); left to the listener", job_id, e)
        outcome = None
    if outcome is not None and outcome.result == "rejected":
        e = outcome.error
        raise WorkflowRejectedError(f"ComfyUI rejected the workflow: {e}",
                                    details={"node_errors": e.node_errors, "error": e.error})
    with ctx.db.connection() as conn:
        row = jobs.get_job(conn, job_id)
    log.info("job %s: %s", job_id, f"sent to {outcome.backend_url} ({outcome.result})" if outcome else "waiting")
    return 202, row


def _why_none(pool: list[dict], caps: dict, needs: dict) -> str:
    """Why no server can take a job: none connected, or what the connected ones lack."""
    if not pool:
        return "no ComfyUI server is connected right now"
    lacking = sorted({m for b in pool for m in capabilities.missing(needs, caps.get(b["id"]))})
    return "no connected ComfyUI server can run this job now (missing: " + ", ".join(lacking[:5]) + ")"


def _store_inputs(ctx, user_id: str, job_id: str, uploads: dict) -> dict:
    """Keep the checked bytes of each input image under the job (the app cannot write there), to be
    sent to whichever server runs it; an upload form re-posted later cannot swap the image."""
    stored = {}
    try:
        for name, upload in uploads.items():
            key = f"users/{user_id}/jobs/{job_id}/input_{name}{ALLOWED_TYPES[upload['content_type']]}"
            upload["file"].seek(0)
            ctx.store.put_stream(key, upload["file"], upload["content_type"])
            stored[name] = {"key": key, "file": comfy_name(upload, job_id, name),
                            "content_type": upload["content_type"]}
    except BaseException:
        _forget_inputs(ctx, stored)
        raise
    return stored


def _forget_inputs(ctx, stored: dict) -> None:
    for spec in stored.values():
        try:
            ctx.store.delete(spec["key"])
        except Exception as e:  # an orphan input image costs storage, nothing else
            log.warning("input %s not deleted: %s", spec["key"], e)


def _replay(existing: dict, digest: str) -> tuple[int, dict]:
    if existing["request_hash"] != digest:
        raise ConflictError("this Idempotency-Key was used with a different request", code="idempotency_conflict")
    return 200, existing

