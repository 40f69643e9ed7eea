#!/bin/sh
# The image's build step, kept in one script so that CI runs exactly what docker runs: the
# Dockerfile RUNs it, and scripts/check-dockerfile.sh runs the Dockerfile's RUN lines (this one
# included) on the host in a temporary directory. Also the install step of a VM (docs/deploy.md).
#
#   sh scripts/docker-build.sh VENV      (from the source tree: pyproject.toml, constraints.txt, ...)
#
# Makes a virtualenv at VENV and installs the gateway with its pinned dependencies. The install
# is editable (-e): the code reads sql/, workflows/ and functions/demo/ next to itself (shared/
# shared/config's PROJECT_ROOT), so the source tree stays where it is and the venv points at it.
# Then a smoke test, run from / so that the source tree is not on sys.path by accident.
set -eu
venv=${1:?usage: sh scripts/docker-build.sh VENV}
src=$(pwd)
case $venv in /*) ;; *) venv=$src/$venv ;; esac
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "docker-build: Python 3.11 or newer is required" >&2; exit 1; }
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e .
cd /
"$venv/bin/gateway" --help >/dev/null
"$venv/bin/python" - "$src" <<'PY'
import sys
from pathlib import Path

import functions.app
import listener.connection
import shared.cli
from shared.config import PROJECT_ROOT, Config
from shared.migrate import SQL_DIR
from shared.workflows import load_workflows

src = Path(sys.argv[1]).resolve()
assert PROJECT_ROOT == src, f"the gateway imports from {PROJECT_ROOT}, not from {src}"
assert sorted(SQL_DIR.glob("*.sql")), f"no schema files in {SQL_DIR}"
workflows, problems = load_workflows(Config.from_env({}).workflows_dir)
assert workflows and not problems, f"workflows: {sorted(workflows)} problems: {problems}"
functions.app.create_app()
print(f"docker-build: ok ({len(workflows)} workflows, {len(list(SQL_DIR.glob('*.sql')))} schema files)")
PY
