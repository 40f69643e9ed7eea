#!/usr/bin/env bash
# Set up, then run the gateway locally: private MariaDB (unless DATABASE_URL is
# set), migrations, the API on 127.0.0.1:8000 and the listener. Ctrl-C stops all.
# Extra arguments go to `gateway dev` (e.g. --fake-comfyui, --bind 0.0.0.0:8000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --python-only
exec .venv/bin/gateway dev "$@"
