"""A private MariaDB/MySQL server for `gateway dev` and the tests.

When ``DATABASE_URL`` is not set, the gateway starts the machine's own server
binary (``mariadbd`` or ``mysqld``) on a free loopback port with a data folder
under the state directory, and stops it on exit. Nothing is installed here:
if no server binary exists, ``LocalDatabaseError`` says how to get one.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pymysql

from shared.config import DatabaseUrl

log = logging.getLogger(__name__)

INSTALL_HINT = ("no MariaDB/MySQL server binary found (mariadbd or mysqld). Install one, e.g. "
                "`sudo apt-get install mariadb-server` or `brew install mariadb`, "
                "or set DATABASE_URL=mysql://user:pass@host:port/db")


class LocalDatabaseError(RuntimeError):
    """The private server could not be found or started."""


def _find(*names: str) -> str | None:
    extra = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/opt/homebrew/bin"])
    path = os.environ.get("PATH", "") + os.pathsep + extra
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalDatabase:
    """One private server process with its data folder."""

    def __init__(self, datadir: str | Path, *, port: int | None = None):
        self.datadir = Path(datadir).resolve()
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> DatabaseUrl:
        return DatabaseUrl(host="127.0.0.1", port=self.port, user="root", password="", database="gateway")

    def _initialize(self, server: str) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        installer = _find("mariadb-install-db", "mysql_install_db")
        base = ["--no-defaults", f"--datadir={self.datadir}"]
        if installer and _is_mariadb(server):
            cmd = [installer, *base, "--auth-root-authentication-method=normal", "--skip-test-db",
                   f"--user={_user()}"]
        else:  # MySQL 8: the server initialises itself
            cmd = [server, *base, "--initialize-insecure", f"--user={_user()}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalDatabaseError(f"initialising {self.datadir} failed: {result.stderr[-2000:]}")

    def start(self, timeout: float = 60.0) -> DatabaseUrl:
        """Start the server and wait until it answers; return its URL."""
        server = _find("mariadbd", "mysqld")
        if not server:
            raise LocalDatabaseError(INSTALL_HINT)
        self._initialize(server)
        log_path = self.datadir.parent / "mysql.log"
        cmd = [server, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
               "--bind-address=127.0.0.1", f"--socket={self.datadir / 'mysqld.sock'}",
               f"--pid-file={self.datadir / 'mysqld.pid'}", f"--user={_user()}",
               "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--max-connections=500",
               "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin"]
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalDatabaseError(f"the database server exited; see {log_path}")
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                                       connect_timeout=1)
            except pymysql.err.OperationalError:
                time.sleep(0.2)
                continue
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE IF NOT EXISTS gateway CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            conn.close()
            log.info("private database on 127.0.0.1:%s (data in %s)", self.port, self.datadir)
            return self.url
        self.stop()
        raise LocalDatabaseError(f"the database server did not answer within {timeout:.0f}s; see {log_path}")

    def stop(self) -> None:
        """Stop the server (politely, then by force)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _is_mariadb(server: str) -> bool:
    try:
        out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "mariadb" in out.lower()


def _user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "root")
