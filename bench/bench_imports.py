"""Cold import time of every Lambda handler module, against `import flask` alone.

    .venv/bin/python bench/bench_imports.py [--repeat 5]

Part 1: for each `handler:` of serverless.yml, a fresh interpreter imports the
handler's module --repeat times (round-robin with the others and with `import
flask`, so drift hits all alike); the median is shown beside flask's, with the
heavy modules the import pulls in. Bytecode is cached after the first run, so
this is the import work itself: on Lambda the zip carries no __pycache__ and
compiling our own modules comes on top.

Part 2: the status function serves one real poll of a running job with a live
preview through its Lambda handler, in a fresh interpreter set up as on Lambda
(S3 storage, dummy credentials in the environment: signing needs no network;
a database as the tests find one: TEST_DATABASE_URL, 127.0.0.1:3306, else a
private server), and the heavy modules loaded afterwards are listed.
`--poll-probe` is that child process (tests/test_cold_start.py runs it too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("boto3", "botocore", "requests", "shared.workflows", "flask")

# Runs in a fresh interpreter: import one module, time it, say what came with it.
_IMPORT_PROBE = """
import sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
__import__(sys.argv[2])
elapsed = time.perf_counter() - t0
import json
print(json.dumps({"ms": elapsed * 1000, "loaded": [m for m in sys.argv[3:] if m in sys.modules]}))
"""


def handlers(serverless_yml: Path = ROOT / "serverless.yml") -> dict[str, list[str]]:
    """Handler module -> the serverless functions it serves, in file order."""
    modules: dict[str, list[str]] = {}
    for name, handler in re.findall(r"^  (\w+):\s*\n\s+handler:\s*(\S+)", serverless_yml.read_text(), re.M):
        module = handler.rsplit(".", 1)[0].replace("/", ".")
        modules.setdefault(module, []).append(name)
    return modules


def import_once(module: str) -> dict:
    out = subprocess.run([sys.executable, "-I", "-c", _IMPORT_PROBE, str(ROOT), module, *HEAVY],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"importing {module} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def bench_imports(repeat: int) -> None:
    modules = handlers()
    targets = [*modules, "flask"]
    runs: dict[str, list[dict]] = {m: [] for m in targets}
    for _ in range(repeat):
        for module in targets:
            runs[module].append(import_once(module))
    flask_ms = statistics.median(r["ms"] for r in runs["flask"])
    print(f"Cold import of each Lambda handler module (fresh interpreter, median of {repeat}, bytecode cached)\n")
    print(f"{'function(s)':<22} {'module':<20} {'ms':>7} {'x flask':>8}  pulls in")
    for module in targets:
        ms = statistics.median(r["ms"] for r in runs[module])
        names = ", ".join(modules.get(module, ["(import flask alone)"]))
        print(f"{names:<22} {module:<20} {ms:7.1f} {ms / flask_ms:8.2f}  {', '.join(runs[module][0]['loaded']) or '-'}")


# --------------------------------------------------------------------------- one status poll

def poll_probe(job_id: str, token: str) -> None:
    """(Child process.) Import functions.status, serve one poll through its Lambda handler, report."""
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    from functions import status
    t1 = time.perf_counter()
    path = f"/v1/jobs/{job_id}"
    event = {"version": "2.0", "routeKey": "GET /v1/jobs/{id}", "rawPath": path, "rawQueryString": "",
             "headers": {"authorization": f"Bearer {token}"}, "pathParameters": {"id": job_id},
             "requestContext": {"http": {"method": "GET", "path": path, "sourceIp": "203.0.113.9"}},
             "isBase64Encoded": False}
    answer = status.handler(event, None)
    t2 = time.perf_counter()
    print(json.dumps({"import_ms": (t1 - t0) * 1000, "poll_ms": (t2 - t1) * 1000, "answer": answer,
                      "modules": sorted(sys.modules)}))


def lambda_env(database_url: str, secret_key: str, storage_url: str, tmp: str) -> dict:
    """The environment of a status function on Lambda: S3 storage, credentials as Lambda sets them.

    Nothing else of this machine's AWS setup leaks in (no shared config file), so what is
    measured is what Lambda runs.
    """
    return {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "LANG": "C.UTF-8",
            "AWS_LAMBDA_FUNCTION_NAME": "status", "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "ASIABENCHDUMMYKEY", "AWS_SECRET_ACCESS_KEY": "bench-dummy-secret",
            "AWS_SESSION_TOKEN": "bench-dummy-session-token",
            "AWS_CONFIG_FILE": os.path.join(tmp, "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(tmp, "no-aws-credentials"),
            "DATABASE_URL": database_url, "SECRET_KEY": secret_key, "STORAGE_URL": storage_url,
            "LOG_LEVEL": "WARNING"}


def run_poll_probe(env: dict, job_id: str, token: str) -> dict:
    """Run ``poll_probe`` in a fresh interpreter with exactly ``env``; return its report."""
    out = subprocess.run([sys.executable, "-I", str(Path(__file__).resolve()), "--poll-probe", job_id, token],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"the poll probe failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def running_job_with_preview(conn, user_id: str) -> str:
    """A job on server 1, running node 3 (KSampler) of txt2img, with a stored preview."""
    from shared import jobs

    job_id = str(uuid.uuid4())
    jobs.create_job(conn, job_id=job_id, user_id=user_id, workflow="txt2img", params={"prompt": "x"},
                    prompt={}, backend_id=1, client_id="c")
    jobs.mark_submitted(conn, job_id, 1)
    jobs.mark_running(conn, job_id, nodes_total=7)
    jobs.update_progress(conn, job_id, percent=40.0, node="3", value=8, max_=20, title="KSampler")
    jobs.set_preview(conn, job_id, f"users/{user_id}/jobs/{job_id}/preview.jpeg")
    return job_id


def bench_poll() -> None:
    sys.path.insert(0, str(ROOT))
    from shared.db import connect
    from shared.migrate import migrate
    from shared.tokens import issue_token
    from shared.users import get_or_create_user
    from tests.stack import database_server

    secret = "bench-secret-key-0123456789abcdef"
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as tmp:
        server, local = database_server(None, Path(tmp) / "mysql")
        name = f"gw_bench_{uuid.uuid4().hex[:8]}"
        admin = connect(server, database=False)
        admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        try:
            url = server.with_database(name)
            conn = connect(url)
            migrate(conn)
            user = get_or_create_user(conn, provider="dev", subject="bench")
            job_id = running_job_with_preview(conn, user)
            conn.close()
            token, _ = issue_token(secret, user, 3600)
            env = lambda_env(f"mysql://{url.user}:{url.password}@{url.host}:{url.port}/{name}", secret,
                             "s3://bench-bucket/gw", tmp)
            report = run_poll_probe(env, job_id, token)
        finally:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
            admin.close()
            if local is not None:
                local.stop()
    job = json.loads(report["answer"]["body"]).get("job", {})
    print(f"\nOne status poll through functions.status.handler (running job, live preview, S3 storage, "
          f"dummy credentials):\n  HTTP {report['answer']['statusCode']}, import {report['import_ms']:.1f} ms "
          f"+ first poll {report['poll_ms']:.1f} ms (database connection included), "
          f"{len(report['modules'])} modules loaded")
    print(f"  node_title {job.get('progress', {}).get('node_title')!r}, preview_url "
          f"{'signed' if job.get('preview_url') else 'missing'}")
    loaded = [m for m in HEAVY if m in report["modules"]]
    print(f"  heavy modules loaded after the poll: {', '.join(loaded) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per module (median shown)")
    parser.add_argument("--poll-probe", nargs=2, metavar=("JOB_ID", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll_probe:
        poll_probe(*args.poll_probe)
        return
    bench_imports(max(args.repeat, 1))
    bench_poll()


if __name__ == "__main__":
    main()
