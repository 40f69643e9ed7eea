"""The one table of the HTTP API, as names: (method, Flask rule, module, core).

Kept apart from the function modules so that `functions/fallback.py` (Lambda's
`$default` route, which answers CORS preflights) knows every path without
importing them all; ``functions.routes.ROUTES`` resolves the names.
"""

from __future__ import annotations

import re

TABLE = [
    ("POST", "/v1/auth/wechat", "auth", "wechat_login"),
    ("POST", "/v1/auth/dev", "auth", "dev_login"),
    ("GET", "/v1/workflows", "workflows", "list_workflows"),
    ("POST", "/v1/jobs", "submit", "submit_job"),
    ("GET", "/v1/jobs", "jobs", "list_jobs"),
    ("GET", "/v1/jobs/<id>", "status", "get_status"),
    ("POST", "/v1/jobs/<id>/cancel", "cancel", "cancel_job"),
    ("GET", "/v1/jobs/<id>/result", "result", "get_result"),
    ("POST", "/v1/uploads", "uploads", "new_upload"),
    ("GET", "/v1/files/<path:key>", "files", "download"),
    ("POST", "/v1/files", "files", "upload"),
    ("GET", "/v1/usage", "usage", "list_usage"),
    ("GET", "/v1/wechat/push", "wechat_push", "verify"),
    ("POST", "/v1/wechat/push", "wechat_push", "receive"),
    ("GET", "/healthz", "health", "health"),
    ("GET", "/v1/openapi.json", "openapi", "get_openapi"),
]


def _pattern(rule: str) -> re.Pattern:
    parts = re.split(r"(<(?:path:)?[a-z_]+>)", rule)
    return re.compile("".join(("(.+)" if p.startswith("<path:") else "([^/]+)") if p.startswith("<") else re.escape(p)
                              for p in parts) + "$")


_MATCHERS = [(method, _pattern(rule)) for method, rule, _, _ in TABLE]


def methods_for(path: str) -> set[str]:
    """The methods the API serves on a concrete path (empty for an unknown path)."""
    return {method for method, pattern in _MATCHERS if pattern.match(path)}
