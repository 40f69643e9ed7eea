"""Objects in an S3 bucket (AWS or any S3 API) through a boto3 client, made on first use.

Download links are SigV4 presigned GET URLs, made by ``sigv4.Presigner`` without
botocore when the credentials are in the environment (as on Lambda); uploads
from the app use a presigned POST whose policy pins the key, the Content-Type
and the size.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime

from shared import metrics
from shared.storage import sigv4
from shared.storage.base import (DEFAULT_CONTENT_TYPE, ObjectStore, StorageError, _issued_at, _iter_chunks, _utc,
                                 _validate_size_range, _validate_ttl, validate_content_type, validate_key)

log = logging.getLogger(__name__)

SPOOL_MEMORY = 1024 * 1024
"""An S3 part is buffered in memory up to this size, then on a temporary file."""

DEFAULT_PART_SIZE = 8 * 1024 * 1024
"""Objects larger than this go to S3 as a multipart upload of parts this big."""

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000               # S3's maximum number of parts


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


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach S3 (S3_ENDPOINT_URL, S3_REGION, S3_ADDRESSING_STYLE): what ``make_s3_client`` takes."""

    endpoint_url: str | None
    region: str
    addressing_style: str = "auto"

    def client(self):
        """A boto3 client for these settings (imports boto3)."""
        return make_s3_client(self.endpoint_url, self.region, addressing_style=self.addressing_style)


class S3Store(ObjectStore):
    """Objects in an S3 bucket (AWS or any S3 API), under an optional key prefix.

    ``client`` is a boto3 S3 client, or None with ``settings`` to make one on
    first use, so that a function that only signs download links never imports
    boto3. With ``settings``, download links are signed by ``sigv4.Presigner``
    when the credentials are in the environment, else by the client.
    """

    def __init__(self, client, bucket: str, prefix: str = "", *, part_size: int = DEFAULT_PART_SIZE,
                 settings: S3Settings | None = None):
        if not bucket:
            raise ValueError("bucket must be named")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if client is None and settings is None:
            raise ValueError("S3Store needs a client or the settings to make one")
        prefix = prefix.strip("/")
        self._client = client
        self._client_lock = threading.Lock()
        self.settings = settings
        self.bucket = bucket
        self.prefix = validate_key(prefix) + "/" if prefix else ""
        self.part_size = part_size
        self._presigner = None
        if settings is not None:
            try:
                self._presigner = sigv4.Presigner(bucket, settings.region, settings.endpoint_url,
                                                  settings.addressing_style)
            except sigv4.Unsupported as e:
                log.info("S3 download links are signed by botocore: the presigner does not model the %s", e)

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def client(self):
        """The boto3 client (made on first use from ``settings``: boto3 is imported then)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self.settings.client()
        return self._client

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
            metrics.storage_error()
            raise StorageError(f"S3 {action} of {target} failed: {detail}") from e
        except BotoCoreError as e:
            metrics.storage_error()
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
        credentials = self._presigner_credentials()
        if credentials is not None:
            return self._presigner.url(full, ttl, issued, credentials), _utc(issued + ttl)
        with self._errors("presign", full), _signing_at(issued):
            url = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=ttl)
        if "X-Amz-Algorithm=AWS4-HMAC-SHA256" not in url:
            raise StorageError("the S3 client presigns without SigV4; build it with make_s3_client()")
        return url, _utc(issued + ttl)

    def _presigner_credentials(self) -> sigv4.Credentials | None:
        """The credentials to sign a download link with without botocore; None when botocore signs it.

        They are read from the environment, where botocore's chain looks first and Lambda puts
        the function role's. When they are not there (an instance profile, a credentials file,
        SSO...), or botocore would read settings the presigner does not model, botocore signs
        the link with the credentials its chain finds (boto3 is imported then): the same URL.
        """
        if self._presigner is None or sigv4.botocore_settings() is not None:
            return None
        return sigv4.credentials_from_env()

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
