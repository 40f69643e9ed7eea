#!/usr/bin/env bash
# Build the Lambda deployment: build/lambda.zip holds functions/, shared/,
# workflows/ and the pinned runtime dependencies the functions import (boto3
# comes with the Lambda runtime); then `serverless package` writes the
# CloudFormation template into .serverless/. Needs no AWS account.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf build/lambda build/lambda.zip .serverless
mkdir -p build/lambda
# Wheels for the Lambda runtime (python3.11, x86_64, Amazon Linux 2: glibc 2.26), not for this
# machine: left to itself pip would pick cryptography's manylinux_2_34 wheel, which cannot load there.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
  --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp --only-binary=:all: \
  --target build/lambda pymysql requests cryptography 2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/python - <<'PY'
import pathlib, zipfile
root = pathlib.Path(".")
with zipfile.ZipFile("build/lambda.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for top in ("functions", "shared", "workflows"):
        for path in sorted(root.joinpath(top).rglob("*")):
            # (app.py, shared/door/ and the /demo page are the gunicorn door only: not on Lambda)
            if path.is_file() and "__pycache__" not in path.parts and path.name != "app.py" and not {"door", "demo"} & set(path.parts):
                z.write(path, path.as_posix())
    deps = root / "build" / "lambda"
    for path in sorted(deps.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            z.write(path, path.relative_to(deps).as_posix())
PY
AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-package-only} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-package-only} \
  SLS_TELEMETRY_DISABLED=1 SLS_NOTIFICATIONS_MODE=off \
  node_modules/.bin/serverless package --stage ci --region us-east-1 > build/serverless-package.log 2>&1 \
  || { cat build/serverless-package.log; echo "serverless package failed" >&2; exit 1; }
test -f .serverless/cloudformation-template-update-stack.json
echo "serverless package: ok ($(du -h build/lambda.zip | cut -f1) build/lambda.zip, $(grep -c '"AWS::Lambda::Function"' .serverless/cloudformation-template-update-stack.json) functions)"
