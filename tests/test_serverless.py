"""serverless.yml and the code agree: every route, every setting the functions read, a catch-all."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from functions import fallback
from functions.routes import ROUTES
from shared.config import SETTINGS, Config, ConfigError
from shared.http import lambda_handler

ROOT = Path(__file__).resolve().parent.parent
SLS = yaml.safe_load((ROOT / "serverless.yml").read_text(encoding="utf-8"))
LOCAL_ONLY_ROUTES = {"/v1/files", "/v1/files/<path:key>"}  # local-folder storage: not on Lambda
# Read by the listener only (it never runs on Lambda), or by `gateway serve` only.
NOT_ON_LAMBDA = {"PROGRESS_INTERVAL", "PREVIEW_INTERVAL", "HISTORY_RETRY_S", "RECONNECT_MAX_S",
                     "RECONCILE_INTERVAL_S", "WATCHDOG_S", "QUEUE_TIMEOUT_S", "RUN_TIMEOUT_S",
                     "OUTPUT_COPY_DEADLINE_S", "TRUSTED_PROXIES", "CAPABILITIES_REFRESH_S", "LOST_JOB_RETRIES",
                     "DISPATCH_SWEEP_S", "DB_POOL_SIZE", "KEEP_COMFY_METADATA",
                     "AIGC_PROVIDER", "WEBHOOK_URL", "WEBHOOK_SECRET", "WECHAT_SUBSCRIBE_TEMPLATE_ID",
                     "WECHAT_SUBSCRIBE_PAGE", "WECHAT_SUBSCRIBE_DATA", "WECHAT_MINIPROGRAM_STATE"}


def events():
    for name, fn in SLS["functions"].items():
        for event in fn["events"]:
            yield name, fn["handler"], event["httpApi"]


def test_every_route_has_its_function():
    mapped = {(e["method"], e["path"]): handler for _, handler, e in events() if isinstance(e, dict)}
    for method, rule, core in ROUTES:
        if rule in LOCAL_ONLY_ROUTES:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)
        handler = mapped.pop((method, path), None)
        assert handler, f"{method} {path} has no function in serverless.yml"
        module, attr = handler.rsplit(".", 1)
        mod = __import__(module.replace("/", "."), fromlist=[attr])
        assert getattr(mod, attr).core is core, f"{method} {path} -> {handler} is not {core.__name__}"
    assert mapped == {}, f"functions for routes the app does not have: {mapped}"


def test_unknown_routes_and_methods_have_a_catch_all():
    catch_all = [handler for _, handler, e in events() if e == "*"]
    assert catch_all == ["functions/fallback.handler"]


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nowhere", 404, "not_found"),
    ("DELETE", "/v1/jobs", 405, "method_not_allowed"),
    ("PUT", "/v1/jobs/abc", 405, "method_not_allowed"),
    ("GET", "/v1/jobs/abc/cancel", 405, "method_not_allowed"),
    ("GET", "/v1/files/users/x/a.png", 404, "not_found"),  # local storage's route, not served on Lambda
])
def test_the_fallback_answers_in_the_contract_shape(method, path, status, code):
    event = {"version": "2.0", "rawPath": path, "rawQueryString": "", "headers": {},
             "requestContext": {"http": {"method": method, "path": path, "sourceIp": "203.0.113.1"}}}
    out = lambda_handler(fallback.no_route)(event, None)
    assert out["statusCode"] == status
    assert json.loads(out["body"])["error"]["code"] == code


def test_every_setting_the_functions_read_is_passed_to_lambda():
    env = set(SLS["provider"]["environment"])
    wanted = {s.env for s in SETTINGS} - NOT_ON_LAMBDA
    assert wanted - env == set(), f"missing in serverless.yml: {sorted(wanted - env)}"
    assert env - {s.env for s in SETTINGS} == set(), "serverless.yml sets variables the code does not read"


@pytest.mark.parametrize("env, variable", [
    ({"DATABASE_URL": "mysql://u:p@db/gw", "STORAGE_URL": "s3://b/p"}, "SECRET_KEY"),
    ({"SECRET_KEY": "k" * 32, "STORAGE_URL": "s3://b/p"}, "DATABASE_URL"),
    ({"SECRET_KEY": "k" * 32, "DATABASE_URL": "mysql://u:p@db/gw"}, "STORAGE_URL"),
    ({"SECRET_KEY": "k" * 32, "DATABASE_URL": "mysql://u:p@db/gw", "STORAGE_URL": "file:///tmp/x"}, "STORAGE_URL"),
])
def test_lambda_refuses_what_it_cannot_run_with(env, variable):
    with pytest.raises(ConfigError, match=f"^{variable}:"):
        Config.from_env(env).require_lambda_ready()
    Config.from_env({"SECRET_KEY": "k" * 32, "DATABASE_URL": "mysql://u:p@db/gw",
                     "STORAGE_URL": "s3://b/p"}).require_lambda_ready()
