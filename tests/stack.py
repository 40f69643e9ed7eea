"""Run the real processes for end-to-end tests: `gateway serve` and `gateway listen`.

Each is a subprocess started with the environment a deployment would give it,
so the tests cross real process, HTTP and WebSocket boundaries.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import requests

from shared.config import DatabaseUrl
from shared.localdb import LocalDatabase, free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def database_server(explicit: str | None, data_dir: Path) -> tuple[DatabaseUrl, LocalDatabase | None]:
    """The database server for a test run: explicit or TEST_DATABASE_URL, else 127.0.0.1:3306 as root
    if it answers, else a private one started in data_dir (returned too, so the caller stops it).

    A private server that cannot start raises LocalDatabaseError saying what to install.
    """
    url = explicit or os.environ.get("TEST_DATABASE_URL")
    if url:
        return DatabaseUrl.parse(url), None
    candidate = DatabaseUrl(host="127.0.0.1", port=3306, user="root", password="", database="mysql")
    try:
        pymysql.connect(host=candidate.host, port=candidate.port, user="root", password="", connect_timeout=2).close()
        return candidate, None
    except pymysql.err.OperationalError:
        pass
    local = LocalDatabase(str(data_dir))
    return local.start(), local


def config_env(cfg) -> dict:
    """The environment variables that reproduce a test Config in a subprocess."""
    db = cfg.database_url
    env = {
        "DATABASE_URL": f"mysql://{db.user}:{db.password}@{db.host}:{db.port}/{db.database}",
        "COMFYUI_URLS": ",".join(cfg.comfyui_urls),
        "STORAGE_URL": cfg.storage_url,
        "S3_REGION": cfg.s3_region,
        "PUBLIC_BASE_URL": cfg.public_base_url,
        "SIGNED_URL_TTL": str(cfg.signed_url_ttl),
        "SECRET_KEY": cfg.secret_key or "",
        "DEV_LOGIN": "1" if cfg.dev_login else "0",
        "ADMIN_TOKEN": cfg.admin_token or "",
        "STATE_DIR": cfg.state_dir,
        "WORKFLOWS_DIR": cfg.workflows_dir,
        "COMFYUI_TIMEOUT": str(cfg.comfyui_timeout),
        "PROGRESS_INTERVAL": str(cfg.progress_interval),
        "PREVIEW_INTERVAL": str(cfg.preview_interval),
        "HISTORY_RETRY_S": str(cfg.history_retry_s),
        "RECONCILE_INTERVAL_S": str(cfg.reconcile_interval_s),
        "WATCHDOG_S": str(cfg.watchdog_s),
        "LEASE_S": str(cfg.lease_s),
        "RECONNECT_MAX_S": str(cfg.reconnect_max_s),
        "QUEUE_TIMEOUT_S": str(cfg.queue_timeout_s),
        "RUN_TIMEOUT_S": str(cfg.run_timeout_s),
        "OUTPUT_COPY_DEADLINE_S": str(cfg.output_copy_deadline_s),
        "COMFYUI_SLOTS": str(cfg.comfyui_slots),
        "CAPABILITIES_REFRESH_S": str(cfg.capabilities_refresh_s),
        "LOST_JOB_RETRIES": str(cfg.lost_job_retries),
        "DISPATCH_SWEEP_S": str(cfg.dispatch_sweep_s),
        "MAX_UPLOAD_BYTES": str(cfg.max_upload_bytes),
        "CORS_ORIGINS": ",".join(cfg.cors_origins),
        "DB_POOL_SIZE": str(cfg.db_pool_size),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": cfg.log_format,
    }
    if cfg.s3_endpoint_url:
        env["S3_ENDPOINT_URL"] = cfg.s3_endpoint_url
    return env


class Process:
    """One gateway subprocess with its log file."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.args = args
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "shared.cli", *self.args], env=self.env,
                                     cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig=signal.SIGKILL) -> None:
        """Kill the whole process group (gunicorn workers included)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_listener(cfg, log_dir: Path, name: str = "listener") -> Process:
    return Process(["listen"], config_env(cfg), log_dir / f"{name}.log").start()


def start_api(cfg, log_dir: Path, *serve_args: str) -> tuple[Process, str]:
    """Start `gateway serve` on a free port; PUBLIC_BASE_URL points at it (local-storage links)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**config_env(cfg), "PUBLIC_BASE_URL": base}
    proc = Process(["serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", *serve_args], env,
                   log_dir / "api.log").start()
    wait_for(lambda: _answers(base + "/healthz"), 30, f"the API did not start; log: {proc.log_path}")
    return proc, base


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


def wait_for(predicate, timeout: float, message: str, interval: float = 0.05):
    """Poll until predicate() is truthy; fail with message after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message)


def sql(database_url, text: str, args=None) -> list[dict]:
    """Run one query on a fresh connection (tests read what the processes wrote)."""
    from shared.db import connect, query
    conn = connect(database_url)
    try:
        return query(conn, text, args)
    finally:
        conn.close()
