"""Submitting a job: validate, pick a backend, write the row, then POST /prompt.

The order matters (see the ComfyUI facts in tests/fixtures/comfyui/README.md): the gateway chooses
the prompt_id and records the job *before* ComfyUI hears of it, and submits
under the clientId of the listener's current socket so the events come back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid

import pymysql

from shared import backends, jobs, limits
from shared.comfy import ComfyError, ComfyRejectedError, ComfyUnreachableError
from shared.errors import (BackendUnavailableError, ConflictError, InvalidParamsError, UnknownWorkflowError,
                           WorkflowRejectedError)
from shared.http import check_fields
from shared.uploads import check_upload, send_to_comfy
from shared.usage import write_usage

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 255


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _validate_body(ctx, body: dict):
    check_fields(body, {"workflow", "params", "inputs"})
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
    """Create and submit a job; return (HTTP status, job row)."""
    workflow, params, inputs = _validate_body(ctx, body)
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
        backend = backends.pick_backend(conn, ctx.config.comfyui_urls)
    # Bad parameters are the caller's to fix whatever the backends do: check them first.
    choices = ctx.choices_for(backend["url"]) if backend else None
    _, resolved = workflow.fill(params, {name: "pending" for name in inputs}, choices=choices)
    with contextlib.ExitStack() as held:
        uploads = {}
        for name, value in inputs.items():
            uploads[name] = check_upload(ctx, user_id, value, f"inputs.{name}")
            held.callback(uploads[name]["file"].close)
        if backend is None:
            raise BackendUnavailableError("no ComfyUI server is connected right now", retry_after=5)
        files = {name: _send_upload(ctx.comfy(backend["url"]), upload) for name, upload in uploads.items()}
    graph, resolved = workflow.fill(resolved, files, choices=choices)
    job_id = str(uuid.uuid4())
    try:
        with ctx.db.transaction() as conn:
            limits.lock_user(conn, user_id)
            # A request with the same key may have committed while this one waited for the lock:
            # it is a replay, not a job that counts against the limits.
            existing = jobs.find_by_idempotency_key(conn, user_id, idempotency_key) if idempotency_key else None
            if existing:
                return _replay(existing, digest)
            limits.check_job_limits(conn, user_id, max_active=ctx.config.max_active_jobs,
                                    daily_quota=ctx.config.daily_job_quota)
            jobs.create_job(conn, job_id=job_id, user_id=user_id, workflow=workflow.name, params=resolved,
                            prompt=graph, backend_id=backend["id"], client_id=backend["client_id"],
                            idempotency_key=idempotency_key, request_hash=digest)
    except pymysql.err.IntegrityError:
        # Another request with the same Idempotency-Key won the race.
        with ctx.db.connection() as conn:
            existing = jobs.find_by_idempotency_key(conn, user_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, digest)

    comfy = ctx.comfy(backend["url"])
    try:
        number = comfy.submit(graph, client_id=backend["client_id"], prompt_id=job_id)
    except ComfyRejectedError as e:
        log.info("job %s: ComfyUI rejected the prompt: %s", job_id, e)
        with ctx.db.transaction() as conn:
            jobs.mark_failed(conn, job_id, code="execution_error", message=f"ComfyUI rejected the workflow: {e}")
            write_usage(conn, job_id, backend["url"])
        raise WorkflowRejectedError(f"ComfyUI rejected the workflow: {e}",
                                    details={"node_errors": e.node_errors, "error": e.error}) from None
    except ComfyUnreachableError as e:
        # Nothing was sent: forget the job, the app may simply try again.
        log.warning("job %s: %s unreachable: %s", job_id, backend["url"], e)
        with ctx.db.connection() as conn:
            jobs.delete_unsubmitted(conn, job_id)
        raise BackendUnavailableError("the ComfyUI server did not accept the job; try again", retry_after=5) from None
    except ComfyError as e:
        # A read timeout, a reset, a proxy's 5xx, a garbled answer: ComfyUI may have queued it.
        # Keep the row; the listener's sweep asks ComfyUI and settles it (queued, or submitted
        # again under the same prompt id), so an app retry can never make a second image.
        log.warning("job %s: POST /prompt on %s ended unclear (%s); left for the sweep", job_id, backend["url"], e)
        with ctx.db.connection() as conn:
            return 202, jobs.get_job(conn, job_id)
    with ctx.db.connection() as conn:
        jobs.mark_submitted(conn, job_id, number)
        row = jobs.get_job(conn, job_id)
    log.info("job %s: submitted to %s as number %s", job_id, backend["url"], number)
    return 202, row


def _send_upload(comfy, upload: dict) -> str:
    try:
        return send_to_comfy(comfy, upload)
    except ComfyError as e:
        log.warning("upload %s: could not be sent to %s: %s", upload["id"], comfy.base_url, e)
        raise BackendUnavailableError("the ComfyUI server did not take the input image; try again",
                                      retry_after=5) from None


def _replay(existing: dict, digest: str) -> tuple[int, dict]:
    if existing["request_hash"] != digest:
        raise ConflictError("this Idempotency-Key was used with a different request", code="idempotency_conflict")
    return 200, existing

