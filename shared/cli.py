"""The `gateway` command: migrate, serve, listen, dev, and the operators' commands.

    gateway migrate                 apply the missing sql/ files
    gateway serve [--bind H:P] [--workers N] [--worker-class gevent|gthread] [--threads N] [--connections N]
                  [--access-log]    the HTTP API under gunicorn (shared/door)
    gateway listen [--metrics-bind H:P]  the ComfyUI listener (one process for every backend)
    gateway dev [--bind H:P] [--fake-comfyui]  migrate, then API and listener together (Ctrl-C stops all;
                                    shared/devstack.py)
    gateway usage export [--since T] [--until T] [--after-id N] [--format csv|jsonl] [--output F]
                                    usage records for billing jobs that read files
    gateway backends list|drain|resume|refresh|slots   the pool of ComfyUI servers (shared/pool/admin.py)
    gateway webhooks replay --since T [--until T]      send again the webhook events written in a window
    gateway cleanup [--dry-run] [--batch N]            delete previews, old uploads and expired jobs (shared/retention/)
    gateway check                   pre-flight of a deployment, one line per item (shared/preflight.py)
    gateway jobs show|cancel ID, gateway users show|limits ...   support commands (shared/support.py)
"""

from __future__ import annotations

import argparse
import logging
import sys

from shared.config import Config, ConfigError

log = logging.getLogger("gateway")


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as e:
        sys.exit(f"gateway: configuration error: {e}")


def _logging(cfg: Config) -> None:
    from shared.logs import setup
    setup(cfg)  # LOG_FORMAT text or json, LOG_LEVEL


def cmd_migrate(args) -> int:
    cfg = _config()
    _logging(cfg)
    if cfg.database_url is None:
        sys.exit("gateway: configuration error: DATABASE_URL: must be set for `gateway migrate`")
    from shared.db import connect
    from shared.migrate import migrate
    conn = connect(cfg.database_url)
    try:
        applied = migrate(conn)
    finally:
        conn.close()
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _check_startup(cfg: Config) -> None:
    """Refuse to start with a config that cannot work, naming what is wrong."""
    try:
        cfg.require_secret_key()
    except ConfigError as e:
        sys.exit(f"gateway: configuration error: {e}")
    if cfg.database_url is None:
        sys.exit("gateway: configuration error: DATABASE_URL: must be set (only `gateway dev` starts a database)")
    from shared.workflows import load_workflows
    workflows, problems = load_workflows(cfg.workflows_dir)
    for problem in problems:
        log.error("workflow not loaded: %s", problem)
    if not workflows:
        log.warning("no workflows loaded from %s", cfg.workflows_dir)


def cmd_serve(args) -> int:
    cfg = _config()
    _logging(cfg)
    _check_startup(cfg)
    from shared.door import Server
    Server(bind=args.bind, workers=args.workers, worker_class=args.worker_class, threads=args.threads,
           connections=args.connections, access_log=args.access_log, trusted_proxies=cfg.trusted_proxies,
           log_format=cfg.log_format).run()
    return 0


def cmd_listen(args) -> int:
    cfg = _config()
    _logging(cfg)
    _check_startup(cfg)
    from listener.connection import Listener
    from shared.context import Context
    ctx = Context(cfg, bounded=False)
    if args.metrics_bind:
        from shared.metrics import serve_listener
        try:
            serve_listener(ctx, args.metrics_bind)
        except OSError as e:
            sys.exit(f"gateway listen: --metrics-bind {args.metrics_bind}: {e.strerror or e}")
    Listener(ctx).run_forever()
    return 0


def bind_arg(value: str) -> str:
    """argparse type of a HOST:PORT to listen on (listen --metrics-bind, dev --bind)."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return value


# New fields go last: spreadsheets and scripts that read columns by position keep working.
USAGE_FIELDS = ("id", "job_id", "user_id", "workflow", "status", "images", "megapixels", "steps", "gpu_seconds",
                "queue_seconds", "backend", "created_at", "finished_at", "provider", "subject", "credits", "price",
                "moderation")


def _time_arg(value: str):
    from datetime import datetime, timezone
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def cmd_usage_export(args) -> int:
    """Write usage records (the same ones, with the same ids, as GET /v1/usage) as CSV or JSON Lines.

    In CSV, a null is an empty cell, ``credits`` is written with its 4 decimal places as stored and
    ``price`` as its JSON text.
    """
    import csv
    import json

    from shared import usage
    from shared.db import Database
    cfg = _config()
    _logging(cfg)
    if cfg.database_url is None:
        sys.exit("gateway: configuration error: DATABASE_URL: must be set for `gateway usage export`")
    db = Database(cfg.database_url)
    usage.assign_sequence(db)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=USAGE_FIELDS) if args.format == "csv" else None
        if writer:
            writer.writeheader()
        after, count = args.after_id, 0
        while True:
            with db.connection() as conn:
                rows = usage.list_usage(conn, after_id=after, limit=1000, since=args.since, until=args.until)
            for row in rows:
                record = usage.usage_object(row)
                if writer:
                    writer.writerow({**record, "credits": row["credits"],
                                     "price": None if record["price"] is None else json.dumps(record["price"])})
                else:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += len(rows)
            if len(rows) < 1000:
                break
            after = rows[-1]["seq"]
    finally:
        if args.output:
            out.close()
    print(f"exported {count} usage record(s)", file=sys.stderr)
    return 0


def cmd_webhooks_replay(args) -> int:
    """Make the events written in [since, until) due again (same event ids); the listener sends them."""
    from shared import outbox
    from shared.db import Database
    cfg = _config()
    _logging(cfg)
    if cfg.database_url is None:
        sys.exit("gateway: configuration error: DATABASE_URL: must be set for `gateway webhooks replay`")
    if args.until is not None and args.until <= args.since:
        sys.exit("gateway webhooks replay: --until must be after --since")
    db = Database(cfg.database_url)
    with db.connection() as conn:
        count = outbox.replay(conn, since=args.since, until=args.until)
    print(f"replaying {count} webhook event(s); the listener sends them with their original webhook-id")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="ComfyUI gateway for mobile apps")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the missing schema files").set_defaults(func=cmd_migrate)
    serve = sub.add_parser("serve", help="run the HTTP API under gunicorn")
    serve.add_argument("--bind", default="127.0.0.1:8000")
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--worker-class", choices=("gevent", "gthread"), default="gevent",
                       help="gevent (default): one greenlet per connection; gthread: a pool of --threads threads")
    serve.add_argument("--threads", type=int, default=8, help="threads per worker (gthread)")
    serve.add_argument("--connections", type=int, default=1000,
                       help="open connections per worker (gevent); past it new ones wait to be accepted")
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(func=cmd_serve)
    listen = sub.add_parser("listen", help="run the ComfyUI listener")
    listen.add_argument("--metrics-bind", type=bind_arg, metavar="HOST:PORT",
                        help="serve the listener's Prometheus metrics at http://HOST:PORT/metrics")
    listen.set_defaults(func=cmd_listen)
    __import__("shared.devstack").devstack.add_parser(sub, _config, _logging)  # gateway dev
    usage_cmd = sub.add_parser("usage", help="usage records for billing").add_subparsers(dest="usage_command",
                                                                                         required=True)
    export = usage_cmd.add_parser("export", help="write usage records as CSV or JSON Lines")
    export.add_argument("--since", type=_time_arg, help="records of jobs finished at or after this time (ISO 8601)")
    export.add_argument("--until", type=_time_arg, help="records of jobs finished before this time (ISO 8601)")
    export.add_argument("--after-id", type=int, default=0, help="only records with a larger id (resume a read)")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--output", help="file to write (default: standard output)")
    export.set_defaults(func=cmd_usage_export)
    webhooks_cmd = sub.add_parser("webhooks", help="events sent to WEBHOOK_URL").add_subparsers(
        dest="webhooks_command", required=True)
    replay = webhooks_cmd.add_parser("replay", help="send again the events written in a time window")
    replay.add_argument("--since", type=_time_arg, required=True,
                        help="events written at or after this time (ISO 8601, UTC unless it has an offset)")
    replay.add_argument("--until", type=_time_arg, help="events written before this time (ISO 8601)")
    replay.set_defaults(func=cmd_webhooks_replay)
    from shared import retention
    from shared.pool import admin
    admin.add_parser(sub, _config)
    retention.add_parser(sub, _config, _logging)
    __import__("shared.support").support.add_parser(sub, _config)  # gateway jobs ..., gateway users ...
    __import__("shared.preflight").preflight.add_parser(sub, _config)  # gateway check
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
