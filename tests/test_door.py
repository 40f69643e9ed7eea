"""`gateway serve` against what phones and attackers send: real sockets, a real gunicorn, loopback only.

Slow clients (headers or body a byte at a time) must not stop anyone else; gunicorn's own
refusals, 405s and OPTIONS come in the contract's shape; chunked bodies over the limit are 413
and store nothing; no Server banner; the access log never holds a signature; CORS for H5 pages.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests

from shared.db import connect
from shared.tokens import issue_token
from shared.users import get_or_create_user
from tests.conftest import SECRET
from tests.stack import start_api

H5 = "https://h5.example.com"


@pytest.fixture
def api(make_config, db_conn, tmp_path):
    """`gateway serve` (default worker) with CORS for one origin, 1 MB uploads and its access log on."""
    cfg = make_config(CORS_ORIGINS=H5, MAX_UPLOAD_BYTES=1024 * 1024, RATE_LIMIT_PER_MINUTE=0)
    proc, base = start_api(cfg, tmp_path, "--access-log")
    yield proc, base, cfg
    proc.stop()


def _token(cfg) -> tuple[str, dict]:
    conn = connect(cfg.database_url)
    try:
        user = get_or_create_user(conn, provider="dev", subject="door")
    finally:
        conn.close()
    return user, {"Authorization": f"Bearer {issue_token(SECRET, user, 3600)[0]}"}


def _send(base: str, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes; return the answer's status, headers (lower-case) and body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # answered and closed before reading it all: the answer is still there
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def _chunked(head: str, body: bytes, step: int = 64 * 1024) -> bytes:
    return (head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + b"".join(
        b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step]) for i in range(0, len(body), step)) + b"0\r\n\r\n"


def test_slow_clients_do_not_stop_anyone_else(api):
    """200 connections dripping headers or a body hold no worker: a normal poll is answered at once."""
    _, base, cfg = api
    _, auth = _token(cfg)
    created = requests.post(f"{base}/v1/uploads", json={"content_type": "image/png"}, headers=auth, timeout=10)
    assert created.status_code == 201
    host, port = base.removeprefix("http://").split(":")
    slow = []
    for n in range(200):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n" if n % 2 else
                  b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n{")
        slow.append(s)
    stop = threading.Event()

    def drip():
        while not stop.wait(0.3):
            for n, s in enumerate(slow):
                try:
                    s.send(b"X" if n % 2 else b" ")
                except OSError:
                    pass
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(0.5)
        latencies = []
        for _ in range(30):
            t = time.monotonic()
            r = requests.get(f"{base}/v1/jobs", headers=auth, timeout=10)
            latencies.append(time.monotonic() - t)
            assert r.status_code == 200
        # A thread-per-request server with 16 threads would leave these waiting 10 s and more.
        assert max(latencies) < 2.0, latencies
        assert all(s.fileno() != -1 for s in slow)
    finally:
        stop.set()
        dripper.join()
        for s in slow:
            s.close()


def test_gunicorn_refusals_come_in_the_contract_shape(api):
    _, base, _ = api
    status, headers, body = _send(base, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert (status, headers["content-type"], _error_code(body)) == (431, "application/json", "invalid_params")
    status, headers, body = _send(base, b"NOT-HTTP\r\n\r\n")
    assert (status, headers["content-type"], _error_code(body)) == (400, "application/json", "invalid_params")
    status, _, body = _send(base, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and _error_code(body) == "invalid_params"
    status, _, body = _send(base, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                  b"Content-Type: application/json\r\n\r\nzz\r\n")
    assert status == 400 and _error_code(body) == "invalid_params"


def test_no_server_banner_and_405_names_the_methods(api):
    _, base, _ = api
    r = requests.get(f"{base}/healthz", timeout=10)
    assert r.status_code == 200 and "Server" not in r.headers
    r = requests.delete(f"{base}/v1/jobs", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["Allow"] == "GET, OPTIONS, POST" and "Server" not in r.headers
    r = requests.put(f"{base}/v1/jobs/abc", timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, OPTIONS"
    r = requests.options(f"{base}/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_cors_preflight_and_answers_for_listed_origins_only(api):
    _, base, cfg = api
    _, auth = _token(cfg)
    r = requests.options(f"{base}/v1/jobs", timeout=10, headers={
        "Origin": H5, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 204 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == H5
    assert set(r.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST", "OPTIONS"}
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "If-None-Match" in r.headers["Access-Control-Allow-Headers"]
    r = requests.options(f"{base}/v1/jobs", timeout=10, headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and "Access-Control-Allow-Origin" not in r.headers
    r = requests.get(f"{base}/v1/jobs", headers={**auth, "Origin": H5}, timeout=10)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == H5
    assert "ETag" in r.headers["Access-Control-Expose-Headers"] and r.headers["Vary"] == "Origin"
    r = requests.get(f"{base}/v1/jobs", headers={**auth, "Origin": "https://evil.example.com"}, timeout=10)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_chunked_bodies_over_the_limit_are_413_and_store_nothing(api, tmp_path):
    _, base, cfg = api
    _, auth = _token(cfg)
    form = requests.post(f"{base}/v1/uploads", json={"content_type": "image/png"}, headers=auth, timeout=10).json()
    upload = form["upload"]
    key = upload["fields"]["key"]
    for size in (1024 * 1024 + 10_000, 2 * 1024 * 1024):  # over the policy; over the door's own limit
        boundary = "b0undary"
        parts = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                         for k, v in upload["fields"].items())
        parts += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                  f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n" + b"\0" * size
        parts += f"\r\n--{boundary}--\r\n".encode()
        status, _, body = _send(base, _chunked(f"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
                                               f"Content-Type: multipart/form-data; boundary={boundary}\r\n", parts))
        assert status == 413 and _error_code(body) == "payload_too_large"
        assert not list((tmp_path / "storage").rglob(key.rsplit("/", 1)[-1]))
    big = b'{"workflow":"txt2img","params":{"prompt":"' + b"a" * (2 * 1024 * 1024) + b'"}}'
    status, _, body = _send(base, _chunked("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                           f"Authorization: {auth['Authorization']}\r\n", big))
    assert status == 413 and _error_code(body) == "payload_too_large"


def test_the_access_log_never_holds_a_signature(api):
    proc, base, _ = api
    secret = "a1b2c3d4e5f6" * 5
    r = requests.get(f"{base}/v1/files/users/u/x.png?expires=99&signature={secret}", timeout=10)
    assert r.status_code == 403
    requests.get(f"{base}/v1/files/x.png?X-Amz-Signature={secret}&X-Amz-Credential=AKIA%2Fcred", timeout=10)
    time.sleep(0.5)
    log = proc.log()
    assert "signature=[redacted]" in log and "X-Amz-Credential=[redacted]" in log
    assert secret not in log and "AKIA" not in log
    assert re.search(r'"GET /v1/files/users/u/x.png\?expires=99&signature=\[redacted\] HTTP/1.1" 403', log)


def test_the_thread_worker_is_still_available(make_config, db_conn, tmp_path):
    cfg = make_config()
    proc, base = start_api(cfg, tmp_path, "--worker-class", "gthread", "--threads", "4")
    try:
        _, auth = _token(cfg)
        assert requests.get(f"{base}/v1/jobs", headers=auth, timeout=10).status_code == 200
        status, headers, body = _send(base, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
        assert status == 431 and _error_code(body) == "invalid_params" and "server" not in headers
        assert "ThreadWorker" in proc.log()
    finally:
        proc.stop()


def test_the_door_benchmark_runs(database_url):
    """bench/bench_door.py at its smallest size: it proves the benchmark runs, not how fast anything is."""
    import os
    import subprocess
    import sys

    from tests.stack import PROJECT_ROOT
    server = database_url.with_database("mysql")
    env = {**os.environ, "TEST_DATABASE_URL": f"mysql://{server.user}:{server.password}@{server.host}:{server.port}/mysql"}
    out = subprocess.run([sys.executable, "bench/bench_door.py", "--small", "--seconds", "1", "--no-baseline"],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    polls = re.findall(r"^\| this tree: GET /v1/jobs/\{id\}, all active jobs \| ([\d,]+) \|", out.stdout, re.M)
    assert polls and int(polls[0].replace(",", "")) > 0, out.stdout
    slow = re.search(r"^\| this tree, gevent \(default\) \| (\d+) \| [\d.]+ \| [\d.]+ \| \d+ \| (\d+) \|$", out.stdout, re.M)
    assert slow and int(slow.group(1)) > 0 and slow.group(2) == "0", out.stdout
    bodies = re.findall(r"^\| (POST|a \d).*? \| (\d{3}), \d+ \|$", out.stdout, re.M)
    assert len(bodies) >= 6 and all(400 <= int(status) < 500 for _, status in bodies), out.stdout
