"""What every object store shares: the interface, the errors, key and argument checks.

Keys are relative (``users/<uid>/jobs/<job>/9_0.png``) and checked by
``validate_key`` before any store touches them.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone

CHUNK_SIZE = 256 * 1024
"""Bytes read from a source stream at a time."""

MAX_TTL = 7 * 86400   # SigV4 presigned URLs cannot live longer
MAX_KEY_BYTES = 1024  # S3's limit on key length

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
