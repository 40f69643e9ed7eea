"""GET /v1/openapi.json: the OpenAPI 3.0.3 description of the API (no token needed)."""

from shared.http import json_response, lambda_handler
from shared.openapi import load_spec


def get_openapi(ctx, req):
    return json_response(200, load_spec(), {"Cache-Control": "public, max-age=300"})


handler = lambda_handler(get_openapi)
