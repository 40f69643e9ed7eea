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
