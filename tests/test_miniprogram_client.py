"""The mini-program client library (clients/miniprogram/): its node unit tests, and its
end-to-end test against a real gateway (API and listener subprocesses, fake ComfyUI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import requests

from tests.fakes.comfyui import FakeComfy
from tests.stack import PROJECT_ROOT, start_api, start_listener, wait_for

CLIENT_DIR = PROJECT_ROOT / "clients" / "miniprogram"
UNIT_TESTS = CLIENT_DIR / "test" / "client.test.js"
E2E_TESTS = CLIENT_DIR / "test" / "e2e.test.js"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("the mini-program client's tests need Node.js 20+ (node) on PATH")
    return path


def run_node(node: str, test_file, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([node, "--test", str(test_file)], cwd=PROJECT_ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"node --test {test_file.name} did not end within {timeout}s:\n{e.stdout}\n{e.stderr}")


def without_gateway_url() -> dict:
    return {k: v for k, v in os.environ.items() if k != "GATEWAY_URL"}


def test_client_unit_tests_pass(node):
    r = run_node(node, UNIT_TESTS, env=without_gateway_url(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# fail 0" in r.stdout and "# pass " in r.stdout, r.stdout


def test_e2e_without_gateway_url_fails_loudly(node):
    r = run_node(node, E2E_TESTS, env=without_gateway_url(), timeout=60)
    assert r.returncode != 0, r.stdout
    assert "GATEWAY_URL is not set" in r.stdout + r.stderr, r.stdout + r.stderr


def listener_connected(base: str) -> bool:
    try:
        body = requests.get(base + "/healthz", timeout=5).json()
    except (requests.RequestException, ValueError):
        return False
    return bool(body.get("backends")) and all(b["listener_connected"] for b in body["backends"])


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_e2e_against_a_real_gateway(storage, request, node, make_config, db_conn, tmp_path):  # db_conn: empty tables
    with FakeComfy(step_delay=0.06) as fake:
        env = {"COMFYUI_URLS": fake.base_url}
        if storage == "s3":  # uploads go to s3rver's presigned POST, images come from signed S3 URLs
            s3 = request.getfixturevalue("s3rver")
            env.update(STORAGE_URL=f"s3://{s3.bucket}/miniprogram-{time.time_ns()}", S3_ENDPOINT_URL=s3.endpoint_url)
        cfg = make_config(**env)
        listener = start_listener(cfg, tmp_path)
        api_proc, base = start_api(cfg, tmp_path)
        try:
            wait_for(lambda: listener_connected(base), 30, f"listener never connected: {listener.log()}")
            r = run_node(node, E2E_TESTS, env={**os.environ, "GATEWAY_URL": base}, timeout=240)
        finally:
            api_proc.stop()
            listener.stop()
    print(r.stdout)  # the node test report, shown by pytest -s or on failure
    assert r.returncode == 0, (f"{r.stdout}\n{r.stderr}\n--- api log (tail) ---\n{api_proc.log()[-4000:]}"
                               f"\n--- listener log (tail) ---\n{listener.log()[-4000:]}")
    assert "# fail 0" in r.stdout and "# pass " in r.stdout, r.stdout
    assert "Traceback" not in listener.log(), listener.log()
