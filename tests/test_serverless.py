"""serverless.yml and the code agree: every route, every setting the functions read, a catch-all."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
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
                     "WECHAT_SUBSCRIBE_PAGE", "WECHAT_SUBSCRIBE_DATA", "WECHAT_MINIPROGRAM_STATE",
                     "MODERATION_OUTPUTS", "MODERATION_DEADLINE_S",
                     "RETENTION_DAYS", "RETENTION_UPLOADS_HOURS", "RETENTION_PREVIEWS"}


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


# -- IAM and VPC: what `serverless package` makes of deploy/aws.js ------------------------------

# The S3 client calls of shared/storage/s3.py and the IAM action each needs (HeadObject is not an
# action: it needs s3:GetObject; HeadBucket needs s3:ListBucket; multipart parts are s3:PutObject).
S3_CALL_ACTIONS = {
    "put_object": "s3:PutObject", "create_multipart_upload": "s3:PutObject", "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject", "abort_multipart_upload": "s3:AbortMultipartUpload",
    "head_object": "s3:GetObject", "get_object": "s3:GetObject", "delete_object": "s3:DeleteObject",
    "generate_presigned_url": "s3:GetObject", "generate_presigned_post": "s3:PutObject",
    "head_bucket": "s3:ListBucket",
}
# Every action the generated role may name: the Serverless Framework's log permissions and the above.
REAL_ACTIONS = {"logs:CreateLogStream", "logs:CreateLogGroup", "logs:TagResource", "logs:PutLogEvents",
                *S3_CALL_ACTIONS.values()}


def package(tmp_path, **env):
    """`serverless package` of this serverless.yml (and deploy/aws.js) with ``env``, in a copy of the
    service so the repository's .serverless/ stays as scripts/package-lambda.sh left it."""
    sls = ROOT / "node_modules" / ".bin" / "serverless"
    assert sls.exists(), "the Serverless Framework is missing: run bash scripts/setup.sh"
    (tmp_path / "deploy").mkdir()
    (tmp_path / "build").mkdir()
    shutil.copy(ROOT / "serverless.yml", tmp_path)
    shutil.copy(ROOT / "deploy" / "aws.js", tmp_path / "deploy")
    with zipfile.ZipFile(tmp_path / "build" / "lambda.zip", "w") as z:  # the artifact is only referenced
        z.writestr("functions/__init__.py", "")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VPC_", "STORAGE_URL", "AWS_"))}
    out = subprocess.run([str(sls), "package", "--stage", "ci", "--region", "us-east-1"], cwd=tmp_path,
                         env={**base, "AWS_ACCESS_KEY_ID": "package-only", "AWS_SECRET_ACCESS_KEY": "package-only",
                              "SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off", **env},
                         capture_output=True, text=True, timeout=300)
    template = tmp_path / ".serverless" / "cloudformation-template-update-stack.json"
    return out, json.loads(template.read_text()) if out.returncode == 0 else None


def role_statements(template):
    role = template["Resources"]["IamRoleLambdaExecution"]["Properties"]
    return [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def as_list(value):
    return value if isinstance(value, list) else [value]


def lambda_functions(template):
    return [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]


def test_the_s3_actions_cover_every_call_the_storage_makes():
    calls = set(re.findall(r"self\.client\.([a-z_]+)\(", (ROOT / "shared" / "storage" / "s3.py").read_text()))
    assert calls, "no S3 calls found in shared/storage/s3.py"
    assert calls - set(S3_CALL_ACTIONS) == set(), \
        f"new S3 calls {sorted(calls - set(S3_CALL_ACTIONS))}: add their IAM actions here and in deploy/aws.js"


def test_the_functions_may_use_only_their_bucket_and_sit_in_the_vpc_from_the_environment(tmp_path):
    out, template = package(tmp_path, STORAGE_URL="s3://gateway-images/prod/", VPC_SUBNET_IDS="subnet-0a1, subnet-0b2",
                            VPC_SECURITY_GROUP_IDS="sg-0c3")
    assert out.returncode == 0, out.stdout + out.stderr
    statements = role_statements(template)
    for s in statements:
        assert s["Effect"] == "Allow" and "*" not in as_list(s["Resource"]), s
        assert set(as_list(s["Action"])) <= REAL_ACTIONS, s
    s3 = {a: sorted(as_list(s["Resource"])) for s in statements for a in as_list(s["Action"]) if a.startswith("s3:")}
    objects = ["arn:aws:s3:::gateway-images/prod/*"]
    assert s3 == {"s3:GetObject": objects, "s3:PutObject": objects, "s3:DeleteObject": objects,
                  "s3:AbortMultipartUpload": objects, "s3:ListBucket": ["arn:aws:s3:::gateway-images"]}
    assert set(S3_CALL_ACTIONS.values()) <= set(s3)
    functions = lambda_functions(template)
    assert len(functions) == len(SLS["functions"])
    for f in functions:
        assert f["VpcConfig"] == {"SubnetIds": ["subnet-0a1", "subnet-0b2"], "SecurityGroupIds": ["sg-0c3"]}
    managed = json.dumps(template["Resources"]["IamRoleLambdaExecution"]["Properties"].get("ManagedPolicyArns"))
    assert "AWSLambdaVPCAccessExecutionRole" in managed  # the network interfaces a function in a VPC needs


def test_without_a_bucket_or_a_vpc_the_functions_get_neither(tmp_path):
    out, template = package(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    statements = role_statements(template)
    assert [a for s in statements for a in as_list(s["Action"]) if not a.startswith("logs:")] == []
    assert all("*" not in as_list(s["Resource"]) for s in statements)
    assert all("VpcConfig" not in f for f in lambda_functions(template))


@pytest.mark.parametrize("env, message", [
    ({"VPC_SUBNET_IDS": "subnet-0a1"}, "VPC_SUBNET_IDS and VPC_SECURITY_GROUP_IDS: set both"),
    ({"VPC_SUBNET_IDS": "subnet-0a1", "VPC_SECURITY_GROUP_IDS": "0c3"}, 'VPC_SECURITY_GROUP_IDS: "0c3" is not a sg-'),
    ({"STORAGE_URL": "s3://Not_A_Bucket/x"}, 'STORAGE_URL: "Not_A_Bucket" is not an S3 bucket name'),
])
def test_a_half_or_wrong_setting_stops_the_package(tmp_path, env, message):
    out, _ = package(tmp_path, **env)
    assert out.returncode != 0 and message in out.stdout + out.stderr, out.stdout + out.stderr
