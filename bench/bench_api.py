"""Status-poll throughput and latency through gunicorn, and the listener's event rate.

    .venv/bin/python bench/bench_api.py [--seconds 5] [--clients 16] [--rounds 2] [--baseline REV | --no-baseline]

Part 1 starts `gateway serve` (real gunicorn, 2 workers, real MariaDB: TEST_DATABASE_URL or
127.0.0.1:3306, else a private server) with 1,000 jobs in the table and polls
`GET /v1/jobs/{id}` from --clients threads for --seconds, half of the polls
with `If-None-Match` (the 304 path apps use): once with the jobs held by a
server (ComfyUI's queue), once with the jobs waiting in the gateway queue (the
fair-order count). Part 2 feeds the recorded frames of transcript 01 through
the parser and prints frames per second.

The baseline: the same script of commit REV (default f08a386, the release
before the gateway queue), run from a temporary git worktree in the same run,
alternating with this tree for --rounds rounds, so both numbers come from the
same machine at the same time. Numbers are for
this machine; compare runs, not machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from shared import jobs  # noqa: E402
from shared.config import Config  # noqa: E402
from shared.db import connect, execute  # noqa: E402
from shared.migrate import migrate  # noqa: E402
from shared.tokens import issue_token  # noqa: E402
from shared.users import get_or_create_user  # noqa: E402
from tests.stack import database_server, start_api  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef"


def bench_polls(args, *, waiting: bool = False) -> None:
    server, local = database_server(None, Path(tempfile.mkdtemp()) / "mysql")
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    admin = connect(server, database=False)
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    url = server.with_database(name)
    tmp = Path(tempfile.mkdtemp())
    try:
        conn = connect(url)
        migrate(conn)
        user = get_or_create_user(conn, provider="dev", subject="bench")
        ids = []
        for n in range(1000):
            job_id = str(uuid.uuid4())
            if waiting:  # 1,000 users with one job each in the gateway queue, and a mean run time to estimate from
                from shared.pool import queue
                queue.enqueue(conn, job_id=job_id, user_id=f"u{n}", workflow="txt2img", params={"prompt": "x"},
                              prompt={}, needs={"classes": [], "values": {}}, model=None, inputs=None, servers=2)
                execute(conn, "UPDATE jobs SET user_id=%s WHERE id=%s", (user, job_id))
            else:
                jobs.create_job(conn, job_id=job_id, user_id=user, workflow="txt2img", params={"prompt": "x"},
                                prompt={}, backend_id=1, client_id="c")
                jobs.mark_submitted(conn, job_id, n)
            ids.append(job_id)
        if waiting:
            jobs.record_run_time(conn, "txt2img", 8.0)
        conn.close()
        cfg = Config.from_env({"DATABASE_URL": f"mysql://{url.user}:{url.password}@{url.host}:{url.port}/{name}",
                               "SECRET_KEY": SECRET, "STORAGE_URL": (tmp / "s").as_uri(), "STATE_DIR": str(tmp)})
        api, base = start_api(cfg, tmp)
        try:
            token, _ = issue_token(SECRET, user, 3600)
            headers = {"Authorization": f"Bearer {token}"}
            etags = {}
            latencies: list[float] = []
            codes: dict[int, int] = {}
            lock = threading.Lock()
            stop = time.monotonic() + args.seconds

            def client(k: int):
                s = requests.Session()
                i = k
                while time.monotonic() < stop:
                    job_id = ids[i % len(ids)]
                    h = dict(headers)
                    if i % 2 and job_id in etags:
                        h["If-None-Match"] = etags[job_id]
                    t = time.perf_counter()
                    r = s.get(f"{base}/v1/jobs/{job_id}", headers=h, timeout=10)
                    dt = time.perf_counter() - t
                    etags[job_id] = r.headers.get("ETag")
                    with lock:
                        latencies.append(dt)
                        codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    i += args.clients
            threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - t0
            latencies.sort()
            q = statistics.quantiles(latencies, n=100)
            print(f"status poll via gateway serve (2 workers, its default worker class, {args.clients} clients"
                  f"{', 1,000 jobs in the gateway queue' if waiting else ''}): "
                  f"{len(latencies) / elapsed:.0f} req/s, p50 {q[49] * 1000:.1f} ms, p95 {q[94] * 1000:.1f} ms, "
                  f"codes {dict(sorted(codes.items()))}")
        finally:
            api.stop()
    finally:
        admin.cursor().execute(f"DROP DATABASE `{name}`")
        admin.close()
        if local:
            local.stop()


def bench_parser() -> None:
    from listener import protocol
    path = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "comfyui" / "01_success_progress_previews.jsonl"
    frames = [json.dumps(json.loads(line)["data"]) for line in path.read_text().splitlines()
              if json.loads(line)["kind"] == "ws_text"]
    preview = b"\x00\x00\x00\x01\x00\x00\x00\x01" + b"\xff\xd8\xff\xe0" + bytes(40000)
    frames.append(preview)
    n = 0
    t = time.perf_counter()
    while time.perf_counter() - t < 2.0:
        for f in frames:
            protocol.parse_frame(f)
        n += len(frames)
    print(f"frame parser: {n / (time.perf_counter() - t):,.0f} frames/s (transcript 01 mix + a 40 KB preview)")


def baseline(args) -> None:
    """Run this script as it was at --baseline, from a temporary worktree, and print its lines marked."""
    root = Path(__file__).resolve().parent.parent
    tree = Path(tempfile.mkdtemp()) / "baseline"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(tree), args.baseline], check=True)
    try:
        out = subprocess.run([sys.executable, str(tree / "bench" / "bench_api.py"), "--seconds", str(args.seconds),
                              "--clients", str(args.clients)], cwd=tree, capture_output=True, text=True, timeout=600)
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith(("status poll", "frame parser")):
                print(f"  baseline {args.baseline}: {line}")
        if out.returncode:
            print(f"  baseline {args.baseline} failed:\n{out.stderr[-2000:]}")
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--baseline", default="f08a386", help="git revision to measure alongside (default f08a386)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_const", const=None)
    parser.add_argument("--rounds", type=int, default=2, help="alternate this tree and the baseline this many times")
    args = parser.parse_args()
    for n in range(args.rounds):  # alternating, so a drift of the machine hits both
        print(f"round {n + 1}:")
        bench_parser()
        bench_polls(args)
        bench_polls(args, waiting=True)
        if args.baseline:
            baseline(args)


if __name__ == "__main__":
    main()
