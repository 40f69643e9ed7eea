"""What request ids, JSON logs and Prometheus metrics cost: per request, per log line, per event.

    .venv/bin/python bench/bench_metrics.py [--seconds S] [--baseline REV | --no-baseline] [--no-http]

1. **Per request, in process** (no network: the WSGI call alone, so the added microseconds are
   not lost in noise): the Flask app of `gateway serve` answering a 404 and a CORS preflight
   (no database), called without ``functions.app.observe`` (Flask's own ``wsgi_app``) and with
   it (X-Request-Id + HTTP metrics), with prometheus_client in single-process mode and in the
   multiprocess mode the gunicorn workers use.
2. **Per log line**: the text and JSON formatters on a "job %s: ..." line and on an access line.
3. **Per event** (the listener's loop): ``Tracker.handle`` with its handlers stubbed out (their
   database writes are the same before and after), the code before this change (a copy below),
   this tree with metrics off and with metrics on; the frame parser per event for scale.
4. **Status polls through gunicorn** (needs wrk and MariaDB/MySQL, as bench/bench_door.py):
   `GET /v1/jobs/{id}` over the active jobs, 2 workers, this tree against `gateway serve` of
   commit REV (default c1f2172, before this change) run from a temporary git worktree.

Numbers are for this machine; each table compares rows measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_call(fn, seconds: float, runs: int = 9) -> float:
    """Microseconds per call of fn(): the best of `runs` short runs (the least disturbed by the rest
    of the machine)."""
    best = float("inf")
    for _ in range(runs):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / runs:
            for _ in range(100):
                fn()
            n += 100
        best = min(best, elapsed / n * 1e6)
    return best


def side_by_side(fns: dict, seconds: float, rounds: int = 5) -> dict:
    """per_call of each function, measured in alternation for `rounds` rounds; the best of each."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], per_call(fn, seconds / rounds, runs=3))
    return best


# --- 1. per request -----------------------------------------------------------------------------

def requests_in_process(seconds: float) -> dict:
    """(run in a child process: prometheus_client's mode is fixed at import) µs per request."""
    from flask import Flask

    from functions.app import create_app
    from shared.config import Config
    from shared.context import Context
    cfg = Config.from_env({"SECRET_KEY": "bench-secret-key-0123", "DATABASE_URL": "mysql://u:p@127.0.0.1:1/none",
                           "CORS_ORIGINS": "https://h5.example.com", "LOG_LEVEL": "WARNING"})
    ctx = Context(cfg)
    app = create_app(lambda: ctx)

    def environ(method, path, **headers):
        base = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "x",
                "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                "wsgi.input": None, "wsgi.errors": sys.stderr, "REMOTE_ADDR": "127.0.0.1"}
        base.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
        return base

    def start_response(status, headers, exc_info=None):
        return None

    def call(wsgi, env):
        def once():
            for _ in wsgi(dict(env), start_response):
                pass
        return once
    without = lambda e, s: Flask.wsgi_app(app, e, s)  # noqa: E731  (the app as it was: no observe())
    cases = {"404": environ("GET", "/v1/nothing"),
             "preflight": environ("OPTIONS", "/v1/jobs", ORIGIN="https://h5.example.com",
                                  ACCESS_CONTROL_REQUEST_METHOD="POST")}
    out = {}
    for name, env in cases.items():
        out[name] = side_by_side({"without": call(without, env), "with": call(app.wsgi_app, env),
                                  "with, X-Request-Id given": call(app.wsgi_app, {**env, "HTTP_X_REQUEST_ID": "abc-1"})},
                                 seconds)
    return out


def bench_requests(seconds: float) -> list[str]:
    rows = {}
    for mode in ("single process", "multiprocess (gunicorn)"):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if mode.startswith("multi"):
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
        out = subprocess.run([sys.executable, __file__, "--child-requests", "--seconds", str(seconds)], env=env,
                             capture_output=True, text=True, check=True, cwd=ROOT)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    lines = ["| request (in process, no network) | prometheus_client mode | without observe() µs | with µs "
             "| with, X-Request-Id given µs | added µs |", "| --- | --- | --- | --- | --- | --- |"]
    for mode, cases in rows.items():
        for case, r in cases.items():
            lines.append(f"| {case} | {mode} | {r['without']:.1f} | {r['with']:.1f} | "
                         f"{r['with, X-Request-Id given']:.1f} | {r['with'] - r['without']:+.1f} |")
    return lines


# --- 2. per log line ------------------------------------------------------------------------------

def bench_logs(seconds: float) -> list[str]:
    from shared.logs import JsonFormatter, TextFormatter
    job = logging.LogRecord("listener.finalize", logging.INFO, __file__, 1, "job %s: succeeded with %d image(s)",
                            ("6f1c2a4e-0000-4000-8000-000000000000", 2), None)
    access = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "%(h)s %(r)s %(s)s",
                               ({"h": "127.0.0.1", "r": "GET /v1/files/x?expires=1&signature=[redacted] HTTP/1.1",
                                 "s": "200", "{x-request-id}o": "abc"},), None)
    lines = ["| log line | text µs | json µs |", "| --- | --- | --- |"]
    for name, record in (("job 6f1c...: succeeded with 2 image(s)", job), ("an access line with a query", access)):
        lines.append(f"| {name} | {per_call(lambda: TextFormatter().format(record), seconds):.1f} | "
                     f"{per_call(lambda: JsonFormatter().format(record), seconds):.1f} |")
    return lines


# --- 3. per event ----------------------------------------------------------------------------------

def _events():
    from listener import protocol
    path = ROOT / "tests" / "fixtures" / "comfyui" / "01_success_progress_previews.jsonl"
    frames = [json.dumps(json.loads(line)["data"]) for line in path.read_text().splitlines()
              if json.loads(line)["kind"] == "ws_text"]
    events = [protocol.parse_frame(f) for f in frames]
    return frames, [e for e in events if not isinstance(e, protocol.Ignored)]


def handle_before(self, event) -> None:
    """Tracker.handle as it was before this change (c1f2172)."""
    name = type(event).__name__
    self.counts[name] = self.counts.get(name, 0) + 1
    method = getattr(self, "on_" + name, None)
    if method is not None:
        method(event)


def bench_events(seconds: float) -> list[str]:
    from listener import protocol, tracker
    from shared import metrics
    frames, events = _events()

    class Stubbed(tracker.Tracker):  # the handlers' database writes are not what changed
        pass
    for name in dir(tracker.Tracker):
        if name.startswith("on_"):
            setattr(Stubbed, name, lambda self, ev: None)

    def run(handle, t):
        def once():
            for ev in events:
                handle(t, ev)
        return once
    off = Stubbed(None, 1, "http://127.0.0.1:8188", lambda *a: None)
    metrics.enable()
    on = Stubbed(None, 1, "http://127.0.0.1:8188", lambda *a: None)
    best = side_by_side({"before (c1f2172)": run(handle_before, off),
                         "this tree, metrics off (no --metrics-bind)": run(tracker.Tracker.handle, off),
                         "this tree, metrics on (--metrics-bind)": run(tracker.Tracker.handle, on)}, seconds)
    rows = [(label, us / len(events)) for label, us in best.items()]
    parse = per_call(lambda: [protocol.parse_frame(f) for f in frames], seconds) / len(frames)
    lines = [f"| Tracker.handle, handlers stubbed ({len(events)} events of transcript 01 in turn) | µs per event "
             "| added µs |", "| --- | --- | --- |"]
    for label, us in rows:
        lines.append(f"| {label} | {us:.2f} | {us - rows[0][1]:+.2f} |")
    lines.append(f"| for scale: protocol.parse_frame of the same frames | {parse:.2f} | |")
    return lines


# --- 4. polls through gunicorn ------------------------------------------------------------------------

def bench_polls(args) -> list[str]:
    import shutil
    import uuid

    from bench.bench_door import fill, gateway, wrk
    from shared.db import connect
    from tests.stack import database_server
    if not shutil.which("wrk"):
        return ["(skipped: needs wrk, apt-get install wrk)"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    server_url, local = database_server(None, tmp / "mysql")
    name = f"gw_metrics_{uuid.uuid4().hex[:8]}"
    admin = connect(server_url, database=False)
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    url = server_url.with_database(name)
    dsn = f"mysql://{url.user}:{url.password}@{url.host}:{url.port}/{name}"
    env = {"DATABASE_URL": dsn, "SECRET_KEY": "bench-secret-key-0123456789abcdef", "STATE_DIR": str(tmp),
           "STORAGE_URL": (tmp / "storage").as_uri(), "RATE_LIMIT_PER_MINUTE": "0", "LOG_LEVEL": "WARNING",
           "WORKFLOWS_DIR": str(ROOT / "workflows")}
    trees = [("this tree", ROOT)]
    if args.baseline:
        base = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.baseline],
                       check=True)
        trees.append((f"baseline {args.baseline}", base))
    rows = []
    try:
        active = fill(url, 1000)
        mix = [(f"/v1/jobs/{j}", {"Authorization": f"Bearer {t}"}) for j, t, _ in active]
        for _round in range(2):  # alternate, so both see the same machine
            for label, tree in trees:
                server = gateway(tree, env, tmp / f"{tree.name}.log")
                try:
                    rows.append((label, wrk(server.base, mix, args.seconds)))
                finally:
                    server.stop()
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "baseline")])
        admin.cursor().execute(f"DROP DATABASE `{name}`")
        admin.close()
        if local:
            local.stop()
    lines = ["| gateway serve, 2 workers, 8 connections: GET /v1/jobs/{id} | req/s | p50 ms | p99 ms |",
             "| --- | --- | --- | --- |"]
    for label, r in rows:
        lines.append(f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--baseline", default="c1f2172", help="git revision to measure alongside (part 4)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_const", const=None)
    parser.add_argument("--no-http", action="store_true", help="skip part 4 (gunicorn, wrk, MySQL)")
    parser.add_argument("--child-requests", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the 404s and preflights log nothing worth timing
    if args.child_requests:
        print(json.dumps(requests_in_process(args.seconds)))
        return
    print(f"# bench_metrics: {os.cpu_count()} CPUs, {args.seconds:g} s per measurement\n")
    parts = [("1. per request", lambda: bench_requests(args.seconds)), ("2. per log line", lambda: bench_logs(args.seconds)),
             ("3. per event (listener loop)", lambda: bench_events(args.seconds))]
    if not args.no_http:
        parts.append(("4. status polls through gunicorn", lambda: bench_polls(args)))
    for title, part in parts:
        print(f"## {title}\n")
        print("\n".join(part()) + "\n", flush=True)


if __name__ == "__main__":
    main()
