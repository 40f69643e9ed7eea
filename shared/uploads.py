"""Input images: presigned uploads straight to storage, checked when a job uses them.

``POST /v1/uploads`` creates a row and a presigned POST pinned to a key in the
user's namespace, the declared content type and a size range (exactly the
declared size when the app gives one). The bytes never pass through the
functions. When a job names the upload, the gateway checks it (the caller's,
not expired, really a PNG/JPEG/WebP by its bytes, within the size and dimension
limits), then puts it on the chosen ComfyUI server.
"""

from __future__ import annotations

import io
import logging
import tempfile
import uuid
from datetime import timedelta

from shared.db import execute, isoformat, query_one, utcnow
from shared.errors import InvalidParamsError, InvalidUploadError, PayloadTooLargeError
from shared.http import check_fields
from shared.images import HEAD_BYTES, sniff

log = logging.getLogger(__name__)

ALLOWED_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
UPLOAD_TTL_S = 3600          # how long an app has to send the file
UPLOAD_USABLE_S = 24 * 3600  # how long an upload can be used by jobs
MAX_DIMENSION = 4096


def create_upload(ctx, user_id: str, body: dict) -> dict:
    """Validate an upload request, record it, and return the contract's upload object."""
    check_fields(body, {"content_type", "size"})
    ctype, size = body.get("content_type"), body.get("size")
    max_bytes = ctx.config.max_upload_bytes
    if not isinstance(ctype, str) or ctype not in ALLOWED_TYPES:
        raise InvalidParamsError("content_type must be image/png, image/jpeg or image/webp",
                                 details={"content_type": "one of " + ", ".join(ALLOWED_TYPES)})
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise InvalidParamsError("size must be a positive whole number of bytes", details={"size": "positive integer"})
    if size is not None and size > max_bytes:
        raise PayloadTooLargeError(f"uploads are limited to {max_bytes} bytes", details={"size": f"at most {max_bytes}"})
    # A declared size is the only size the form accepts (and the most a job will read).
    min_bytes, max_bytes = (size, size) if size is not None else (1, max_bytes)
    upload_id = str(uuid.uuid4())
    key = f"users/{user_id}/uploads/{upload_id}{ALLOWED_TYPES[ctype]}"
    post = ctx.store.presigned_post(key, ctype, min_bytes, max_bytes, UPLOAD_TTL_S)
    now = utcnow()
    with ctx.db.connection() as conn:
        execute(conn, "INSERT INTO uploads (id, user_id, object_key, content_type, max_bytes, created_at, expires_at) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (upload_id, user_id, key, ctype, max_bytes, now, now + timedelta(seconds=UPLOAD_USABLE_S)))
    return {"id": upload_id, "url": post["url"], "fields": post["fields"], "file_field": post["file_field"],
            "expires_at": isoformat(post["expires_at"])}


def check_upload(ctx, user_id: str, upload_id, field: str) -> dict:
    """The upload row of one of the user's usable, really-an-image uploads, or 400 invalid_upload."""
    if not isinstance(upload_id, str) or not upload_id:
        raise InvalidUploadError(f"{field} must be an upload id", details={field: "upload id"})
    with ctx.db.connection() as conn:
        row = query_one(conn, "SELECT * FROM uploads WHERE id=%s AND user_id=%s", (upload_id, user_id))
    if row is None:
        raise InvalidUploadError("no such upload", details={field: "no such upload"})
    if row["expires_at"] < utcnow():
        raise InvalidUploadError("the upload has expired; upload the image again", details={field: "expired"})
    head = ctx.store.head(row["object_key"])
    if head is None:
        raise InvalidUploadError("the image was never uploaded (or the upload failed)", details={field: "no file"})
    if head["bytes"] > row["max_bytes"]:
        raise InvalidUploadError("the image is too large", details={field: f"over {row['max_bytes']} bytes"})
    # The upload form stays usable for a while, so the object can change under us: read it
    # once, check those bytes, and send those same bytes to ComfyUI (never a second read).
    data = _read_capped(ctx.store, row["object_key"], row["max_bytes"])
    try:
        size = data.seek(0, io.SEEK_END)
        data.seek(0)
        if size > row["max_bytes"]:
            raise InvalidUploadError("the image is too large", details={field: f"over {row['max_bytes']} bytes"})
        found = sniff(data.read(HEAD_BYTES))
        if found and found[0] == "image/jpeg" and found[1] is None:
            data.seek(0)  # phones' metadata (XMP depth maps, thumbnails) can put the frame header far in
            found = sniff(data.read())
        if found is None or found[0] not in ALLOWED_TYPES:
            raise InvalidUploadError("the file is not a PNG, JPEG or WebP image", details={field: "not an image"})
        ctype, width, height = found
        if not width or not height or width > MAX_DIMENSION or height > MAX_DIMENSION:
            raise InvalidUploadError(f"image dimensions must be 1 to {MAX_DIMENSION} pixels",
                                     details={field: f"{width}x{height}"})
    except BaseException:
        data.close()
        raise
    return {**row, "content_type": ctype, "width": width, "height": height, "bytes": size, "file": data}


def _read_capped(store, key: str, max_bytes: int):
    """The object's bytes (at most max_bytes + 1 of them) in a spooled temporary file."""
    data = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)
    try:
        with store.open(key) as f:
            left = max_bytes + 1
            while left > 0 and (chunk := f.read(min(64 * 1024, left))):
                data.write(chunk)
                left -= len(chunk)
    except BaseException:
        data.close()
        raise
    return data


def comfy_name(upload: dict, job_id: str, input_name: str) -> str:
    """The file name an input image gets on ComfyUI, sent there with the prompt: one per job and input,
    so two jobs of one upload never share (and overwrite) a file on a server."""
    return f"gw_{job_id}_{input_name}{ALLOWED_TYPES[upload['content_type']]}"
