"""GET /v1/files/{key}: serve a local-storage object behind a signed, expiring URL.

Only used with local-folder storage (development, single servers); with S3 the
apps fetch presigned URLs from the bucket directly.
"""

from email.parser import BytesParser
from email.policy import HTTP

from shared.errors import ForbiddenError, InvalidUploadError, NotFoundError, PayloadTooLargeError
from shared.http import Response, lambda_handler

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


def parse_multipart(content_type: str, body: bytes) -> tuple[dict, tuple[str, bytes] | None]:
    """Split a multipart/form-data body into (text fields, (file part type, file bytes))."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidUploadError("send the image as multipart/form-data")
    # Anyone may post here before the form's signature is checked: bound the parser's work first.
    boundary = content_type.partition("boundary=")[2].split(";")[0].strip().strip('"').encode("latin-1", "replace")
    if not boundary or body.count(b"--" + boundary) > MAX_FORM_PARTS + 1:
        raise InvalidUploadError(f"a form of at most {MAX_FORM_PARTS} parts, with a boundary, is expected")
    try:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    except (RecursionError, ValueError, UnicodeError):
        raise InvalidUploadError("malformed multipart body") from None
    if not message.is_multipart():
        raise InvalidUploadError("malformed multipart body")
    fields, file = {}, None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        if part.get_filename() is not None or name == "file":
            file = (part.get_content_type(), part.get_payload(decode=True) or b"")
        else:
            fields[name] = (part.get_payload(decode=True) or b"").decode("utf-8", errors="replace")
    return fields, file


def upload(ctx, req):
    """POST /v1/files: receive a presigned local-storage upload (what S3 does for S3 storage)."""
    store = ctx.store
    if not hasattr(store, "verify_post"):
        raise NotFoundError("no such endpoint")
    from shared.storage import ExpiredError, SignatureError, UploadSizeError
    fields, file = parse_multipart(req.header("content-type") or "", req.body)
    try:
        policy = store.verify_post(fields)
    except ExpiredError:
        raise ForbiddenError("this upload form has expired") from None
    except SignatureError:
        raise ForbiddenError("this upload form is not valid") from None
    if file is None:
        raise InvalidUploadError("no file part named 'file'")
    part_type, data = file
    if part_type != policy["content_type"] and part_type != "application/octet-stream":
        raise InvalidUploadError(f"the file must be {policy['content_type']}")
    import io
    try:
        store.save_upload(policy["key"], io.BytesIO(data), policy["max_bytes"], min_bytes=policy["min_bytes"],
                          content_type=policy["content_type"])
    except UploadSizeError as e:
        if len(data) > policy["max_bytes"]:
            raise PayloadTooLargeError(str(e)) from None
        raise InvalidUploadError(str(e)) from None
    return Response(status=204)


upload_handler = lambda_handler(upload)
