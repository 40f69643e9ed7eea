"""Objects as files under a folder, with links signed and checked by the gateway."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import stat
import tempfile
import time
from datetime import datetime
from urllib.parse import quote

from shared import metrics
from shared.storage.base import (ExpiredError, ObjectStore, SignatureError, StorageError, UploadSizeError,
                                 _DIGITS_RE, _issued_at, _iter_chunks, _utc, _validate_size_range, _validate_ttl,
                                 content_type_for, validate_content_type, validate_key)


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
            metrics.storage_error()
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
