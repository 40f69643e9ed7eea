"""The `gateway` command as operators run it: a real subprocess against the test database."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid

from shared.db import utcnow
from shared.usage import record_usage
from tests.stack import PROJECT_ROOT, config_env


def gateway(cfg, *args, env=None):
    import os
    full = {**os.environ, **config_env(cfg), **(env or {})}
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], env=full, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_usage_export_csv_and_jsonl(make_config, db_conn, tmp_path):
    cfg = make_config()
    jobs = []
    for n in range(3):
        job = {"id": str(uuid.uuid4()), "user_id": "u", "workflow": "txt2img", "status": "succeeded",
               "created_at": utcnow(), "finished_at": utcnow()}
        record_usage(db_conn, job, images=n + 1, megapixels=0.26, steps=20, gpu_seconds=1.0, queue_seconds=0.1,
                     backend_url="http://b")
        jobs.append(job["id"])
    out = gateway(cfg, "usage", "export", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["job_id"] for r in rows] == jobs and [r["images"] for r in rows] == ["1", "2", "3"]
    target = tmp_path / "usage.jsonl"
    out = gateway(cfg, "usage", "export", "--format", "jsonl", "--after-id", rows[0]["id"], "--output", str(target))
    assert out.returncode == 0 and "exported 2" in out.stderr
    assert [json.loads(line)["job_id"] for line in target.read_text().splitlines()] == jobs[1:]
    out = gateway(cfg, "usage", "export", "--until", "2000-01-01T00:00:00Z")
    assert out.returncode == 0 and out.stdout.strip() == ",".join(
        ["id", "job_id", "user_id", "workflow", "status", "images", "megapixels", "steps", "gpu_seconds",
         "queue_seconds", "backend", "created_at", "finished_at", "provider", "subject", "credits", "price",
         "moderation"])


def test_invalid_configuration_names_the_variable(make_config):
    out = gateway(make_config(), "migrate", env={"SIGNED_URL_TTL": "soon"})
    assert out.returncode != 0 and "SIGNED_URL_TTL" in out.stderr


def test_serve_refuses_to_start_without_secret_key(make_config):
    out = gateway(make_config(), "serve", "--bind", "127.0.0.1:1", env={"SECRET_KEY": ""})
    assert out.returncode != 0 and "SECRET_KEY" in out.stderr


def test_migrate_twice(make_config):
    cfg = make_config()
    first = gateway(cfg, "migrate")
    assert first.returncode == 0 and "up to date" in first.stdout


def test_gateway_dev_runs_everything_and_stops_everything(tmp_path):
    """The README's first command: private MariaDB, migrations, API and listener; Ctrl-C stops all of it."""
    import os
    import signal
    import time

    import requests

    from shared.localdb import free_port
    from tests.stack import wait_for
    api, comfy = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(STATE_DIR=str(tmp_path / "state"), COMFYUI_URLS=f"http://127.0.0.1:{comfy}", LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "dev", "--bind", f"127.0.0.1:{api}",
                             "--fake-comfyui"], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{api}"
    try:
        def healthy():
            try:
                body = requests.get(base + "/healthz", timeout=1).json()
            except (requests.RequestException, ValueError):
                return False
            return body["status"] == "ok" and body["backends"][0]["listener_connected"]
        wait_for(healthy, 60, "gateway dev did not come up")
        token = requests.post(base + "/v1/auth/dev", json={"user": "dev"}, timeout=5).json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        job = requests.post(base + "/v1/jobs", json={"workflow": "txt2img", "params": {"prompt": "a cat",
                            "width": 64, "height": 64, "steps": 2}}, headers=h, timeout=10).json()["job"]
        wait_for(lambda: requests.get(f"{base}/v1/jobs/{job['id']}", headers=h, timeout=5).json()["job"]["status"]
                 == "succeeded", 30, "job did not finish under gateway dev")
        images = requests.get(f"{base}/v1/jobs/{job['id']}/result", headers=h, timeout=5).json()["images"]
        assert requests.get(images[0]["url"], timeout=5).content.startswith(b"\x89PNG")
        assert (tmp_path / "state" / "secret_key").exists()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "processes left running after Ctrl-C"


def test_gateway_dev_closed_terminal_stops_everything_and_the_next_start_works(tmp_path):
    """SIGHUP (the terminal closed) runs the same clean-up as Ctrl-C: no MariaDB is left behind."""
    import os
    import signal
    import time

    import requests

    from shared.localdb import free_port
    from tests.stack import wait_for
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(STATE_DIR=str(tmp_path / "state"), COMFYUI_URLS=f"http://127.0.0.1:{free_port()}", LOG_LEVEL="WARNING")

    def start_and_hang_up():
        api = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "dev", "--bind", f"127.0.0.1:{api}"], env=env,
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)

        def answers():
            try:
                return requests.get(f"http://127.0.0.1:{api}/healthz", timeout=1).json()["database"] == "ok"
            except (requests.RequestException, ValueError):
                return False
        try:
            wait_for(answers, 60, "gateway dev did not come up")
        finally:
            os.killpg(proc.pid, signal.SIGHUP)
            out, _ = proc.communicate(timeout=60)
        time.sleep(0.5)
        leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
        assert leftovers == [], "processes left running after SIGHUP: " + out.decode(errors="replace")[-2000:]

    start_and_hang_up()
    start_and_hang_up()  # the same state folder: a leftover server would make this one fail
