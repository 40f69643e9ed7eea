"""Retention (`gateway cleanup`, shared/retention/) against the real database and real stores.

Every test builds jobs and uploads with their objects, runs a cleanup and reads the store and the
tables back: what is due is gone, everything else (active jobs, young uploads, usage records,
events still to be sent) is exactly as it was.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from datetime import timedelta

import pytest

from listener.connection import Listener
from shared import retention
from shared.cli import main
from shared.config import ConfigError
from shared.context import Context
from shared.db import connect, execute, query, query_one, utcnow
from shared.retention import Policy
from shared.storage import LocalStore, StorageError, open_store
from tests.conftest import SECRET
from tests.fakes.comfyui import FakeComfy
from tests.listener.conftest import FAST, Harness
from tests.stack import wait_for

ACTIVE = ("submitting", "queued", "running", "checking")  # checking: sql/0012 (content checks)
LOCK = "LEFT(CONCAT('comfy_gateway_cleanup:', DATABASE()), 64)"


# -- building jobs and uploads ----------------------------------------------------------------------

def add_job(conn, store, *, status: str, finished_ago: timedelta | None = None, preview: bool = True,
            outputs: int = 2, inputs: bool = True, outbox: tuple[str, ...] = ("sent",)) -> dict:
    """A job row with its objects (outputs, an input copy, a preview), output rows, a usage record and
    outbox events ('sent' or 'pending'); returns its id and keys."""
    job_id, user = str(uuid.uuid4()), str(uuid.uuid4())
    now = utcnow()
    folder = f"users/{user}/jobs/{job_id}"
    keys = {"outputs": [f"{folder}/9_{i}.png" for i in range(outputs)],
            "inputs": [f"{folder}/input_image.png"] if inputs else [],
            "preview": [f"{folder}/preview.jpg"] if preview else []}
    finished = None if finished_ago is None else now - finished_ago
    created = (finished or now) - timedelta(minutes=5)
    spec = {"image": {"key": keys["inputs"][0], "file": f"gw_{job_id}_image.png", "content_type": "image/png"}} \
        if inputs else None
    execute(conn, """INSERT INTO jobs (id, user_id, workflow, params, prompt, status, preview_key, inputs,
                     created_at, updated_at, finished_at)
                     VALUES (%s, %s, 'txt2img', '{}', '{}', %s, %s, %s, %s, %s, %s)""",
            (job_id, user, status, keys["preview"][0] if preview else None, json.dumps(spec) if spec else None,
             created, finished or now, finished))
    for i, key in enumerate(keys["outputs"]):
        execute(conn, """INSERT INTO job_outputs (job_id, node_id, idx, object_key, content_type, bytes, created_at)
                         VALUES (%s, '9', %s, %s, 'image/png', 4, %s)""", (job_id, i, key, now))
    for key in keys["outputs"] + keys["inputs"] + keys["preview"]:
        store.put_bytes(key, b"\x89PNG", "image/png")
    if finished is not None:
        execute(conn, """INSERT INTO usage_records (job_id, user_id, workflow, status, images, megapixels, steps,
                         gpu_seconds, queue_seconds, backend, created_at, finished_at)
                         VALUES (%s, %s, 'txt2img', %s, %s, 0.1, 4, 1.5, 0.5, 'http://gpu', %s, %s)""",
                (job_id, user, status, outputs, finished, finished))
    for n, state in enumerate(outbox if finished is not None else ()):
        execute(conn, """INSERT INTO outbox (event_id, kind, event_type, job_id, payload, created_at, next_attempt_at,
                         sent_at) VALUES (%s, 'webhook', %s, %s, '{}', %s, %s, %s)""",
                (str(uuid.uuid4()), f"job.event{n}", job_id, finished, now if state == "pending" else None,
                 finished if state == "sent" else None))
    return {"id": job_id, "user": user, "status": status, **keys,
            "all": keys["outputs"] + keys["inputs"] + keys["preview"]}


def add_upload(conn, store, *, age: timedelta, with_object: bool = True) -> dict:
    upload_id, user = str(uuid.uuid4()), str(uuid.uuid4())
    key = f"users/{user}/uploads/{upload_id}.png"
    created = utcnow() - age
    execute(conn, """INSERT INTO uploads (id, user_id, object_key, content_type, max_bytes, created_at, expires_at)
                     VALUES (%s, %s, %s, 'image/png', 1000, %s, %s)""",
            (upload_id, user, key, created, created + timedelta(hours=24)))
    if with_object:
        store.put_bytes(key, b"\x89PNG", "image/png")
    return {"id": upload_id, "key": key}


def exists(store, key: str) -> bool:
    return store.head(key) is not None


def snapshot(conn) -> dict:
    """Every row of the tables a cleanup may touch."""
    return {t: query(conn, f"SELECT * FROM {t} ORDER BY 1") for t in ("jobs", "job_outputs", "uploads", "outbox",
                                                                      "usage_records")}


def job_row(conn, job_id: str) -> dict | None:
    return query_one(conn, "SELECT * FROM jobs WHERE id=%s", (job_id,))


@pytest.fixture(params=["local", "s3"])
def store(request, make_config):
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return open_store(make_config())


class FailingStore:
    """A real store whose delete fails on one key: with StorageError (the store refuses), or with any other
    exception (the process is interrupted there)."""

    def __init__(self, store, key: str, error: BaseException):
        self.store, self.key, self.error = store, key, error
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        if key == self.key:
            raise self.error
        self.store.delete(key)
        self.deleted.append(key)


# -- what is deleted, what is kept ----------------------------------------------------------------

def test_cleanup_deletes_what_is_due_and_keeps_everything_else(ctx, db_conn, store):
    old = [add_job(db_conn, store, status=s, finished_ago=timedelta(days=40)) for s in ("succeeded", "failed",
                                                                                        "cancelled")]
    pending = add_job(db_conn, store, status="succeeded", finished_ago=timedelta(days=41), outbox=("sent", "pending"))
    recent = add_job(db_conn, store, status="succeeded", finished_ago=timedelta(days=1))
    active = [add_job(db_conn, store, status=s) for s in ACTIVE]
    for job in active:  # as old as the old ones: age never makes an active job due
        execute(db_conn, "UPDATE jobs SET created_at=%s, updated_at=%s WHERE id=%s",
                (utcnow() - timedelta(days=60), utcnow() - timedelta(days=60), job["id"]))
    old_upload = add_upload(db_conn, store, age=timedelta(hours=30))
    never_sent = add_upload(db_conn, store, age=timedelta(hours=30), with_object=False)
    in_grace = add_upload(db_conn, store, age=timedelta(hours=24, minutes=5))  # just expired: a submit may read it
    young = add_upload(db_conn, store, age=timedelta(hours=2))
    usage_before = query(db_conn, "SELECT * FROM usage_records ORDER BY id")

    report = retention.run(ctx.db, store, Policy(days=30), batch=2)

    assert report.ok and not report.busy
    t = report.tallies
    assert (t["previews"].rows, t["uploads"].rows, t["jobs"].rows, t["jobs"].outputs) == (5, 2, 4, 8)
    for job in old + [pending]:
        assert job_row(db_conn, job["id"]) is None
        assert not any(exists(store, k) for k in job["all"]), job["status"]
        assert query(db_conn, "SELECT * FROM job_outputs WHERE job_id=%s", (job["id"],)) == []
    # Usage records are never deleted; an event still to be sent keeps its row, sent ones go.
    assert query(db_conn, "SELECT * FROM usage_records ORDER BY id") == usage_before
    events = query(db_conn, "SELECT job_id, next_attempt_at FROM outbox")
    assert {e["job_id"] for e in events if e["next_attempt_at"] is not None} == {pending["id"]}
    assert {e["job_id"] for e in events} == {pending["id"], recent["id"]}
    # A recent final job loses its preview only.
    row = job_row(db_conn, recent["id"])
    assert row["preview_key"] is None and row["status"] == "succeeded"
    assert not exists(store, recent["preview"][0])
    assert all(exists(store, k) for k in recent["outputs"] + recent["inputs"])
    assert len(query(db_conn, "SELECT * FROM job_outputs WHERE job_id=%s", (recent["id"],))) == 2
    # Active jobs are untouched, previews included.
    for job in active:
        row = job_row(db_conn, job["id"])
        assert row["status"] == job["status"] and row["preview_key"] == job["preview"][0] and row["version"] == 0
        assert all(exists(store, k) for k in job["all"]), job["status"]
    # Uploads: the old ones go (with or without an object), the usable and the just-expired stay.
    uploads = {r["id"] for r in query(db_conn, "SELECT id FROM uploads")}
    assert uploads == {in_grace["id"], young["id"]}
    assert not exists(store, old_upload["key"]) and exists(store, in_grace["key"]) and exists(store, young["key"])
    assert never_sent["id"] not in uploads

    again = retention.run(ctx.db, store, Policy(days=30), batch=2)
    assert again.ok and [(x.rows, x.outputs, x.failed) for x in again.tallies.values()] == [(0, 0, 0)] * 3


def test_defaults_keep_jobs_forever(ctx, db_conn, store):
    job = add_job(db_conn, store, status="succeeded", finished_ago=timedelta(days=3650))
    report = retention.run(ctx.db, store, Policy())
    assert report.lines() == ["previews: 1 deleted", "uploads: 0 deleted",
                              "outputs/jobs: kept (RETENTION_DAYS unset: kept forever)"]
    assert job_row(db_conn, job["id"])["preview_key"] is None
    assert all(exists(store, k) for k in job["outputs"] + job["inputs"])


def test_no_foreign_key_ties_anything_to_jobs(db_conn):
    """Deleting a job row must never be refused (or cascade): usage records outlive their jobs."""
    refs = query(db_conn, """SELECT TABLE_NAME, CONSTRAINT_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS
                             WHERE CONSTRAINT_SCHEMA=DATABASE()""")
    assert refs == []


def test_dry_run_changes_nothing_and_counts_what_a_run_deletes(ctx, db_conn, store):
    jobs = [add_job(db_conn, store, status="succeeded", finished_ago=timedelta(days=10 + i)) for i in range(5)]
    add_job(db_conn, store, status="running")
    add_upload(db_conn, store, age=timedelta(hours=48))
    before = snapshot(db_conn)

    dry = retention.run(ctx.db, store, Policy(days=7), dry_run=True, batch=2)

    assert snapshot(db_conn) == before
    assert all(exists(store, k) for job in jobs for k in job["all"])
    assert dry.lines() == ["previews: 5 to delete (dry run)", "uploads: 1 to delete (dry run)",
                           "outputs/jobs: 5 job(s) to delete (dry run), with 10 output image(s)"]
    real = retention.run(ctx.db, store, Policy(days=7), batch=2)
    assert [(t.rows, t.outputs) for t in real.tallies.values()] == [(t.rows, t.outputs) for t in dry.tallies.values()]


# -- interruptions and storage errors -----------------------------------------------------------------

def test_an_interrupted_run_is_completed_by_the_next(ctx, db_conn, store):
    jobs = [add_job(db_conn, store, status="failed", finished_ago=timedelta(days=5, minutes=i), preview=False)
            for i in range(4)]
    # The process dies in the middle of the first batch's deletes: after an object, before the rows.
    first = query(db_conn, "SELECT id FROM jobs ORDER BY finished_at, id LIMIT 1")[0]["id"]
    victim = next(j for j in jobs if j["id"] == first)
    failing = FailingStore(store, victim["inputs"][0], KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        retention.run(ctx.db, failing, Policy(previews=False, uploads_hours=None, days=1), batch=3)

    assert failing.deleted, "the run stopped before deleting anything"
    assert all(not exists(store, k) for k in failing.deleted)
    assert {r["id"] for r in query(db_conn, "SELECT id FROM jobs")} == {j["id"] for j in jobs}  # no row went
    assert len(query(db_conn, "SELECT * FROM job_outputs")) == 8

    report = retention.run(ctx.db, store, Policy(previews=False, uploads_hours=None, days=1), batch=3)

    assert report.ok and report.tallies["jobs"].rows == 4
    assert query(db_conn, "SELECT id FROM jobs") == [] and query(db_conn, "SELECT * FROM job_outputs") == []
    assert not any(exists(store, k) for job in jobs for k in job["all"])
    assert len(query(db_conn, "SELECT * FROM usage_records")) == 4


def test_a_storage_error_keeps_only_its_jobs_rows_and_the_rest_goes(ctx, db_conn, store):
    jobs = [add_job(db_conn, store, status="succeeded", finished_ago=timedelta(days=9, minutes=-i)) for i in range(5)]
    ordered = [r["id"] for r in query(db_conn, "SELECT id FROM jobs ORDER BY finished_at, id")]
    by_id = {j["id"]: j for j in jobs}
    bad = by_id[ordered[1]]  # in the first batch of two, after the first job's objects
    failing = FailingStore(store, bad["outputs"][1], StorageError("S3 answered 503"))

    report = retention.run(ctx.db, failing, Policy(previews=False, uploads_hours=None, days=7), batch=2)

    assert not report.ok
    jobs_tally = report.tallies["jobs"]
    assert (jobs_tally.rows, jobs_tally.outputs, jobs_tally.failed) == (4, 8, 1)
    assert "kept after storage errors (S3 answered 503)" in report.lines()[2]
    # Only the job with the failing object keeps its rows, every one of them; its batch-mate went.
    assert {r["id"] for r in query(db_conn, "SELECT id FROM jobs")} == {bad["id"]}
    assert {r["object_key"] for r in query(db_conn, "SELECT object_key FROM job_outputs")} == set(bad["outputs"])
    assert exists(store, bad["outputs"][1])
    assert not any(exists(store, k) for i in ordered if i != bad["id"] for k in by_id[i]["all"])
    assert len(query(db_conn, "SELECT * FROM usage_records")) == 5

    rerun = retention.run(ctx.db, store, Policy(previews=False, uploads_hours=None, days=7), batch=2)
    assert rerun.ok and rerun.tallies["jobs"].rows == 1
    assert query(db_conn, "SELECT id FROM jobs") == []
    assert not any(exists(store, k) for job in jobs for k in job["all"])


def test_a_storage_error_keeps_only_its_upload(ctx, db_conn, store):
    uploads = [add_upload(db_conn, store, age=timedelta(days=3, minutes=i)) for i in range(3)]
    bad = uploads[1]
    report = retention.run(ctx.db, FailingStore(store, bad["key"], StorageError("permission denied")),
                           Policy(previews=False, uploads_hours=1), batch=10)
    tally = report.tallies["uploads"]
    assert not report.ok and (tally.rows, tally.failed) == (2, 1)
    assert [r["id"] for r in query(db_conn, "SELECT id FROM uploads")] == [bad["id"]]
    assert exists(store, bad["key"]) and not any(exists(store, u["key"]) for u in uploads if u is not bad)


def test_a_failing_store_is_not_tried_for_the_whole_batch(ctx, db_conn, store):
    for i in range(6):
        add_upload(db_conn, store, age=timedelta(days=3, minutes=i))

    class Down:
        tried = 0

        def delete(self, key):
            Down.tried += 1
            raise StorageError("S3 answered 503")

    report = retention.run(ctx.db, Down(), Policy(previews=False, uploads_hours=1), batch=10)
    assert not report.ok and report.tallies["uploads"].failed == 6 and report.tallies["uploads"].rows == 0
    assert Down.tried == retention.STORE_FAILING_AFTER
    assert len(query(db_conn, "SELECT id FROM uploads")) == 6


def test_a_storage_error_on_a_preview_keeps_the_column(ctx, db_conn, store):
    job = add_job(db_conn, store, status="succeeded", finished_ago=timedelta(hours=1))
    failing = FailingStore(store, job["preview"][0], StorageError("disk full"))
    report = retention.run(ctx.db, failing, Policy(uploads_hours=None))
    assert not report.ok and report.tallies["previews"].failed == 1
    assert job_row(db_conn, job["id"])["preview_key"] == job["preview"][0]
    assert exists(store, job["preview"][0])


# -- one at a time ----------------------------------------------------------------------------------

def test_one_cleanup_at_a_time(ctx, db_conn, database_url, store):
    job = add_job(db_conn, store, status="succeeded", finished_ago=timedelta(days=2))
    other = connect(database_url)  # another process's run
    try:
        assert query_one(other, f"SELECT GET_LOCK({LOCK}, 0) AS got")["got"] == 1
        busy = retention.run(ctx.db, store, Policy(days=1))
        assert busy.busy and not busy.ok
        assert job_row(db_conn, job["id"]) is not None and exists(store, job["preview"][0])
        # A dry run changes nothing, so it needs no lock.
        assert retention.run(ctx.db, store, Policy(days=1), dry_run=True).tallies["jobs"].rows == 1
    finally:
        other.close()  # its lock ends with its session
    done = retention.run(ctx.db, store, Policy(days=1))
    assert done.ok and done.tallies["jobs"].rows == 1 and job_row(db_conn, job["id"]) is None
    # The run gave the lock back.
    probe = connect(database_url)
    try:
        assert query_one(probe, f"SELECT GET_LOCK({LOCK}, 0) AS got")["got"] == 1
    finally:
        probe.close()


# -- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, scheduled, policy", [
    ({}, False, Policy(previews=True, uploads_hours=24, days=None)),
    ({"RETENTION_DAYS": "30"}, True, Policy(previews=True, uploads_hours=24, days=30)),
    ({"RETENTION_DAYS": "0"}, True, Policy(previews=True, uploads_hours=24, days=None)),
    ({"RETENTION_UPLOADS_HOURS": "48"}, True, Policy(previews=True, uploads_hours=48, days=None)),
    ({"RETENTION_UPLOADS_HOURS": "0"}, True, Policy(previews=True, uploads_hours=None, days=None)),
    ({"RETENTION_PREVIEWS": "1"}, True, Policy(previews=True, uploads_hours=24, days=None)),
    ({"RETENTION_PREVIEWS": "0", "RETENTION_UPLOADS_HOURS": "0"}, True,
     Policy(previews=False, uploads_hours=None, days=None)),
])
def test_settings_make_the_policy(make_config, env, scheduled, policy):
    cfg = make_config(**env)
    assert retention.scheduled(cfg) is scheduled
    assert Policy.from_config(cfg) == policy


@pytest.mark.parametrize("env", [{"RETENTION_UPLOADS_HOURS": "5"}, {"RETENTION_UPLOADS_HOURS": "-1"},
                                 {"RETENTION_DAYS": "-1"}, {"RETENTION_DAYS": "a month"},
                                 {"RETENTION_PREVIEWS": "maybe"}])
def test_bad_settings_stop_start_up(make_config, env):
    with pytest.raises(ConfigError, match=f"^{next(iter(env))}:"):
        make_config(**env)


# -- the listener -----------------------------------------------------------------------------------

def test_the_listener_cleans_up_only_when_a_retention_setting_is_set(make_config, db_conn):
    quiet = Listener(Context(make_config()))
    assert quiet.cleanup is None
    busy = Listener(Context(make_config(RETENTION_PREVIEWS="1")))
    assert isinstance(busy.cleanup, retention.Hourly) and busy.cleanup.interval_s == 3600.0


def test_hourly_runs_log_one_info_line_with_counts(make_config, db_conn, caplog):
    context = Context(make_config(RETENTION_DAYS="1"))
    job = add_job(db_conn, context.store, status="succeeded", finished_ago=timedelta(hours=2))
    stop = threading.Event()
    hourly = retention.Hourly(context, stop, interval_s=0.2, first_delay_s=0.0)
    try:
        with caplog.at_level(logging.INFO, logger="shared.retention"):
            hourly.start()
            wait_for(lambda: len(hourly.reports) >= 2, 10, "no second cleanup")
    finally:
        stop.set()
        hourly.join(5)
        context.db.close()
    assert not hourly.thread.is_alive()
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.retention"]
    assert lines[0].startswith("cleanup: previews: 1 deleted; uploads: 0 deleted; outputs/jobs: 0 job(s) deleted")
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "shared.retention")
    assert job_row(db_conn, job["id"])["preview_key"] is None


def test_jobs_running_alongside_are_untouched(make_config, db_conn, database_url):
    """Cleanups back to back while a real listener runs jobs: every job still ends with all its images, and
    the previews go only once the jobs are final."""
    with FakeComfy(step_delay=0.03) as fake:
        cfg = make_config(COMFYUI_URLS=fake.base_url, **FAST)
        h = Harness(Context(cfg), database_url)
        stop = threading.Event()
        reports = []

        def loop():
            while not stop.is_set():
                reports.append(retention.run(h.ctx.db, h.ctx.store, Policy(days=1), batch=1))

        cleaner = threading.Thread(target=loop, daemon=True)
        try:
            h.start_listener()
            cleaner.start()
            ids = [h.submit(seed=i, steps=8) for i in range(4)]
            finals = [h.wait_final(i) for i in ids]
            wait_for(lambda: all(h.job(i)["preview_key"] is None for i in ids), 10, "previews not cleared")
        finally:
            stop.set()
            cleaner.join(10)
            h.stop_listener()
            h.ctx.db.close()
    assert [f["status"] for f in finals] == ["succeeded"] * 4
    assert all(r.ok for r in reports) and sum(r.tallies["previews"].rows for r in reports) >= 1
    for job_id in ids:
        outputs = h.outputs(job_id)
        assert outputs and all(exists(h.ctx.store, o["object_key"]) for o in outputs)
        assert len(h.usage(job_id)) == 1
        assert not any(exists(h.ctx.store, f"users/{h.user}/jobs/{job_id}/preview{ext}")
                       for ext in (".jpg", ".png", ".webp"))


# -- `gateway cleanup` ------------------------------------------------------------------------------

@pytest.fixture
def cli_env(monkeypatch, database_url, tmp_path):
    env = {"DATABASE_URL": f"mysql://{database_url.user}:{database_url.password}@{database_url.host}:"
                           f"{database_url.port}/{database_url.database}",
           "STORAGE_URL": (tmp_path / "storage").as_uri(), "SECRET_KEY": SECRET, "STATE_DIR": str(tmp_path / "state")}
    for name in [n for n in os.environ if n.startswith("RETENTION_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _cli_store(make_config, cli_env):
    return open_store(make_config(STORAGE_URL=cli_env["STORAGE_URL"]))


def test_cli_prints_one_line_per_kind_and_exits_0(cli_env, make_config, db_conn, capsys, monkeypatch):
    store = _cli_store(make_config, cli_env)
    old = add_job(db_conn, store, status="cancelled", finished_ago=timedelta(days=20))
    add_upload(db_conn, store, age=timedelta(days=3))

    assert main(["cleanup", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "previews: 1 to delete (dry run)", "uploads: 1 to delete (dry run)",
        "outputs/jobs: kept (RETENTION_DAYS unset: kept forever)"]
    assert exists(store, old["preview"][0])

    monkeypatch.setenv("RETENTION_DAYS", "14")
    assert main(["cleanup", "--batch", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "previews: 1 deleted", "uploads: 1 deleted", "outputs/jobs: 1 job(s) deleted, with 2 output image(s)"]
    assert job_row(db_conn, old["id"]) is None and not any(exists(store, k) for k in old["all"])

    monkeypatch.setenv("RETENTION_PREVIEWS", "0")
    monkeypatch.setenv("RETENTION_UPLOADS_HOURS", "0")
    assert main(["cleanup"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "previews: kept (RETENTION_PREVIEWS=0)", "uploads: kept (RETENTION_UPLOADS_HOURS=0)",
        "outputs/jobs: 0 job(s) deleted, with 0 output image(s)"]


def test_cli_exits_1_after_a_storage_error_and_0_once_it_is_done(cli_env, make_config, db_conn, capsys,
                                                                 monkeypatch):
    store = _cli_store(make_config, cli_env)
    job = add_job(db_conn, store, status="succeeded", finished_ago=timedelta(days=20))
    monkeypatch.setenv("RETENTION_DAYS", "10")
    real_delete = LocalStore.delete

    def refuse(self, key):
        if key == job["outputs"][0]:
            raise StorageError("permission denied")
        real_delete(self, key)

    monkeypatch.setattr(LocalStore, "delete", refuse)
    assert main(["cleanup"]) == 1
    out = capsys.readouterr().out
    assert "outputs/jobs: 0 job(s) deleted, with 0 output image(s); 1 kept after storage errors " \
           "(permission denied)" in out
    assert job_row(db_conn, job["id"]) is not None and exists(store, job["outputs"][0])

    monkeypatch.setattr(LocalStore, "delete", real_delete)
    assert main(["cleanup"]) == 0
    assert "outputs/jobs: 1 job(s) deleted" in capsys.readouterr().out
    assert job_row(db_conn, job["id"]) is None and not any(exists(store, k) for k in job["all"])


def test_cli_exits_1_while_another_cleanup_runs(cli_env, db_conn, database_url, capsys, monkeypatch):
    monkeypatch.setattr(retention, "LOCK_WAIT_S", 0)
    other = connect(database_url)
    try:
        assert query_one(other, f"SELECT GET_LOCK({LOCK}, 0) AS got")["got"] == 1
        assert main(["cleanup"]) == 1
        captured = capsys.readouterr()
        assert "another cleanup is running" in captured.err and captured.out == ""
    finally:
        other.close()


@pytest.mark.parametrize("argv", [["cleanup", "--batch", "0"], ["cleanup", "--batch", "lots"],
                                  ["cleanup", "--batch", "10001"], ["cleanup", "--now"]])
def test_cli_refuses_bad_arguments(cli_env, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: gateway" in err and (argv[1] if argv[1] != "--batch" else "--batch: must be a whole number") in err
