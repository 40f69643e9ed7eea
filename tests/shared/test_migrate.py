import threading
import uuid

import pytest

from shared.db import connect, query
from shared.migrate import MigrationError, migrate, migration_files, split_statements


@pytest.fixture
def empty_database(database_url):
    name = f"gw_mig_{uuid.uuid4().hex[:8]}"
    admin = connect(database_url, database=False)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    yield database_url.with_database(name)
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE `{name}`")
    admin.close()


def tables(conn):
    return {next(iter(r.values())) for r in query(conn, "SHOW TABLES")}


def test_migrate_from_empty_then_again(empty_database):
    conn = connect(empty_database)
    assert migrate(conn) == [v for v, _ in migration_files()]
    assert {"users", "backends", "jobs", "job_outputs", "usage_records", "schema_migrations"} <= tables(conn)
    assert migrate(conn) == []
    recorded = [r["version"] for r in query(conn, "SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == [v for v, _ in migration_files()]


def test_two_concurrent_runners_apply_each_file_once(empty_database):
    results, errors = [], []

    def run():
        conn = connect(empty_database)
        try:
            results.append(migrate(conn))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    applied = sorted(v for r in results for v in r)
    assert applied == [v for v, _ in migration_files()]


def test_bad_file_names_are_refused(tmp_path):
    (tmp_path / "init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_description"):
        migration_files(tmp_path)


def test_split_statements_skips_comments():
    text = "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\n-- b\nCREATE TABLE b (y INT);\n"
    assert split_statements(text) == ["CREATE TABLE a (x INT)", "CREATE TABLE b (y INT)"]


def test_no_schema_files_is_an_error_not_an_empty_success(tmp_path):
    with pytest.raises(MigrationError, match="no schema files"):
        migration_files(tmp_path)


def test_a_failing_statement_says_how_far_its_file_got(empty_database, tmp_path):
    (tmp_path / "0001_two.sql").write_text("CREATE TABLE t1 (id INT PRIMARY KEY);\nCREATE TABLE broken (;\n")
    conn = connect(empty_database)
    try:
        with pytest.raises(MigrationError, match=r"0001_two.sql: statement 2 failed .* not undone"):
            migrate(conn, tmp_path)
        assert "t1" in tables(conn) and "0001" not in {r["version"] for r in query(
            conn, "SELECT version FROM schema_migrations")}
    finally:
        conn.close()
