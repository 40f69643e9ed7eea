"""Lambda cold starts: what the status function loads to serve a poll, and the import benchmark.

The status poll is the hottest path. A fresh interpreter set up as on Lambda (S3
storage, the role's credentials in the environment) imports functions.status and
serves one poll of a running job with a live preview through the Lambda handler
(bench/bench_imports.py --poll-probe); afterwards neither boto3/botocore (the
link is signed by shared/storage/sigv4.py), requests nor the workflow machinery
(the node's title comes from the job row) may have been imported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from urllib.parse import parse_qsl, urlsplit

from shared import jobs
from shared.tokens import issue_token
from shared.users import get_or_create_user
from tests.conftest import SECRET
from tests.stack import PROJECT_ROOT

BENCH = PROJECT_ROOT / "bench" / "bench_imports.py"
NOT_ON_THE_POLL = {"boto3", "botocore", "requests", "shared.workflows", "shared.comfy", "flask"}


def dsn(url) -> str:
    return f"mysql://{url.user}:{url.password}@{url.host}:{url.port}/{url.database}"


def test_a_status_poll_loads_neither_boto3_nor_requests_nor_the_workflows(database_url, db_conn, tmp_path):
    user = get_or_create_user(db_conn, provider="dev", subject="alice")
    job_id = "5b0d4cf8-9d6e-4a3c-8f5e-6f1e2a7c9d01"
    jobs.create_job(db_conn, job_id=job_id, user_id=user, workflow="txt2img", params={"prompt": "x"}, prompt={},
                    backend_id=1, client_id="c")
    jobs.mark_running(db_conn, job_id, nodes_total=7)
    jobs.update_progress(db_conn, job_id, percent=40.0, node="3", value=8, max_=20, title="KSampler")
    jobs.set_preview(db_conn, job_id, f"users/{user}/jobs/{job_id}/preview.jpeg")
    token, _ = issue_token(SECRET, user, 600)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AWS_LAMBDA_FUNCTION_NAME": "status",
           "DATABASE_URL": dsn(database_url), "SECRET_KEY": SECRET, "STORAGE_URL": "s3://gateway-test/gw",
           "S3_REGION": "eu-west-3", "AWS_ACCESS_KEY_ID": "ASIACOLDSTARTTEST", "AWS_SECRET_ACCESS_KEY": "cold-secret",
           "AWS_SESSION_TOKEN": "cold-session-token", "AWS_CONFIG_FILE": str(tmp_path / "none")}

    out = subprocess.run([sys.executable, "-I", str(BENCH), "--poll-probe", job_id, token], env=env,
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])

    assert report["answer"]["statusCode"] == 200, report["answer"]
    job = json.loads(report["answer"]["body"])["job"]
    assert (job["status"], job["progress"]["node"], job["progress"]["node_title"]) == ("running", "3", "KSampler")
    preview = urlsplit(job["preview_url"])
    query = dict(parse_qsl(preview.query))
    assert (preview.hostname, preview.path) == ("gateway-test.s3.amazonaws.com",
                                                f"/gw/users/{user}/jobs/{job_id}/preview.jpeg")
    assert query["X-Amz-Credential"].startswith("ASIACOLDSTARTTEST/") and query["X-Amz-Signature"]
    assert query["X-Amz-Security-Token"] == "cold-session-token"
    loaded = NOT_ON_THE_POLL & set(report["modules"])
    assert not loaded, f"a status poll imported {sorted(loaded)}"


def test_the_import_benchmark_runs(database_url):
    server = database_url.with_database("mysql")
    out = subprocess.run([sys.executable, str(BENCH), "--repeat", "1"], cwd=PROJECT_ROOT, capture_output=True,
                         env={**os.environ, "TEST_DATABASE_URL": dsn(server)}, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^.*? (functions\.\w+|flask) +([\d.]+) ", out.stdout, re.M)}
    assert {"functions.status", "functions.submit", "flask"} <= set(rows), out.stdout
    assert re.search(r"^status +functions\.status +[\d.]+ +[\d.]+  -$", out.stdout, re.M), out.stdout
    assert "heavy modules loaded after the poll: none" in out.stdout, out.stdout
