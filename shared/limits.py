"""Per-user and per-IP limits, kept in MySQL so they hold across every function instance.

* request rate: a fixed one-minute window per bucket (``user:<id>``, ``ip:<addr>``),
  counted with one upsert; over the limit → 429 ``rate_limited``;
* active jobs and the daily quota: counted under a lock on the user's row, so two
  concurrent submissions cannot both slip under the limit; an operator's override of one user
  (``user_limits``, ``gateway users limits``) replaces the settings for that user.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.db import execute, query_one, utcnow
from shared.errors import TooManyRequestsError

WINDOW_S = 60
# The jobs that count against a user's active-job limit, and that `gateway users show` reports as
# active: jobs.ACTIVE (on a server) plus 'checking' (images waiting for a content-check verdict,
# shown to apps as running).
COUNTED_ACTIVE = ("submitting", "queued", "running", "checking")


def hit(conn, bucket: str, limit: int, *, now: datetime | None = None) -> None:
    """Count one request in the bucket's current minute; raise 429 over the limit (0 = unlimited)."""
    if limit <= 0:
        return
    now = now or utcnow()
    window = now.replace(second=0, microsecond=0)
    if execute(conn, "INSERT INTO rate_limits (bucket, window_start, hits) VALUES (%s, %s, 1) "
                     "ON DUPLICATE KEY UPDATE hits=hits+1", (bucket[:160], window)) == 1:
        # A new minute for this bucket: its earlier ones are never read again (one row per bucket stays).
        execute(conn, "DELETE FROM rate_limits WHERE bucket=%s AND window_start < %s", (bucket[:160], window))
    hits = query_one(conn, "SELECT hits FROM rate_limits WHERE bucket=%s AND window_start=%s",
                     (bucket[:160], window))["hits"]
    if hits > limit:
        retry = WINDOW_S - now.second
        raise TooManyRequestsError("too many requests; slow down", retry_after=max(retry, 1))


def lock_user(conn, user_id: str) -> None:
    """Serialize one user's submissions: lock their row until the transaction ends."""
    query_one(conn, "SELECT id FROM users WHERE id=%s FOR UPDATE", (user_id,))


def get_override(conn, user_id: str) -> dict | None:
    """The operator's limits of one user (``max_active_jobs``, ``daily_job_quota``: None = the setting)."""
    return query_one(conn, "SELECT user_id, max_active_jobs, daily_job_quota, updated_at FROM user_limits "
                           "WHERE user_id=%s", (user_id,))


def set_override(conn, user_id: str, *, max_active: int | None = None, daily_quota: int | None = None) -> None:
    """Set one user's limits (0 = unlimited); a limit not given keeps its earlier override, if any."""
    execute(conn, "INSERT INTO user_limits (user_id, max_active_jobs, daily_job_quota, updated_at) "
                  "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                  "max_active_jobs=COALESCE(VALUES(max_active_jobs), max_active_jobs), "
                  "daily_job_quota=COALESCE(VALUES(daily_job_quota), daily_job_quota), updated_at=VALUES(updated_at)",
            (user_id, max_active, daily_quota, utcnow()))


def clear_override(conn, user_id: str) -> bool:
    """Remove one user's limits (the settings apply again); False if there were none."""
    return execute(conn, "DELETE FROM user_limits WHERE user_id=%s", (user_id,)) == 1


def effective_limits(override: dict | None, *, max_active: int, daily_quota: int) -> tuple[int, int]:
    """(max active jobs, daily quota) for a user: the override where it sets one, else the settings."""
    if override is not None:
        if override["max_active_jobs"] is not None:
            max_active = override["max_active_jobs"]
        if override["daily_job_quota"] is not None:
            daily_quota = override["daily_job_quota"]
    return max_active, daily_quota


def check_job_limits(conn, user_id: str, *, max_active: int, daily_quota: int) -> None:
    """Enforce the active-job limit and the daily quota (0 = unlimited); an operator's override
    of the user (``gateway users limits``) replaces the settings given here.

    Call inside the transaction that inserts the job, after ``lock_user``.
    """
    max_active, daily_quota = effective_limits(get_override(conn, user_id), max_active=max_active,
                                               daily_quota=daily_quota)
    now = utcnow()
    if max_active > 0:
        active = query_one(conn, f"SELECT COUNT(*) AS n FROM jobs WHERE user_id=%s "
                                 f"AND status IN ({_marks(COUNTED_ACTIVE)})", (user_id, *COUNTED_ACTIVE))["n"]
        if active >= max_active:
            raise TooManyRequestsError(f"you already have {active} jobs in progress; wait for one to finish",
                                       code="too_many_active_jobs", retry_after=5)
    if daily_quota > 0:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today = query_one(conn, "SELECT COUNT(*) AS n FROM jobs WHERE user_id=%s AND created_at >= %s",
                          (user_id, midnight))["n"]
        if today >= daily_quota:
            retry = int((midnight + timedelta(days=1) - now).total_seconds()) + 1
            raise TooManyRequestsError(f"the daily quota of {daily_quota} jobs is used up",
                                       code="quota_exceeded", retry_after=retry)


def limit_user(ctx, user_id: str) -> None:
    """Count a write request of a user against RATE_LIMIT_PER_MINUTE."""
    with ctx.db.connection() as conn:
        hit(conn, f"user:{user_id}", ctx.config.rate_limit_per_minute)


def limit_login(ctx, req) -> None:
    """Count a login attempt of a client IP against LOGIN_RATE_LIMIT_PER_MINUTE."""
    with ctx.db.connection() as conn:
        hit(conn, f"ip:{req.source_ip or 'unknown'}", ctx.config.login_rate_limit_per_minute)


def job_counts(conn, user_id: str, *, now: datetime | None = None) -> dict:
    """How much of their limits a user uses now: jobs active, jobs submitted this UTC day."""
    midnight = (now or utcnow()).replace(hour=0, minute=0, second=0, microsecond=0)
    row = query_one(conn, f"SELECT COALESCE(SUM(status IN ({_marks(COUNTED_ACTIVE)})), 0) AS active, "
                          "COALESCE(SUM(created_at >= %s), 0) AS today FROM jobs WHERE user_id=%s",
                    (*COUNTED_ACTIVE, midnight, user_id))
    return {"active_jobs": int(row["active"]), "jobs_today": int(row["today"])}


def _marks(values) -> str:
    return ",".join(["%s"] * len(values))
