"""shared.storage against a real S3 API (s3rver 3.7.1 on loopback) and a local folder.

Behaviour both stores share runs once per store through the ``store`` fixture.
s3rver checks the form and the expiry of SigV4 presigned URLs but not their
signatures, and ignores POST policies; the tests therefore also recompute the
SigV4 signatures independently and read the policy the client would send.
The ``s3rver``/``s3_store`` fixtures come from tests/s3server.py
(``pytest_plugins`` in tests/conftest.py).
"""

import base64
import hashlib
import hmac
import io
import json
import os
import socket
import time
import tracemalloc
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
import requests

from shared.config import Config, ConfigError
from shared.storage import (ExpiredError, LocalStore, S3Store, SignatureError, StorageError, UploadSizeError,
                            make_s3_client, open_store)
from tests.s3server import start_s3rver

MiB = 1024 * 1024
SECRET = "local-store-test-secret-0123456789"
BASE_URL = "http://gateway.test"
NOW = 1_800_000_000  # a fixed signing time for deterministic links (2027-01-15T08:00:00Z)


# --------------------------------------------------------------------------- helpers

class PatternReader:
    """A file-like object that generates ``total`` bytes chunk by chunk, never holding them all.

    The bytes vary (so a misplaced chunk changes the digest) and their SHA-256 is
    kept as they are produced. With ``fail_after`` it raises ``SourceBroke``
    once that many bytes were read, like a dropped download.
    """

    def __init__(self, total: int, *, chunk: int = 64 * 1024, fail_after: int | None = None):
        self.total, self.chunk, self.fail_after = total, chunk, fail_after
        self.produced = 0
        self.sha256 = hashlib.sha256()
        self._pending = b""
        self._blocks = self._generate()

    def _generate(self):
        index = 0
        while self.produced < self.total:
            n = min(self.chunk, self.total - self.produced)
            seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
            block = (seed * (n // len(seed) + 1))[:n]
            self.produced += n
            self.sha256.update(block)
            index += 1
            yield block

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.produced >= self.fail_after:
            raise SourceBroke(f"source stream broke after {self.produced} bytes")
        if not self._pending:
            self._pending = next(self._blocks, b"")
        if size is None or size < 0:
            size = len(self._pending)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out


class SourceBroke(Exception):
    """Raised by PatternReader: the source of a put_stream failed."""


def fetch(store, url: str) -> tuple[int, str | None, bytes]:
    """GET a signed URL the way the app would: (status, content type, body).

    S3 links go to s3rver over HTTP; local links go through LocalStore.open_signed,
    which is what the gateway's /v1/files endpoint calls.
    """
    if isinstance(store, S3Store):
        r = requests.get(url, timeout=30)
        return r.status_code, r.headers.get("Content-Type"), r.content
    parts = urlsplit(url)
    prefix = urlsplit(BASE_URL).path + "/v1/files/"
    assert parts.path.startswith(prefix), url
    query = dict(parse_qsl(parts.query))
    try:
        f, content_type, size = store.open_signed(unquote(parts.path[len(prefix):]), query["expires"],
                                                  query["signature"])
    except (SignatureError, ExpiredError):
        return 403, None, b""
    except FileNotFoundError:
        return 404, None, b""
    with f:
        body = f.read()
    assert len(body) == size
    return 200, content_type, body


def object_files(store: LocalStore) -> list[str]:
    """Every file under a local store's root, relative, sorted (objects, sidecars, temporaries)."""
    found = []
    for folder, _, files in os.walk(store.root):
        found += [os.path.relpath(os.path.join(folder, f), store.root).replace(os.sep, "/") for f in files]
    return sorted(found)


def s3_keys(store: S3Store) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return sorted(o["Key"][len(store.prefix):] for o in listing.get("Contents", []))


def stored_keys(store) -> list[str]:
    return s3_keys(store) if isinstance(store, S3Store) else object_files(store)


def sigv4_signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def expected_query_signature(url: str, secret: str, region: str) -> str:
    """Recompute the SigV4 signature of a presigned GET URL from the AWS specification."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query))
    params = dict(query)
    canonical_request = "\n".join([
        "GET", parts.path, canonical_query, f"host:{parts.netloc}", "", params["X-Amz-SignedHeaders"],
        "UNSIGNED-PAYLOAD"])
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = sigv4_signing_key(secret, params["X-Amz-Date"][:8], region)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_store(tmp_path):
    return LocalStore(str(tmp_path / "storage"), BASE_URL, SECRET)


@pytest.fixture(params=["local", "s3"])
def store(request):
    """Each store in turn: the behaviour the gateway relies on must not depend on the backend."""
    return request.getfixturevalue("local_store" if request.param == "local" else "s3_store")


# --------------------------------------------------------------------------- both stores

def test_put_bytes_head_signed_url_and_delete_round_trip(store):
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
    store.put_bytes("users/7/jobs/j1/9_0.png", data, "image/png")

    assert store.head("users/7/jobs/j1/9_0.png") == {"bytes": len(data), "content_type": "image/png"}
    url, expires_at = store.signed_url("users/7/jobs/j1/9_0.png", 600)
    assert abs(expires_at.timestamp() - (time.time() + 600)) < 5
    assert expires_at.tzinfo is not None and expires_at.utcoffset().total_seconds() == 0
    assert fetch(store, url) == (200, "image/png", data)

    store.delete("users/7/jobs/j1/9_0.png")
    assert store.head("users/7/jobs/j1/9_0.png") is None
    assert fetch(store, url)[0] == 404
    store.delete("users/7/jobs/j1/9_0.png")  # deleting a missing object is fine


def test_head_of_a_missing_key_is_none(store):
    assert store.head("users/1/nothing-here.png") is None


def test_signed_url_expiry_follows_now_and_ttl(store):
    store.put_bytes("a/b.json", b"{}", "application/json")
    url, expires_at = store.signed_url("a/b.json", 120, now=NOW + 0.75)
    assert expires_at == datetime.fromtimestamp(NOW + 120, tz=timezone.utc)


def test_expired_signed_url_is_refused_and_a_fresh_one_is_not(store):
    store.put_bytes("users/1/old.png", b"png bytes", "image/png")
    stale, expires_at = store.signed_url("users/1/old.png", 60, now=time.time() - 120)
    assert expires_at < datetime.now(timezone.utc)
    assert fetch(store, stale)[0] == 403
    fresh, _ = store.signed_url("users/1/old.png", 60)
    assert fetch(store, fresh) == (200, "image/png", b"png bytes")


@pytest.mark.parametrize("size", [0, 1, 300 * 1024])
def test_put_stream_small_objects(store, size):
    reader = PatternReader(size, chunk=7777)
    assert store.put_stream("users/2/out.webp", reader, "image/webp") == size
    assert store.head("users/2/out.webp") == {"bytes": size, "content_type": "image/webp"}
    status, content_type, body = fetch(store, store.signed_url("users/2/out.webp", 60)[0])
    assert (status, content_type, hashlib.sha256(body).hexdigest()) == (200, "image/webp", reader.sha256.hexdigest())


def test_put_stream_memory_is_bounded_by_chunks_not_object_size(store):
    size = 32 * MiB  # four 8 MiB parts on S3: the multipart path
    store.put_stream("warmup.bin", PatternReader(64 * 1024), "application/octet-stream")  # load botocore's models

    reader = PatternReader(size)
    tracemalloc.start()
    try:
        written = store.put_stream("users/3/big.bin", reader, "application/octet-stream")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == size == reader.produced
    assert peak < 4 * MiB, f"put_stream of {size >> 20} MiB peaked at {peak / MiB:.1f} MiB of Python memory"
    assert store.head("users/3/big.bin") == {"bytes": size, "content_type": "application/octet-stream"}
    status, _, body = fetch(store, store.signed_url("users/3/big.bin", 60)[0])
    assert status == 200 and hashlib.sha256(body).hexdigest() == reader.sha256.hexdigest()


@pytest.mark.parametrize("fail_after", [200 * 1024, 12 * MiB], ids=["single-put", "multipart"])
def test_put_stream_failing_midway_leaves_the_previous_object(store, fail_after):
    store.put_bytes("users/4/img.png", b"previous version", "image/png")
    before = stored_keys(store)
    aborted = []
    if isinstance(store, S3Store):
        store.client.meta.events.register("before-parameter-build.s3.AbortMultipartUpload",
                                          lambda **kw: aborted.append(kw["params"]["Key"]))

    with pytest.raises(SourceBroke):  # the source's own error, not a StorageError
        store.put_stream("users/4/img.png", PatternReader(20 * MiB, fail_after=fail_after), "image/png")

    assert store.head("users/4/img.png") == {"bytes": 16, "content_type": "image/png"}
    assert fetch(store, store.signed_url("users/4/img.png", 60)[0])[2] == b"previous version"
    assert stored_keys(store) == before  # no temporary or partial object left behind
    if isinstance(store, S3Store):
        assert aborted == ([store.full_key("users/4/img.png")] if fail_after > store.part_size else [])


def test_put_stream_failing_midway_leaves_no_new_object(store):
    with pytest.raises(SourceBroke):
        store.put_stream("users/4/new.png", PatternReader(MiB, fail_after=300 * 1024), "image/png")
    assert store.head("users/4/new.png") is None
    assert stored_keys(store) == []


def test_put_stream_needs_a_binary_stream(store):
    with pytest.raises(TypeError):
        store.put_stream("a/b.json", io.StringIO("text"), "application/json")
    assert store.head("a/b.json") is None


BAD_KEYS = [
    "", "/users/1/a.png", "users\\1\\a.png", "users/../etc/passwd", "..", "users/1/..", "a..b.png",
    "users//a.png", "users/1/", "users/./a.png", ".hidden.png", "users/.a.png.content-type",
    "users/1/a\n.png", "users/1/\x00.png", "k" * 1025, "users/\udcff.png",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused_by_every_operation(store, key):
    operations = [
        lambda: store.put_bytes(key, b"x", "image/png"),
        lambda: store.put_stream(key, io.BytesIO(b"x"), "image/png"),
        lambda: store.head(key),
        lambda: store.delete(key),
        lambda: store.signed_url(key, 60),
        lambda: store.presigned_post(key, "image/png", 1, 100, 60),
    ]
    for operation in operations:
        with pytest.raises(ValueError):
            operation()
    assert stored_keys(store) == []


@pytest.mark.parametrize("key", ["users/1/jobs/2/9_0.png", "a", "a b/ü 图.png", "x-1_2.3/y~z.json"])
def test_ordinary_keys_are_accepted(store, key):
    store.put_bytes(key, b"data", "image/png")
    assert store.head(key) == {"bytes": 4, "content_type": "image/png"}
    assert fetch(store, store.signed_url(key, 60)[0]) == (200, "image/png", b"data")


@pytest.mark.parametrize("call", [
    lambda s: s.signed_url("a.png", 0),
    lambda s: s.signed_url("a.png", 7 * 86400 + 1),
    lambda s: s.put_bytes("a.png", b"x", "image/png\r\nX-Evil: 1"),
    lambda s: s.put_bytes("a.png", b"x", "image/png;\r\nX-Evil=1"),
    lambda s: s.put_bytes("a.png", b"x", "png"),
    lambda s: s.presigned_post("a.png", "image/png", 10, 9, 60),
    lambda s: s.presigned_post("a.png", "image/png", -1, 9, 60),
    lambda s: s.presigned_post("a.png", "image/png\n", 1, 9, 60),
], ids=["ttl-0", "ttl-over-a-week", "content-type-injection", "content-type-param-injection",
        "content-type-no-slash", "min-over-max", "negative-min", "content-type-newline"])
def test_invalid_arguments_are_refused(store, call):
    with pytest.raises(ValueError):
        call(store)


def test_presigned_post_shape(store):
    post = store.presigned_post("users/5/uploads/u1.png", "image/png", 1, 10 * MiB, 300, now=NOW)
    assert post["file_field"] == "file"
    assert post["expires_at"] == datetime.fromtimestamp(NOW + 300, tz=timezone.utc)
    assert post["url"].startswith("http")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in post["fields"].items())  # wx formData


def test_check_passes_on_a_working_store(store):
    store.check()


# --------------------------------------------------------------------------- S3 only

def test_s3_signed_url_is_sigv4_path_style_and_correctly_signed(s3_store, s3rver):
    url, expires_at = s3_store.signed_url("users/1/jobs/2/9_0.png", 900, now=NOW)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))

    assert f"{parts.scheme}://{parts.netloc}" == s3rver.endpoint_url
    assert parts.path == f"/{s3rver.bucket}/{s3_store.prefix}users/1/jobs/2/9_0.png"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "900"
    assert query["X-Amz-Date"] == "20270115T080000Z"
    assert query["X-Amz-Credential"] == "S3RVER/20270115/us-east-1/s3/aws4_request"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert "Signature" not in query and "AWSAccessKeyId" not in query  # not SigV2
    assert query["X-Amz-Signature"] == expected_query_signature(url, s3rver.secret_key, "us-east-1")
    assert expires_at == datetime.fromtimestamp(NOW + 900, tz=timezone.utc)


def test_s3rver_refuses_an_expired_presigned_url_with_its_reason(s3_store):
    s3_store.put_bytes("a.png", b"x", "image/png")
    url, _ = s3_store.signed_url("a.png", 60, now=time.time() - 61)
    r = requests.get(url, timeout=10)
    assert r.status_code == 403
    assert "<Code>AccessDenied</Code>" in r.text and "Request has expired" in r.text


def test_s3_presigned_post_policy_pins_key_type_and_size(s3_store, s3rver):
    post = s3_store.presigned_post("users/5/uploads/u1.png", "image/png", 1, 2 * MiB, 300, now=NOW)
    fields = post["fields"]
    policy = json.loads(base64.b64decode(fields["policy"]))

    assert post["url"] == f"{s3rver.endpoint_url}/{s3rver.bucket}"
    assert fields["key"] == s3_store.prefix + "users/5/uploads/u1.png"
    assert fields["Content-Type"] == "image/png"
    assert policy["expiration"] == "2027-01-15T08:05:00Z"
    conditions = policy["conditions"]
    assert {"bucket": s3rver.bucket} in conditions
    assert {"key": fields["key"]} in conditions  # exact key, not starts-with
    assert {"Content-Type": "image/png"} in conditions
    assert ["content-length-range", 1, 2 * MiB] in conditions
    assert not any(isinstance(c, list) and c[0] == "starts-with" for c in conditions)
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert fields["x-amz-date"] == "20270115T080000Z"
    key = sigv4_signing_key(s3rver.secret_key, "20270115", "us-east-1")
    assert fields["x-amz-signature"] == hmac.new(key, fields["policy"].encode(), hashlib.sha256).hexdigest()


def wx_upload(post: dict, data: bytes, *, part_type: str = "image/png", fields: dict | None = None):
    """POST like wx.uploadFile: formData fields first, then the file under ``name: 'file'``."""
    return requests.post(post["url"], data=post["fields"] if fields is None else fields,
                         files={post["file_field"]: ("tmp_4f1c.png", data, part_type)}, timeout=30)


def test_s3rver_accepts_the_presigned_post_like_wx_upload_file(s3_store):
    post = s3_store.presigned_post("users/5/uploads/u1.png", "image/png", 1, MiB, 300)
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(40_000)
    r = wx_upload(post, data)
    assert r.status_code == 204, r.text
    assert s3_store.head("users/5/uploads/u1.png") == {"bytes": len(data), "content_type": "image/png"}
    assert fetch(s3_store, s3_store.signed_url("users/5/uploads/u1.png", 60)[0]) == (200, "image/png", data)


def test_s3rver_refuses_posts_that_are_not_one_file_in_a_multipart_form(s3_store):
    post = s3_store.presigned_post("users/5/uploads/u2.png", "image/png", 1, MiB, 300)
    not_multipart = requests.post(post["url"], data=post["fields"], timeout=30)  # urlencoded, no file
    assert not_multipart.status_code == 412 and "PreconditionFailed" in not_multipart.text
    no_file = requests.post(post["url"], files={k: (None, v) for k, v in post["fields"].items()}, timeout=30)
    assert no_file.status_code == 400 and "InvalidArgument" in no_file.text
    assert s3_store.head("users/5/uploads/u2.png") is None


def test_s3rver_does_not_enforce_post_policy_conditions(s3_store):
    """Documents the emulator's limit: s3rver 3.7.1 ignores the ``policy`` field.

    Real S3 refuses these two uploads (Content-Type differs from the policy,
    body above content-length-range); here they succeed, so the policy tests
    above are what guards those limits.
    """
    post = s3_store.presigned_post("users/5/uploads/u3.png", "image/png", 1, 1000, 300)
    wrong_type = dict(post["fields"], **{"Content-Type": "text/html"})
    assert wx_upload(post, b"<script>", fields=wrong_type).status_code == 204
    assert wx_upload(post, b"x" * 5000).status_code == 204


def test_s3_operations_raise_storage_error_when_nothing_listens(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEADPORTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dead-port-secret-value")
    store = S3Store(make_s3_client(f"http://127.0.0.1:{free_port()}", "us-east-1", max_attempts=2),
                    "bucket", "prefix")
    operations = {
        "check": store.check,
        "put_bytes": lambda: store.put_bytes("a.png", b"x", "image/png"),
        "put_stream": lambda: store.put_stream("a.png", PatternReader(100), "image/png"),
        "head": lambda: store.head("a.png"),
        "delete": lambda: store.delete("a.png"),
    }
    for name, operation in operations.items():
        with pytest.raises(StorageError) as info:
            operation()
        message = str(info.value)
        assert "EndpointConnectionError" in message, (name, message)
        assert "dead-port-secret-value" not in message and "AKIDEADPORTTEST" not in message
    # signing needs no network: links can still be made
    assert "X-Amz-Signature=" in store.signed_url("a.png", 60)[0]


def test_s3_storage_error_after_the_server_stops(tmp_path, s3rver):
    handle = start_s3rver(tmp_path, "short-lived")
    try:
        store = S3Store(make_s3_client(handle.endpoint_url, "us-east-1", max_attempts=1), "short-lived")
        store.put_bytes("a.png", b"x", "image/png")
        store.check()
    finally:
        handle.stop()
    assert handle.process.returncode is not None
    with pytest.raises(StorageError, match="bucket check"):
        store.check()
    with pytest.raises(StorageError):
        store.head("a.png")


def test_s3_missing_bucket_fails_the_check(s3rver):
    store = S3Store(make_s3_client(s3rver.endpoint_url, "us-east-1"), "no-such-bucket")
    with pytest.raises(StorageError, match=r"404"):
        store.check()
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put_bytes("a.png", b"x", "image/png")


def test_make_s3_client_settings():
    client = make_s3_client("http://127.0.0.1:9", "eu-west-3", connect_timeout=2, read_timeout=7)
    config = client.meta.config
    assert config.signature_version == "s3v4"
    assert config.s3 == {"addressing_style": "path"}
    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert config.request_checksum_calculation == "when_required"
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    aws = make_s3_client(None, "us-east-1")
    assert aws.meta.config.s3 is None and aws.meta.endpoint_url.endswith("amazonaws.com")


@pytest.mark.parametrize("style, host", [("virtual", "pics.cos.example.test"), ("path", "cos.example.test")])
def test_addressing_style_for_cos_and_oss(style, host):
    """Tencent COS and Aliyun OSS want bucket.endpoint; the signed URL must name that host."""
    client = make_s3_client("https://cos.example.test", "ap-guangzhou", addressing_style=style)
    url, _ = S3Store(client, "pics").signed_url("users/u/jobs/j/9_0.png", 60)
    parts = urlsplit(url)
    assert parts.hostname == host
    assert parts.path == ("/users/u/jobs/j/9_0.png" if style == "virtual" else "/pics/users/u/jobs/j/9_0.png")
    assert dict(parse_qsl(parts.query))["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"


def test_a_client_that_presigns_sigv2_is_refused(monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    plain = boto3.client("s3", region_name="us-east-1")  # boto3's default presigns SigV2 here
    with pytest.raises(StorageError, match="SigV4"):
        S3Store(plain, "bucket").signed_url("a.png", 60)


def test_s3_prefix_is_applied_and_validated(s3rver):
    client = make_s3_client(s3rver.endpoint_url, "us-east-1")
    assert S3Store(client, "b", "/gw/v1/").full_key("a.png") == "gw/v1/a.png"
    assert S3Store(client, "b").full_key("a.png") == "a.png"
    with pytest.raises(ValueError):
        S3Store(client, "b", "gw/../x")
    with pytest.raises(ValueError):
        S3Store(client, "b", part_size=MiB)


# --------------------------------------------------------------------------- local only

def test_local_signed_url_format(local_store):
    url, expires_at = local_store.signed_url("users/1/a b.png", 60, now=NOW)
    expires = NOW + 60
    signature = hmac.new(SECRET.encode(), f"GET\nusers/1/a b.png\n{expires}".encode(), hashlib.sha256).hexdigest()
    assert url == f"{BASE_URL}/v1/files/users/1/a%20b.png?expires={expires}&signature={signature}"
    assert expires_at == datetime.fromtimestamp(expires, tz=timezone.utc)


def _tamper_hex(sig: str) -> str:
    return sig[:-1] + ("0" if sig[-1] != "0" else "1")


@pytest.mark.parametrize("change, error", [
    (lambda key, exp, sig: (key, exp, sig), None),
    (lambda key, exp, sig: ("users/1/other.png", exp, sig), SignatureError),
    (lambda key, exp, sig: (key, exp, _tamper_hex(sig)), SignatureError),
    (lambda key, exp, sig: (key, exp, sig.upper()), SignatureError),
    (lambda key, exp, sig: (key, exp, sig[:-2]), SignatureError),
    (lambda key, exp, sig: (key, exp, ""), SignatureError),
    (lambda key, exp, sig: (key, exp, "é" * 64), SignatureError),
    (lambda key, exp, sig: (key, str(int(exp) + 3600), sig), SignatureError),
    (lambda key, exp, sig: (key, "0" + exp, sig), SignatureError),
    (lambda key, exp, sig: (key, "", sig), SignatureError),
    (lambda key, exp, sig: (key, "soon", sig), SignatureError),
    (lambda key, exp, sig: (key, "-1", sig), SignatureError),
    (lambda key, exp, sig: (key, exp + ".5", sig), SignatureError),
    (lambda key, exp, sig: (key, " " + exp, sig), SignatureError),
    (lambda key, exp, sig: (key, "١٨٠٠٠٠٠٠٦٠", sig), SignatureError),  # Arabic-Indic digits
    (lambda key, exp, sig: (key, "9" * 40, sig), SignatureError),
], ids=["good", "other-key", "tampered-signature", "uppercase-signature", "short-signature", "empty-signature",
        "non-ascii-signature", "extended-expires", "zero-padded-expires", "empty-expires", "word-expires",
        "negative-expires", "fractional-expires", "spaced-expires", "unicode-digit-expires", "huge-expires"])
def test_local_open_signed_verification(local_store, change, error):
    local_store.put_bytes("users/1/a.png", b"image-a", "image/png")
    local_store.put_bytes("users/1/other.png", b"image-other", "image/png")
    url, _ = local_store.signed_url("users/1/a.png", 60, now=NOW)
    query = dict(parse_qsl(urlsplit(url).query))
    key, expires, signature = change("users/1/a.png", query["expires"], query["signature"])

    if error is None:
        f, content_type, size = local_store.open_signed(key, expires, signature, now=NOW + 60)
        with f:
            assert (f.read(), content_type, size) == (b"image-a", "image/png", 7)
    else:
        with pytest.raises(error):
            local_store.open_signed(key, expires, signature, now=NOW + 1)


def test_local_open_signed_expiry_and_missing_file(local_store):
    local_store.put_bytes("a.png", b"x", "image/png")
    url, _ = local_store.signed_url("a.png", 60, now=NOW)
    query = dict(parse_qsl(urlsplit(url).query))
    local_store.open_signed("a.png", query["expires"], query["signature"], now=NOW + 60)[0].close()
    with pytest.raises(ExpiredError):
        local_store.open_signed("a.png", query["expires"], query["signature"], now=NOW + 61)
    local_store.delete("a.png")
    with pytest.raises(FileNotFoundError):
        local_store.open_signed("a.png", query["expires"], query["signature"], now=NOW)


def test_local_links_of_another_secret_are_refused(local_store, tmp_path):
    local_store.put_bytes("a.png", b"x", "image/png")
    other = LocalStore(local_store.root, BASE_URL, "another-secret-0123456789")
    query = dict(parse_qsl(urlsplit(other.signed_url("a.png", 60, now=NOW)[0]).query))
    with pytest.raises(SignatureError):
        local_store.open_signed("a.png", query["expires"], query["signature"], now=NOW)


def test_local_links_and_forms_signed_before_a_key_rotation_stay_good(local_store):
    local_store.put_bytes("a.png", b"x", "image/png")
    old_query = dict(parse_qsl(urlsplit(local_store.signed_url("a.png", 60, now=NOW)[0]).query))
    old_form = local_store.presigned_post("users/u/uploads/1.png", "image/png", 1, 1000, 60)["fields"]
    rotated = LocalStore(local_store.root, BASE_URL, "the-new-secret-0123456789", previous_secret=SECRET)
    f, _, _ = rotated.open_signed("a.png", old_query["expires"], old_query["signature"], now=NOW)
    f.close()
    rotated.verify_post(old_form)
    done = LocalStore(local_store.root, BASE_URL, "the-new-secret-0123456789")  # SECRET_KEY_PREVIOUS removed
    with pytest.raises(SignatureError):
        done.open_signed("a.png", old_query["expires"], old_query["signature"], now=NOW)
    with pytest.raises(SignatureError):
        done.verify_post(old_form)


def test_local_content_type_from_sidecar_or_extension(local_store):
    local_store.put_bytes("u/data.bin", b"x", "image/png")
    assert local_store.head("u/data.bin")["content_type"] == "image/png"
    local_store.put_bytes("u/data.bin", b"x", "application/octet-stream")  # back to the extension's type
    assert local_store.head("u/data.bin")["content_type"] == "application/octet-stream"
    assert object_files(local_store) == ["u/data.bin"]  # the sidecar went with it

    local_store.put_bytes("u/photo.JPG", b"x", "image/jpeg")
    assert object_files(local_store) == ["u/data.bin", "u/photo.JPG"]  # no sidecar needed
    for name, expected in [("a.png", "image/png"), ("a.jpeg", "image/jpeg"), ("a.webp", "image/webp"),
                           ("a.json", "application/json"), ("a.gif", "application/octet-stream")]:
        with open(os.path.join(local_store.root, "u", name), "wb") as f:  # placed by hand: no sidecar
            f.write(b"x")
        assert local_store.head(f"u/{name}") == {"bytes": 1, "content_type": expected}

    local_store.put_bytes("u/typed.png", b"x", "image/webp")
    f, content_type, _ = local_store.open_signed("u/typed.png", *_signed_query(local_store, "u/typed.png"), now=NOW)
    f.close()
    assert content_type == "image/webp"
    local_store.delete("u/typed.png")
    assert "u/.typed.png.content-type" not in object_files(local_store)


def _signed_query(store: LocalStore, key: str) -> tuple[str, str]:
    query = dict(parse_qsl(urlsplit(store.signed_url(key, 60, now=NOW)[0]).query))
    return query["expires"], query["signature"]


def test_local_folders_are_not_objects(local_store):
    local_store.put_bytes("users/1/a.png", b"x", "image/png")
    assert local_store.head("users") is None and local_store.head("users/1") is None
    assert local_store.head("users/1/a.png/b.png") is None
    with pytest.raises(FileNotFoundError):
        local_store.open_signed("users/1", *_signed_query(local_store, "users/1"), now=NOW)
    local_store.delete("users/1")
    local_store.delete("users/1/a.png/b.png")
    assert local_store.head("users/1/a.png") == {"bytes": 1, "content_type": "image/png"}


def test_local_write_failure_is_a_storage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    store = LocalStore(str(blocker / "storage"), BASE_URL, SECRET)
    with pytest.raises(StorageError, match="write"):
        store.put_bytes("a.png", b"x", "image/png")
    with pytest.raises(StorageError, match="check"):
        store.check()


def test_local_check_creates_the_root(tmp_path):
    store = LocalStore(str(tmp_path / "new" / "root"), BASE_URL, SECRET)
    store.check()
    assert os.listdir(store.root) == []


def test_local_store_needs_a_secret(tmp_path):
    with pytest.raises(ValueError):
        LocalStore(str(tmp_path), BASE_URL, "")


def multipart_body(fields: dict, file_field: str, data: bytes) -> tuple[bytes, str]:
    """Encode a form the way wx.uploadFile sends it (fields, then the file)."""
    prepared = requests.Request("POST", "http://x/", data=fields,
                                files={file_field: ("tmp.png", data, "image/png")}).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def parse_form(body: bytes, content_type: str):
    """Parse a multipart body with werkzeug, as the gateway's Flask endpoint will."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    env = EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_type=content_type,
                         content_length=len(body)).get_environ()
    request = Request(env)
    return request.form.to_dict(), request.files


def test_local_presigned_post_round_trip_through_a_real_form(local_store):
    post = local_store.presigned_post("users/5/uploads/u1.png", "image/png", 1, 1000, 300, now=NOW)
    assert post["url"] == f"{BASE_URL}/v1/files"
    assert set(post["fields"]) == {"key", "content_type", "min_bytes", "max_bytes", "expires", "signature"}
    data = b"\x89PNG" + os.urandom(500)

    form, files = parse_form(*multipart_body(post["fields"], post["file_field"], data))
    limits = local_store.verify_post(form, now=NOW + 300)
    assert limits == {"key": "users/5/uploads/u1.png", "content_type": "image/png",
                      "min_bytes": 1, "max_bytes": 1000}
    written = local_store.save_upload(limits["key"], files["file"].stream, limits["max_bytes"],
                                      min_bytes=limits["min_bytes"], content_type=limits["content_type"])
    assert written == len(data)
    assert local_store.head("users/5/uploads/u1.png") == {"bytes": len(data), "content_type": "image/png"}


@pytest.mark.parametrize("field, value", [
    ("key", "users/6/uploads/u1.png"), ("content_type", "text/html"), ("min_bytes", "0"),
    ("max_bytes", "1000000"), ("expires", str(NOW + 10_000)),
])
def test_local_verify_post_refuses_altered_fields(local_store, field, value):
    fields = local_store.presigned_post("users/5/uploads/u1.png", "image/png", 1, 1000, 300, now=NOW)["fields"]
    with pytest.raises(SignatureError):
        local_store.verify_post(dict(fields, **{field: value}), now=NOW)


@pytest.mark.parametrize("fields, error", [
    ({"signature": "0" * 64}, SignatureError),
    ({"signature": None}, SignatureError),
    ({"min_bytes": "one"}, SignatureError),
    ({"max_bytes": "1e3"}, SignatureError),
    ({"expires": "tomorrow"}, SignatureError),
    ({"key": None}, SignatureError),
])
def test_local_verify_post_refuses_malformed_fields(local_store, fields, error):
    good = local_store.presigned_post("a/u.png", "image/png", 1, 1000, 300, now=NOW)["fields"]
    form = {k: v for k, v in dict(good, **fields).items() if v is not None}
    with pytest.raises(error):
        local_store.verify_post(form, now=NOW)


def test_local_verify_post_expiry(local_store):
    fields = local_store.presigned_post("a/u.png", "image/png", 1, 1000, 300, now=NOW)["fields"]
    assert local_store.verify_post(fields, now=NOW + 300)["key"] == "a/u.png"
    with pytest.raises(ExpiredError):
        local_store.verify_post(fields, now=NOW + 301)


@pytest.mark.parametrize("size, ok", [(999, False), (1000, True), (4096, True), (4097, False), (50 * MiB, False)])
def test_local_save_upload_enforces_the_size_range(local_store, size, ok):
    local_store.put_bytes("a/u.png", b"previous", "image/png")
    reader = PatternReader(size)
    if ok:
        assert local_store.save_upload("a/u.png", reader, 4096, min_bytes=1000) == size
        assert local_store.head("a/u.png") == {"bytes": size, "content_type": "image/png"}
    else:
        with pytest.raises(UploadSizeError) as info:
            local_store.save_upload("a/u.png", reader, 4096, min_bytes=1000)
        assert isinstance(info.value, ValueError)
        assert local_store.head("a/u.png") == {"bytes": 8, "content_type": "image/png"}
        assert object_files(local_store) == ["a/u.png"]  # no temporary file left
        assert reader.produced < 1 * MiB  # stopped reading as soon as the limit was passed


# --------------------------------------------------------------------------- open_store

def _config(**env) -> Config:
    return Config.from_env({"SECRET_KEY": SECRET, **env})


def test_open_store_s3(s3rver):
    store = open_store(_config(STORAGE_URL="s3://gateway-test/gw/prod", S3_ENDPOINT_URL=s3rver.endpoint_url,
                               S3_REGION="ap-shanghai"))
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("gateway-test", "gw/prod/")
    assert store.client.meta.endpoint_url == s3rver.endpoint_url
    assert store.client.meta.region_name == "ap-shanghai"
    store.put_bytes("a.png", b"x", "image/png")
    assert store.head("a.png") == {"bytes": 1, "content_type": "image/png"}
    store.delete("a.png")


def test_open_store_local(tmp_path):
    store = open_store(_config(STORAGE_URL=(tmp_path / "st").as_uri(), PUBLIC_BASE_URL="https://api.example.com/"))
    assert isinstance(store, LocalStore)
    assert store.root == str(tmp_path / "st")
    assert store.signed_url("a.png", 60)[0].startswith("https://api.example.com/v1/files/a.png?expires=")


def test_open_store_local_without_a_secret_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        open_store(Config.from_env({"STORAGE_URL": (tmp_path / "st").as_uri()}))


def test_open_streams_the_stored_bytes_and_missing_keys_fail(store):
    data = bytes(range(256)) * 1000
    store.put_bytes("users/u/uploads/a.png", data, "image/png")
    with store.open("users/u/uploads/a.png") as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]
    with pytest.raises(StorageError):
        with store.open("users/u/uploads/missing.png") as f:
            f.read()
