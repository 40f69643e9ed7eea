#!/usr/bin/env bash
# Set up, then run the whole test suite (real MariaDB, real s3rver, fake ComfyUI),
# then check that `serverless package` still builds the Lambda deployment.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTTP benchmark (bench/bench_door.py, run small by the suite) drives load with wrk.
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }) \
      || echo "test: could not install wrk; the benchmark test will fail" >&2
  else
    echo "test: wrk is needed by the benchmark test (apt-get install wrk, brew install wrk)" >&2
  fi
fi
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  bash scripts/package-lambda.sh
fi
