"""The one table of the HTTP API: (method, Flask rule, core).

Flask mounts it (functions/app.py); on Lambda, serverless.yml routes each path
to its module's ``handler`` and everything else to ``functions/fallback``,
which answers from this table too.
"""

from __future__ import annotations

import re

from functions import auth, cancel, files, health, jobs, openapi, result, status, submit, uploads, usage, workflows

# (method, Flask rule, core)
ROUTES = [
    ("POST", "/v1/auth/wechat", auth.wechat_login),
    ("POST", "/v1/auth/dev", auth.dev_login),
    ("GET", "/v1/workflows", workflows.list_workflows),
    ("POST", "/v1/jobs", submit.submit_job),
    ("GET", "/v1/jobs", jobs.list_jobs),
    ("GET", "/v1/jobs/<id>", status.get_status),
    ("POST", "/v1/jobs/<id>/cancel", cancel.cancel_job),
    ("GET", "/v1/jobs/<id>/result", result.get_result),
    ("POST", "/v1/uploads", uploads.new_upload),
    ("GET", "/v1/files/<path:key>", files.download),
    ("POST", "/v1/files", files.upload),
    ("GET", "/v1/usage", usage.list_usage),
    ("GET", "/healthz", health.health),
    ("GET", "/v1/openapi.json", openapi.get_openapi),
]


def _pattern(rule: str) -> re.Pattern:
    parts = re.split(r"(<(?:path:)?[a-z_]+>)", rule)
    return re.compile("".join(("(.+)" if p.startswith("<path:") else "([^/]+)") if p.startswith("<") else re.escape(p)
                              for p in parts) + "$")


_MATCHERS = [(method, _pattern(rule)) for method, rule, _ in ROUTES]


def methods_for(path: str) -> set[str]:
    """The methods the API serves on a concrete path (empty for an unknown path)."""
    return {method for method, pattern in _MATCHERS if pattern.match(path)}
