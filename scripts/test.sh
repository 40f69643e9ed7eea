#!/usr/bin/env bash
# Set up, then run the whole test suite (real MariaDB, real s3rver, fake ComfyUI),
# then check that `serverless package` still builds the Lambda deployment.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# System tools some tests drive: installed with apt-get when this runs as root on Debian/Ubuntu.
need() {  # need COMMAND PACKAGE WHY
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (export DEBIAN_FRONTEND=noninteractive
     apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }) \
      || echo "test: could not install $2; $3 will fail" >&2
  else
    echo "test: $3 needs $1 (apt-get install $2)" >&2
  fi
}
need wrk wrk "the HTTP benchmark's test (tests/test_door.py)"
need chromium chromium "the demo page's browser test (tests/test_demo_browser.py)"
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  bash scripts/package-lambda.sh
fi
