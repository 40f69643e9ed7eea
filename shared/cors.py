"""Cross-origin access for H5 pages (``CORS_ORIGINS``), the same behind both doors.

Phone apps and mini-programs are not browsers and need none of this. An H5 page
served from another origin may call the API when its origin is listed (or the
list is ``*``): the answer then carries ``Access-Control-Allow-Origin`` with that
origin, and a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is
answered 204 with the methods of that path and the request headers the API
reads. Tokens travel in the ``Authorization`` header, never in cookies, so no
credentials mode is offered. An origin not listed gets no CORS header at all
(the browser then refuses the page's request); the API's answer is unchanged.
"""

from __future__ import annotations

# What an H5 page may send and read. If-None-Match makes the status poll's 304 work from a browser.
ALLOW_HEADERS = "Authorization, Content-Type, If-None-Match, Idempotency-Key"
EXPOSE_HEADERS = "ETag, Retry-After"
MAX_AGE_S = "600"  # browsers cap it (Chromium at 2 h); 10 min keeps a changed list quick to apply


def allowed_origin(origins: tuple[str, ...], origin: str | None) -> str | None:
    """The origin to echo back, or None when the page's origin may not call the API."""
    if not origin or not origins:
        return None
    if "*" in origins or origin.rstrip("/") in origins:
        return origin
    return None


def decorate(headers: dict, origins: tuple[str, ...], origin: str | None) -> None:
    """Add the CORS headers of an actual (not preflight) request's answer."""
    if not origins:
        return
    headers["Vary"] = "Origin"  # a cache must not serve one origin's answer to another
    allowed = allowed_origin(origins, origin)
    if allowed:
        headers["Access-Control-Allow-Origin"] = allowed
        headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def preflight_headers(origins: tuple[str, ...], origin: str | None, methods: set[str]) -> dict:
    """The headers of a 204 answer to OPTIONS on a path serving ``methods``."""
    allow = ", ".join(sorted(methods | {"OPTIONS"}))
    headers = {"Allow": allow}
    if origins:
        headers["Vary"] = "Origin"
    allowed = allowed_origin(origins, origin)
    if allowed:
        headers.update({"Access-Control-Allow-Origin": allowed, "Access-Control-Allow-Methods": allow,
                        "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": MAX_AGE_S})
    return headers
