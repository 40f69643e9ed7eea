"""Object storage behind one small interface: S3 (or any S3 API) and a local folder.

Callers name objects with relative keys such as ``users/<uid>/jobs/<job>/9_0.png``
and never see where the bytes live. ``open_store(config)`` picks the
implementation from ``STORAGE_URL``:

* ``s3://bucket/prefix`` -> ``S3Store`` (``s3.py``): a boto3 client signing
  with SigV4, made on first use. Download links are SigV4 presigned GET URLs,
  signed without botocore by ``sigv4.py`` when the credentials are in the
  environment (as on Lambda); uploads from the app use a presigned POST whose
  policy pins the key, the Content-Type and the size.
* ``file:///path`` -> ``LocalStore`` (``local.py``): files under a folder. Links
  point at the gateway (``{PUBLIC_BASE_URL}/v1/files/...``) and carry an
  HMAC-SHA256 signature made with ``SECRET_KEY``; the gateway checks them with
  ``LocalStore.open_signed`` / ``LocalStore.verify_post``.

Both write objects atomically (an object is never visible half-written under
its key) and stream ``put_stream`` input in chunks, so memory use does not grow
with the object. Any failure of the backing store raises ``StorageError``; it is
not logged here, the code that handles it logs it once. Errors raised by the
*source* stream given to ``put_stream`` propagate unchanged.

boto3 is imported only when an S3 operation needs the client: the Lambda
functions that only sign links (the status poll) or never touch storage do not
pay for it at cold start.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from shared.config import ConfigError
from shared.storage.base import (CHUNK_SIZE, CONTENT_TYPES, DEFAULT_CONTENT_TYPE, MAX_KEY_BYTES, MAX_TTL,
                                 ExpiredError, ObjectStore, SignatureError, StorageError, UploadSizeError,
                                 content_type_for, validate_content_type, validate_key)
from shared.storage.local import LocalStore
from shared.storage.s3 import (DEFAULT_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, SPOOL_MEMORY, S3Settings, S3Store,
                               make_s3_client)

__all__ = [
    "CHUNK_SIZE", "CONTENT_TYPES", "DEFAULT_CONTENT_TYPE", "DEFAULT_PART_SIZE", "MAX_KEY_BYTES", "MAX_PARTS",
    "MAX_TTL", "MIN_PART_SIZE", "SPOOL_MEMORY",
    "ExpiredError", "SignatureError", "StorageError", "UploadSizeError",
    "ObjectStore", "LocalStore", "S3Settings", "S3Store",
    "content_type_for", "make_s3_client", "open_store", "validate_content_type", "validate_key",
]


def open_store(config) -> ObjectStore:
    """The store ``config.storage_url`` names (``s3://bucket/prefix`` or ``file:///path``)."""
    parts = urlsplit(config.storage_url)
    if parts.scheme == "s3":
        settings = S3Settings(config.s3_endpoint_url, config.s3_region, config.s3_addressing_style)
        return S3Store(None, parts.netloc, unquote(parts.path).strip("/"), settings=settings)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"STORAGE_URL: file URLs must be local (file:///path), not {parts.netloc!r}")
        return LocalStore(unquote(parts.path), config.public_base_url, config.require_secret_key(),
                          config.secret_key_previous)
    raise ConfigError("STORAGE_URL: must be s3://bucket/prefix or file:///path")
