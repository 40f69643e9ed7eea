"""GET /demo: the H5 demo page (static files in ``functions/demo/static/``), only when DEV_LOGIN=1.

The page logs in with ``POST /v1/auth/dev``, so without DEV_LOGIN it could do nothing: it is
then 404 in the contract's shape, like the dev login itself. Only the files the folder holds
when the process starts, by their exact names, are served: a name is looked up in that table,
never joined to a path, so ``..``, encoded slashes or other folders cannot reach anything else.
Gunicorn door only (functions/app.py); the Lambda deployment has no /demo.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import NotFoundError
from shared.http import Response

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
INDEX = "index.html"


def _files() -> dict[str, Path]:
    return {p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in CONTENT_TYPES}


FILES = _files()


def serve(ctx, req):
    """Answer one file of the demo page (``/demo`` and ``/demo/`` are its index.html)."""
    if not ctx.config.dev_login:
        raise NotFoundError("no such endpoint")
    name = req.path_params.get("name") or INDEX
    path = FILES.get(name)
    if path is None or req.method not in ("GET", "HEAD"):
        raise NotFoundError("no such file")
    # no-cache: a browser revalidates every time, so a changed demo is never stale.
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return Response(status=200, body=path.read_bytes(), headers=headers,
                    content_type=CONTENT_TYPES[path.suffix])
