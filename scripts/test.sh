#!/usr/bin/env bash
# Set up, then run the whole test suite (real MariaDB, real s3rver, fake ComfyUI),
# then check that `serverless package` still builds the Lambda deployment.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  bash scripts/package-lambda.sh
fi
