"""GET /metrics: the API's Prometheus metrics, for the operator token only.

`gateway serve` only (functions/app.py mounts it beside the table of routes): its workers'
counters are added up at each scrape (shared/metrics.py). Lambda has no /metrics (a function
keeps no counters between invocations); there the listener's --metrics-bind and CloudWatch say
what is going on.
"""

from shared import metrics
from shared.auth import require_admin
from shared.http import Response


def get_metrics(ctx, req):
    require_admin(ctx, req)
    body, content_type = metrics.render(req.header("accept"))
    return Response(status=200, body=body, content_type=content_type, headers={"Cache-Control": "no-store"})
