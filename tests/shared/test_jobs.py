"""The job object's derived fields: status shown, queue position, eta and poll interval."""

from datetime import datetime

import pytest

from shared.jobs import eta_seconds, job_object, node_order, poll_after_ms


def row(**kw):
    base = {"id": "j", "workflow": "txt2img", "status": "queued", "ahead": 0, "progress_percent": 0.0,
            "progress_node": None, "progress_value": 0, "progress_max": 0, "error_code": None,
            "error_message": None, "error_node_id": None, "error_node_type": None, "params": {},
            "created_at": datetime(2026, 11, 25, 5, 1, 2), "started_at": None, "finished_at": None,
            "backend_id": None, "servers": 1, "run_seconds": None}
    base.update(kw)
    return base


@pytest.mark.parametrize("r, run, eta, poll", [
    (row(status="queued", ahead=0), None, None, 1000),
    (row(status="queued", ahead=3), None, None, 2500),
    (row(status="queued", ahead=20), None, None, 5000),
    (row(status="queued", ahead=1, backend_id=1), 10.0, 25.0, 2500),    # held: 1 ahead + itself + half a run
    (row(status="submitting", backend_id=1), 4.0, 6.0, 1000),
    (row(status="queued", ahead=6, servers=3), 10.0, 35.0, 4000),       # waiting: 6 ahead over 3 servers
    (row(status="queued", ahead=6, servers=1), 10.0, 75.0, 5000),
    (row(status="running", progress_percent=75.0), 8.0, 2.0, 500),
    (row(status="succeeded"), 8.0, None, None),
    (row(status="failed"), None, None, None),
])
def test_eta_and_poll(r, run, eta, poll):
    r = {**r, "run_seconds": run}
    assert eta_seconds(r) == eta
    assert poll_after_ms(r, eta_seconds(r)) == poll


def test_submitting_is_shown_as_queued_and_running_hides_queue_position():
    assert job_object(row(status="submitting", ahead=2))["status"] == "queued"
    obj = job_object(row(status="running", ahead=2, progress_node="3", progress_value=4, progress_max=20),
                     node_title=lambda n: "KSampler")
    assert obj["queue_position"] is None and obj["progress"] == {
        "percent": 0.0, "node": "3", "node_title": "KSampler", "value": 4, "max": 20}
    assert obj["created_at"] == "2026-11-25T05:01:02Z"


def test_failed_job_carries_its_error():
    obj = job_object(row(status="failed", error_code="execution_error", error_message="boom", error_node_id="3",
                         error_node_type="KSampler"))
    assert obj["error"] == {"code": "execution_error", "message": "boom", "node_id": "3", "node_type": "KSampler"}


def test_node_order_is_numeric_then_text():
    assert sorted(["10", "9", "a", "2"], key=node_order) == ["2", "9", "10", "a"]
    # Subgraph ids compare part by part; digits that are not ASCII are text, never a crash.
    assert sorted(["10:1", "9:2", "9:10", "\u00b2", "9"], key=node_order) == ["9", "9:2", "9:10", "10:1", "\u00b2"]


def test_the_poll_read_matches_the_list_read_in_every_state(db_conn):
    """get_job packs the row in one JSON column and counts the queue apart: it must say exactly what
    the list's one-query read says, queue positions included, for every kind of job."""
    from shared import jobs
    from shared.db import execute
    from shared.pool import queue
    from shared.users import get_or_create_user
    users = [get_or_create_user(db_conn, provider="dev", subject=f"p{n}") for n in range(3)]
    ids = []
    for n in range(24):
        job_id, user = f"00000000-0000-0000-0000-{n:012d}", users[n % 3]
        if n % 4 == 0:  # waiting in the gateway queue: some only server 1 can run, some only server 2
            queue.enqueue(db_conn, job_id=job_id, user_id=user, workflow="txt2img", params={"prompt": "é\u4e2d"},
                          prompt={}, needs={"classes": [], "values": {}}, model=None, inputs=None,
                          servers=[1] if n % 8 else [2])
        else:
            jobs.create_job(db_conn, job_id=job_id, user_id=user, workflow="txt2img", params={"n": n, "x": [1.5]},
                            prompt={}, backend_id=1 + n % 2, client_id="c")
            if n % 4 != 1:  # n % 4 == 1 stays `submitting` with no queue number
                jobs.mark_submitted(db_conn, job_id, 100 - n)
            if n % 4 == 3:
                jobs.mark_running(db_conn, job_id, nodes_total=3)
                jobs.update_progress(db_conn, job_id, node="3", value=2, max_=4, percent=37.5, title="KSampler")
        ids.append((job_id, user))
    execute(db_conn, "UPDATE jobs SET status='failed', error_code='execution_error', error_message='boom \"x\"', "
                     "finished_at=NOW(3) WHERE id=%s", (ids[7][0],))
    jobs.record_run_time(db_conn, "txt2img", 6.5)
    listed = {r["id"]: r for u in users for r in jobs.list_user_jobs(db_conn, u, limit=100)}
    assert sum(1 for r in listed.values() if r["ahead"]) > 5  # the positions are really counted
    for job_id, user in ids:
        polled = jobs.get_job(db_conn, job_id, user)
        expected = {k: v for k, v in listed[job_id].items()}
        assert {k: polled[k] for k in expected} == expected, job_id
        assert job_object(polled) == job_object(expected)
    assert jobs.get_job(db_conn, ids[0][0], users[1]) is None  # another user's job
