"""Object storage behind one small interface: S3 (or any S3 API) and a local folder.

Callers name objects with relative keys such as ``users/<uid>/jobs/<job>/9_0.png``
and never see where the bytes live. ``open_store(config)`` picks the
implementation from ``STORAGE_URL``:

* ``s3://bucket/prefix`` -> ``S3Store``: a boto3 client signing with SigV4.
  Download links are SigV4 presigned GET URLs; uploads from the app use a
  presigned POST whose policy pins the key, the Content-Type and the size.
* ``file:///path`` -> ``LocalStore``: files under a folder. Links point at the
  gateway (``{PUBLIC_BASE_URL}/v1/files/...``) and carry an HMAC-SHA256
  signature made with ``SECRET_KEY``; the gateway checks them with
  ``LocalStore.open_signed`` / ``LocalStore.verify_post``.

Both write objects atomically (an object is never visible half-written under
its key) and stream ``put_stream`` input in chunks, so memory use does not grow
with the object. Any failure of the backing store raises ``StorageError``; it is
not logged here, the code that handles it logs it once. Errors raised by the
*source* stream given to ``put_stream`` propagate unchanged.

boto3 is imported lazily: the Lambda functions that use local signing only (or
never touch storage) do not pay for it at cold start.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import io
import logging
import os
import re
import stat
import tempfile
import time
from datetime import datetime, timezone
from urllib.parse import quote, unquote, urlsplit

from shared.config import ConfigError

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
"""Bytes read from a source stream at a time."""

SPOOL_MEMORY = 1024 * 1024
"""An S3 part is buffered in memory up to this size, then on a temporary file."""

DEFAULT_PART_SIZE = 8 * 1024 * 1024
"""Objects larger than this go to S3 as a multipart upload of parts this big."""

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000               # S3's maximum number of parts
MAX_TTL = 7 * 86400              # SigV4 presigned URLs cannot live longer
MAX_KEY_BYTES = 1024             # S3's limit on key length

DEFAULT_CONTENT_TYPE = "application/octet-stream"
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".json": "application/json",
}

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 token
_CONTENT_TYPE_RE = re.compile(  # type/subtype *( ; name=value ), no CR/LF or other controls
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*')
_DIGITS_RE = re.compile(r"[0-9]{1,15}")


class StorageError(Exception):
    """The backing store failed (network, 5xx, permissions, full disk, ...)."""


class SignatureError(Exception):
    """A local-storage link or upload form is not one we signed (tampered or malformed)."""


class ExpiredError(Exception):
    """A local-storage link or upload form was signed by us but has expired."""


class UploadSizeError(ValueError):
    """An upload is smaller than ``min_bytes`` or larger than ``max_bytes``."""


# --------------------------------------------------------------------------- validation

def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``ValueError``.

    Refused: empty keys, a leading ``/``, backslashes, ``..`` anywhere, empty
    segments (``a//b``, trailing ``/``), segments starting with ``.`` (reserved
    for the local store's temporary and sidecar files), control characters and
    keys longer than 1024 UTF-8 bytes.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if key.startswith("/"):
        raise ValueError(f"object key must be relative, not start with '/': {key!r}")
    if "\\" in key:
        raise ValueError(f"object key must not contain a backslash: {key!r}")
    if ".." in key:
        raise ValueError(f"object key must not contain '..': {key!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError(f"object key must not contain control characters: {key!r}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"object key is not valid Unicode: {key!r}") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"object key must not have empty segments: {key!r}")
        if segment.startswith("."):
            raise ValueError(f"object key segments must not start with '.': {key!r}")
    return key


def validate_content_type(content_type: str) -> str:
    """Return ``content_type`` if it is a plain ``type/subtype[; param=value]``, else ``ValueError``."""
    if (not isinstance(content_type, str) or len(content_type) > 255
            or not _CONTENT_TYPE_RE.fullmatch(content_type)):
        raise ValueError(f"invalid content type: {content_type!r}")
    return content_type


def _validate_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be a whole number of seconds from 1 to {MAX_TTL}")
    return ttl


def _validate_size_range(min_bytes: int, max_bytes: int) -> None:
    for name, value in (("min_bytes", min_bytes), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0")
    if min_bytes > max_bytes:
        raise ValueError("min_bytes must not exceed max_bytes")


def _issued_at(now: float | None) -> int:
    """Whole seconds of the signing time: what both stores put in their signatures."""
    return int(time.time() if now is None else now)


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _iter_chunks(fileobj, size: int = CHUNK_SIZE):
    """Yield the non-empty chunks of a binary file-like object until it is exhausted."""
    while True:
        chunk = fileobj.read(size)
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_stream needs a binary stream, read() returned {type(chunk).__name__}")
        if not chunk:
            return
        yield chunk


def content_type_for(key: str) -> str:
    """The content type implied by a key's extension (png, jpg, jpeg, webp, json)."""
    return CONTENT_TYPES.get(os.path.splitext(key)[1].lower(), DEFAULT_CONTENT_TYPE)


# --------------------------------------------------------------------------- interface

class ObjectStore:
    """Where generated images and uploads live. Keys are relative (``users/1/a.png``)."""

    def put_stream(self, key: str, fileobj, content_type: str) -> int:
        """Store everything ``fileobj`` yields under ``key``; return the bytes written.

        Reads in chunks, never the whole object into memory. The object appears
        atomically: if the stream or the store fails midway, whatever was under
        ``key`` before is still there and nothing half-written is.
        """
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (atomically)."""
        raise NotImplementedError

    def head(self, key: str) -> dict | None:
        """``{"bytes": int, "content_type": str}`` of the object, or None if there is none."""
        raise NotImplementedError

    def open(self, key: str):
        """A context manager yielding a readable, streaming file object of the object's bytes."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        raise NotImplementedError

    def signed_url(self, key: str, ttl: int, *, now: float | None = None) -> tuple[str, datetime]:
        """A GET URL valid for ``ttl`` seconds from ``now`` and its expiry (aware UTC datetime)."""
        raise NotImplementedError

    def check(self) -> None:
        """Health probe: raise ``StorageError`` if the store cannot be used."""
        raise NotImplementedError

    def presigned_post(self, key: str, content_type: str, min_bytes: int, max_bytes: int,
                       ttl: int, *, now: float | None = None) -> dict:
        """A form upload (``wx.uploadFile``) limited to ``key``, ``content_type`` and the size range.

        Returns ``{"url", "fields", "file_field": "file", "expires_at"}``: post
        ``fields`` as form fields and the file under ``file_field``, last.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------- S3

def make_s3_client(endpoint_url: str | None, region: str, *, connect_timeout: float = 5.0,
                   read_timeout: float = 30.0, max_attempts: int = 3, addressing_style: str = "auto"):
    """A boto3 S3 client that signs with SigV4 and fails fast.

    ``max_attempts`` counts every try of a request (1 = no retry); retries use
    botocore's "standard" mode (exponential backoff with jitter).

    ``addressing_style`` "auto" addresses buckets path-style at a custom
    ``endpoint_url`` (MinIO, s3rver...) and as AWS prefers otherwise; "virtual"
    (Tencent COS, Aliyun OSS: bucket.endpoint) and "path" force one. Checksums
    are only sent when an operation requires them: botocore >= 1.36 otherwise
    sends aws-chunked bodies with CRC trailers, which many S3-compatible servers
    store verbatim or refuse (an older botocore, as a Lambda runtime may bring,
    has neither behaviour nor the option). Credentials come from
    boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, the
    Lambda role, ...), never from our config.
    """
    import boto3
    from botocore.config import Config as BotoConfig

    options = dict(
        signature_version="s3v4",
        region_name=region,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
    )
    if "request_checksum_calculation" in BotoConfig.OPTION_DEFAULTS:
        options.update(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    style = "path" if addressing_style == "auto" and endpoint_url else addressing_style
    if style != "auto":
        options["s3"] = {"addressing_style": style}
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=BotoConfig(**options))


# botocore reads the signing time from ``get_current_datetime`` in these two
# modules. To sign "as of" a caller-given ``now`` without touching other threads,
# the function is wrapped once so that it returns the time held in a context
# variable when one is set, and the real time otherwise.
_signing_time: contextvars.ContextVar[datetime | None] = contextvars.ContextVar(
    "comfy_gateway_signing_time", default=None)


def _install_signing_clock() -> None:
    import botocore.auth
    import botocore.signers

    for module in (botocore.auth, botocore.signers):
        current = module.get_current_datetime
        if getattr(current, "_signing_clock", False):
            continue

        def get_current_datetime(remove_tzinfo=True, _real=current):
            fixed = _signing_time.get()
            if fixed is None:
                return _real(remove_tzinfo)
            return fixed.replace(tzinfo=None) if remove_tzinfo else fixed

        get_current_datetime._signing_clock = True
        module.get_current_datetime = get_current_datetime


@contextlib.contextmanager
def _signing_at(epoch: int):
    _install_signing_clock()
    token = _signing_time.set(_utc(epoch))
    try:
        yield
    finally:
        _signing_time.reset(token)


class S3Store(ObjectStore):
    """Objects in an S3 bucket (AWS or any S3 API), under an optional key prefix."""

    def __init__(self, client, bucket: str, prefix: str = "", *, part_size: int = DEFAULT_PART_SIZE):
        if not bucket:
            raise ValueError("bucket must be named")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        prefix = prefix.strip("/")
        self.client = client
        self.bucket = bucket
        self.prefix = validate_key(prefix) + "/" if prefix else ""
        self.part_size = part_size

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def full_key(self, key: str) -> str:
        """The S3 key of ``key``: the store's prefix joined to the validated key."""
        return self.prefix + validate_key(key)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None):
        """Turn botocore's exceptions into ``StorageError``, with no secrets in the message."""
        from botocore.exceptions import BotoCoreError, ClientError

        target = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = err.get("Code") or "error"
            if status:
                detail += f" (HTTP {status})"
            if err.get("Message"):
                detail += f": {err['Message'][:200]}"
            raise StorageError(f"S3 {action} of {target} failed: {detail}") from e
        except BotoCoreError as e:
            raise StorageError(f"S3 {action} of {target} failed: {type(e).__name__}: {e}") from e

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        full = self.full_key(key)
        validate_content_type(content_type)
        with self._errors("put", full):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data), ContentType=content_type)

    def put_stream(self, key: str, fileobj, content_type: str) -> int:
        """Upload with one PUT if the stream fits in one part, else as a multipart upload.

        Each part is buffered (in memory up to ``SPOOL_MEMORY``, then on a
        temporary file) so that it has a known length and can be retried; the
        object becomes visible only when the PUT or CompleteMultipartUpload
        succeeds, and a failed multipart upload is aborted.
        """
        full = self.full_key(key)
        validate_content_type(content_type)
        chunks = _iter_chunks(fileobj)
        part, size, following = self._spool_part(chunks, None)
        with part:
            if following is None:
                with self._errors("put", full):
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=part, ContentType=content_type)
                return size
            return self._multipart(full, content_type, chunks, part, size, following)

    def _spool_part(self, chunks, carry: bytes | None):
        """Buffer up to ``part_size`` bytes (starting with ``carry``); return (file, size, following).

        ``following`` is the next chunk (already read), or None at the end of the stream.
        """
        part = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        try:
            size = 0
            if carry is not None:
                part.write(carry)
                size += len(carry)
            while size < self.part_size:
                chunk = next(chunks, None)
                if chunk is None:
                    part.seek(0)
                    return part, size, None
                part.write(chunk)
                size += len(chunk)
            following = next(chunks, None)
            part.seek(0)
            return part, size, following
        except BaseException:
            part.close()
            raise

    def _multipart(self, full: str, content_type: str, chunks, part, size: int, following) -> int:
        """Upload ``part`` (already spooled) and the rest of ``chunks`` as a multipart upload."""
        with self._errors("multipart upload start", full):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ContentType=content_type)["UploadId"]
        completed = False
        try:
            parts, total = [], 0
            while True:
                number = len(parts) + 1
                with part:
                    if number > MAX_PARTS:
                        raise ValueError(f"object is larger than {MAX_PARTS} parts of {self.part_size} bytes")
                    with self._errors(f"upload of part {number}", full):
                        etag = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                       PartNumber=number, Body=part)["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
                total += size
                if following is None:
                    break
                part, size, following = self._spool_part(chunks, following)
            with self._errors("multipart upload completion", full):
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                      MultipartUpload={"Parts": parts})
            completed = True
            return total
        finally:
            if not completed:
                self._abort(full, upload_id)

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            with self._errors("multipart upload abort", full):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except StorageError as e:  # the upload already failed; this is the only place it is seen
            log.warning("could not abort a failed multipart upload (parts stay until a lifecycle rule "
                        "removes them): %s", e)

    def head(self, key: str) -> dict | None:
        """The object's size and type; None on 404. (S3 answers 403, a StorageError, for a
        missing key when the credentials lack s3:ListBucket.)"""
        from botocore.exceptions import ClientError

        full = self.full_key(key)
        try:
            with self._errors("head", full):
                meta = self.client.head_object(Bucket=self.bucket, Key=full)
        except StorageError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in (
                    "404", "NoSuchKey", "NotFound"):
                return None
            raise
        return {"bytes": int(meta["ContentLength"]),
                "content_type": meta.get("ContentType") or DEFAULT_CONTENT_TYPE}

    @contextlib.contextmanager
    def open(self, key: str):
        full = self.full_key(key)
        with self._errors("get", full):
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        try:
            yield body
        finally:
            body.close()

    def delete(self, key: str) -> None:
        full = self.full_key(key)
        with self._errors("delete", full):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def signed_url(self, key: str, ttl: int, *, now: float | None = None) -> tuple[str, datetime]:
        full = self.full_key(key)
        _validate_ttl(ttl)
        issued = _issued_at(now)
        with self._errors("presign", full), _signing_at(issued):
            url = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=ttl)
        if "X-Amz-Algorithm=AWS4-HMAC-SHA256" not in url:
            raise StorageError("the S3 client presigns without SigV4; build it with make_s3_client()")
        return url, _utc(issued + ttl)

    def check(self) -> None:
        with self._errors("bucket check"):
            self.client.head_bucket(Bucket=self.bucket)

    def presigned_post(self, key: str, content_type: str, min_bytes: int, max_bytes: int,
                       ttl: int, *, now: float | None = None) -> dict:
        """A SigV4 POST policy pinning the exact key, Content-Type and content-length-range."""
        full = self.full_key(key)
        validate_content_type(content_type)
        _validate_size_range(min_bytes, max_bytes)
        _validate_ttl(ttl)
        issued = _issued_at(now)
        conditions = [{"Content-Type": content_type}, ["content-length-range", min_bytes, max_bytes]]
        with self._errors("presign post", full), _signing_at(issued):
            # Without credentials botocore's POST signer fails with an AttributeError;
            # say what is wrong instead, as generate_presigned_url does.
            if getattr(getattr(self.client, "_request_signer", None), "_credentials", True) is None:
                from botocore.exceptions import NoCredentialsError
                raise NoCredentialsError()
            post = self.client.generate_presigned_post(
                Bucket=self.bucket, Key=full, Fields={"Content-Type": content_type},
                Conditions=conditions, ExpiresIn=ttl)
        if post["fields"].get("x-amz-algorithm") != "AWS4-HMAC-SHA256":
            raise StorageError("the S3 client presigns without SigV4; build it with make_s3_client()")
        return {"url": post["url"], "fields": post["fields"], "file_field": "file",
                "expires_at": _utc(issued + ttl)}


# --------------------------------------------------------------------------- local folder

class LocalStore(ObjectStore):
    """Objects as files under ``root``; links are served and checked by the gateway.

    ``root/<key>`` holds the bytes. The content type comes from the key's
    extension, or from a sidecar file ``.<name>.content-type`` next to the
    object when the stored type differs from what the extension implies.
    Writes go to a temporary ``.<name>.*.tmp`` in the same folder, are fsynced
    and then ``os.replace``d onto the key, so readers see the old object or the
    new one, never a partial file. Files are created owner-only (0600): they
    are served through the gateway's signed links, not by a web server.

    Unlike S3, a key cannot also be a folder of other keys (``users`` and
    ``users/1/a.png``). Two concurrent writers of one key with different
    content types may leave the type of one with the bytes of the other; the
    gateway writes each key once.

    Download link: ``{public_base_url}/v1/files/{key}?expires=<epoch>&signature=<hex>``
    with ``signature = HMAC-SHA256(secret, "GET\\n{key}\\n{expires}")``.
    Upload form (``presigned_post``): fields key, content_type, min_bytes,
    max_bytes, expires and ``signature = HMAC-SHA256(secret,
    "POST\\n{key}\\n{content_type}\\n{min_bytes}\\n{max_bytes}\\n{expires}")``,
    posted to ``{public_base_url}/v1/files``.
    """

    SIDECAR_SUFFIX = ".content-type"

    def __init__(self, root: str, public_base_url: str, secret: str, previous_secret: str | None = None):
        if not secret:
            raise ValueError("LocalStore needs a secret to sign its links")
        self.root = os.path.abspath(root)
        self.public_base_url = public_base_url.rstrip("/")
        self._secret = secret.encode("utf-8")
        # Links and forms signed before a SECRET_KEY rotation stay good until they expire.
        self._previous = previous_secret.encode("utf-8") if previous_secret else None

    def __repr__(self) -> str:
        return f"LocalStore(root={self.root!r}, public_base_url={self.public_base_url!r})"

    # -- paths and metadata

    def path(self, key: str) -> str:
        """The file that holds ``key``."""
        return os.path.join(self.root, *validate_key(key).split("/"))

    def _sidecar(self, path: str) -> str:
        folder, name = os.path.split(path)
        return os.path.join(folder, f".{name}{self.SIDECAR_SUFFIX}")

    def _content_type(self, path: str) -> str:
        try:
            with open(self._sidecar(path), encoding="utf-8") as f:
                stored = f.read().strip()
            return validate_content_type(stored)
        except FileNotFoundError:
            return content_type_for(path)
        except (OSError, ValueError) as e:
            raise StorageError(f"cannot read the content type of {path}: {e}") from e

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None):
        """Turn ``OSError`` of the folder into ``StorageError``."""
        target = f"{key!r} under {self.root}" if key is not None else self.root
        try:
            yield
        except OSError as e:
            raise StorageError(f"local storage {action} of {target} failed: "
                               f"{e.strerror or type(e).__name__}") from e

    # -- writing

    def _write(self, key: str, fileobj, content_type: str, *, min_bytes: int = 0,
               max_bytes: int | None = None) -> int:
        """Stream ``fileobj`` to a temporary file beside the key, then move it onto the key."""
        path = self.path(key)
        validate_content_type(content_type)
        folder, name = os.path.split(path)
        with self._errors("write", key):
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in _iter_chunks(fileobj):  # errors of the source propagate as they are
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise UploadSizeError(f"upload is larger than {max_bytes} bytes")
                    with self._errors("write", key):
                        out.write(chunk)
                with self._errors("write", key):
                    out.flush()
                    os.fsync(out.fileno())
            if size < min_bytes:
                raise UploadSizeError(f"upload is smaller than {min_bytes} bytes ({size})")
            with self._errors("write", key):
                self._commit(path, tmp, content_type)
            return size
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _commit(self, path: str, tmp: str, content_type: str) -> None:
        """Move ``tmp`` onto ``path`` with a sidecar only if the extension does not say the type."""
        sidecar = self._sidecar(path)
        if content_type == content_type_for(path):
            os.replace(tmp, path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sidecar)
            return
        fd, side_tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(sidecar) + ".",
                                        suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content_type)
            os.replace(side_tmp, sidecar)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(side_tmp)
            raise
        os.replace(tmp, path)

    def put_stream(self, key: str, fileobj, content_type: str) -> int:
        return self._write(key, fileobj, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._write(key, io.BytesIO(data), content_type)

    def save_upload(self, key: str, fileobj, max_bytes: int, *, min_bytes: int = 0,
                    content_type: str | None = None) -> int:
        """Store an upload checked with ``verify_post``; return its size.

        Streams to disk and raises ``UploadSizeError`` (a ``ValueError``) as soon
        as more than ``max_bytes`` arrive, or at the end if fewer than
        ``min_bytes`` did; nothing is left behind then. ``content_type`` defaults
        to what the key's extension implies.
        """
        _validate_size_range(min_bytes, max_bytes)
        return self._write(key, fileobj, content_type or content_type_for(key),
                           min_bytes=min_bytes, max_bytes=max_bytes)

    # -- reading and removing

    def head(self, key: str) -> dict | None:
        path = self.path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise StorageError(f"local storage head of {key!r} failed: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode):  # a folder of other keys ("users" of "users/1/a.png")
            return None
        return {"bytes": st.st_size, "content_type": self._content_type(path)}

    @contextlib.contextmanager
    def open(self, key: str):
        path = self.path(key)
        with self._errors("open", key):
            f = open(path, "rb")
        try:
            yield f
        finally:
            f.close()

    def delete(self, key: str) -> None:
        path = self.path(key)
        with self._errors("delete", key):
            for p in (path, self._sidecar(path)):
                # missing, or a folder of other keys: nothing to delete, as on S3
                with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    os.unlink(p)

    def check(self) -> None:
        """Make sure ``root`` exists and a file can be written and removed in it."""
        with self._errors("check"):
            os.makedirs(self.root, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".check.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)

    # -- signed links

    def _sign(self, message: str, secret: bytes | None = None) -> str:
        return hmac.new(secret or self._secret, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def _check_signature(self, message: str, signature) -> None:
        given = signature.encode("utf-8", "replace") if isinstance(signature, str) else b""
        for secret in filter(None, (self._secret, self._previous)):
            if hmac.compare_digest(self._sign(message, secret).encode("ascii"), given):
                return
        raise SignatureError("signature does not match")

    @staticmethod
    def _parse_int(name: str, value) -> int:
        if not isinstance(value, str) or not _DIGITS_RE.fullmatch(value):
            raise SignatureError(f"{name} must be a whole number")
        return int(value)

    @staticmethod
    def _check_expiry(expires: int, now: float | None) -> None:
        if (time.time() if now is None else now) > expires:
            raise ExpiredError("link has expired")

    def signed_url(self, key: str, ttl: int, *, now: float | None = None) -> tuple[str, datetime]:
        validate_key(key)
        expires = _issued_at(now) + _validate_ttl(ttl)
        signature = self._sign(f"GET\n{key}\n{expires}")
        url = f"{self.public_base_url}/v1/files/{quote(key, safe='/')}?expires={expires}&signature={signature}"
        return url, _utc(expires)

    def open_signed(self, key: str, expires: str, signature: str, *, now: float | None = None):
        """Open the object a signed link points at: ``(binary file, content_type, size)``.

        Raises ``SignatureError`` for a malformed ``expires`` or a signature we
        did not make (checked before the expiry, so forged links learn nothing),
        ``ExpiredError`` after the expiry and ``FileNotFoundError`` when there is
        no such object. The caller closes the file.
        """
        expires_at = self._parse_int("expires", expires)
        self._check_signature(f"GET\n{key}\n{expires}", signature)
        self._check_expiry(expires_at, now)
        path = self.path(key)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise
        except (IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(f"no object {key!r}") from None
        except OSError as e:
            raise StorageError(f"local storage read of {key!r} failed: {e.strerror}") from e
        try:
            return f, self._content_type(path), os.fstat(f.fileno()).st_size
        except BaseException:
            f.close()
            raise

    def presigned_post(self, key: str, content_type: str, min_bytes: int, max_bytes: int,
                       ttl: int, *, now: float | None = None) -> dict:
        validate_key(key)
        validate_content_type(content_type)
        _validate_size_range(min_bytes, max_bytes)
        expires = _issued_at(now) + _validate_ttl(ttl)
        fields = {"key": key, "content_type": content_type, "min_bytes": str(min_bytes),
                  "max_bytes": str(max_bytes), "expires": str(expires)}
        fields["signature"] = self._sign(self._post_message(fields))
        return {"url": f"{self.public_base_url}/v1/files", "fields": fields, "file_field": "file",
                "expires_at": _utc(expires)}

    @staticmethod
    def _post_message(fields: dict) -> str:
        return "\n".join(["POST", fields["key"], fields["content_type"], fields["min_bytes"],
                          fields["max_bytes"], fields["expires"]])

    def verify_post(self, fields: dict, *, now: float | None = None) -> dict:
        """Check the form fields of an upload made with ``presigned_post``.

        Returns ``{"key", "content_type", "min_bytes", "max_bytes"}`` (sizes as
        ints) for ``save_upload``. Raises ``SignatureError`` when a field is
        missing, malformed or altered, ``ExpiredError`` when the form expired.
        """
        names = ("key", "content_type", "min_bytes", "max_bytes", "expires", "signature")
        missing = [n for n in names if not isinstance(fields.get(n), str)]
        if missing:
            raise SignatureError(f"upload form lacks the field(s) {', '.join(missing)}")
        min_bytes = self._parse_int("min_bytes", fields["min_bytes"])
        max_bytes = self._parse_int("max_bytes", fields["max_bytes"])
        expires = self._parse_int("expires", fields["expires"])
        self._check_signature(self._post_message(fields), fields["signature"])
        self._check_expiry(expires, now)
        return {"key": fields["key"], "content_type": fields["content_type"],
                "min_bytes": min_bytes, "max_bytes": max_bytes}


# --------------------------------------------------------------------------- factory

def open_store(config) -> ObjectStore:
    """The store ``config.storage_url`` names (``s3://bucket/prefix`` or ``file:///path``)."""
    parts = urlsplit(config.storage_url)
    if parts.scheme == "s3":
        client = make_s3_client(config.s3_endpoint_url, config.s3_region,
                                addressing_style=config.s3_addressing_style)
        return S3Store(client, parts.netloc, unquote(parts.path).strip("/"))
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"STORAGE_URL: file URLs must be local (file:///path), not {parts.netloc!r}")
        return LocalStore(unquote(parts.path), config.public_base_url, config.require_secret_key(),
                          config.secret_key_previous)
    raise ConfigError("STORAGE_URL: must be s3://bucket/prefix or file:///path")
