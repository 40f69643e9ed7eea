"""GET /v1/files/{key}: serve a local-storage object behind a signed, expiring URL;
POST /v1/files: the target of local storage's presigned upload forms.

Only used with local-folder storage (development, single servers); with S3 the
apps fetch presigned URLs from the bucket directly.
"""

import io

from shared.errors import ForbiddenError, InvalidUploadError, NotFoundError, PayloadTooLargeError
from shared.http import Response, lambda_handler
from shared.multipart import FilePart, MultipartError, parse_form

# The form's fields (key, content type, size range, expiry, signature) and the file: a handful.
MAX_FORM_PARTS = 20
# Types /v1/files serves as themselves; anything else is a download (application/octet-stream).
SAFE_TYPES = {"image/png", "image/jpeg", "image/webp"}


def download(ctx, req):
    store = ctx.store
    if not hasattr(store, "open_signed"):
        raise NotFoundError("no such file")
    from shared.storage import ExpiredError, SignatureError
    key = req.path_params.get("key", "")
    try:
        fileobj, content_type, size = store.open_signed(key, req.query.get("expires", ""),
                                                        req.query.get("signature", ""))
    except ExpiredError:
        raise ForbiddenError("this link has expired") from None
    except (SignatureError, ValueError):
        raise ForbiddenError("this link is not valid") from None
    except FileNotFoundError:
        raise NotFoundError("no such file") from None
    headers = {"Content-Length": str(size), "Cache-Control": "private, max-age=300",
               # Served from the API's own origin: never let a browser run or re-type what it gets.
               "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}
    if content_type not in SAFE_TYPES:
        content_type = "application/octet-stream"
        headers["Content-Disposition"] = "attachment"
    return Response(status=200, stream=fileobj, content_type=content_type, headers=headers)


handler = lambda_handler(download)


def parse_multipart(content_type: str, body: bytes) -> tuple[dict, FilePart | None]:
    """Split a multipart/form-data body into (text fields, the file part or None), or 400 invalid_upload.

    The file part's bytes are not read here: call its ``data()`` once the fields are trusted.
    """
    try:
        return parse_form(content_type, body, max_parts=MAX_FORM_PARTS)
    except MultipartError as e:
        raise InvalidUploadError(f"malformed upload form: {e}") from None


def upload(ctx, req):
    """POST /v1/files: receive a presigned local-storage upload (what S3 does for S3 storage)."""
    store = ctx.store
    if not hasattr(store, "verify_post"):
        raise NotFoundError("no such endpoint")
    from shared.storage import ExpiredError, SignatureError, UploadSizeError
    fields, file = parse_multipart(req.header("content-type") or "", req.body)
    # Anyone may post here: the signature is checked before the file's bytes are looked at.
    try:
        policy = store.verify_post(fields)
    except ExpiredError:
        raise ForbiddenError("this upload form has expired") from None
    except SignatureError:
        raise ForbiddenError("this upload form is not valid") from None
    if file is None:
        raise InvalidUploadError("no file part named 'file'")
    if file.content_type not in (policy["content_type"], "application/octet-stream"):
        raise InvalidUploadError(f"the file must be {policy['content_type']}")
    try:
        data = file.data()
    except MultipartError as e:
        raise InvalidUploadError(f"malformed upload form: {e}") from None
    try:
        store.save_upload(policy["key"], io.BytesIO(data), policy["max_bytes"], min_bytes=policy["min_bytes"],
                          content_type=policy["content_type"])
    except UploadSizeError as e:
        if len(data) > policy["max_bytes"]:
            raise PayloadTooLargeError(str(e)) from None
        raise InvalidUploadError(str(e)) from None
    return Response(status=204)


upload_handler = lambda_handler(upload)
