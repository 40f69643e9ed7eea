"""deploy/prometheus/alerts.yml: valid YAML of Prometheus rules that use only metrics the gateway exports
(promtool is not at hand: this checks the shape and every metric name)."""

from __future__ import annotations

import re

import yaml
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from tests.stack import PROJECT_ROOT

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "alerts.yml"
DURATION = re.compile(r"\d+[smhd]")


def exported(ctx) -> set[str]:
    """Every sample name the two processes expose (both scrapes' families)."""
    metrics.enable()
    text, _ = metrics.render()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    families = list(text_string_to_metric_families(text.decode())) + list(metrics.PoolCollector(ctx).collect())
    return {f.name + suffix for f in families if f.name.startswith("gateway_") for suffix in suffixes[f.type]}


def test_the_alert_rules_parse_and_use_exported_metrics(ctx):
    doc = yaml.safe_load(RULES.read_text())
    (group,) = doc["groups"]
    names = exported(ctx)
    assert {"gateway_queue_oldest_age_seconds", "gateway_server_slots_in_use", "gateway_listener_events_total",
            "gateway_http_requests_total"} <= names
    alerts = {}
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        assert "for" not in rule or DURATION.fullmatch(rule["for"]), rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
        used = set(re.findall(r"\bgateway_[a-z_]+", rule["expr"]))
        assert used and used <= names, (rule["alert"], used - names)
        alerts[rule["alert"]] = rule["expr"]
    assert {"GatewayQueueOldestJobWaiting", "GatewayServerSilent", "GatewayOutputCopyFailures", "GatewayHttp5xxRate",
            "GatewayDatabaseErrors"} <= set(alerts)
