"""Apply the numbered schema files in ``sql/`` that a database lacks.

Safe to run twice and from several processes at once: a MySQL named lock
serialises runners and ``schema_migrations`` records what was applied.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from shared.config import PROJECT_ROOT
from shared.db import execute, query, utcnow

log = logging.getLogger(__name__)

SQL_DIR = PROJECT_ROOT / "sql"
_LOCK = "comfy_gateway_migrate"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """A schema file is malformed or could not be applied."""


def migration_files(directory: Path = SQL_DIR) -> list[tuple[str, Path]]:
    """List (version, path) of the schema files, in order."""
    files = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: schema files are named NNNN_description.sql")
        files.append((m.group(1), path))
    if not files:
        raise MigrationError(f"no schema files in {directory}: run from a checkout of the project (sql/ is not "
                             "installed as a package)")
    versions = [v for v, _ in files]
    if len(set(versions)) != len(versions):
        raise MigrationError("two schema files share a number")
    return files


def split_statements(text: str) -> list[str]:
    """Split a schema file into statements (no procedures: ';' ends a statement)."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(conn, directory: Path = SQL_DIR, *, lock_timeout: int = 120) -> list[str]:
    """Apply every missing schema file in order; return the versions applied."""
    row = query(conn, "SELECT GET_LOCK(%s, %s) AS got", (_LOCK, lock_timeout))[0]
    if row["got"] != 1:
        raise MigrationError("another migration is still running (lock not granted)")
    try:
        execute(conn, """CREATE TABLE IF NOT EXISTS schema_migrations (
            version CHAR(4) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at DATETIME(3) NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""")
        done = {r["version"] for r in query(conn, "SELECT version FROM schema_migrations")}
        applied = []
        for version, path in migration_files(directory):
            if version in done:
                continue
            log.info("applying %s", path.name)
            for n, statement in enumerate(split_statements(path.read_text(encoding="utf-8")), 1):
                try:
                    execute(conn, statement)
                except Exception as e:
                    # MySQL commits DDL statement by statement: say how far the file got.
                    raise MigrationError(f"{path.name}: statement {n} failed ({e}); statements before it "
                                         "were applied and are not undone") from e
            execute(conn, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (version, path.name, utcnow()))
            applied.append(version)
        return applied
    finally:
        query(conn, "SELECT RELEASE_LOCK(%s) AS released", (_LOCK,))


def pending(conn, directory: Path = SQL_DIR) -> list[str]:
    """The names of the schema files the database lacks, in order (all of them on an empty database)."""
    if not query(conn, "SELECT 1 FROM information_schema.tables WHERE table_schema=DATABASE() "
                       "AND table_name='schema_migrations'"):
        return [path.name for _, path in migration_files(directory)]
    done = {r["version"] for r in query(conn, "SELECT version FROM schema_migrations")}
    return [path.name for version, path in migration_files(directory) if version not in done]
