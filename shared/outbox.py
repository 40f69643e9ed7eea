"""The outbox: events for the operator's backend, written in the transaction of what they tell.

Wherever a job reaches its final state (and its usage record is written, in the same
transaction), ``job_finished(conn, job_id)`` is called next: it adds ``job.succeeded``,
``job.failed`` or ``job.cancelled`` with the job as the API shows it, and ``usage.recorded``
with the usage record as ``GET /v1/usage`` shows it. So an event exists if and only if what it
tells was committed, and (keyed by kind, type and job) at most once, however often
finalization runs. The listener sends them (``listener/outbox_sender.py``); they are written
whether or not WEBHOOK_URL is set, because the API functions that cancel jobs do not have the
setting (it is the listener's): a listener without WEBHOOK_URL discards them.

``job.withdrawn`` (``job_withdrawn``): a published job whose images the content check rejected
afterwards (shared/moderation/outputs.py), written in the transaction that records the verdict.

A job submitted with ``"notify": true`` by a WeChat user also gets one ``kind='subscribe'`` row
(``job.finished``): the WeChat subscribe message to its openid (``shared/subscribe.py``), written
the same way and dropped by a listener without WECHAT_SUBSCRIBE_TEMPLATE_ID.

Times here are the database's clock (UTC), the one every sender shares.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from shared.db import execute, isoformat, query, query_one

KIND_WEBHOOK = "webhook"
KIND_SUBSCRIBE = "subscribe"
SUBSCRIBE_EVENT = "job.finished"
JOB_EVENTS = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
USAGE_RECORDED = "usage.recorded"
JOB_WITHDRAWN = "job.withdrawn"


def new_event_id() -> str:
    """A fresh event id (36 characters): the webhook-id of every attempt to send the event."""
    return "evt_" + uuid.uuid4().hex


def job_payload(conn, row: dict) -> dict:
    """The data of a job event: the job object of the API, its user, and its images as storage keys.

    Signed URLs would expire before a retry (or a replay) is delivered: receivers sign the keys
    themselves or ask GET /v1/jobs/{id}/result.
    """
    from shared import jobs
    data = jobs.job_object(row)
    data["user_id"] = row["user_id"]
    outputs = jobs.list_outputs(conn, row["id"]) if row["status"] == "succeeded" else []
    data["images"] = [{"key": o["object_key"], "content_type": o["content_type"], "bytes": o["bytes"],
                       "width": o["width"], "height": o["height"], "node_id": o["node_id"], "index": o["idx"]}
                      for o in outputs]
    return data


def add_event(conn, event_type: str, job_id: str, payload: dict, *, kind: str = KIND_WEBHOOK) -> None:
    """Write one event unless this job has it already (due at once)."""
    execute(conn, """INSERT INTO outbox (event_id, kind, event_type, job_id, payload, created_at, next_attempt_at)
                     VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3))
                     ON DUPLICATE KEY UPDATE id=id""",
            (new_event_id(), kind, event_type, job_id, json.dumps(payload, ensure_ascii=False, default=str)))


def job_finished(conn, job_id: str, *, row: dict | None = None) -> None:
    """Write the events of a final job: its final state and its usage record (each once).

    Call it in the transaction that made the job final and wrote its usage record, after both.
    A job not final (another caller won, or nothing changed) gets nothing here.
    """
    from shared import jobs, usage
    row = row if row is not None else jobs.get_row(conn, job_id)
    if row is None or row["status"] not in jobs.FINAL:
        return
    add_event(conn, JOB_EVENTS[row["status"]], job_id, job_payload(conn, row))
    # Read back, not rebuilt from what was inserted: the event shows every column the record has.
    record = query_one(conn, "SELECT * FROM usage_records WHERE job_id=%s", (job_id,))
    if record is not None:
        add_event(conn, USAGE_RECORDED, job_id, usage.usage_object(record))
    if row.get("notify"):
        _subscribe_event(conn, row)


def job_withdrawn(conn, job_id: str) -> None:
    """``job.withdrawn``: a succeeded job's images were rejected by the content check after it was shown
    (MODERATION_OUTPUTS=publish) and deleted; receivers that kept them drop them."""
    from shared import jobs
    row = jobs.get_row(conn, job_id)
    add_event(conn, JOB_WITHDRAWN, job_id, {**job_payload(conn, row), "moderation": row["moderation"]})


def _subscribe_event(conn, row: dict) -> None:
    """The push of a job submitted with notify: what the message tells, rendered by the listener when it sends."""
    from shared import users
    user = users.get_user(conn, row["user_id"])
    if user is None or user["provider"] != "wechat":  # submit refuses notify for others: nobody to push to
        return
    add_event(conn, SUBSCRIBE_EVENT, row["id"], {"touser": user["subject"], "job_id": row["id"],
                                                 "workflow": row["workflow"], "status": row["status"],
                                                 "finished_at": isoformat(row["finished_at"])},
              kind=KIND_SUBSCRIBE)


# -- the sender's side (listener/outbox_sender.py) ---------------------------------------------------

def claim_due(conn, *, kind: str = KIND_WEBHOOK, hold_s: float, retry_for_s: float,
              in_flight: str | None = None) -> dict | None:
    """Take the oldest due event and hold it for ``hold_s`` (run in a READ COMMITTED transaction).

    Other senders skip the locked row and, once this commits, see it not due until the hold
    passes: only a sender that died mid-send lets it come back. Its first claim of a round
    starts the round's day of retries. ``in_flight``: kept as the event's error until this
    attempt's outcome is recorded, so a claim that finds it knows the attempt before it ended
    unrecorded (``interrupted``: it may or may not have been delivered).
    """
    row = query_one(conn, """SELECT id, event_id, event_type, job_id, payload, created_at, attempts, last_error
                             FROM outbox WHERE kind=%s AND next_attempt_at <= UTC_TIMESTAMP(3)
                             ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""", (kind,))
    if row is None:
        return None
    execute(conn, """UPDATE outbox SET attempts=attempts+1, last_error=COALESCE(%s, last_error),
                     next_attempt_at=UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND,
                     retry_until=COALESCE(retry_until, UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND)
                     WHERE id=%s""", (in_flight, int(hold_s * 1e6), int(retry_for_s * 1e6), row["id"]))
    row["attempts"] += 1
    row["interrupted"] = in_flight is not None and row.pop("last_error") == in_flight
    if isinstance(row["payload"], (str, bytes)):
        row["payload"] = json.loads(row["payload"])
    return row


def body(event: dict) -> bytes:
    """The JSON body of an event, the same bytes on every attempt: {"type", "timestamp", "data"}."""
    return json.dumps({"type": event["event_type"], "timestamp": isoformat(event["created_at"]),
                       "data": event["payload"]}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def mark_sent(conn, outbox_id: int) -> bool:
    return execute(conn, """UPDATE outbox SET sent_at=UTC_TIMESTAMP(3), next_attempt_at=NULL, last_error=NULL
                            WHERE id=%s AND sent_at IS NULL""", (outbox_id,)) == 1


def mark_failed(conn, outbox_id: int, error: str, retry_in_s: float) -> str:
    """Record a failed attempt: due again in ``retry_in_s`` (never past the round's day), or given up
    once the day has passed. Returns "retry", "given_up" or "gone" (sent or replayed meanwhile)."""
    row = query_one(conn, "SELECT retry_until <= UTC_TIMESTAMP(3) AS expired FROM outbox "
                          "WHERE id=%s AND sent_at IS NULL AND given_up_at IS NULL FOR UPDATE", (outbox_id,))
    if row is None:
        return "gone"
    if row["expired"]:
        give_up(conn, outbox_id, error)
        return "given_up"
    execute(conn, """UPDATE outbox SET last_error=%s,
                     next_attempt_at=LEAST(UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND, retry_until)
                     WHERE id=%s""", (error[:255], int(retry_in_s * 1e6), outbox_id))
    return "retry"


def give_up(conn, outbox_id: int, error: str) -> bool:
    """Stop sending an event (an answer that will not change, or its retries are over)."""
    return execute(conn, """UPDATE outbox SET given_up_at=UTC_TIMESTAMP(3), next_attempt_at=NULL, last_error=%s
                            WHERE id=%s AND sent_at IS NULL AND given_up_at IS NULL""", (error[:255], outbox_id)) == 1


def discard_unsent(conn, *, kind: str = KIND_WEBHOOK, limit: int = 1000) -> int:
    """Delete events nobody will send (no WEBHOOK_URL, no WECHAT_SUBSCRIBE_TEMPLATE_ID): the table stays empty
    for operators without one."""
    return execute(conn, "DELETE FROM outbox WHERE kind=%s AND sent_at IS NULL LIMIT %s", (kind, limit))


def prune(conn, older_than: datetime, *, kind: str = KIND_WEBHOOK, limit: int = 1000) -> int:
    """Delete events written before ``older_than`` that are sent or given up."""
    return execute(conn, "DELETE FROM outbox WHERE kind=%s AND created_at < %s AND next_attempt_at IS NULL "
                         "LIMIT %s", (kind, older_than, limit))


def replay(conn, *, since: datetime, until: datetime | None = None, kind: str = KIND_WEBHOOK) -> int:
    """Send again every event written in [since, until): due now, with the same event ids, a new day of
    retries. Returns how many."""
    sql = """UPDATE outbox SET sent_at=NULL, given_up_at=NULL, next_attempt_at=UTC_TIMESTAMP(3), retry_until=NULL,
             attempts=0, last_error=NULL WHERE kind=%s AND created_at >= %s"""
    args: list = [kind, since]
    if until is not None:
        sql += " AND created_at < %s"
        args.append(until)
    return execute(conn, sql, args)


def list_events(conn, *, job_id: str | None = None, kind: str = KIND_WEBHOOK) -> list[dict]:
    """Events in the order they were written (tests, operators' checks)."""
    sql, args = "SELECT * FROM outbox WHERE kind=%s", [kind]
    if job_id is not None:
        sql += " AND job_id=%s"
        args.append(job_id)
    rows = query(conn, sql + " ORDER BY id", args)
    for r in rows:
        if isinstance(r["payload"], (str, bytes)):
            r["payload"] = json.loads(r["payload"])
    return rows
