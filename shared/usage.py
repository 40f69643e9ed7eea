"""Usage records for billing: one per job that reached a final state, written once.

A record is billable: it names the user as their login provider knows them
(``provider``, ``subject``: e.g. ``wechat`` and the openid) and says what the job
cost (``credits``) under its workflow's ``price``, which it keeps (``price``) so
that it explains itself after the workflow file changes. Credits are computed
from the record's own ``images``, ``megapixels`` and ``gpu_seconds``, exactly
(decimal arithmetic), then rounded half up to 4 places:

- succeeded: per_job + per_image × images + per_megapixel × megapixels
  + per_gpu_second × gpu_seconds;
- failed or cancelled: per_gpu_second × gpu_seconds only (the GPU time it used;
  0 when the price has no per_gpu_second);
- no price in the workflow, or its file gone or unreadable when the job
  finished: credits and price NULL (a warning is logged once, not for every job, while it lasts).

The price is read from the workflow file when the record is written (callers
pass only the job id), so a changed price applies to jobs that finish after
the change, without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from shared import metrics
from shared.db import execute, query, query_one, utcnow

if TYPE_CHECKING:
    from shared.workflows import Price

log = logging.getLogger(__name__)

_SEQ_LOCK = "comfy_gateway_usage_seq"
_PLACES = Decimal("0.0001")  # credits keep 4 decimal places


def record_usage(conn, job: dict, *, images: int, megapixels: float, steps: int, gpu_seconds: float,
                 queue_seconds: float, backend_url: str, price: Price | None = None) -> bool:
    """Insert the job's usage record unless it exists; return True if this call wrote it.

    The user's provider and subject are copied from ``users`` in the same statement. The record is
    written once per job, whichever path ends it: that is where ``gateway_jobs_finished_total`` counts.
    """
    megapixels, gpu_seconds = round(megapixels, 4), round(max(gpu_seconds, 0.0), 3)
    moderation = job.get("moderation")
    # Images the content check rejected were withdrawn: the job costs what a failed one does.
    billed = "failed" if moderation == "rejected" else job["status"]
    credits = compute_credits(price, billed, images=images, megapixels=megapixels, gpu_seconds=gpu_seconds)
    wrote = execute(conn, """INSERT IGNORE INTO usage_records (job_id, user_id, provider, subject, workflow, status,
                            images, megapixels, steps, gpu_seconds, queue_seconds, backend, created_at, finished_at,
                            credits, price, moderation)
                            VALUES (%s, %s, (SELECT provider FROM users WHERE id=%s),
                                    (SELECT subject FROM users WHERE id=%s), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                                    %s, %s, %s)""",
                   (job["id"], job["user_id"], job["user_id"], job["user_id"], job["workflow"], job["status"], images,
                    megapixels, steps, gpu_seconds, round(max(queue_seconds, 0.0), 3), backend_url,
                    job["created_at"], job["finished_at"] or utcnow(), credits,
                    None if price is None else json.dumps(price.to_json()), moderation)) == 1
    if wrote:  # once per job (a rolled-back transaction counts all the same)
        metrics.job_finished(job["workflow"], job["status"])
    return wrote


def compute_credits(price: Price | None, status: str, *, images: int, megapixels: float,
                    gpu_seconds: float) -> Decimal | None:
    """What a final job costs under a price, rounded half up to 4 places; None without a price."""
    if price is None:
        return None
    total = _decimal(price.per_gpu_second) * _decimal(gpu_seconds)
    if status == "succeeded":
        total += (_decimal(price.per_job) + _decimal(price.per_image) * images
                  + _decimal(price.per_megapixel) * _decimal(megapixels))
    return total.quantize(_PLACES, rounding=ROUND_HALF_UP)


def _decimal(value: int | float | None) -> Decimal:
    """The number as written (0.1 is 0.1, not its binary neighbour); None is 0."""
    return Decimal(0) if value is None else Decimal(repr(value))


def graph_steps(graph: dict) -> int:
    """Sampling steps a graph asks for (the sum of every node's integer `steps` input)."""
    total = 0
    for node in graph.values():
        steps = (node.get("inputs") or {}).get("steps") if isinstance(node, dict) else None
        if isinstance(steps, int) and not isinstance(steps, bool):
            total += steps
    return total


def close_job(conn, job_id: str, backend_url: str, *, gpu_seconds: float = 0.0, queue_seconds: float = 0.0) -> bool:
    """The records of a job that ended, in the transaction that made it final: its usage record, then
    the events telling of it (shared/outbox.py), each written once; True if the usage record is new."""
    from shared import jobs, outbox
    job = jobs.get_row(conn, job_id)
    wrote = write_usage(conn, job_id, backend_url, gpu_seconds=gpu_seconds, queue_seconds=queue_seconds, job=job)
    outbox.job_finished(conn, job_id, row=job)
    return wrote


def write_usage(conn, job_id: str, backend_url: str, *, gpu_seconds: float = 0.0, queue_seconds: float = 0.0,
                workflows_dir: str | None = None, job: dict | None = None) -> bool:
    """Write the usage record of a final job (no-op if it exists or the job is not final).

    The price comes from ``<workflows_dir>/<workflow>.json`` as it is now
    (``workflows_dir`` defaults to this process's WORKFLOWS_DIR). ``job``: its row, if already read.
    """
    from shared import jobs
    job = job if job is not None else jobs.get_row(conn, job_id)
    if job is None or job["status"] not in jobs.FINAL or job.get("moderation") == "pending":
        return False  # not final, or its images wait for their verdict (shared/moderation/outputs.py settles it)
    if gpu_seconds == 0.0 and job.get("gpu_seconds"):  # kept on the row while the verdict was awaited
        gpu_seconds, queue_seconds = job["gpu_seconds"], job["queue_seconds"] or queue_seconds
    outputs = jobs.list_outputs(conn, job_id) if job["status"] == "succeeded" else []
    megapixels = sum((o["width"] or 0) * (o["height"] or 0) for o in outputs) / 1e6
    if queue_seconds == 0.0 and job["started_at"] and job["submitted_at"]:
        queue_seconds = (job["started_at"] - job["submitted_at"]).total_seconds()
    price = workflow_price(job["workflow"], workflows_dir, job_id=job_id)
    return record_usage(conn, job, images=len(outputs), megapixels=megapixels,
                        steps=graph_steps(job["prompt"]) if job["status"] == "succeeded" else 0,
                        gpu_seconds=gpu_seconds, queue_seconds=queue_seconds, backend_url=backend_url, price=price)


class _PriceFiles:
    """The prices of workflow files, read again only when a file changes; each problem is logged once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._read: dict[Path, tuple[tuple, Price | None, str | None]] = {}  # path -> (stat, price, problem)
        self._told: dict[Path, str] = {}  # path -> the problem last logged

    def price(self, path: Path, *, job_id: str) -> Price | None:
        from shared.workflows import WorkflowFileError, load_price
        try:
            st = path.stat()
        except OSError:
            stamp, price, problem = None, None, "the file is gone"
        else:
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            with self._lock:
                known = self._read.get(path)
            if known is not None and known[0] == stamp:
                _, price, problem = known
            else:
                price, problem = None, None
                try:
                    price = load_price(path)
                except WorkflowFileError as e:
                    problem = str(e)
                with self._lock:
                    self._read[path] = (stamp, price, problem)
        with self._lock:
            told = self._told.get(path)
            if problem is None:
                self._told.pop(path, None)
            else:
                self._told[path] = problem
        if problem is not None and problem != told:
            log.warning("job %s: its usage record has no credits: no price from %s (%s); not logged again for "
                        "other jobs while this lasts", job_id, path, problem)
        return price


_price_files = _PriceFiles()


def workflow_price(workflow: str, workflows_dir: str | None = None, *, job_id: str) -> Price | None:
    """The price the workflow's file states now; None when it sets none or the file is gone or unusable."""
    from shared.workflows import NAME_RE
    if workflows_dir is None:
        from shared.config import Config
        workflows_dir = Config.from_env().workflows_dir
    if not NAME_RE.fullmatch(workflow):
        log.warning("job %s: workflow name %r names no file: its usage record has no credits", job_id, workflow)
        return None
    return _price_files.price(Path(workflows_dir) / f"{workflow}.json", job_id=job_id)


def assign_sequence(db, *, lock_timeout: int = 10) -> int:
    """Number the records that have no sequence yet, in one locked transaction; return how many.

    Sequence numbers are handed out only under a named lock and committed before
    it is released, so a number a reader can see is never followed by a smaller
    one committed later: paging by ``after_id`` misses nothing.
    """
    with db.connection() as conn:
        got = query_one(conn, "SELECT GET_LOCK(%s, %s) AS got", (_SEQ_LOCK, lock_timeout))["got"]
        if got != 1:
            return 0
        try:
            conn.begin()
            try:
                top = query_one(conn, "SELECT COALESCE(MAX(seq), 0) AS top FROM usage_records")["top"]
                rows = query(conn, "SELECT id FROM usage_records WHERE seq IS NULL ORDER BY id FOR UPDATE")
                for n, row in enumerate(rows, start=1):
                    execute(conn, "UPDATE usage_records SET seq=%s WHERE id=%s", (top + n, row["id"]))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return len(rows)
        finally:
            query_one(conn, "SELECT RELEASE_LOCK(%s) AS released", (_SEQ_LOCK,))


def list_usage(conn, *, after_id: int, limit: int, since: datetime | None = None,
               until: datetime | None = None) -> list[dict]:
    """Numbered usage records after a sequence number, oldest first, optionally by finish time."""
    sql = "SELECT * FROM usage_records WHERE seq IS NOT NULL AND seq > %s"
    args: list = [after_id]
    if since is not None:
        sql += " AND finished_at >= %s"
        args.append(since)
    if until is not None:
        sql += " AND finished_at < %s"
        args.append(until)
    sql += " ORDER BY seq LIMIT %s"
    args.append(limit)
    return query(conn, sql, args)


def usage_object(row: dict) -> dict:
    """A usage record as the contract shows it (its id is the sequence number; new fields come last)."""
    from shared.db import isoformat
    price = row["price"]
    if isinstance(price, (str, bytes)):
        price = json.loads(price)
    return {"id": row["seq"], "job_id": row["job_id"], "user_id": row["user_id"], "workflow": row["workflow"],
            "status": row["status"], "images": row["images"], "megapixels": row["megapixels"],
            "steps": row["steps"], "gpu_seconds": row["gpu_seconds"], "queue_seconds": row["queue_seconds"],
            "backend": row["backend"], "created_at": isoformat(row["created_at"]),
            "finished_at": isoformat(row["finished_at"]), "provider": row["provider"], "subject": row["subject"],
            "credits": None if row["credits"] is None else float(row["credits"]), "price": price,
            "moderation": row.get("moderation")}


def job_usage(conn, job_id: str) -> dict | None:
    """The usage record of one job, None while it has none (`gateway jobs show`)."""
    return query_one(conn, "SELECT * FROM usage_records WHERE job_id=%s", (job_id,))


def user_totals(conn, user_id: str) -> dict:
    """What a user's usage records add up to, per final status (`gateway users show`)."""
    rows = query(conn, "SELECT status, COUNT(*) AS jobs, COALESCE(SUM(images), 0) AS images, "
                       "COALESCE(SUM(megapixels), 0) AS megapixels, COALESCE(SUM(gpu_seconds), 0) AS gpu_seconds, "
                       "SUM(credits) AS credits FROM usage_records WHERE user_id=%s GROUP BY status ORDER BY status",
                 (user_id,))
    return {r["status"]: {"jobs": int(r["jobs"]), "images": int(r["images"]),
                          "megapixels": round(float(r["megapixels"]), 4),
                          "gpu_seconds": round(float(r["gpu_seconds"]), 3),
                          "credits": None if r["credits"] is None else float(r["credits"])} for r in rows}
