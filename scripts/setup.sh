#!/usr/bin/env bash
# Create .venv with the pinned dependencies (and the test extras), and install
# the pinned Node tools (s3rver for the tests, the Serverless Framework).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  rm -f .venv/.installed-*; touch "$stamp"
fi
if [ "${1:-}" != "--python-only" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: Node.js and npm are required for the tests (s3rver) and deploys (serverless)" >&2; exit 1
  fi
  lockstamp=node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)
  if [ ! -f "$lockstamp" ]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch "$lockstamp"
  fi
fi
