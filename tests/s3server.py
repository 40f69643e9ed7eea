"""A real S3 API on loopback for the tests: s3rver 3.7.1 from ``node_modules``.

``start_s3rver(directory, bucket)`` runs ``node node_modules/s3rver/bin/s3rver.js``
on 127.0.0.1 with an OS-chosen free port and one pre-created bucket, and returns
once the bucket answers over HTTP. s3rver accepts the fixed credentials
``S3RVER``/``S3RVER``.

Pytest fixtures (enable with ``pytest_plugins = ["tests.s3server"]`` in the root
conftest, or import them into a test module):

* ``s3rver`` (session): the running server; sets ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` for boto3 while the session lasts.
* ``s3_store`` (function): an ``S3Store`` on a fresh key prefix of that bucket.

What s3rver 3.7.1 does *not* check (see its lib/middleware/authentication.js and
lib/controllers/object.js): SigV4 signatures (only their form and expiry) and
every condition of a POST policy (the ``policy`` field is ignored).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

PROJECT_ROOT = Path(__file__).resolve().parent.parent
S3RVER_DIR = PROJECT_ROOT / "node_modules" / "s3rver"
S3RVER_BIN = S3RVER_DIR / "bin" / "s3rver.js"
S3RVER_VERSION = "3.7.1"
ACCESS_KEY = SECRET_KEY = "S3RVER"  # hard-coded in s3rver (lib/models/account.js)
REGION = "us-east-1"

_LISTENING = re.compile(r"S3rver listening on [^\s:]+:(\d+)")


class S3rverUnavailable(RuntimeError):
    """node or s3rver is missing, or s3rver did not come up."""


@dataclass
class S3rverHandle:
    """A running s3rver; ``stop()`` ends it (idempotent)."""

    endpoint_url: str
    bucket: str
    process: subprocess.Popen
    log_path: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    _log_file: object = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "S3rverHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _require_s3rver() -> str:
    """Path of ``node``; raise ``S3rverUnavailable`` saying how to fix a missing install."""
    node = shutil.which("node")
    if node is None:
        raise S3rverUnavailable(
            "node is not installed (needed to run s3rver for the S3 tests); install Node.js 18+ "
            f"and run `npm ci` in {PROJECT_ROOT}")
    if not S3RVER_BIN.is_file():
        raise S3rverUnavailable(f"s3rver is not installed ({S3RVER_BIN} is missing); run `npm ci` in {PROJECT_ROOT}")
    version = json.loads((S3RVER_DIR / "package.json").read_text())["version"]
    if version != S3RVER_VERSION:
        raise S3rverUnavailable(
            f"node_modules has s3rver {version}, the tests need {S3RVER_VERSION}; run `npm ci` in {PROJECT_ROOT}")
    return node


def start_s3rver(directory, bucket: str, *, timeout: float = 30.0) -> S3rverHandle:
    """Start s3rver with its data under ``directory`` and ``bucket`` created; wait until it answers."""
    node = _require_s3rver()
    directory = Path(directory)
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_path = directory / "s3rver.log"
    log_file = open(log_path, "wb")  # a file, not a pipe: a full pipe would block the server
    cmd = [node, str(S3RVER_BIN), "--directory", str(data), "--address", "127.0.0.1", "--port", "0",
           "--silent", "--configure-bucket", bucket]
    process = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log_file,
                               stderr=subprocess.STDOUT)
    handle = S3rverHandle(endpoint_url="", bucket=bucket, process=process, log_path=log_path,
                          _log_file=log_file)
    try:
        port = _wait_for_port(handle, timeout)
        handle.endpoint_url = f"http://127.0.0.1:{port}"
        _wait_for_bucket(handle, timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


def _wait_for_port(handle: S3rverHandle, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(handle.log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if handle.process.poll() is not None:
            raise S3rverUnavailable(f"s3rver exited with status {handle.process.returncode}:\n{handle.log_tail()}")
        time.sleep(0.05)
    raise S3rverUnavailable(f"s3rver did not start listening within {timeout:.0f} s:\n{handle.log_tail()}")


def _wait_for_bucket(handle: S3rverHandle, timeout: float) -> None:
    """Wait until an (anonymous) listing of the bucket succeeds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{handle.endpoint_url}/{handle.bucket}", params={"max-keys": "1"}, timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = str(e)
        if handle.process.poll() is not None:
            raise S3rverUnavailable(f"s3rver exited with status {handle.process.returncode}:\n{handle.log_tail()}")
        time.sleep(0.05)
    raise S3rverUnavailable(f"s3rver bucket {handle.bucket!r} did not answer within {timeout:.0f} s ({last})")


@pytest.fixture(scope="session")
def s3rver(tmp_path_factory):
    """A running s3rver for the whole session, with boto3's credentials set in the environment."""
    try:
        handle, problem = start_s3rver(tmp_path_factory.mktemp("s3rver"), "gateway-test"), None
    except S3rverUnavailable as e:
        handle, problem = None, str(e)
    if problem:
        pytest.fail(problem, pytrace=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", handle.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", handle.secret_key)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        try:
            yield handle
        finally:
            handle.stop()


@pytest.fixture
def s3_store(s3rver):
    """An ``S3Store`` on the session's s3rver, under a prefix no other test uses."""
    from shared.storage import S3Store, make_s3_client

    client = make_s3_client(s3rver.endpoint_url, s3rver.region)
    return S3Store(client, s3rver.bucket, prefix=f"test-{uuid.uuid4().hex[:12]}")
