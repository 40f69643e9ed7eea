"""The HTTP door under mobile traffic: poll cost against a naive endpoint, slow clients, hostile bodies.

    .venv/bin/python bench/bench_door.py [--small] [--baseline REV | --no-baseline] [--seconds S]

Needs `wrk` (Debian: apt-get install wrk) and a MariaDB/MySQL (TEST_DATABASE_URL, else
127.0.0.1:3306 as root, else a private server). One run prints three tables, each with
its goal and a baseline measured in the same run:

1. **Polls** (wrk, 8 connections, --seconds each): `GET /v1/jobs/{id}` and the same with a
   matching `If-None-Match` (304) on `gateway serve` (2 workers, its default worker), against
   `bench/door_toy.py` under the same gunicorn settings: a null Flask endpoint and the toy (one
   pymysql primary-key read + JSON). 10,000 jobs in the table (1,000 with --small), each with a
   17 KB filled graph; the polls go round the active ones (waiting in the gateway queue, held by
   a server, running), then each kind alone, then 300 connections at once (100 with --small) with
   the most connections MySQL had open meanwhile (DB_POOL_SIZE bounds them).
   Goals: poll >= 1.0x toy req/s, 304 >= 1.2x, p99 <= 4x p50.
2. **Slow clients**: 200 connections (50 with --small) that drip their headers or their body a
   byte at a time, held open while one normal client polls; goal: its p99 < 100 ms and every
   poll answered. For `gateway serve` (gevent), `--worker-class gthread`, and the baseline.
3. **Hostile bodies**: each body sent once; CPU seconds the server's workers spent on it (from
   /proc), per MB of body. Goal: <= 50 ms per MB. This tree and the baseline.

The baseline is `gateway serve` of commit REV (default 592e92c, before this work) run from a
temporary git worktree against the same database. Numbers are for this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from shared import jobs  # noqa: E402
from shared.db import connect, execute  # noqa: E402
from shared.localdb import free_port  # noqa: E402
from shared.migrate import migrate  # noqa: E402
from shared.pool import queue  # noqa: E402
from shared.tokens import issue_token  # noqa: E402
from shared.users import get_or_create_user  # noqa: E402
from tests.stack import database_server  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef"
GRAPH = {str(n): {"class_type": "CLIPTextEncode", "inputs": {"text": "a detailed prompt " * 9, "clip": ["4", 1]},
                  "_meta": {"title": f"Node {n}"}} for n in range(80)}  # ~17 KB, as a filled SDXL graph


# --- the database ---------------------------------------------------------------------------------

KINDS = {0: "waiting in the gateway queue", 1: "running", 2: "held by a server"}


def fill(url, total: int) -> list[tuple[str, str, int]]:
    """Write `total` jobs; return (job id, token, kind) of the active ones (what phones poll)."""
    conn = connect(url)
    migrate(conn)
    users = [get_or_create_user(conn, provider="dev", subject=f"bench{n}") for n in range(max(total // 25, 4))]
    active = []
    for n in range(total):
        job_id, user = str(uuid.uuid4()), users[n % len(users)]
        kind = n % 10
        if kind == 0:  # waiting in the gateway queue
            queue.enqueue(conn, job_id=job_id, user_id=user, workflow="txt2img", params={"prompt": "x"},
                          prompt=GRAPH, needs={"classes": [], "values": {}}, model=None, inputs=None, servers=[1, 2])
        else:
            jobs.create_job(conn, job_id=job_id, user_id=user, workflow="txt2img", params={"prompt": "x"},
                            prompt=GRAPH, backend_id=1 + n % 2, client_id="c")
            jobs.mark_submitted(conn, job_id, n)
            if kind == 1:
                jobs.mark_running(conn, job_id, nodes_total=7)
            elif kind > 2:  # most of the table is history
                execute(conn, "UPDATE jobs SET status='succeeded', finished_at=NOW(3) WHERE id=%s", (job_id,))
        if kind <= 2:
            active.append((job_id, user, kind))
    jobs.record_run_time(conn, "txt2img", 8.0)
    conn.close()
    tokens = {u: issue_token(SECRET, u, 7200)[0] for u in users}
    return [(j, tokens[u], kind) for j, u, kind in active]


# --- servers ----------------------------------------------------------------------------------------

class Server:
    """A gunicorn process group (gateway serve of some tree, or the toy) on a free port."""

    def __init__(self, argv: list[str], env: dict, cwd: Path, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(argv, env={**os.environ, **env, "PUBLIC_BASE_URL": self.base}, cwd=cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.base + "/healthz", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise SystemExit(f"a server did not start: {argv} (log {log})")

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if int(p) != self.proc.pid]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.workers():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def gateway(tree: Path, env: dict, log: Path, *extra: str) -> Server:
    return Server([sys.executable, "-m", "shared.cli", "serve", "--bind", "127.0.0.1:{port}", "--workers", "2",
                   *extra], env, tree, log)


def toy(env: dict, worker_class: str, log: Path) -> Server:
    return Server([sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", "2", "--threads", "8",
                   "--keep-alive", "5", "-b", "127.0.0.1:{port}", "bench.door_toy:app"], env, ROOT, log)


# --- 1. polls ---------------------------------------------------------------------------------------

def wrk(url: str, requests_: list[tuple[str, dict]], seconds: float, connections: int = 8) -> dict:
    """Run wrk over a rotation of (path, headers); return req/s, p50, p99 (ms) and failures."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    rows = ",\n".join("{%s, {%s}}" % (json.dumps(p), ", ".join(f"[{json.dumps(k)}]={json.dumps(v)}"
                                                               for k, v in h.items())) for p, h in requests_)
    script.write_text("local list = {\n" + rows + "}\nlocal reqs = {}\nlocal i = 0\n"
                      "init = function(args)\n  for n, r in ipairs(list) do reqs[n] = wrk.format('GET', r[1], r[2]) end\nend\n"
                      "request = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n")
    for duration in (1, max(int(seconds), 1)):  # a warm-up second (connections, caches), then the measure
        out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", str(script),
                              url], capture_output=True, text=True, timeout=seconds + 60).stdout
    script.unlink()

    def ms(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": ms("50"), "p99": ms("99"),
            "bad": int(bad.group(1)) if bad else 0, "errors": errors.group(0) if errors else ""}


def bench_polls(args, env, active, tmp) -> list[str]:
    lines = []
    toy_server = toy(env, "shared.door.evented.GeventWorker", tmp / "toy.log")  # gateway serve's own worker
    try:
        null = wrk(toy_server.base, [("/null", {})], args.seconds)
        naive = wrk(toy_server.base, [(f"/toy/{j}", {}) for j, _, _ in active], args.seconds)
    finally:
        toy_server.stop()
    rows = [("null Flask endpoint (no I/O)", null), ("toy: one pymysql PK read + JSON, all active jobs", naive)]
    trees = [("this tree", ROOT)] + ([(f"baseline {args.baseline}", args.baseline_tree)] if args.baseline else [])
    for label, tree in trees:
        server = gateway(tree, env, tmp / f"polls-{tree.name}.log")
        try:
            polls, tagged = {}, {}
            for job_id, token, kind in active:
                path, headers = f"/v1/jobs/{job_id}", {"Authorization": f"Bearer {token}"}
                tag = requests.get(server.base + path, headers=headers, timeout=10).headers.get("ETag")
                polls.setdefault(kind, []).append((path, headers))
                tagged.setdefault(kind, []).append((path, {**headers, "If-None-Match": tag}))
            mix = [p for k in sorted(polls) for p in polls[k]]
            mixed_tags = [p for k in sorted(tagged) for p in tagged[k]]
            rows.append((f"{label}: GET /v1/jobs/{{id}}, all active jobs", wrk(server.base, mix, args.seconds)))
            rows.append((f"{label}: the same, 304", wrk(server.base, mixed_tags, args.seconds)))
            if tree == ROOT:
                with PeakConnections(env["DATABASE_URL"]) as peak:
                    crowd = wrk(server.base, mix, args.seconds, connections=args.crowd)
                rows.append((f"{label}: all active jobs, {args.crowd} connections at once "
                             f"(MySQL connections: at most {peak.most})", crowd))
                for kind in sorted(polls):
                    rows.append((f"{label}: a job {KINDS[kind]}", wrk(server.base, polls[kind], args.seconds)))
                    rows.append((f"{label}: a job {KINDS[kind]}, 304", wrk(server.base, tagged[kind], args.seconds)))
        finally:
            server.stop()
    lines.append(f"| endpoint ({len(active)} active jobs polled in turn, {args.jobs} in the table) "
                 "| req/s | x toy | p50 ms | p99 ms | p99/p50 | not 2xx/3xx |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for label, r in rows:
        lines.append(f"| {label} | {r['rps']:,.0f} | {r['rps'] / max(naive['rps'], 1):.2f} | {r['p50']:.1f} | "
                     f"{r['p99']:.1f} | {r['p99'] / max(r['p50'], 0.001):.1f} | {r['bad']} {r['errors']} |")
    lines.append("goals: poll >= 1.00x toy, 304 >= 1.20x toy, p99/p50 <= 4")
    return lines


class PeakConnections:
    """The most client connections MySQL had open while the block ran (sampled every 50 ms)."""

    def __init__(self, database_url: str):
        from shared.config import DatabaseUrl
        self.conn = connect(DatabaseUrl.parse(database_url))
        self.most, self.stop = 0, threading.Event()

    def sample(self):
        while not self.stop.wait(0.05):
            with self.conn.cursor() as cur:
                cur.execute("SHOW STATUS LIKE 'Threads_connected'")
                self.most = max(self.most, int(cur.fetchone()["Value"]))

    def __enter__(self):
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.conn.close()


# --- 2. slow clients ----------------------------------------------------------------------------------

def slow_clients(server: Server, count: int, seconds: float, poll: tuple[str, dict]) -> dict:
    """Hold `count` dripping connections open while one client polls; return its latencies."""
    socks, stop = [], threading.Event()
    for n in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if n % 2:  # headers that never end
            s.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
        else:  # a body that never ends
            s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{")
        socks.append(s)

    def drip():
        while not stop.wait(0.5):
            for s in socks:
                try:
                    s.send(b"X" if socks.index(s) % 2 else b" ")
                except OSError:
                    pass
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    time.sleep(1.0)  # let every slow connection be accepted and stuck
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        try:
            # A new connection each time, as many phones: it lands on any worker, a busy one too.
            ok = requests.get(server.base + poll[0], headers=poll[1], timeout=10).status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append(time.perf_counter() - t)
        failures += not ok
        time.sleep(0.02)
    stop.set()
    dripper.join()
    for s in socks:
        s.close()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"n": len(latencies), "p50": q[49] * 1000, "p99": q[98] * 1000, "max": max(latencies) * 1000,
            "failed": failures}


def bench_slow(args, env, active, tmp) -> list[str]:
    job_id, token, _ = active[0]
    poll = (f"/v1/jobs/{job_id}", {"Authorization": f"Bearer {token}"})
    modes = [("this tree, gevent (default)", ROOT, ()), ("this tree, --worker-class gthread", ROOT,
                                                          ("--worker-class", "gthread"))]
    if args.baseline:
        modes.append((f"baseline {args.baseline} (its default worker)", args.baseline_tree, ()))
    lines = [f"| server ({args.slow} slow connections held open) | polls | p50 ms | p99 ms | max ms | failed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, tree, extra in modes:
        server = gateway(tree, env, tmp / f"slow-{len(lines)}.log", *extra)
        try:
            r = slow_clients(server, args.slow, args.seconds, poll)
        finally:
            server.stop()
        lines.append(f"| {label} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.0f} | {r['failed']} |")
    lines.append("goal: p99 < 100 ms, nothing failed")
    return lines


# --- 3. hostile bodies --------------------------------------------------------------------------------

def raw(port: int, data: bytes, timeout: float = 60) -> int:
    """Send bytes on a fresh connection; return the answer's status code (0 if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before it has read everything
        head = b""
        try:
            while b"\r\n" not in head and (chunk := s.recv(4096)):
                head += chunk
        except OSError:
            pass
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else 0


def _post(path: str, ctype: str, body: bytes, token: str | None = None, chunked: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if chunked:
        step = 64 * 1024
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"".join(
            b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step]) for i in range(0, len(body), step)) + b"0\r\n\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _form(fields: dict, file: bytes, ctype: str) -> tuple[str, bytes]:
    b = "bench" + uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
                 f"Content-Type: {ctype}\r\n\r\n".encode() + file + f"\r\n--{b}--\r\n".encode())
    return f"multipart/form-data; boundary={b}", b"".join(parts)


def hostile_bodies(server: Server, token: str, mb: int) -> list[tuple[str, int, float, int]]:
    """(what, bytes, CPU seconds, status) for each hostile body."""
    size = mb * 1024 * 1024
    out = []

    def measure(what, nbytes, send):
        time.sleep(0.3)
        before = server.cpu_seconds()
        status = send()
        time.sleep(0.3)
        out.append((what, nbytes, server.cpu_seconds() - before, status))

    ctype, body = _form({"key": "users/x/uploads/y.png", "expires": "1", "signature": "0" * 64}, b"\n" * size,
                        "image/png")
    measure(f"POST /v1/files: a form part of {mb} MB of \\n, bad signature", len(body),
            lambda: raw(server.port, _post("/v1/files", ctype, body)))

    def jpeg_upload():  # a "JPEG" with no frame header, uploaded and then named by an img2img job
        auth = {"Authorization": f"Bearer {token}"}
        up = requests.post(server.base + "/v1/uploads", json={"content_type": "image/jpeg"}, headers=auth,
                           timeout=30).json()["upload"]
        fake = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * (size - 13)
        ctype, form = _form(up["fields"], fake, "image/jpeg")
        sent = requests.post(up["url"], data=form, headers={"Content-Type": ctype}, timeout=60).status_code
        if sent != 204:
            return sent
        return requests.post(server.base + "/v1/jobs", headers=auth, timeout=60, json={
            "workflow": "img2img", "params": {"prompt": "x"}, "inputs": {"image": up["id"]}}).status_code
    measure(f"a {mb} MB JPEG without a frame header: upload, then img2img submit", size, jpeg_upload)

    deep = b'{"workflow":"txt2img","params":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    measure("POST /v1/jobs: JSON nested 50,000 deep", len(deep),
            lambda: raw(server.port, _post("/v1/jobs", "application/json", deep, token)))
    surrogates = b'{"workflow":"txt2img","params":{"prompt":"' + b"\xed\xa0\x80" * 80_000 + b'"}}'
    measure("POST /v1/jobs: raw UTF-8 surrogate bytes", len(surrogates),
            lambda: raw(server.port, _post("/v1/jobs", "application/json", surrogates, token)))
    escapes = b'{"workflow":"txt2img","params":{"prompt":"' + b"\\u00e9" * 40_000 + b'"}}'
    measure("POST /v1/jobs: 240 KB of \\u escapes in a string", len(escapes),
            lambda: raw(server.port, _post("/v1/jobs", "application/json", escapes, token)))
    big = b'{"workflow":"txt2img","params":{"prompt":"' + b"a" * (2 * 1024 * 1024) + b'"}}'
    measure("POST /v1/jobs: a 2 MB body, chunked (no Content-Length)", len(big),
            lambda: raw(server.port, _post("/v1/jobs", "application/json", big, token, chunked=True)))
    return out


def bench_bodies(args, env, active, tmp) -> list[str]:
    token = active[0][1]
    trees = [("this tree", ROOT)] + ([(f"baseline {args.baseline}", args.baseline_tree)] if args.baseline else [])
    results = {}
    for label, tree in trees:
        server = gateway(tree, env, tmp / f"bodies-{tree.name}.log")
        try:
            results[label] = hostile_bodies(server, token, args.mb)
        finally:
            server.stop()
    lines = ["| body | " + " | ".join(f"{label}: status, CPU ms per MB" for label in results) + " |",
             "| --- |" + " --- |" * len(results)]
    for n, (what, *_rest) in enumerate(results["this tree"]):
        cells = []
        for label in results:
            _, nbytes, cpu, status = results[label][n]
            cells.append(f"{status}, {cpu * 1000 / (nbytes / 1024 / 1024):.0f}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    lines.append("goal: <= 50 ms of CPU per MB, a 4xx for each")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (CI): fewer jobs, shorter, smaller")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--baseline", default="592e92c", help="git revision to measure alongside")
    parser.add_argument("--no-baseline", dest="baseline", action="store_const", const=None)
    args = parser.parse_args()
    args.jobs, args.slow, args.mb, args.crowd = (1000, 50, 2, 100) if args.small else (10_000, 200, 10, 300)
    args.seconds = args.seconds or (2.0 if args.small else 10.0)
    if not shutil.which("wrk"):
        raise SystemExit("bench_door: needs wrk (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-door-"))
    server_url, local = database_server(None, tmp / "mysql")
    name = f"gw_door_{uuid.uuid4().hex[:8]}"
    admin = connect(server_url, database=False)
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    url = server_url.with_database(name)
    env = {"DATABASE_URL": f"mysql://{url.user}:{url.password}@{url.host}:{url.port}/{name}",
           "BENCH_DATABASE_URL": f"mysql://{url.user}:{url.password}@{url.host}:{url.port}/{name}",
           "SECRET_KEY": SECRET, "STORAGE_URL": (tmp / "storage").as_uri(), "STATE_DIR": str(tmp),
           "RATE_LIMIT_PER_MINUTE": "0", "LOG_LEVEL": "WARNING", "WORKFLOWS_DIR": str(ROOT / "workflows")}
    if args.baseline:
        args.baseline_tree = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(args.baseline_tree),
                        args.baseline], check=True)
    try:
        active = fill(url, args.jobs)
        print(f"# bench_door: {args.jobs} jobs, {os.cpu_count()} CPUs, {args.seconds:g} s per measurement\n")
        for title, part in (("1. status polls", bench_polls), ("2. slow clients", bench_slow),
                            ("3. hostile bodies", bench_bodies)):
            print(f"## {title}\n")
            print("\n".join(part(args, env, active, tmp)) + "\n", flush=True)
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(args.baseline_tree)])
        admin.cursor().execute(f"DROP DATABASE `{name}`")
        admin.close()
        if local:
            local.stop()


if __name__ == "__main__":
    main()
