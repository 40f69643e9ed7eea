"""`gateway dev`: the whole gateway on one machine, in the foreground, for development and demos.

    gateway dev [--bind H:P] [--fake-comfyui]

A private MariaDB (unless DATABASE_URL is set) on a free loopback port, migrations, then
`gateway serve` and `gateway listen` (and the test suite's fake ComfyUI with --fake-comfyui).
It prints the DATABASE_URL it uses and an ADMIN_TOKEN (generated once and kept in STATE_DIR,
like the dev SECRET_KEY) with the commands that use them. Ctrl-C, SIGTERM or a closed terminal
stop everything, the private MariaDB included, also when it was started in the background of a
script (such a shell starts it with SIGINT ignored: it is handled explicitly here).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.config import PROJECT_ROOT

DEFAULT_BIND = "127.0.0.1:8000"


def _kept(state_dir: Path, name: str) -> str:
    """A random secret kept in the state folder (made once, readable by its owner only)."""
    path = state_dir / name
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


def dev_secret(state_dir: Path) -> str:
    return _kept(state_dir, "secret_key")


def dev_admin_token(state_dir: Path) -> str:
    return _kept(state_dir, "admin_token")


def _masked(url: str) -> str:
    """A DATABASE_URL given by the operator, its password hidden (it may be a real one)."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _gateway_command() -> str:
    """How to run `gateway` from a shell here: the installed script, else this Python."""
    found = shutil.which("gateway") or (shutil.which("gateway", path=str(Path(sys.executable).parent)))
    return shlex.quote(found) if found else f"{shlex.quote(sys.executable)} -m shared.cli"


def _die_with_parent() -> None:
    """In a child, before exec: get SIGTERM if `gateway dev` dies, even by SIGKILL (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _spawn(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, preexec_fn=_die_with_parent)


def _masked_token(token: str) -> str:
    """An ADMIN_TOKEN given by the operator, as much of it as tells which one it is (it may be a real one)."""
    return f"{token[:4]}***" if len(token) >= 16 else "***"


def banner(bind: str, env: dict, *, db_given: bool, token_made: bool) -> str:
    """What `gateway dev` prints once everything runs: where, the settings it made, commands to try.

    Secrets the operator set (DATABASE_URL's password, ADMIN_TOKEN) are masked: only those it made are
    printed in full."""
    host, _, port = bind.rpartition(":")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '[::]', '') else host}:{port}"
    db = _masked(env["DATABASE_URL"]) if db_given else env["DATABASE_URL"]
    token = env["ADMIN_TOKEN"]
    gateway = _gateway_command()
    lines = [
        f"gateway dev: API on {base} (listening on {bind}); ComfyUI: {env.get('COMFYUI_URLS', '')}",
        f"gateway dev: DATABASE_URL={db}" + (" (yours)" if db_given else " (the private MariaDB; root, no password)"),
        "gateway dev: ADMIN_TOKEN=" + (f"{token} (kept in STATE_DIR/admin_token)" if token_made
                                        else f"{_masked_token(token)} (yours)"),
        "try:",
        f"  curl -s -X POST {base}/v1/auth/dev -H 'Content-Type: application/json' -d '{{\"user\": \"alice\"}}'",
        f"  curl -s {base}/v1/usage -H 'Authorization: Bearer {token}'" if token_made else
        f"  curl -s {base}/v1/usage -H \"Authorization: Bearer $ADMIN_TOKEN\"   # with your ADMIN_TOKEN",
    ]
    if not db_given:
        lines.append(f"  DATABASE_URL={shlex.quote(env['DATABASE_URL'])} {gateway} usage export --format jsonl")
    else:
        lines.append(f"  {gateway} usage export --format jsonl   # with your DATABASE_URL")
    lines.append("Ctrl-C stops everything")
    return "\n".join(lines)


def cmd_dev(cfg, args, logging_setup) -> int:
    logging_setup(cfg)
    state = Path(cfg.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DEV_LOGIN", "1")
    env.setdefault("PUBLIC_BASE_URL", f"http://{args.bind}")
    if not cfg.secret_key:
        env["SECRET_KEY"] = dev_secret(state)
    token_made = not cfg.admin_token
    if token_made:
        env["ADMIN_TOKEN"] = dev_admin_token(state)
    procs: list[subprocess.Popen] = []
    local_db = None

    def stop(*_):
        raise KeyboardInterrupt()
    # From here on every way out (Ctrl-C, kill, a closed terminal) runs the clean-up below, which
    # stops the private MariaDB too: it runs in its own session and would outlive us. SIGINT is set
    # too: a shell script starts a background command with SIGINT ignored, and Python then installs
    # no handler of its own (the children, started after this, get SIGINT back at its default).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        if cfg.database_url is None:
            from shared.localdb import LocalDatabase, LocalDatabaseError
            local_db = LocalDatabase(state / "mysql")
            try:
                url = local_db.start()
            except LocalDatabaseError as e:
                print(f"gateway dev: {e}", file=sys.stderr)
                return 1
            env["DATABASE_URL"] = f"mysql://root:@{url.host}:{url.port}/{url.database}"
        if args.fake_comfyui:
            from urllib.parse import urlsplit
            port = urlsplit(cfg.comfyui_urls[0]).port or 8188
            env["COMFYUI_URLS"] = f"http://127.0.0.1:{port}"
            procs.append(_spawn([sys.executable, "-m", "tests.fakes.comfyui", "--port", str(port),
                                 "--step-delay", "0.1"], env))
        gateway = [sys.executable, "-m", "shared.cli"]
        subprocess.run([*gateway, "migrate"], env=env, check=True, cwd=PROJECT_ROOT)
        procs.append(_spawn([*gateway, "serve", "--bind", args.bind, "--workers", "2", "--access-log"], env))
        procs.append(_spawn([*gateway, "listen"], env))
        print(banner(args.bind, env, db_given=cfg.database_url is not None, token_made=token_made), flush=True)
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
                p.wait()
        if local_db is not None:
            local_db.stop()


def add_parser(sub, config, logging_setup) -> None:
    """Register `gateway dev`; ``config()`` builds the Config when it runs."""
    dev = sub.add_parser(
        "dev", help="migrate, then API and listener together (Ctrl-C stops all)",
        description="A private MariaDB on a free loopback port (unless DATABASE_URL is set), migrations, then "
                    "the API and the listener in the foreground. Sets DEV_LOGIN=1, and a SECRET_KEY and an "
                    "ADMIN_TOKEN kept in STATE_DIR, unless they are set; prints the DATABASE_URL and ADMIN_TOKEN "
                    "with the commands that use them. Ctrl-C stops everything.")
    from shared.cli import bind_arg
    dev.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT", type=bind_arg,
                     help=f"where the API listens (default {DEFAULT_BIND}); PUBLIC_BASE_URL defaults to it")
    dev.add_argument("--fake-comfyui", action="store_true",
                     help="also start the test suite's fake ComfyUI, on 127.0.0.1 at the port of the first "
                          "COMFYUI_URLS entry (8188 by default), and point COMFYUI_URLS at it")
    dev.set_defaults(func=lambda a: cmd_dev(config(), a, logging_setup))
