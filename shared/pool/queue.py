"""The gateway queue: jobs waiting in MySQL for a server, in a fair order.

A waiting job is ``status='queued'`` with no ``backend_id``. Waiting jobs are
served in rounds, ordered by ``(fair_rank, created_at, id)`` where
``fair_rank`` is the job's round, fixed at submit:

    round = max(the user's last waiting round + 1, the current round)

and the current round is the latest round in which some user's oldest waiting
job stands. So a user's k-th waiting job goes after every other user's
(k-1)-th; a newcomer joins at the end of the current round, never ahead of a
user's oldest waiting job; and since rounds never change once given, a job
leaving the queue moves nobody back. A job whose server lost it goes back
with its old round (ahead of its user's younger jobs).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from shared.db import execute, query, query_one, utcnow

log = logging.getLogger(__name__)

WAITING = "status='queued' AND backend_id IS NULL"


def enqueue(conn, *, job_id: str, user_id: str, workflow: str, params: dict, prompt: dict, needs: dict,
            model: str | None, inputs: dict | None, servers: list[int] | int, idempotency_key: str | None = None,
            request_hash: str | None = None, notify: bool = False) -> None:
    """Write a job that waits in the gateway queue, in its round (call with the user's row locked).

    ``servers``: the ids of the servers able to run it now (a count where they are not known);
    ``notify``: push a WeChat subscribe message when it is final.
    """
    ids = servers if isinstance(servers, list) else []
    capable = sum({1 << (i % 64) for i in ids}) or (1 << 64) - 1
    row = query_one(conn, f"""SELECT (SELECT MAX(fair_rank) FROM jobs WHERE user_id=%s AND {WAITING}) AS mine,
                                     (SELECT MAX(oldest) FROM (SELECT MIN(fair_rank) AS oldest FROM jobs
                                        WHERE {WAITING} GROUP BY user_id) o) AS current""", (user_id,))
    rank = max(-1 if row["mine"] is None else row["mine"] + 1, row["current"] or 0)
    now = utcnow()
    execute(conn, """INSERT INTO jobs (id, user_id, backend_id, workflow, params, prompt, status, fair_rank, needs,
                     model, inputs, servers, capable, idempotency_key, request_hash, notify, created_at, updated_at)
                     VALUES (%s, %s, NULL, %s, %s, %s, 'queued', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (job_id, user_id, workflow, json.dumps(params), json.dumps(prompt), rank, json.dumps(needs), model,
             json.dumps(inputs) if inputs else None, max(len(ids) if ids else servers, 1), capable, idempotency_key,
             request_hash, int(notify), now, now))


def waiting(conn, *, limit: int = 100, lock: bool = False, after: dict | None = None) -> list[dict]:
    """The first waiting jobs in fair order, or those after the job ``after`` (a row this returned);
    ``lock``: claim-able rows only, locked, skipping locked ones."""
    keyset, args = "", [limit]
    if after is not None:
        keyset = """AND (fair_rank > %s OR (fair_rank = %s AND (created_at > %s
                    OR (created_at = %s AND id > %s))))"""
        args = [after["fair_rank"], after["fair_rank"], after["created_at"], after["created_at"], after["id"], limit]
    rows = query(conn, f"""SELECT id, user_id, needs, model, fair_rank, created_at, submit_attempts FROM jobs
                           WHERE {WAITING} AND cancel_requested=0 {keyset}
                           ORDER BY fair_rank, created_at, id LIMIT %s"""
                 + (" FOR UPDATE SKIP LOCKED" if lock else ""), args)
    for r in rows:
        r["needs"] = json.loads(r["needs"]) if r["needs"] else {"classes": [], "values": {}}
    return rows


def claim(conn, job: dict, backend: dict) -> bool:
    """Take a waiting job for a server (its POST /prompt follows); False if it is no longer waiting."""
    return execute(conn, f"""UPDATE jobs SET status='submitting', backend_id=%s, client_id=%s,
                              submit_attempts=submit_attempts+1, version=version+1, updated_at=%s
                              WHERE id=%s AND {WAITING} AND cancel_requested=0""",
                   (backend["id"], backend["client_id"], utcnow(), job["id"])) == 1


def claimed(conn, job_id: str) -> dict | None:
    """What sending a claimed job needs: its graph, input images, and where it stands (one primary-key read)."""
    row = query_one(conn, "SELECT status, backend_id, submit_attempts, prompt, inputs, created_at FROM jobs "
                          "WHERE id=%s", (job_id,))
    if row is not None:
        row["prompt"] = json.loads(row["prompt"])
        row["inputs"] = json.loads(row["inputs"]) if row["inputs"] else None
    return row


def depth(conn) -> tuple[int, float]:
    """How many jobs wait in the gateway queue, and the seconds the oldest has waited (0 if none): one
    range of the waiting index, on the database's clock."""
    row = query_one(conn, f"""SELECT COUNT(*) AS n,
                               TIMESTAMPDIFF(MICROSECOND, MIN(created_at), UTC_TIMESTAMP(3)) AS age
                               FROM jobs WHERE {WAITING}""")
    return int(row["n"]), max(float(row["age"] or 0) / 1e6, 0.0)


def requeue(conn, job_id: str, backend_id: int, *, lost: bool = False) -> bool:
    """Put a job back in the gateway queue from the server that held it (``lost``: it had started there).

    It keeps its round and age, so it goes back ahead of its user's younger jobs. False if it moved on meanwhile.
    """
    return execute(conn, """UPDATE jobs SET status='queued', backend_id=NULL, client_id=NULL, number=NULL,
                            started_at=NULL, progress_percent=0, progress_node=NULL, progress_value=0,
                            progress_max=0, nodes_done=0, preview_key=NULL,
                            lost_retries=lost_retries+%s, version=version+1, updated_at=%s
                            WHERE id=%s AND backend_id=%s AND status IN ('submitting','queued','running')
                            AND cancel_requested=0""",
                   (1 if lost else 0, utcnow(), job_id, backend_id)) == 1


def expired(conn, queue_timeout_s: float) -> list[str]:
    """Waiting jobs older than the queue limit."""
    limit = utcnow() - timedelta(seconds=queue_timeout_s)  # created_at is written on this clock too
    return [r["id"] for r in query(conn, f"SELECT id FROM jobs WHERE {WAITING} AND created_at < %s", (limit,))]


def expire(conn, job_id: str, message: str) -> bool:
    """Fail a job still waiting in the gateway queue with ``timeout``; False if it left the queue meanwhile."""
    now = utcnow()
    return execute(conn, f"""UPDATE jobs SET status='failed', error_code='timeout', error_message=%s, finished_at=%s,
                              version=version+1, updated_at=%s WHERE id=%s AND {WAITING}""",
                   (message, now, now, job_id)) == 1
