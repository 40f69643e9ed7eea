"""`gateway dev` as an operator starts it: from a script's background (SIGINT ignored), with the
settings it prints usable as printed, and Ctrl-C stopping every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pymysql
import pytest
import requests

from shared.config import DatabaseUrl
from shared.localdb import free_port
from tests.stack import PROJECT_ROOT, wait_for

SIGINT_BIT = 1 << (signal.SIGINT - 1)


def ignored_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_dev_help_tells_where_things_listen():
    out = subprocess.run([sys.executable, "-m", "shared.cli", "dev", "--help"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "the port of the first COMFYUI_URLS entry (8188 by default)" in text
    assert "default 127.0.0.1:8000" in text and "free loopback port" in text and "ADMIN_TOKEN" in text


@pytest.mark.parametrize("bind", ["8000", "localhost", "127.0.0.1:http", "127.0.0.1:70000", ":8000"])
def test_dev_refuses_a_bind_that_is_not_host_port(bind):
    out = subprocess.run([sys.executable, "-m", "shared.cli", "dev", "--bind", bind], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "is not HOST:PORT" in out.stderr, out.stderr


def test_the_banner_masks_the_operators_admin_token_and_shows_a_made_one():
    from shared.devstack import banner
    env = {"DATABASE_URL": "mysql://root:@127.0.0.1:3307/gw", "COMFYUI_URLS": "http://127.0.0.1:8188"}
    theirs = banner("127.0.0.1:8000", {**env, "ADMIN_TOKEN": "operator-secret-token-1234"}, db_given=False,
                    token_made=False)
    assert "operator-secret-token-1234" not in theirs
    assert "gateway dev: ADMIN_TOKEN=oper*** (yours)" in theirs
    assert 'Authorization: Bearer $ADMIN_TOKEN"' in theirs
    made = banner("127.0.0.1:8000", {**env, "ADMIN_TOKEN": "made-here-token-5678"}, db_given=False, token_made=True)
    assert "gateway dev: ADMIN_TOKEN=made-here-token-5678 (kept in STATE_DIR/admin_token)" in made
    assert "Authorization: Bearer made-here-token-5678'" in made


def test_dev_started_in_a_scripts_background_prints_usable_settings_and_stops_on_sigint(tmp_path):
    api, comfy = free_port(), free_port()
    state, log, pids = tmp_path / "state", tmp_path / "dev.log", tmp_path / "pids"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ADMIN_TOKEN", "SECRET_KEY")}
    env.update(STATE_DIR=str(state), COMFYUI_URLS=f"http://127.0.0.1:{comfy}", LOG_LEVEL="WARNING")
    # A non-interactive shell starts background commands with SIGINT ignored (`sleep` shows it).
    script = (f"{sys.executable} -m shared.cli dev --bind 127.0.0.1:{api} --fake-comfyui >{log} 2>&1 & "
              f"echo $! >{pids}; sleep 600 & echo $! >>{pids}; wait")
    shell = subprocess.Popen(["bash", "-c", script], env=env, cwd=PROJECT_ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{api}"
    children: list[int] = []
    try:
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 10, "the script did not start")
        dev_pid, sleep_pid = map(int, pids.read_text().split())
        assert ignored_signals(sleep_pid) & SIGINT_BIT, "the shell did not ignore SIGINT in its background"
        os.kill(sleep_pid, signal.SIGTERM)
        wait_for(lambda: "Ctrl-C stops everything" in log.read_text(), 90,
                 f"gateway dev did not come up: {log.read_text()[-3000:] if log.exists() else ''}")
        assert not ignored_signals(dev_pid) & SIGINT_BIT  # it took SIGINT back
        text = log.read_text()
        database_url = re.search(r"^gateway dev: DATABASE_URL=(\S+)", text, re.M).group(1)
        token = re.search(r"^gateway dev: ADMIN_TOKEN=(\S+)", text, re.M).group(1)
        export = re.search(r"^  (DATABASE_URL=\S+ .* usage export --format jsonl)$", text, re.M).group(1)
        assert (state / "admin_token").read_text() == token and (state / "admin_token").stat().st_mode & 0o777 == 0o600

        # The printed DATABASE_URL is the real one, password and all (root, none, on a private server).
        url = DatabaseUrl.parse(database_url)
        conn = pymysql.connect(host=url.host, port=url.port, user=url.user, password=url.password,
                               database=url.database, connect_timeout=5)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM schema_migrations")
            assert cur.fetchone()[0] >= 14
        conn.close()

        def connected():
            try:
                return requests.get(base + "/healthz", timeout=1).json()["backends"][0]["listener_connected"]
            except (requests.RequestException, ValueError):
                return False
        wait_for(connected, 60, "the listener did not reach the fake ComfyUI at the COMFYUI_URLS port")
        user = requests.post(base + "/v1/auth/dev", json={"user": "dev"}, timeout=5).json()
        h = {"Authorization": f"Bearer {user['token']}"}
        job = requests.post(base + "/v1/jobs", json={"workflow": "txt2img", "params": {
            "prompt": "a cat", "width": 64, "height": 64, "steps": 2}}, headers=h, timeout=10).json()["job"]
        wait_for(lambda: requests.get(f"{base}/v1/jobs/{job['id']}", headers=h, timeout=5).json()["job"]["status"]
                 == "succeeded", 30, "the job did not finish")

        # The two usage commands it printed work as printed.
        assert requests.get(base + "/v1/usage", timeout=5).status_code in (401, 403)
        listed = requests.get(base + "/v1/usage", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert listed.status_code == 200 and [r["job_id"] for r in listed.json()["records"]] == [job["id"]]
        out = subprocess.run(["bash", "-c", export], env={k: v for k, v in env.items() if k != "DATABASE_URL"},
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert [r["job_id"] for r in map(__import__("json").loads, out.stdout.splitlines())] == [job["id"]]

        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(dev_pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(children) == 4  # the private MariaDB, fake ComfyUI, serve, listen
        os.kill(dev_pid, signal.SIGINT)  # what Ctrl-C sends it
        assert shell.wait(timeout=60) == 0
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(timeout=60)
    time.sleep(0.5)
    assert [p for p in children if alive(p)] == [], "children left running after SIGINT"
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "processes (the private MariaDB?) left running after SIGINT"
