"""The deploy files work: the Dockerfile builds (without docker), the systemd units verify, nginx
accepts the example site and proxies through it, the compose file and the SCF bootstrap start
what they say, docs/deploy.md names only real settings."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from shared.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = {s.env for s in SETTINGS}
DEFAULTS = {s.env: s.default for s in SETTINGS}


def need(command: str, package: str, why: str) -> str:
    """The path of a system tool, installed with apt-get when running as root (scripts/test.sh's need)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(command, path=search)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", package]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        found = shutil.which(command, path=search)
    if found is None:
        pytest.fail(f"{why} needs {command}: apt-get install {package}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Answering(http.server.ThreadingHTTPServer):
    """A stand-in for `gateway serve`: answers every GET with ``status`` and echoes what it got."""

    daemon_threads = True

    def __init__(self, port: int):
        self.status = 200

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805
                body = json.dumps({"path": handler.path, "x_forwarded_for": handler.headers.get("X-Forwarded-For"),
                                   "x_forwarded_proto": handler.headers.get("X-Forwarded-Proto"),
                                   "x_request_id": handler.headers.get("X-Request-Id")}).encode()
                handler.send_response(self.status)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("X-Request-Id", "set-by-the-api")  # nginx sends its own, once
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


# -- Dockerfile ---------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def instruction(word: str) -> list[str]:
    return [rest for w, rest in dockerfile() if w == word]


def test_the_dockerfile_builds_without_docker():
    """scripts/check-dockerfile.sh runs the Dockerfile's COPY and RUN lines (scripts/docker-build.sh:
    a venv, pip install -c constraints.txt -e ., gateway --help, the import smoke test) on this machine."""
    need("python3.11", "python3.11", "scripts/check-dockerfile.sh (the image's Python)")
    if os.geteuid() != 0:
        pytest.fail("scripts/check-dockerfile.sh runs the image's useradd with --prefix, which needs root")
    out = subprocess.run(["bash", "scripts/check-dockerfile.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    log = out.stdout + "".join(line + "\n" for line in out.stderr.splitlines() if "is ignored: it is neither" not in line)
    assert out.returncode == 0, log
    assert "docker-build: ok" in out.stdout, log
    assert re.search(r"check-dockerfile: USER gateway is uid 10001, home /var/lib/comfy-gateway \(its own\)",
                     out.stdout), log
    assert "check-dockerfile: ok (gateway --help answers)" in out.stdout, log


def test_the_image_runs_both_commands_as_its_own_user_without_secrets():
    (base,) = instruction("FROM")
    assert base.strip() == "python:3.11-slim"
    assert json.loads(instruction("ENTRYPOINT")[-1]) == ["gateway"]
    assert json.loads(instruction("CMD")[-1]) == ["serve", "--bind", "0.0.0.0:8000"]
    user = instruction("USER")[-1].strip()
    assert user not in ("root", "0") and not user.startswith("0:")
    assert [r for r in instruction("RUN") if "docker-build.sh" in r] == ['sh scripts/docker-build.sh "$VENV"']
    # Nothing secret is baked in: no ENV/ARG that names a secret, a credential or the database.
    names = [p.split("=", 1)[0] for w in ("ENV", "ARG") for rest in instruction(w) for p in shlex.split(rest)]
    assert names and not [n for n in names if re.search(r"SECRET|TOKEN|PASSWORD|KEY|DATABASE_URL|AWS_|CREDENTIAL", n)]
    assert {n for n in names if n in SETTING_NAMES} <= {"STATE_DIR"}


def test_the_build_context_holds_what_the_dockerfile_copies():
    """.dockerignore excludes everything else, so each COPY source must be let in by a ! line."""
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = [src.rstrip("/") for rest in instruction("COPY") for src in shlex.split(rest)[:-1]]
    assert sources and set(sources) <= allowed, set(sources) - allowed
    for src in sources:
        assert (ROOT / src).exists(), src
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()  # everything else stays out


def test_the_healthcheck_tells_a_healthy_api_from_a_failing_one():
    (check,) = instruction("HEALTHCHECK")
    argv = json.loads(check.split("CMD", 1)[1])
    assert argv[0] == "python" and "http://127.0.0.1:8000/healthz" in argv[-1]
    port = free_port()
    argv = [sys.executable, *argv[1:-1], argv[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")]
    server = Answering(port)
    try:
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
        server.status = 503  # /healthz when the database or storage fails
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0
    finally:
        server.close()
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0  # nothing listening


# -- systemd ------------------------------------------------------------------------------------

UNITS = ["comfy-gateway.service", "comfy-gateway-listener.service"]


def unit(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize("name", UNITS)
def test_the_systemd_units_verify(name, tmp_path):
    """systemd-analyze verify, with the install path pointed at this checkout's venv (it checks
    that ExecStart is executable), and with no warning at all (an unknown key is only a warning)."""
    analyze = need("systemd-analyze", "systemd", "the systemd units' test")
    text = (ROOT / "deploy" / "systemd" / name).read_text()
    assert "/opt/comfy-gateway/.venv/bin/gateway" in text
    assert (ROOT / ".venv" / "bin" / "gateway").exists(), "run bash scripts/setup.sh first"
    copy = tmp_path / name
    copy.write_text(text.replace("/opt/comfy-gateway/.venv", str(ROOT / ".venv")))
    out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", out.stdout + out.stderr
    security = subprocess.run([analyze, "security", "--offline=true", str(copy)], capture_output=True, text=True,
                              timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout + security.stderr)
    assert level and float(level.group(1)) <= 2.0, security.stdout[-2000:]


@pytest.mark.parametrize("name, command", [(UNITS[0], "serve"), (UNITS[1], "listen")])
def test_the_units_run_the_gateway_as_a_dedicated_user(name, command):
    u = unit(name)
    assert u["User"] == ["comfy-gateway"] and u["EnvironmentFile"] == ["/etc/comfy-gateway/env"]
    assert u["Restart"] == ["on-failure"] and u["KillSignal"] == ["SIGTERM"]
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp"):
        assert u[key] == ["strict" if key == "ProtectSystem" else "yes"], key
    state = [v.split("=", 1)[1] for v in u["Environment"] if v.startswith("STATE_DIR=")]
    assert state == ["/var/lib/comfy-gateway"] and u["ReadWritePaths"] == state
    assert u["StateDirectory"] == ["comfy-gateway"]
    argv = shlex.split(u["ExecStart"][0])
    assert argv[:2] == ["/opt/comfy-gateway/.venv/bin/gateway", command]
    if command == "listen":  # its metrics, on loopback unless the operator picks a private address
        assert argv[2:] == ["--metrics-bind", "127.0.0.1:9100"]
    # The arguments parse: with no settings the command stops at the configuration check (exit
    # status 1), not at argparse (2).
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "STATE_DIR": "/tmp/unit-check"}
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "gateway"), *argv[1:]], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "configuration error: SECRET_KEY" in out.stderr, out.stderr


def test_the_units_wait_as_long_as_each_command_drains():
    door = (ROOT / "shared" / "door" / "__init__.py").read_text()
    graceful = int(re.search(r'"graceful_timeout":\s*(\d+)', door).group(1))
    seconds = {name: int(unit(name)["TimeoutStopSec"][0].rstrip("s")) for name in UNITS}
    assert seconds[UNITS[0]] > graceful  # gunicorn lets its workers finish, then exits
    assert seconds[UNITS[1]] > DEFAULTS["OUTPUT_COPY_DEADLINE_S"]  # the listener finishes the copies in progress
    assert unit(UNITS[0])["KillMode"] == ["mixed"]  # SIGTERM to gunicorn's arbiter, which stops its workers


# -- nginx --------------------------------------------------------------------------------------

def rewrite(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text)
    assert count == 1, f"deploy/nginx.conf no longer has one line matching {pattern!r}"
    return new


@pytest.fixture
def nginx_site(tmp_path):
    """deploy/nginx.conf on loopback ports with a self-signed certificate, and nginx -t's verdict."""
    nginx = need("nginx", "nginx", "the nginx site's test")
    openssl = need("openssl", "openssl", "the nginx site's test")
    tmp_path.chmod(0o755)  # nginx's workers (nobody, when the test runs as root) read and write here
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=api.example.com", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ports = {"tls": free_port(), "http": free_port(), "upstream": free_port()}
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = rewrite(site, r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};")
    site = rewrite(site, r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};")
    site = rewrite(site, r"access_log /var/log/nginx/gateway\.access\.log gateway;",
                   f"access_log {tmp_path}/access.log gateway;")
    site = rewrite(site, r"(?m)^(\s*)listen 443 ssl( http2)?;", f"\\1listen 127.0.0.1:{ports['tls']} ssl\\2;")
    site = rewrite(site, r"(?m)^(\s*)listen 80;", f"\\1listen 127.0.0.1:{ports['http']};")
    site = rewrite(site, r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{ports['upstream']};")
    (tmp_path / "site.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {tmp_path}/{kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(f"""daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
http {{
{temp}
    include {tmp_path}/site.conf;
}}
""")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / kind).mkdir(mode=0o777)
        (tmp_path / kind).chmod(0o777)
    argv = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")]
    test = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=60)
    return argv, ports, test, tmp_path


def test_nginx_accepts_the_example_site(nginx_site):
    _, _, test, _ = nginx_site
    assert test.returncode == 0 and "test is successful" in test.stderr, test.stderr
    body_cap = re.search(r"client_max_body_size (\d+)m;", (ROOT / "deploy" / "nginx.conf").read_text())
    assert int(body_cap.group(1)) * 1024 * 1024 > DEFAULTS["MAX_UPLOAD_BYTES"]  # an upload and its form fields


def test_nginx_proxies_to_the_api_and_answers_for_it_when_it_is_down(nginx_site):
    argv, ports, test, tmp_path = nginx_site
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    context.check_hostname = False

    def get(path: str, port: int = ports["tls"], scheme: str = "https", headers: dict | None = None):
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", headers={"Host": "api.example.com"})
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect())
        request.headers.update(headers or {})
        try:
            with opener.open(request, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["tls"]), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "error.log").read_text()
                time.sleep(0.05)
        status, headers, body = get("/v1/workflows")  # nothing behind nginx yet
        assert status == 503 and headers["Retry-After"] == "5"
        assert json.loads(body)["error"]["code"] == "backend_unavailable"
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])  # nginx's own answer carries its id
        status, headers, _ = get("/v1/workflows", headers={"X-Request-Id": "app-req.7"})
        assert status == 503 and headers.get_all("X-Request-Id") == ["app-req.7"]
        too_big = _raw_https(ports["tls"], context, "POST /v1/uploads HTTP/1.1\r\nHost: api.example.com\r\n"
                                                    "Content-Length: 50000000\r\nX-Request-Id: big-1\r\n"
                                                    "Connection: close\r\n\r\n")
        assert too_big.startswith(b"HTTP/1.1 413") and b"\r\nX-Request-Id: big-1\r\n" in too_big, too_big[:300]
        assert "nginx/" not in headers.get("Server", "")  # server_tokens off
        status, headers, _ = get("/healthz", ports["http"], "http")
        assert status == 301 and headers["Location"] == "https://api.example.com/healthz"
        server = Answering(ports["upstream"])
        try:
            status, headers, body = get("/v1/jobs/abc?signature=s3cret")
            assert status == 200
            echoed = json.loads(body)
            assert echoed["x_forwarded_for"] == "127.0.0.1" and echoed["x_forwarded_proto"] == "https"
            assert echoed["path"] == "/v1/jobs/abc?signature=s3cret"
            # nginx's id reaches the API and comes back, once (the API's echo is hidden)
            made = headers.get_all("X-Request-Id")
            assert len(made) == 1 and re.fullmatch(r"[0-9a-f]{32}", made[0]) and echoed["x_request_id"] == made[0]
            status, headers, body = get("/v1/jobs/abc", headers={"X-Request-Id": "app-req.8"})
            assert headers.get_all("X-Request-Id") == ["app-req.8"] and json.loads(body)["x_request_id"] == "app-req.8"
            status, headers, body = get("/v1/jobs/abc", headers={"X-Request-Id": "not sane!"})  # the API'd refuse it
            assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
            assert json.loads(body)["x_request_id"] == headers["X-Request-Id"]
            status, headers, _ = get("/metrics")  # from a private address: passed on (the API wants its token)
            assert status == 200 and headers.get_all("X-Request-Id") and headers["X-Request-Id"] != "set-by-the-api"
        finally:
            server.close()
        access = (tmp_path / "access.log").read_text()
        assert "/v1/jobs/abc" in access and "s3cret" not in access  # no query strings in the log
        assert made[0] in access and "app-req.8" in access and "big-1" in access  # the ids are in the log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _raw_https(port: int, context, request: str) -> bytes:
    """What nginx answers to a request written by hand (a body announced but never sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="api.example.com") as tls:
        tls.sendall(request.encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# -- docker compose, the env example, Tencent SCF ------------------------------------------------

def test_the_compose_file_runs_migrate_then_api_and_listener():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "migrate", "api", "listener"}
    for name in ("migrate", "api", "listener"):
        s = services[name]
        assert s["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert (ROOT / "deploy" / s["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
        assert s["env_file"] == ".env" and set(s["environment"]) <= SETTING_NAMES
        assert s["volumes"] == ["state:/var/lib/comfy-gateway"]  # the image's STATE_DIR
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert "command" not in services["api"]  # the image's CMD: serve --bind 0.0.0.0:8000
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["listener"]["command"] == ["listen", "--metrics-bind", "0.0.0.0:9100"]
    assert services["listener"]["expose"] == ["9100"] and "ports" not in services["listener"]  # not on the host
    assert services["listener"]["healthcheck"] == {"disable": True}
    for name in ("api", "listener"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert int(services["listener"]["stop_grace_period"].rstrip("s")) > DEFAULTS["OUTPUT_COPY_DEADLINE_S"]
    db_env = services["db"]["environment"]
    url = services["api"]["environment"]["DATABASE_URL"]
    assert url.startswith(f"mysql://{db_env['MARIADB_USER']}:") and url.endswith(f"@db:3306/{db_env['MARIADB_DATABASE']}")


def test_the_env_example_holds_real_settings_that_validate():
    from shared.config import Config
    values, commented = {}, set()
    for line in (ROOT / "deploy" / "env.example").read_text().splitlines():
        if re.match(r"^[A-Z_0-9]+=", line):
            key, _, value = line.partition("=")
            values[key] = value
        commented |= set(re.findall(r"#\s*([A-Z][A-Z_0-9]+)=", line))
    assert set(values) - {"DB_PASSWORD"} <= SETTING_NAMES, set(values) - SETTING_NAMES
    assert commented - {"DB_PASSWORD"} <= SETTING_NAMES, commented - SETTING_NAMES
    values.pop("DB_PASSWORD")
    cfg = Config.from_env({**values, "SECRET_KEY": "k" * 32})
    cfg.require_secret_key()
    assert cfg.storage_url.startswith("file:///var/lib/comfy-gateway/")


def test_the_scf_bootstrap_starts_the_api_on_port_9000(tmp_path):
    """What SCF asks of the file (#!/bin/bash, mode 755, LF endings), then what it runs: a stand-in
    Python records its arguments, working folder and environment."""
    bootstrap = ROOT / "deploy" / "tencent" / "scf_bootstrap"
    raw = bootstrap.read_bytes()
    assert raw.startswith(b"#!/bin/bash\n") and b"\r" not in raw and raw.endswith(b"\n")
    assert bootstrap.stat().st_mode & 0o777 == 0o755
    package = tmp_path / "user"  # the code package, as SCF unpacks it in /var/user
    package.mkdir()
    shutil.copy(bootstrap, package / "scf_bootstrap")
    record = tmp_path / "record.json"
    fake = tmp_path / "python3"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}}, "
                    f"open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "SCF_PYTHON": str(fake)}
    assert subprocess.run([str(package / "scf_bootstrap")], env=env, timeout=30).returncode == 0
    ran = json.loads(record.read_text())
    assert ran["argv"] == ["-m", "shared.cli", "serve", "--bind", "0.0.0.0:9000", "--workers", "1",
                           "--worker-class", "gthread", "--threads", "8"]
    assert ran["cwd"] == str(package)
    assert ran["env"]["PYTHONPATH"].split(":")[:2] == [str(package), f"{package}/vendor"]
    assert ran["env"]["STATE_DIR"].startswith("/tmp/")  # the only writable folder there
    # Without a Python 3.11+ runtime it says so instead of starting something that cannot work.
    out = subprocess.run([str(package / "scf_bootstrap")], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "Python 3.11+" in out.stderr


# -- docs/deploy.md ------------------------------------------------------------------------------

def test_the_deploy_guide_names_only_real_settings_and_files():
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})(?:=[^`]*)?`", guide))
    other = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "VPC_SUBNET_IDS", "VPC_SECURITY_GROUP_IDS",
             "DB_PASSWORD", "SCF_PYTHON", "GATEWAY_WORKERS", "GATEWAY_THREADS"}
    assert named and named - other <= SETTING_NAMES, sorted(named - other - SETTING_NAMES)
    for path in re.findall(r"\]\(\.\./([^)#]+)\)", guide):
        assert (ROOT / path).exists(), path
    for heading in ("## AWS", "## Tencent Cloud", "## A single VM with docker"):
        section = guide.split(heading, 1)[1].split("\n## ", 1)[0]
        for must in ("gateway migrate", "/healthz", "listen"):
            assert must in section, f"{heading} does not say {must!r}"


def test_the_scf_package_serves_the_api_on_port_9000_without_gevent(tmp_path):
    """deploy/tencent/package-scf.sh builds the code package (manylinux2014 wheels, no gevent); its
    scf_bootstrap, run by a bare Python 3.11 (-S: no site-packages, only the package's vendor/),
    answers /healthz on port 9000, in a network namespace of its own (port 9000 may be taken here)."""
    python = need("python3.11", "python3.11", "the SCF package's test")
    ip = need("ip", "iproute2", "the SCF package's test")
    if os.geteuid() != 0:
        pytest.fail("the SCF package's test runs the bootstrap in its own network namespace (unshare --net): run as root")
    out = subprocess.run(["bash", "deploy/tencent/package-scf.sh", str(tmp_path / "scf")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "package-scf: ok" in out.stdout, out.stdout + out.stderr
    with zipfile.ZipFile(tmp_path / "scf.zip") as z:
        assert z.getinfo("scf_bootstrap").external_attr >> 16 & 0o777 == 0o755
        names = z.namelist()
    assert "shared/cli.py" in names and "sql/0001_init.sql" in names and "workflows/txt2img.json" in names
    assert not [n for n in names if n.startswith(("vendor/gevent/", "vendor/greenlet/"))]
    bare = tmp_path / "python3"
    bare.write_text(f"#!/bin/sh\nexec {python} -S \"$@\"\n")
    bare.chmod(0o755)
    probe = ("import json, sys, time, urllib.error, urllib.request\n"
             "for _ in range(100):\n"
             "    try:\n"
             "        urllib.request.urlopen('http://127.0.0.1:9000/healthz', timeout=2)\n"
             "    except urllib.error.HTTPError as e:\n"
             "        print(e.code, json.dumps(json.load(e))); sys.exit(0)\n"
             "    except OSError:\n"
             "        time.sleep(0.1)\n"
             "sys.exit('nothing answered on 9000')\n")
    script = (f"{ip} link set lo up; {tmp_path}/scf/scf_bootstrap & pid=$!; "
              f"{sys.executable} -c {shlex.quote(probe)}; status=$?; kill $pid; wait $pid; exit $status")
    env = {"PATH": "/usr/bin:/bin", "SCF_PYTHON": str(bare), "SECRET_KEY": "k" * 32,
           "DATABASE_URL": "mysql://gateway:pw@127.0.0.1:1/gateway", "STATE_DIR": str(tmp_path / "state")}
    run = subprocess.run(["unshare", "--net", "sh", "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    status, body = run.stdout.strip().splitlines()[-1].split(" ", 1)
    assert status == "503" and json.loads(body)["database"] == "unavailable"  # served: no database here
