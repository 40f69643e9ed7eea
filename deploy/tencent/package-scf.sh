#!/usr/bin/env bash
# Build the code package of a Tencent Cloud SCF web function: OUT/ (default build/scf) holds
# scf_bootstrap, the code, sql/, workflows/ and the pinned dependencies in vendor/, and OUT.zip is
# what to upload. SCF's standard environment is CentOS 7 (glibc 2.17): the wheels are
# manylinux2014 ones for CPython 3.11, and gevent, which has none, is left out (scf_bootstrap
# runs the gthread worker). Needs .venv (bash scripts/setup.sh --python-only). See docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/scf}
rm -rf "$out" "$out.zip"
mkdir -p "$out"
cp -R shared functions listener sql workflows "$out/"
find "$out" -name __pycache__ -prune -exec rm -rf {} +
install -m 755 deploy/tencent/scf_bootstrap "$out/scf_bootstrap"
deps=$(.venv/bin/python -c '
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if not d.lower().startswith("gevent")))')
# shellcheck disable=SC2086  # one word per requirement
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --target "$out/vendor" \
  --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp --only-binary=:all: \
  $deps 2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/python - "$out" <<'PY'
import pathlib, sys, zipfile
root = pathlib.Path(sys.argv[1])
with zipfile.ZipFile(f"{root}.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            z.write(path, path.relative_to(root).as_posix())  # keeps the mode: scf_bootstrap stays 755
PY
echo "package-scf: ok ($(du -h "$out.zip" | cut -f1) $out.zip)"
