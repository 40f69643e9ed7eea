"""Usage records for billing: one per job that reached a final state, written once."""

from __future__ import annotations

from shared.db import execute, utcnow


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
