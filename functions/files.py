"""GET /v1/files/{key}: serve a local-storage object behind a signed, expiring URL.

Only used with local-folder storage (development, single servers); with S3 the
apps fetch presigned URLs from the bucket directly.
"""

from shared.errors import ForbiddenError, NotFoundError
from shared.http import Response, lambda_handler


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
        raise ForbiddenError("this link has expired", code="link_expired") from None
    except (SignatureError, ValueError):
        raise ForbiddenError("this link is not valid", code="invalid_signature") from None
    except FileNotFoundError:
        raise NotFoundError("no such file") from None
    return Response(status=200, stream=fileobj, content_type=content_type,
                    headers={"Content-Length": str(size), "Cache-Control": "private, max-age=300"})


handler = lambda_handler(download)
