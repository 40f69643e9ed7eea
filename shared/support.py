"""`gateway jobs ...` and `gateway users ...`: what support looks at and does for one user or job.

    gateway jobs show ID                      the job as the API shows it, plus user, server, error,
                                              stored output keys and usage record (JSON)
    gateway jobs cancel ID                    cancel it as its owner would (POST /v1/jobs/{id}/cancel)
    gateway users show ID|SUBJECT [--jobs N]  the user, their limits (and override), usage totals,
                                              their most recent jobs (JSON)
    gateway users limits ID|SUBJECT [--active N] [--daily N] | --clear
                                              set (0 = no limit) or remove the user's own limits

Every change goes through the code the API runs (shared/cancellation.py, shared/limits.py), so the
job state rules hold whoever acts. A user is named by id, or by subject (WeChat openid, dev name).
"""

from __future__ import annotations

import json
import sys

from shared import jobs, limits, usage, users
from shared.db import isoformat

RECENT_JOBS = 10
MAX_RECENT_JOBS = 1000


def _context(cfg):
    from shared.context import Context
    if cfg.database_url is None:
        sys.exit("gateway: configuration error: DATABASE_URL: must be set for `gateway jobs` and `gateway users`")
    return Context(cfg, bounded=False)


def _print(value: dict) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _time(value) -> str | None:
    return isoformat(value) if value is not None else None


# -- jobs ---------------------------------------------------------------------------------------------

def job_report(ctx, job_id: str) -> dict | None:
    """What `gateway jobs show` prints: the API's job object and the operator's fields; None if unknown."""
    with ctx.db.connection() as conn:
        row = jobs.get_job(conn, job_id)
        if row is None:
            return None
        full = jobs.get_row(conn, job_id)
        user = users.get_user(conn, row["user_id"])
        backend = query_backend(conn, row["backend_id"])
        outputs = jobs.list_outputs(conn, job_id)
        record = usage.job_usage(conn, job_id)
    preview = None
    if row["status"] == "running" and row["preview_key"]:
        preview, _ = ctx.store.signed_url(row["preview_key"], ctx.config.signed_url_ttl)
    return {
        "job": jobs.job_object(row, preview_url=preview),
        "operator": {
            "status": row["status"],  # the stored state (the API shows 'submitting' as 'queued')
            "user": user and {"id": user["id"], "provider": user["provider"], "subject": user["subject"]},
            "backend": backend,
            "cancel_requested": bool(full.get("cancel_requested")),
            "error": {"code": row["error_code"], "message": row["error_message"], "node_id": row["error_node_id"],
                      "node_type": row["error_node_type"]} if row["error_code"] else None,
            "outputs": [o["object_key"] for o in outputs],
            "preview_key": row["preview_key"],
            "usage": usage.usage_object(record) if record else None,
            "submitted_at": _time(full.get("submitted_at")),
            "updated_at": _time(full.get("updated_at")),
        },
    }


def query_backend(conn, backend_id: int | None) -> dict | None:
    from shared import backends
    row = backends.get_backend(conn, backend_id) if backend_id else None
    return {"id": row["id"], "url": row["url"]} if row else None


def cmd_jobs_show(cfg, args) -> int:
    ctx = _context(cfg)
    report = job_report(ctx, args.id)
    if report is None:
        sys.exit(f"gateway: no job {args.id}")
    _print(report)
    return 0


def cmd_jobs_cancel(cfg, args) -> int:
    """Cancel a job through the API's core, as its owner: the same conditional transitions."""
    from shared.cancellation import cancel
    from shared.errors import BackendUnavailableError, ConflictError
    ctx = _context(cfg)
    with ctx.db.connection() as conn:
        row = jobs.get_row(conn, args.id)
    if row is None:
        sys.exit(f"gateway: no job {args.id}")
    try:
        after = cancel(ctx, args.id, row["user_id"])
    except ConflictError:
        sys.exit(f"gateway: job {args.id} is already {row['status']}; nothing to cancel")
    except BackendUnavailableError:
        sys.exit(f"gateway: job {args.id}: cancel recorded, but its ComfyUI server did not answer; "
                 "the listener stops the job when it sees it")
    status = jobs.public_status(after["status"])
    if status == "cancelled":
        print(f"{args.id}: cancelled")
    else:
        print(f"{args.id}: {status}, cancel requested (it becomes cancelled when ComfyUI confirms)")
    return 0


# -- users --------------------------------------------------------------------------------------------

def _find_user(conn, key: str) -> dict:
    found = users.find_users(conn, key)
    if not found:
        sys.exit(f"gateway: no user with id or subject {key!r}")
    if len(found) > 1:
        listed = ", ".join(f"{u['id']} ({u['provider']})" for u in found)
        sys.exit(f"gateway: {key!r} is the subject of several users: {listed}; name one by id")
    return found[0]


def limits_report(conn, cfg, user_id: str) -> dict:
    """A user's limits in force, where they come from, and how much of them is used now."""
    override = limits.get_override(conn, user_id)
    active, daily = limits.effective_limits(override, max_active=cfg.max_active_jobs,
                                            daily_quota=cfg.daily_job_quota)
    return {"max_active_jobs": active, "daily_job_quota": daily, **limits.job_counts(conn, user_id),
            "override": None if override is None else {
                "max_active_jobs": override["max_active_jobs"], "daily_job_quota": override["daily_job_quota"],
                "updated_at": _time(override["updated_at"])}}


def user_report(ctx, key: str, *, recent: int = RECENT_JOBS) -> dict:
    """What `gateway users show` prints."""
    with ctx.db.connection() as conn:
        user = _find_user(conn, key)
        rows = jobs.list_user_jobs(conn, user["id"], limit=recent)
        return {
            "user": {**user, "created_at": _time(user["created_at"])},
            "limits": limits_report(conn, ctx.config, user["id"]),
            "usage": usage.user_totals(conn, user["id"]),
            "recent_jobs": [{"id": r["id"], "workflow": r["workflow"], "status": r["status"],
                             "error_code": r["error_code"], "created_at": _time(r["created_at"]),
                             "finished_at": _time(r["finished_at"])} for r in rows],
        }


def cmd_users_show(cfg, args) -> int:
    _print(user_report(_context(cfg), args.user, recent=args.jobs))
    return 0


def cmd_users_limits(cfg, args) -> int:
    if args.clear and (args.active is not None or args.daily is not None):
        sys.exit("gateway: --clear removes the user's limits; give it alone")
    if not args.clear and args.active is None and args.daily is None:
        sys.exit("gateway: give --active N and/or --daily N (0 = no limit), or --clear")
    ctx = _context(cfg)
    with ctx.db.connection() as conn:
        user = _find_user(conn, args.user)
        cleared = False
        if args.clear:
            cleared = limits.clear_override(conn, user["id"])
        else:
            limits.set_override(conn, user["id"], max_active=args.active, daily_quota=args.daily)
        report = limits_report(conn, cfg, user["id"])

    def shown(n: int) -> str:
        return "no limit" if n == 0 else str(n)
    what = ("the settings apply again" if cleared else "had no limits of its own") if args.clear else "own limits"
    print(f"{user['id']} ({user['provider']} {user['subject']}): {what}; active jobs: "
          f"{shown(report['max_active_jobs'])}, jobs per day: {shown(report['daily_job_quota'])}")
    return 0


def _count(value: str) -> int:
    import argparse
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number from 0 (no limit) to 1000000")
    return n


def _recent(value: str) -> int:
    import argparse
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_RECENT_JOBS:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number from 1 to {MAX_RECENT_JOBS}")
    return n


def add_parser(sub, config) -> None:
    """Register `gateway jobs ...` and `gateway users ...`; ``config()`` builds the Config when a command runs."""
    job_cmds = sub.add_parser("jobs", help="look at or cancel one job").add_subparsers(dest="jobs_command",
                                                                                      required=True)
    show = job_cmds.add_parser("show", help="the job as the API shows it, with operator fields")
    show.add_argument("id")
    show.set_defaults(func=lambda a: cmd_jobs_show(config(), a))
    cancel = job_cmds.add_parser("cancel", help="cancel the job as its owner would")
    cancel.add_argument("id")
    cancel.set_defaults(func=lambda a: cmd_jobs_cancel(config(), a))

    user_cmds = sub.add_parser("users", help="look at one user, set their limits").add_subparsers(
        dest="users_command", required=True)
    show = user_cmds.add_parser("show", help="the user, limits, usage totals and recent jobs")
    show.add_argument("user", help="user id, or subject (WeChat openid, dev name)")
    show.add_argument("--jobs", type=_recent, default=RECENT_JOBS,
                      help=f"how many recent jobs to list (1 to {MAX_RECENT_JOBS}, default {RECENT_JOBS})")
    show.set_defaults(func=lambda a: cmd_users_show(config(), a))
    lim = user_cmds.add_parser("limits", help="the user's own limits (they replace MAX_ACTIVE_JOBS, DAILY_JOB_QUOTA)")
    lim.add_argument("user", help="user id, or subject (WeChat openid, dev name)")
    lim.add_argument("--active", type=_count, help="jobs queued or running at once (0 = no limit)")
    lim.add_argument("--daily", type=_count, help="jobs per UTC day (0 = no limit)")
    lim.add_argument("--clear", action="store_true", help="remove the user's own limits")
    lim.set_defaults(func=lambda a: cmd_users_limits(config(), a))
