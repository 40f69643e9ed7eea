"""The H5 demo page (/demo): served only with DEV_LOGIN=1 and only its own files; and, end to end
in a real browser (Debian's chromium driven by playwright-core from tests/browser/demo.mjs)
against `gateway serve` + `gateway listen` + a slow fake ComfyUI.

Screenshots go to ``$ARTIFACTS_DIR/demo`` (else the test's tmp_path); with
``UPDATE_DEMO_SCREENSHOT=1`` the finished job's screenshot is copied to docs/demo.png.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from functions import demo
from functions.app import create_app
from shared.config import Config
from shared.context import Context
from shared.http import Request
from tests.fakes.comfyui import FakeComfy
from tests.stack import PROJECT_ROOT, start_api, start_listener, wait_for

SCRIPT = PROJECT_ROOT / "tests" / "browser" / "demo.mjs"
CHECKS = {"page_served", "login", "static_types", "form_from_params", "form_checks_rules", "submit",
          "first_job_succeeded", "queue_or_progress_moved", "progress_monotonic", "node_title_shown",
          "eta_or_running_shown", "preview_seen", "preview_sharpens", "final_image_loaded",
          "polls_send_if_none_match", "polls_honour_poll_after_ms", "polls_back_off_by_retry_after",
          "second_submit_new_key", "cancelled", "img2img_upload", "my_jobs", "reopen_from_list", "fits_a_phone",
          "no_page_errors"}
STEP_DELAY = 0.4  # 20 steps: ~8 s of sampling, long enough to see progress and previews from the browser
OUTSIDE = [
    "/demo/../shared/db.py",
    "/demo/%2e%2e/shared/db.py",
    "/demo/..%2fshared%2fdb.py",
    "/demo/%2e%2e%2f%2e%2e%2fshared%2fdb.py",
    "/demo/static/../../../shared/db.py",
    "/demo/__init__.py",
    "/demo/static/index.html",
    "/demo/./index.html",
    "/demo//etc/passwd",
    "/demo/..\\__init__.py",
    "/demo/index.html%00.js",
    "/demo/.",
    "/demo/..",
]


def client(dev_login: bool):
    ctx = Context(Config.from_env({"DEV_LOGIN": "1" if dev_login else "0"}))  # /demo reads nothing else
    return create_app(lambda: ctx).test_client()


@pytest.mark.parametrize("path", ["/demo", "/demo/", "/demo/index.html", "/demo/demo.js", "/demo/demo.css",
                                  "/demo/nothing.js"])
def test_demo_is_404_without_dev_login(path):
    r = client(False).get(path)
    assert r.status_code == 404
    assert r.content_type == "application/json"
    assert r.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path, content_type", [
    ("/demo", "text/html; charset=utf-8"),
    ("/demo/", "text/html; charset=utf-8"),
    ("/demo/index.html", "text/html; charset=utf-8"),
    ("/demo/api.js", "text/javascript; charset=utf-8"),
    ("/demo/job.js", "text/javascript; charset=utf-8"),
    ("/demo/form.js", "text/javascript; charset=utf-8"),
    ("/demo/demo.js", "text/javascript; charset=utf-8"),
    ("/demo/demo.css", "text/css; charset=utf-8"),
])
def test_demo_serves_its_files(path, content_type):
    r = client(True).get(path)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == content_type
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    name = path.removeprefix("/demo").strip("/") or "index.html"
    assert r.data == (demo.STATIC / name).read_bytes()


def test_demo_page_needs_nothing_from_the_internet():
    for name in demo.FILES:
        text = (demo.STATIC / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_demo_answers_head_and_refuses_other_methods():
    c = client(True)
    head = c.head("/demo/demo.js")
    assert head.status_code == 200 and head.data == b""
    assert int(head.headers["Content-Length"]) == len((demo.STATIC / "demo.js").read_bytes())
    post = c.post("/demo")
    assert post.status_code == 404 and post.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", OUTSIDE)
def test_demo_serves_no_file_outside_its_folder(path):
    r = client(True).get(path)
    assert r.status_code == 404, r.data[:200]
    assert r.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("name", ["../shared/db.py", "../__init__.py", "/etc/passwd", "static/index.html",
                                  "__init__.py", ".", "..", "index.html/", "INDEX.HTML"])
def test_the_core_looks_names_up_never_joins_them(name):
    ctx = Context(Config.from_env({"DEV_LOGIN": "1"}))
    with pytest.raises(Exception) as caught:
        demo.serve(ctx, Request(method="GET", path="/demo/x", path_params={"name": name}))
    assert getattr(caught.value, "code", None) == "not_found"


# ---------------------------------------------------------------- in a real browser

def _chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.fail("the demo page's browser test needs chromium: apt-get install chromium "
                    "(Debian's package; scripts/test.sh installs it when run as root)", pytrace=False)
    return path


def _node() -> str:
    node = shutil.which("node")
    if not node or not (PROJECT_ROOT / "node_modules" / "playwright-core" / "package.json").exists():
        pytest.fail("the demo page's browser test needs Node.js and playwright-core from package-lock.json: "
                    "run `bash scripts/setup.sh` (npm ci)", pytrace=False)
    return node


def _listener_connected(base: str) -> bool:
    backends = requests.get(base + "/healthz", timeout=5).json()["backends"]
    return bool(backends) and all(b["listener_connected"] for b in backends)


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client-side normalisation of dots or escapes)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def slow_comfy():
    with FakeComfy(step_delay=STEP_DELAY) as fake:
        yield fake


def test_demo_page_in_a_real_browser(make_config, db_conn, slow_comfy, tmp_path):  # db_conn: empty tables
    chromium, node = _chromium(), _node()
    artifacts = os.environ.get("ARTIFACTS_DIR")
    out = Path(artifacts) / "demo" if artifacts else tmp_path / "screenshots"
    cfg = make_config(COMFYUI_URLS=slow_comfy.base_url, DEV_LOGIN="1")
    listener = start_listener(cfg, tmp_path)
    api, base = start_api(cfg, tmp_path)
    try:
        wait_for(lambda: _listener_connected(base), 30, f"listener never connected: {listener.log()}")
        for path in OUTSIDE:  # over real HTTP too: gunicorn hands these paths over as sent
            status, body = _raw_get(base, path)
            assert status == 404 and json.loads(body)["error"]["code"] == "not_found", (path, status, body[:200])

        started = time.monotonic()
        proc = subprocess.run([node, str(SCRIPT), "--base", base, "--out", str(out), "--chromium", chromium],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
        took = time.monotonic() - started
        lines = proc.stdout.strip().splitlines()
        try:
            report = json.loads(lines[-1])
        except (IndexError, ValueError):
            pytest.fail(f"the browser script reported nothing (exit {proc.returncode}):\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
        failed = {name: c for name, c in report["checks"].items() if not c["ok"]}
        assert not failed, (f"browser checks failed (screenshots in {out}):\n"
                            + json.dumps(failed, indent=1)[:6000] + f"\n{proc.stderr[-2000:]}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert CHECKS <= set(report["checks"]), sorted(CHECKS - set(report["checks"]))
        finished = out / "03-succeeded.png"
        assert finished.stat().st_size > 10_000
        print(f"browser script: {took:.1f} s; screenshots in {out}")
        if os.environ.get("UPDATE_DEMO_SCREENSHOT") == "1":
            shutil.copyfile(finished, PROJECT_ROOT / "docs" / "demo.png")
    finally:
        api.stop()
        listener.stop()
    assert "Traceback" not in listener.log(), listener.log()
