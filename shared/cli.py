"""The `gateway` command: migrate, serve, listen, dev.

    gateway migrate                 apply the missing sql/ files
    gateway serve [--bind H:P] [--workers N] [--worker-class gevent|gthread] [--threads N] [--connections N]
                  [--access-log]    the HTTP API under gunicorn (shared/door)
    gateway listen                  the ComfyUI listener (one process for every backend)
    gateway dev [--bind H:P] [--fake-comfyui]  migrate, then API and listener together (Ctrl-C stops all)
    gateway usage export [--since T] [--until T] [--after-id N] [--format csv|jsonl] [--output F]
                                    usage records for billing jobs that read files
    gateway backends list|drain|resume|refresh|slots   the pool of ComfyUI servers (shared/pool/admin.py)
    gateway webhooks replay --since T [--until T]      send again the webhook events written in a window
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.config import Config, ConfigError, PROJECT_ROOT

log = logging.getLogger("gateway")


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as e:
        sys.exit(f"gateway: configuration error: {e}")


def _logging(cfg: Config) -> None:
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
           connections=args.connections, access_log=args.access_log, trusted_proxies=cfg.trusted_proxies).run()
    return 0


def cmd_listen(args) -> int:
    cfg = _config()
    _logging(cfg)
    _check_startup(cfg)
    from listener.connection import Listener
    from shared.context import Context
    Listener(Context(cfg, bounded=False)).run_forever()
    return 0


def _dev_secret(state_dir: Path) -> str:
    path = state_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(32)
    path.write_text(key)
    path.chmod(0o600)
    return key


def cmd_dev(args) -> int:
    cfg = _config()
    _logging(cfg)
    state = Path(cfg.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DEV_LOGIN", "1")
    env.setdefault("PUBLIC_BASE_URL", f"http://{args.bind}")
    if not cfg.secret_key:
        env["SECRET_KEY"] = _dev_secret(state)
    procs: list[subprocess.Popen] = []
    local_db = None

    def stop(*_):
        raise KeyboardInterrupt()
    # From here on every way out (Ctrl-C, kill, a closed terminal) runs the clean-up below, which
    # stops the private MariaDB too: it runs in its own session and would outlive us.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        if cfg.database_url is None:
            from shared.localdb import LocalDatabase, LocalDatabaseError
            local_db = LocalDatabase(state / "mysql")
            try:
                url = local_db.start()
            except LocalDatabaseError as e:
                sys.exit(f"gateway dev: {e}")
            env["DATABASE_URL"] = f"mysql://root:@{url.host}:{url.port}/{url.database}"
        if args.fake_comfyui:
            from urllib.parse import urlsplit
            port = urlsplit(cfg.comfyui_urls[0]).port or 8188
            env["COMFYUI_URLS"] = f"http://127.0.0.1:{port}"
            procs.append(subprocess.Popen([sys.executable, "-m", "tests.fakes.comfyui", "--port", str(port),
                                           "--step-delay", "0.1"], env=env, cwd=PROJECT_ROOT))
        gateway = [sys.executable, "-m", "shared.cli"]
        subprocess.run([*gateway, "migrate"], env=env, check=True)
        procs.append(subprocess.Popen([*gateway, "serve", "--bind", args.bind, "--workers", "2", "--access-log"],
                                      env=env))
        procs.append(subprocess.Popen([*gateway, "listen"], env=env))
        print(f"gateway dev: API on http://{args.bind} (try: curl -X POST http://{args.bind}/v1/auth/dev "
              f"-H 'Content-Type: application/json' -d '{{\"user\": \"alice\"}}'); Ctrl-C stops everything",
              flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as e:
        print(f"gateway dev: {e}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut this short
            signal.signal(sig, signal.SIG_IGN)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if local_db is not None:
            local_db.stop()


# New fields go last: spreadsheets and scripts that read columns by position keep working.
USAGE_FIELDS = ("id", "job_id", "user_id", "workflow", "status", "images", "megapixels", "steps", "gpu_seconds",
                "queue_seconds", "backend", "created_at", "finished_at", "provider", "subject", "credits", "price")


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
    sub.add_parser("listen", help="run the ComfyUI listener").set_defaults(func=cmd_listen)
    dev = sub.add_parser("dev", help="migrate, then API and listener together")
    dev.add_argument("--bind", default="127.0.0.1:8000")
    dev.add_argument("--fake-comfyui", action="store_true", help="also start the test suite's fake ComfyUI on :8188")
    dev.set_defaults(func=cmd_dev)
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
    from shared.pool import admin
    admin.add_parser(sub, _config)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
