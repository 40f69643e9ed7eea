"""Prometheus metrics: what each process counts, and how it is scraped.

Nothing is counted until a process calls ``enable()``: `gateway serve`'s app and `gateway
listen --metrics-bind` do; Lambda never does, so a function's cold start never imports
``prometheus_client`` and every call below is a no-op there. Label values come from bounded
sets only: workflow names (the files), job outcomes, protocol event types, the configured
servers, the HTTP API's route table, a handful of error kinds.

`gateway serve` runs several worker processes: prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set up by ``shared.door.Server``) adds them up at each scrape of
``/metrics``. The listener is one process: ``serve_listener`` starts prometheus_client's own
HTTP server and adds the gauges read from MySQL at scrape time (``PoolCollector``): they are
the same whoever reads them, so one process (the one every deployment runs) says them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
DISPATCH_BUCKETS = (.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
COMPLETION_BUCKETS = (.05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120, 300)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

_lock = threading.Lock()
_m = None  # the metric objects, once enabled


class _Metrics:
    def __init__(self):
        from prometheus_client import Counter, Histogram
        self.submitted = Counter("gateway_jobs_submitted", "Jobs accepted into the gateway queue.", ["workflow"])
        self.finished = Counter("gateway_jobs_finished", "Jobs that reached a final state (counted where the usage "
                                "record is written: once per job).", ["workflow", "outcome"])
        self.events = Counter("gateway_listener_events", "ComfyUI WebSocket events applied by the listener, by "
                              "server and type (rate() is events per second).", ["server", "type"])
        self.dispatch = Histogram("gateway_dispatch_latency_seconds", "From a job's creation to its POST /prompt "
                                  "on a server.", buckets=DISPATCH_BUCKETS)
        self.completion = Histogram("gateway_completion_latency_seconds", "From ComfyUI's end of execution (its "
                                    "history's timestamp) to the job's outputs stored and the job succeeded.",
                                    buckets=COMPLETION_BUCKETS)
        self.copy_bytes = Counter("gateway_output_copy_bytes", "Bytes of output images copied into storage.")
        self.copy_failures = Counter("gateway_output_copy_failures", "Failed copies of an output image: retried, "
                                     "or given up (the job fails with output_copy_failed).", ["result"])
        self.http = Counter("gateway_http_requests", "HTTP requests answered, by route (the Flask rule), method "
                            "and status.", ["route", "method", "status"])
        self.http_latency = Histogram("gateway_http_request_duration_seconds", "Time to a response's status and "
                                      "headers, by route and method.", ["route", "method"], buckets=LATENCY_BUCKETS)
        self.db_errors = Counter("gateway_db_errors", "Database trouble answered as unavailable: pool_exhausted, "
                                 "unreachable (no new connection), lost (mid-query).", ["kind"])
        self.storage_errors = Counter("gateway_storage_errors", "Failed calls to the object store.")


def enable(*, multiprocess: bool = False) -> None:
    """Start counting in this process (idempotent). Without ``multiprocess`` a stray
    PROMETHEUS_MULTIPROC_DIR is ignored: it must be decided before prometheus_client loads."""
    global _m
    with _lock:
        if _m is None:
            if not multiprocess:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            _m = _Metrics()


def enabled() -> bool:
    return _m is not None


def server_label(url: str) -> str:
    """A server's URL without credentials (a label is shown to whoever reads the metrics)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


# -- what the code calls (no-ops until enabled) -------------------------------------------

def job_submitted(workflow: str) -> None:
    if _m is not None:
        _m.submitted.labels(workflow).inc()


def job_finished(workflow: str, outcome: str) -> None:
    if _m is not None:
        _m.finished.labels(workflow, outcome).inc()


def dispatched(created_at) -> None:
    """A job went to a server; ``created_at`` is its row's naive UTC creation time."""
    if _m is not None and created_at is not None:
        from shared.db import utcnow
        _m.dispatch.observe(max((utcnow() - created_at).total_seconds(), 0.0))


def completed(ended_at: float | None) -> None:
    """A job is visible as succeeded; ``ended_at``: ComfyUI's end of execution (epoch seconds)."""
    if _m is not None and ended_at:
        _m.completion.observe(max(time.time() - ended_at, 0.0))


def copied(nbytes: int) -> None:
    if _m is not None:
        _m.copy_bytes.inc(nbytes)


def copy_failed(*, gave_up: bool) -> None:
    if _m is not None:
        _m.copy_failures.labels("gave_up" if gave_up else "retried").inc()


def db_error(kind: str) -> None:
    if _m is not None:
        _m.db_errors.labels(kind).inc()


def storage_error() -> None:
    if _m is not None:
        _m.storage_errors.inc()


_http_children: dict = {}  # (route label, method label, status) -> (counter, histogram): labels() once per set


def http_request(route: str | None, method: str, status: str, seconds: float) -> None:
    if _m is not None:
        # Keyed on the labels, not the raw values: a client inventing methods must not grow the cache.
        label = route or "unmatched"
        method = method if method in METHODS else "other"
        key = (label, method, status)
        children = _http_children.get(key)
        if children is None:
            children = _http_children[key] = (_m.http.labels(label, method, status),
                                              _m.http_latency.labels(label, method))
        children[0].inc()
        children[1].observe(seconds)


def _ignore(kind: str) -> None:
    pass


def event_counter(server_url: str):
    """A function counting one event of a type on this server: the listener's loop calls it per
    event, so the labelled children are looked up once per type, not per event."""
    if _m is None:
        return _ignore
    server, counter, children = server_label(server_url), _m.events, {}

    def count(kind: str) -> None:
        child = children.get(kind)
        if child is None:
            child = children[kind] = counter.labels(server, kind)
        child.inc()
    return count


# -- scraping -----------------------------------------------------------------------------------

def render(accept: str | None = None) -> tuple[bytes, str]:
    """This process's metrics (all workers' in multiprocess mode) and their content type: the text
    format, or OpenMetrics when the scraper's Accept asks for it."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import choose_encoder
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


class PoolCollector:
    """Gauges read from MySQL when scraped: the gateway queue (one query) and each server's
    slots and state (one query). A scrape that cannot read them leaves them out."""

    def __init__(self, ctx):
        self.ctx = ctx

    def describe(self):
        return []  # no query when registered

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from shared import backends
        from shared.pool import queue
        cfg = self.ctx.config
        try:
            with self.ctx.db.connection() as conn:
                depth, oldest = queue.depth(conn)
                servers = backends.slot_use(conn, cfg.comfyui_urls, default_slots=cfg.comfyui_slots)
        except Exception as e:  # a scrape must answer; the database's trouble is counted where it happened
            log.warning("metrics: the queue and server gauges were not read: %s", e)
            return
        yield GaugeMetricFamily("gateway_queue_depth", "Jobs waiting in the gateway queue for a server.", depth)
        yield GaugeMetricFamily("gateway_queue_oldest_age_seconds", "How long the oldest waiting job has waited "
                                "(0 when none waits).", oldest)
        in_use = GaugeMetricFamily("gateway_server_slots_in_use", "Jobs a server holds (sent, queued, running).",
                                   labels=["server"])
        slots = GaugeMetricFamily("gateway_server_slots", "Prompts a server may hold at once.", labels=["server"])
        state = GaugeMetricFamily("gateway_server_state", "1 for the state a server is in: connected, draining "
                                  "or down.", labels=["server", "state"])
        for s in servers:
            label = server_label(s["url"])
            in_use.add_metric([label], s["slots_in_use"])
            slots.add_metric([label], s["slots"])
            for name in ("connected", "draining", "down"):
                state.add_metric([label, name], 1 if s["state"] == name else 0)
        yield from (in_use, slots, state)


def serve_listener(ctx, bind: str):
    """Serve the listener's metrics on HOST:PORT (prometheus_client's HTTP server, a daemon thread)."""
    from prometheus_client import REGISTRY, start_http_server
    host, _, port = bind.rpartition(":")
    enable()
    REGISTRY.register(PoolCollector(ctx))
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    log.info("metrics on http://%s/metrics", bind)
    return server
