"""Shared fixtures: a real MariaDB/MySQL database, configs, contexts.

The database: TEST_DATABASE_URL (any database name; the tests create their
own) if set, else the server at 127.0.0.1:3306 as root if one answers, else a
private server started from the machine's mariadbd/mysqld for this run. A
fresh database is created per run and dropped at the end; tables are emptied
between tests.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid

import pytest

from shared.config import Config, DatabaseUrl
from shared.context import Context
from shared.db import connect
from shared.localdb import LocalDatabaseError
from shared.migrate import migrate
from tests.stack import database_server

pytest_plugins = ["tests.s3server"]

TABLES = ("usage_records", "job_outputs", "jobs", "backends", "users", "uploads", "rate_limits", "backend_listeners",
          "workflow_stats", "outbox", "wechat_tokens", "moderation_checks", "moderation_verdicts",
          "user_limits")
SECRET = "test-secret-key-0123456789abcdef"


def _server_url() -> tuple[DatabaseUrl, object]:
    try:
        return database_server(None, os.path.join(tempfile.mkdtemp(prefix="gw-testdb-"), "mysql"))
    except LocalDatabaseError as e:
        pytest.exit(f"the tests need MariaDB/MySQL: {e}", returncode=3)


@pytest.fixture(scope="session")
def database_url():
    """A fresh, migrated database for this test run (dropped afterwards)."""
    server, local = _server_url()
    name = f"gw_test_{uuid.uuid4().hex[:10]}"
    admin = connect(server, database=False)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    url = server.with_database(name)
    conn = connect(url)
    migrate(conn)
    conn.close()
    yield url
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()
    if local is not None:
        local.stop()


@pytest.fixture
def db_conn(database_url):
    """A connection to the test database, with every table emptied first."""
    conn = connect(database_url)
    with conn.cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM {table}")
    yield conn
    conn.close()


@pytest.fixture
def make_config(database_url, tmp_path):
    """Build a Config for tests: local storage in tmp, dev login on, fast timings."""
    def make(**env) -> Config:
        base = {
            "DATABASE_URL": f"mysql://{database_url.user}:{database_url.password}@{database_url.host}:"
                            f"{database_url.port}/{database_url.database}",
            "STORAGE_URL": (tmp_path / "storage").as_uri(),
            "SECRET_KEY": SECRET,
            "DEV_LOGIN": "1",
            "ADMIN_TOKEN": "admin-" + secrets.token_hex(8),
            "STATE_DIR": str(tmp_path / "state"),
            "COMFYUI_TIMEOUT": "5",
            "PROGRESS_INTERVAL": "0.05",
            "PREVIEW_INTERVAL": "0.05",
            "HISTORY_RETRY_S": "5",
            "RECONCILE_INTERVAL_S": "1",
            "LEASE_S": "3",
            "RECONNECT_MAX_S": "1",
        }
        base.update({k: str(v) for k, v in env.items()})
        return Config.from_env(base)
    return make


@pytest.fixture
def ctx(make_config, db_conn):
    """A Context on the test database with local storage."""
    context = Context(make_config())
    yield context
    context.db.close()
