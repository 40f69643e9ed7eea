"""shared/metrics.py: bounded labels, the gauges read at scrape time, what a broken database does to a scrape."""

from __future__ import annotations

import pytest

from shared import metrics
from shared.config import Config
from shared.context import Context


@pytest.fixture(autouse=True)
def enabled():
    metrics.enable()


def sample(name: str, **labels) -> float:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("url, label", [
    ("http://gpu-1:8188", "http://gpu-1:8188"),
    ("https://user:secret@gpu.example.com/comfy?x=1", "https://gpu.example.com/comfy"),
    ("http://[::1]:8188", "http://[::1]:8188"),
])
def test_server_labels_carry_no_credentials(url, label):
    assert metrics.server_label(url) == label


def test_http_labels_are_bounded():
    before = sample("gateway_http_requests_total", route="unmatched", method="other", status="405")
    metrics.http_request(None, "BREW", "405", 0.001)
    metrics.http_request(None, "X" * 20, "405", 0.001)
    assert sample("gateway_http_requests_total", route="unmatched", method="other", status="405") == before + 2
    assert sample("gateway_http_requests_total", route="unmatched", method="BREW", status="405") == 0


def test_made_up_methods_do_not_grow_the_label_cache():
    metrics.http_request(None, "GET", "404", 0.001)
    before = len(metrics._http_children)
    counted = sample("gateway_http_requests_total", route="unmatched", method="other", status="405")
    for i in range(1000):
        metrics.http_request(None, f"M{i}", "405", 0.001)
    assert len(metrics._http_children) <= before + 1
    assert sample("gateway_http_requests_total", route="unmatched", method="other", status="405") == counted + 1000


def test_events_are_counted_per_server_and_type():
    count = metrics.event_counter("http://u:p@gpu-2:8188")
    before = sample("gateway_listener_events_total", server="http://gpu-2:8188", type="Progress")
    for _ in range(3):
        count("Progress")
    assert sample("gateway_listener_events_total", server="http://gpu-2:8188", type="Progress") == before + 3


def test_the_pool_gauges(ctx, db_conn):
    from shared import backends
    from shared.db import execute
    from shared.pool import queue
    url = ctx.config.comfyui_urls[0]
    backends.ensure_backend(db_conn, url)
    queue.enqueue(db_conn, job_id="00000000-0000-4000-8000-000000000001", user_id="u1", workflow="txt2img",
                  params={}, prompt={}, needs={"classes": [], "values": {}}, model=None, inputs=None, servers=1)
    execute(db_conn, "UPDATE jobs SET created_at = UTC_TIMESTAMP(3) - INTERVAL 90 SECOND")
    families = {f.name: f for f in metrics.PoolCollector(ctx).collect()}
    assert families["gateway_queue_depth"].samples[0].value == 1
    assert 89 < families["gateway_queue_oldest_age_seconds"].samples[0].value < 120
    states = {s.labels["state"]: s.value for s in families["gateway_server_state"].samples}
    assert states == {"connected": 0, "draining": 0, "down": 1}
    assert families["gateway_server_slots"].samples[0].value == ctx.config.comfyui_slots


def test_a_scrape_without_a_database_leaves_the_gauges_out(tmp_path, caplog):
    ctx = Context(Config.from_env({"DATABASE_URL": "mysql://u:p@127.0.0.1:1/none", "STATE_DIR": str(tmp_path)}))
    before = sample("gateway_db_errors_total", kind="unreachable")
    assert list(metrics.PoolCollector(ctx).collect()) == []
    assert sample("gateway_db_errors_total", kind="unreachable") == before + 1
    assert "gauges were not read" in caplog.text


def test_metrics_bind_must_be_host_port(capsys):
    from shared import cli
    with pytest.raises(SystemExit) as exit_:
        cli.main(["listen", "--metrics-bind", "9100"])
    assert exit_.value.code == 2 and "HOST:PORT" in capsys.readouterr().err
