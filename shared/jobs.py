"""Job rows, their conditional state transitions, and the job object apps see.

A job's id is the ComfyUI prompt_id, chosen by the gateway before it submits.
States: ``submitting`` (row written, POST /prompt not yet confirmed; shown to
apps as ``queued``) → ``queued`` → ``running`` → [``checking``: its images wait for the content
check's verdict, shown as ``running``; shared/moderation/] → ``succeeded`` | ``failed`` |
``cancelled``. Every transition is an ``UPDATE ... WHERE status IN (...)``
whose affected-row count says whether it happened, so replays and races are
harmless. Every change bumps ``version`` (the status ETag).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime

from shared.db import execute, query, query_one, utcnow, isoformat
from shared.moderation import CHECKING_TITLE

log = logging.getLogger(__name__)

FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("submitting", "queued", "running")

# What apps are shown of a job (the status poll reads only these: never the graph it sent).
_COLUMNS = ("j.id, j.user_id, j.workflow, j.status, j.backend_id, j.servers, j.progress_percent, j.progress_node, "
            "j.progress_title, j.progress_value, j.progress_max, j.preview_key, j.error_code, j.error_message, "
            "j.error_node_id, j.error_node_type, j.params, j.version, j.request_hash, j.created_at, j.started_at, "
            "j.finished_at, j.moderation")


def create_job(conn, *, job_id: str, user_id: str, workflow: str, params: dict, prompt: dict,
               backend_id: int, client_id: str, idempotency_key: str | None = None,
               request_hash: str | None = None) -> None:
    """Write the job row before anything is sent to ComfyUI."""
    now = utcnow()
    execute(conn, """INSERT INTO jobs (id, user_id, backend_id, workflow, params, prompt, status, client_id,
                     submit_attempts, idempotency_key, request_hash, created_at, updated_at)
                     VALUES (%s, %s, %s, %s, %s, %s, 'submitting', %s, 1, %s, %s, %s, %s)""",
            (job_id, user_id, backend_id, workflow, json.dumps(params), json.dumps(prompt), client_id,
             idempotency_key, request_hash, now, now))


# How many jobs will start before j, counted only while j waits (for a running or final job it
# means nothing, and would make its ETag change with every change of the queue):
# * held by a server: the jobs that server holds and has not started, ahead of j in its queue
#   (a job not numbered yet is behind them all);
# * in the gateway queue: the waiting jobs before it in fair order that compete for a server
#   able to run it, plus the jobs those servers hold and have not started yet (those start first).
#   ``capable`` has a bit per server able to run the job (backend id % 64), set at submit.
# Each count says in its WHERE which jobs it is for, so the database skips the others' outright
# (the row of j is a constant there: an impossible WHERE costs nothing).
_AHEAD = """IF(j.status IN ('submitting','queued'),
              (SELECT COUNT(*) FROM jobs q WHERE j.backend_id IS NULL AND q.status='queued' AND q.backend_id IS NULL
                 AND (q.fair_rank < j.fair_rank OR (q.fair_rank = j.fair_rank AND (q.created_at < j.created_at
                      OR (q.created_at = j.created_at AND q.id < j.id))))
                 AND (q.capable & j.capable) <> 0)
              + (SELECT COUNT(*) FROM jobs h WHERE j.backend_id IS NULL AND h.status IN ('submitting','queued')
                 AND h.backend_id IS NOT NULL AND (j.capable >> (h.backend_id %% 64)) & 1)
              + (SELECT COUNT(*) FROM jobs q WHERE q.backend_id=j.backend_id AND q.status IN ('submitting','queued')
                 AND q.id <> j.id AND (j.number IS NULL OR q.number < j.number)), 0) AS ahead,
           ws.run_seconds"""
_FROM = "jobs j LEFT JOIN workflow_stats ws ON ws.workflow=j.workflow"


def get_row(conn, job_id: str) -> dict | None:
    """The whole row of a job (its graph, needs, inputs...), for the gateway's own use; None if not found."""
    return _decode(query_one(conn, "SELECT * FROM jobs WHERE id=%s", (job_id,)))


# The status poll's read, the hottest query of the product. pymysql decodes the description of
# every column of every result in Python, so the job comes packed in one JSON column (decoded in
# C): half the cost of the same read as two dozen columns (bench/bench_door.py).
_POLL_FIELDS = ("id", "user_id", "workflow", "status", "backend_id", "servers", "number", "fair_rank", "capable",
                "progress_percent", "progress_node", "progress_title", "progress_value", "progress_max",
                "preview_key", "error_code", "error_message", "error_node_id", "error_node_type", "version",
                "request_hash", "created_at", "started_at", "finished_at", "moderation")
_POLL = ("SELECT JSON_OBJECT(" + ", ".join(f"'{f}', j.{f}" for f in _POLL_FIELDS)
         + ", 'params', JSON_EXTRACT(j.params, '$'), 'run_seconds', "
           "(SELECT ws.run_seconds FROM workflow_stats ws WHERE ws.workflow=j.workflow)) AS job FROM jobs j")
# The queue position of a waiting job, read only for a job that waits: the same counts as _AHEAD
# with the job's own values as parameters (planning the counts for every poll of a running or
# finished job cost more than the rest of its read).
_AHEAD_HELD = ("SELECT COUNT(*) AS n FROM jobs q WHERE q.backend_id=%(backend)s "
               "AND q.status IN ('submitting','queued') AND q.id <> %(id)s "
               "AND (%(number)s IS NULL OR q.number < %(number)s)")
_AHEAD_WAITING = """SELECT (SELECT COUNT(*) FROM jobs q WHERE q.status='queued' AND q.backend_id IS NULL
                      AND (q.fair_rank < %(rank)s OR (q.fair_rank = %(rank)s AND (q.created_at < %(created)s
                           OR (q.created_at = %(created)s AND q.id < %(id)s))))
                      AND (q.capable & %(capable)s) <> 0)
                    + (SELECT COUNT(*) FROM jobs h WHERE h.status IN ('submitting','queued')
                      AND h.backend_id IS NOT NULL AND (%(capable)s >> (h.backend_id %% 64)) & 1) AS n"""


def get_job(conn, job_id: str, user_id: str | None = None) -> dict | None:
    """What an app sees of one job, queue position and mean run time included (None if not found or
    not the user's): one indexed read, and a second, indexed count only while the job waits."""
    sql, args = f"{_POLL} WHERE j.id=%s", [job_id]
    if user_id is not None:
        sql += " AND j.user_id=%s"
        args.append(user_id)
    found = query_one(conn, sql, args)
    if found is None:
        return None
    row = json.loads(found["job"])
    for col in ("created_at", "started_at", "finished_at"):
        if row[col] is not None:
            row[col] = datetime.fromisoformat(row[col])
    row["progress_percent"] = float(row["progress_percent"])
    row["ahead"] = 0
    if row["status"] in ("submitting", "queued"):
        values = {"id": row["id"], "backend": row["backend_id"], "number": row["number"], "rank": row["fair_rank"],
                  "created": row["created_at"], "capable": row["capable"]}
        row["ahead"] = int(query_one(conn, _AHEAD_WAITING if row["backend_id"] is None else _AHEAD_HELD,
                                     values)["n"])
    return row


def find_by_idempotency_key(conn, user_id: str, key: str) -> dict | None:
    return _decode(query_one(conn, f"SELECT {_COLUMNS}, {_AHEAD} FROM {_FROM} "
                                   "WHERE j.user_id=%s AND j.idempotency_key=%s", (user_id, key)))


def jobs_on_backend(conn, backend_id: int, statuses=ACTIVE) -> list[dict]:
    """The jobs a backend holds in the given states, oldest first."""
    marks = ",".join(["%s"] * len(statuses))
    return [_decode(r) for r in query(conn, f"SELECT j.*, NULL AS ahead FROM jobs j WHERE j.backend_id=%s "
                                            f"AND j.status IN ({marks}) ORDER BY j.created_at, j.id",
                                      (backend_id, *statuses))]


def settled_job_ids(conn, job_ids: list[str], backend_id: int) -> list[str]:
    """Which of these ids are jobs that are final, or active on another server (or none) now."""
    if not job_ids:
        return []
    marks = ",".join(["%s"] * len(job_ids))
    return [r["id"] for r in query(conn, f"SELECT id FROM jobs WHERE id IN ({marks}) "
                                         "AND (status IN ('succeeded','failed','cancelled') "
                                         "OR NOT (backend_id <=> %s))", (*job_ids, backend_id))]


def list_user_jobs(conn, user_id: str, *, limit: int, before: tuple[datetime, str] | None = None) -> list[dict]:
    """The user's jobs, newest first, after a (created_at, id) cursor."""
    sql = f"SELECT {_COLUMNS}, {_AHEAD} FROM {_FROM} WHERE j.user_id=%s"
    args: list = [user_id]
    if before:
        sql += " AND (j.created_at < %s OR (j.created_at = %s AND j.id < %s))"
        args += [before[0], before[0], before[1]]
    sql += " ORDER BY j.created_at DESC, j.id DESC LIMIT %s"
    args.append(limit)
    return [_decode(r) for r in query(conn, sql, args)]


def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    for col in ("params", "prompt", "needs", "inputs"):
        if isinstance(row.get(col), (str, bytes)):
            row[col] = json.loads(row[col])
    return row


# -- transitions ---------------------------------------------------------------

def mark_submitted(conn, job_id: str, number: int, backend_id: int | None = None) -> bool:
    """Record ComfyUI's queue number; submitting → queued (an early event may have moved it on).

    With ``backend_id``, only while that server holds the job (it may have gone back to the gateway
    queue while the POST was in flight).
    """
    now = utcnow()
    return execute(conn, """UPDATE jobs SET number=%s, submitted_at=COALESCE(submitted_at, %s),
                            status=IF(status='submitting','queued',status), version=version+1, updated_at=%s
                            WHERE id=%s AND status IN ('submitting','queued','running')
                            AND (%s IS NULL OR backend_id <=> %s)""",
                   (number, now, now, job_id, backend_id, backend_id)) == 1


def mark_running(conn, job_id: str, *, nodes_total: int = 0, nodes_done: int = 0) -> bool:
    now = utcnow()
    return execute(conn, """UPDATE jobs SET status='running', started_at=COALESCE(started_at, %s),
                            nodes_total=%s, nodes_done=GREATEST(nodes_done, %s), version=version+1, updated_at=%s
                            WHERE id=%s AND status IN ('submitting','queued')""",
                   (now, nodes_total, nodes_done, now, job_id)) == 1


def update_progress(conn, job_id: str, *, percent: float, node: str | None, value: int, max_: int,
                    title: str | None = None) -> bool:
    """Write progress, with the title of the node in progress; the percent never goes down."""
    return execute(conn, """UPDATE jobs SET progress_percent=GREATEST(progress_percent, %s), progress_node=%s,
                            progress_title=%s, progress_value=%s, progress_max=%s, version=version+1, updated_at=%s
                            WHERE id=%s AND status IN ('queued','running')""",
                   (round(min(percent, 100.0), 2), node, title[:255] if title else None, value, max_, utcnow(),
                    job_id)) == 1


def set_preview(conn, job_id: str, key: str) -> bool:
    return execute(conn, "UPDATE jobs SET preview_key=%s, version=version+1, updated_at=%s "
                         "WHERE id=%s AND status='running'", (key, utcnow(), job_id)) == 1


# With ``on`` (a backend id), a final state is recorded only while that server holds the job: a run
# on a server that lost the job (it went back to the gateway queue, maybe to another server) decides nothing.
_HELD_BY = "AND (%s IS NULL OR backend_id <=> %s)"


def mark_failed(conn, job_id: str, *, code: str, message: str, node_id: str | None = None,
                node_type: str | None = None, from_states=ACTIVE, on: int | None = None) -> bool:
    """Move an active job to failed with an error (no-op if it is already final)."""
    now = utcnow()
    marks = ",".join(["%s"] * len(from_states))
    return execute(conn, f"""UPDATE jobs SET status='failed', error_code=%s, error_message=%s, error_node_id=%s,
                             error_node_type=%s, finished_at=%s, version=version+1, updated_at=%s
                             WHERE id=%s AND status IN ({marks}) {_HELD_BY}""",
                   (code, message[:4000], node_id, node_type, now, now, job_id, *from_states, on, on)) == 1


def mark_cancelled(conn, job_id: str, *, on: int | None = None) -> bool:
    now = utcnow()
    return execute(conn, f"""UPDATE jobs SET status='cancelled', finished_at=%s, version=version+1, updated_at=%s
                             WHERE id=%s AND status IN ('submitting','queued','running') {_HELD_BY}""",
                   (now, now, job_id, on, on)) == 1


def mark_succeeded(conn, job_id: str, *, on: int | None = None) -> bool:
    now = utcnow()
    return execute(conn, f"""UPDATE jobs SET status='succeeded', progress_percent=100, finished_at=%s,
                             version=version+1, updated_at=%s
                             WHERE id=%s AND status IN ('submitting','queued','running') {_HELD_BY}""",
                   (now, now, job_id, on, on)) == 1


# -- outputs -------------------------------------------------------------------

def add_output(conn, *, job_id: str, node_id: str, index: int, key: str, content_type: str, size: int,
               width: int | None, height: int | None) -> None:
    """Record one stored output (idempotent on job+node+index)."""
    execute(conn, """INSERT INTO job_outputs (job_id, node_id, idx, object_key, content_type, bytes, width, height,
                     created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                     ON DUPLICATE KEY UPDATE object_key=VALUES(object_key), content_type=VALUES(content_type),
                     bytes=VALUES(bytes), width=VALUES(width), height=VALUES(height)""",
            (job_id, node_id, index, key, content_type, size, width, height, utcnow()))


def list_outputs(conn, job_id: str) -> list[dict]:
    """A job's stored outputs in node order, then ComfyUI's order."""
    rows = query(conn, "SELECT * FROM job_outputs WHERE job_id=%s", (job_id,))
    return sorted(rows, key=lambda r: (node_order(r["node_id"]), r["idx"]))


_DIGITS = re.compile(r"([0-9]+)")


def node_order(node_id: str) -> tuple:
    """Sort key for node ids: runs of ASCII digits compare as numbers ("9" < "10", "9:1" < "10:1")."""
    return tuple((0, int(part), "") if part.isascii() and part.isdigit() else (1, 0, part)
                 for part in _DIGITS.split(node_id) if part)


# -- the job object of the contract ---------------------------------------------------

_SHOWN = {"submitting": "queued", "checking": "running"}


def public_status(status: str) -> str:
    return _SHOWN.get(status, status)


RUN_TIME_WEIGHT = 0.2  # each success moves a workflow's mean run time a fifth of the way


def record_run_time(conn, workflow: str, seconds: float) -> None:
    """Fold one successful run into the workflow's mean run time (read by every instance for eta_seconds)."""
    if seconds <= 0:
        return
    execute(conn, """INSERT INTO workflow_stats (workflow, run_seconds, samples, updated_at) VALUES (%s, %s, 1, %s)
                     ON DUPLICATE KEY UPDATE run_seconds=run_seconds + %s * (VALUES(run_seconds) - run_seconds),
                     samples=samples+1, updated_at=VALUES(updated_at)""",
            (workflow, seconds, utcnow(), RUN_TIME_WEIGHT))


def eta_seconds(row: dict) -> float | None:
    """Seconds until the job should be final, from the workflow's mean run time and the queue.

    Running: what is left of it. Held by a server: the jobs before it there, itself, and half
    of the job running now (on average). Waiting in the gateway queue: the jobs before it
    shared out over the servers that can run it, itself and half a running job.
    """
    status = public_status(row["status"])
    run_seconds = row.get("run_seconds")
    if status in FINAL or run_seconds is None:
        return None
    run_seconds = float(run_seconds)
    if status == "running":
        return round(max(run_seconds * (1 - float(row["progress_percent"]) / 100.0), 0.0), 1)
    ahead = row.get("ahead") or 0
    if row.get("backend_id") is None:
        ahead = ahead / max(row.get("servers") or 1, 1)
    return round(run_seconds * (ahead + 1.5), 1)


def poll_after_ms(row: dict, eta: float | None = None) -> int | None:
    """How long the app should wait before polling again (None once final).

    Short while running (progress and previews change), longer the further back
    in the queue, never more than 5 s; with an estimate, about a tenth of it.
    """
    status = public_status(row["status"])
    if status in FINAL:
        return None
    if row["status"] == "checking":  # a verdict takes seconds, at worst minutes
        return 2000
    if status == "running":
        return 500
    ahead = row.get("ahead") or 0
    wait = 1000 + 500 * ahead
    if eta is not None:
        wait = max(wait, int(eta * 100))
    return min(wait, 5000)


def job_object(row: dict, *, node_title=None, preview_url: str | None = None) -> dict:
    """Render a job row as the contract's job object.

    The node's title is the row's ``progress_title`` (stored by the listener); ``node_title``
    (node id -> title) is asked only for a row without one.
    """
    eta = eta_seconds(row)
    status = public_status(row["status"])
    error = None
    if status == "failed":
        error = {"code": row["error_code"], "message": row["error_message"],
                 "node_id": row["error_node_id"], "node_type": row["error_node_type"]}
    node = row["progress_node"] if status == "running" else None
    title = (row.get("progress_title") or (node_title(node) if node_title else None)) if node else None
    if row["status"] == "checking":
        title = CHECKING_TITLE
    return {
        "id": row["id"],
        "workflow": row["workflow"],
        "status": status,
        "queue_position": (row.get("ahead") or 0) if status == "queued" else None,
        "progress": {"percent": float(row["progress_percent"]), "node": node, "node_title": title,
                     "value": row["progress_value"] if node else 0, "max": row["progress_max"] if node else 0},
        "preview_url": preview_url if status == "running" else None,
        "error": error,
        "params": row["params"],
        "created_at": isoformat(row["created_at"]),
        "started_at": isoformat(row["started_at"]),
        "finished_at": isoformat(row["finished_at"]),
        "poll_after_ms": poll_after_ms(row, eta),
        "eta_seconds": eta,
    }
