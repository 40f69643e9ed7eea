"""The one table of the HTTP API: (method, Flask rule, core), resolved from ``functions.paths.TABLE``.

Flask mounts it (functions/app.py); on Lambda, serverless.yml routes each path
to its module's ``handler`` and everything else to ``functions/fallback``,
which answers from the same table.
"""

from __future__ import annotations

from importlib import import_module

from functions.paths import TABLE, methods_for  # noqa: F401  (methods_for: one import for callers)

ROUTES = [(method, rule, getattr(import_module(f"functions.{module}"), core)) for method, rule, module, core in TABLE]
