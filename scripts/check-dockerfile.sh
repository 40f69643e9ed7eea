#!/usr/bin/env bash
# Build the Dockerfile without docker: run its COPY and RUN lines, in order and with its ENV, on
# this machine inside a temporary directory that stands for the image's root. The build step
# itself is scripts/docker-build.sh (a venv, `pip install -c constraints.txt -e .`, `gateway
# --help`, an import smoke test), so what CI runs here is exactly what `docker build` runs.
#
#   bash scripts/check-dockerfile.sh          (KEEP=1 keeps the directory and prints its path)
#
# The image's paths (/app, /opt/gateway, /var/lib/...) live under the temporary root; system
# paths (/usr, /bin, /etc ...) are the host's: the host's python3.11 stands for the base image's
# (the FROM line's version is required), and groupadd/useradd run with --prefix on a copy of the
# host's /etc, which needs root. pip's cache is reused (the Dockerfile turns it off only in the image).
# Only the instructions the Dockerfile uses are understood; anything else is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/check-dockerfile.XXXXXX")
if [ "${KEEP:-}" = 1 ]; then echo "check-dockerfile: keeping $rootfs"; trap 'rm -f "$rootfs.steps.sh"' EXIT
else trap 'rm -rf "$rootfs" "$rootfs.steps.sh"' EXIT; fi

python3 - "$rootfs" > "$rootfs.steps.sh" <<'PY'
"""Translate the Dockerfile into a shell script that builds under ROOTFS."""
import json
import posixpath
import re
import shlex
import sys

ROOTFS = sys.argv[1]
SYSTEM = ("/usr/", "/bin", "/sbin", "/lib", "/etc/", "/dev/", "/proc/", "/tmp")
IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"  # python:*-slim's PATH


def die(message):
    sys.exit(f"check-dockerfile: Dockerfile: {message}")


def lines(text):
    """Logical instructions: continuations joined, comments and blank lines dropped."""
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            yield current.strip()
        current = ""
    if current.strip():
        die("the last instruction ends with a backslash")


def expand(value, env):
    """Docker's $VAR / ${VAR} substitution in ENV, WORKDIR and COPY."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def host(path):
    """An image path on this machine: the image's own directories move under ROOTFS."""
    if not path.startswith("/") or path.startswith(SYSTEM) or path == "/":
        return path
    return ROOTFS + path


def host_value(key, value):
    return ":".join(host(part) for part in value.split(":")) if key == "PATH" else host(value)


env = {"PATH": IMAGE_PATH}
workdir = "/"
python = None
out = ["set -eu", f"export ROOTFS={shlex.quote(ROOTFS)}",
       'mkdir -p "$ROOTFS/etc" "$ROOTFS/.host"',
       'for f in passwd group shadow gshadow login.defs; do [ ! -e /etc/$f ] || cp /etc/$f "$ROOTFS/etc/"; done']
with open("Dockerfile", encoding="utf-8") as f:
    instructions = list(lines(f.read()))
for line in instructions:
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "FROM":
        m = re.fullmatch(r"python:(3\.\d+)-slim(?:-\w+)?", rest.strip())
        if not m or python:
            die(f"one FROM python:3.X-slim expected, found {rest!r}")
        python = f"python{m.group(1)}"
        out.append(f"command -v {python} >/dev/null || {{ echo 'check-dockerfile: {python} is needed (the Python of "
                   f"the image)' >&2; exit 1; }}")
        out.append(f"ln -s \"$({python} -c 'import sys; print(sys.executable)')\" \"$ROOTFS/.host/python3\"; "
                   'ln -s python3 "$ROOTFS/.host/python"')
        # groupadd/useradd work on the copy of /etc under ROOTFS, with the image's paths.
        for tool in ("groupadd", "useradd"):
            out.append(f"cat > \"$ROOTFS/.host/{tool}\" <<'SH'\n#!/bin/sh\n"
                       'for a; do shift; set -- "$@" "${a#"$ROOTFS"}"; done\n'
                       f'exec /usr/sbin/{tool} --prefix "$ROOTFS" "$@"\nSH\nchmod +x "$ROOTFS/.host/{tool}"')
    elif word == "ENV":
        parts = shlex.split(rest)
        if not parts or not all("=" in p for p in parts):
            die(f"ENV must be KEY=VALUE pairs: {line!r}")
        for p in parts:
            key, _, value = p.partition("=")
            env[key] = expand(value, env)
    elif word == "WORKDIR":
        workdir = expand(rest.strip(), env)
        if not workdir.startswith("/"):
            die("WORKDIR must be absolute")
        out.append(f"mkdir -p {shlex.quote(host(workdir))}")
    elif word == "COPY":
        parts = [expand(p, env) for p in shlex.split(rest)]
        if any(p.startswith("--") for p in parts) or len(parts) < 2:
            die(f"COPY SRC... DEST without flags expected: {line!r}")
        *sources, dest = parts
        directory = dest.endswith("/") or len(sources) > 1
        dest = posixpath.normpath(dest if dest.startswith("/") else workdir + "/" + dest) + ("/" if directory else "")
        target = host(dest)
        out.append(f"mkdir -p {shlex.quote(target if dest.endswith('/') else target.rsplit('/', 1)[0])}")
        for src in sources:
            if src.startswith("/") or ".." in src.split("/"):
                die(f"COPY from outside the build context: {src!r}")
            if src.endswith("/"):  # a directory's contents, as docker copies them
                out.append(f"cp -R {shlex.quote(src)}. {shlex.quote(target)}")
            else:
                out.append(f"cp -R {shlex.quote(src)} {shlex.quote(target)}")
        out.append(f"find {shlex.quote(target)} -name __pycache__ -prune -exec rm -rf {{}} +")  # .dockerignore
    elif word == "RUN":
        if rest.lstrip().startswith("["):
            die("RUN in exec form is not supported here; use the shell form")
        exports = " ".join(f"{k}={shlex.quote(host_value(k, v))}" for k, v in env.items()
                           if k not in ("PATH", "PIP_NO_CACHE_DIR"))  # here pip's cache is reused
        path = '"$ROOTFS/.host":' + shlex.quote(host_value("PATH", env["PATH"]))
        out.append(f"echo {shlex.quote('check-dockerfile: RUN ' + rest)}")
        out.append(f"(cd {shlex.quote(host(workdir))} && env {exports} PATH={path} /bin/sh -c {shlex.quote(rest)})")
    elif word == "USER":  # a non-root user the RUN lines made, owning its home (STATE_DIR)
        user = rest.strip().split(":")[0]
        check = """entry=$(awk -F: -v u=NAME '$1 == u && $3 != 0 {print $3 " " $6}' "$ROOTFS/etc/passwd")
[ -n "$entry" ] || { echo "check-dockerfile: USER NAME is not a non-root user of the image" >&2; exit 1; }
[ "$(stat -c %u "$ROOTFS${entry#* }")" = "${entry%% *}" ] || { echo "check-dockerfile: the home of NAME is not its own" >&2; exit 1; }
echo "check-dockerfile: USER NAME is uid ${entry%% *}, home ${entry#* } (its own)"
"""
        out.append(check.replace("NAME", shlex.quote(user)).rstrip())
    elif word in ("EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD", "LABEL"):
        pass  # run-time settings: tests/test_deploy.py checks them
    else:
        die(f"{word} is not understood by scripts/check-dockerfile.sh")
if python is None:
    die("no FROM line")
entry = next((json.loads(l.partition(" ")[2]) for l in instructions if l.upper().startswith("ENTRYPOINT ")), None)
if entry:  # the image's command, on the image's PATH, answers
    path = shlex.quote(host_value("PATH", env["PATH"]))
    out.append(f"env PATH={path} {shlex.join(entry)} --help >/dev/null")
    out.append(f"echo 'check-dockerfile: ok ({shlex.join(entry)} --help answers)'")
print("\n".join(out))
PY
bash "$rootfs.steps.sh"
