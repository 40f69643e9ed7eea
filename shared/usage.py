"""Usage records for billing: one per job that reached a final state, written once."""

from __future__ import annotations

from datetime import datetime

from shared.db import execute, query, query_one, utcnow

_SEQ_LOCK = "comfy_gateway_usage_seq"


def record_usage(conn, job: dict, *, images: int, megapixels: float, steps: int, gpu_seconds: float,
                 queue_seconds: float, backend_url: str) -> bool:
    """Insert the job's usage record unless it exists; return True if this call wrote it."""
    return execute(conn, """INSERT IGNORE INTO usage_records (job_id, user_id, workflow, status, images, megapixels,
                            steps, gpu_seconds, queue_seconds, backend, created_at, finished_at)
                            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                   (job["id"], job["user_id"], job["workflow"], job["status"], images, round(megapixels, 4), steps,
                    round(max(gpu_seconds, 0.0), 3), round(max(queue_seconds, 0.0), 3), backend_url,
                    job["created_at"], job["finished_at"] or utcnow())) == 1


def graph_steps(graph: dict) -> int:
    """Sampling steps a graph asks for (the sum of every node's integer `steps` input)."""
    total = 0
    for node in graph.values():
        steps = (node.get("inputs") or {}).get("steps") if isinstance(node, dict) else None
        if isinstance(steps, int) and not isinstance(steps, bool):
            total += steps
    return total


def write_usage(conn, job_id: str, backend_url: str, *, gpu_seconds: float = 0.0, queue_seconds: float = 0.0) -> bool:
    """Write the usage record of a final job (no-op if it exists or the job is not final)."""
    from shared import jobs
    job = jobs.get_row(conn, job_id)
    if job is None or job["status"] not in jobs.FINAL:
        return False
    outputs = jobs.list_outputs(conn, job_id) if job["status"] == "succeeded" else []
    megapixels = sum((o["width"] or 0) * (o["height"] or 0) for o in outputs) / 1e6
    if queue_seconds == 0.0 and job["started_at"] and job["submitted_at"]:
        queue_seconds = (job["started_at"] - job["submitted_at"]).total_seconds()
    return record_usage(conn, job, images=len(outputs), megapixels=megapixels,
                        steps=graph_steps(job["prompt"]) if job["status"] == "succeeded" else 0,
                        gpu_seconds=gpu_seconds, queue_seconds=queue_seconds, backend_url=backend_url)


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
    """A usage record as the contract shows it (its id is the sequence number)."""
    from shared.db import isoformat
    return {"id": row["seq"], "job_id": row["job_id"], "user_id": row["user_id"], "workflow": row["workflow"],
            "status": row["status"], "images": row["images"], "megapixels": row["megapixels"],
            "steps": row["steps"], "gpu_seconds": row["gpu_seconds"], "queue_seconds": row["queue_seconds"],
            "backend": row["backend"], "created_at": isoformat(row["created_at"]),
            "finished_at": isoformat(row["finished_at"])}
