"""`gateway cleanup [--dry-run] [--batch N]`: one cleanup now, one line per kind, exit 1 when rows were kept."""

from __future__ import annotations

import sys

from shared.errors import DatabaseUnavailableError
from shared.retention.cleanup import BATCH, MAX_BATCH, Policy, run

LOCK_WAIT_S = 5           # `gateway cleanup` waits this long for a run of another process


def _batch(value: str) -> int:
    import argparse
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_BATCH}")
    return n


def cmd_cleanup(cfg, args) -> int:
    """Print one line per kind; exit 0 when everything due is gone, 1 when some rows had to be kept."""
    from shared import retention  # its LOCK_WAIT_S, read now: setting shared.retention.LOCK_WAIT_S still counts
    from shared.config import ConfigError
    from shared.db import Database
    from shared.storage import open_store
    if cfg.database_url is None:
        sys.exit("gateway: configuration error: DATABASE_URL: must be set for `gateway cleanup`")
    try:
        store = open_store(cfg)
    except ConfigError as e:
        sys.exit(f"gateway: configuration error: {e}")
    db = Database(cfg.database_url)
    try:
        report = run(db, store, Policy.from_config(cfg), batch=args.batch, dry_run=args.dry_run,
                     lock_wait_s=retention.LOCK_WAIT_S)
    except DatabaseUnavailableError:
        print("gateway cleanup: the database is unavailable; nothing more was done (run it again)", file=sys.stderr)
        return 1
    finally:
        db.close()
    if report.busy:
        print("gateway cleanup: another cleanup is running (a listener's, or another `gateway cleanup`); "
              "nothing done", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def add_parser(sub, config, setup_logging=None) -> None:
    """Register `gateway cleanup`; ``config()`` builds the Config when it runs, ``setup_logging(cfg)`` sets up
    the command's logging."""
    p = sub.add_parser("cleanup", help="delete finished jobs' previews, old uploads and (RETENTION_DAYS) old jobs")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted; change nothing")
    p.add_argument("--batch", type=_batch, default=BATCH, help=f"rows per batch (default {BATCH})")

    def cmd(args) -> int:
        cfg = config()
        if setup_logging is not None:
            setup_logging(cfg)
        return cmd_cleanup(cfg, args)
    p.set_defaults(func=cmd)
