"""`gateway serve`: the HTTP API under gunicorn, shaped for phones on weak networks.

Phones are slow clients: a request whose headers or body arrive a byte at a time
must not hold anything scarce. The default worker is gunicorn's gevent worker
(``-k gevent``): every open connection is a greenlet, so hundreds of slow or idle
sockets cost a little memory each, not a thread. pymysql, requests, boto3 and
websocket-client are pure Python and yield to the loop on I/O once gevent has
patched the standard library (the worker does that before it loads the app).
The MySQL connections stay bounded by ``DB_POOL_SIZE`` per worker
(``shared.db.Database``): a request borrows one only while it queries.

``--worker-class gthread`` keeps the previous thread-pool worker (each request
in progress holds one of ``--threads`` threads).

Both worker classes add what gunicorn's own do not:

* errors gunicorn answers itself (a malformed request line, headers too large:
  400, 431, 501) come in the contract's JSON error shape, not HTML;
* no ``Server`` header: nothing tells a scanner which server and version to try;
* the access log never shows a signature: the query values of signed links
  (local-storage ``signature``, S3's ``X-Amz-Signature``/``X-Amz-Credential``/
  ``X-Amz-Security-Token``) are written as ``[redacted]``;
* its own error answers carry an ``X-Request-Id`` like the app's, and with
  ``LOG_FORMAT=json`` its lines are JSON like every other (``shared.logs``);
* the workers' Prometheus metrics are added up at each scrape of ``/metrics``
  (prometheus_client's multiprocess mode, in ``PROMETHEUS_MULTIPROC_DIR``: a
  temporary folder made at start, or the one given, emptied at start).

Operators still put a reverse proxy in front (TLS, buffering of slow uploads,
timeouts): ``deploy/nginx.conf`` and the README's "Serving" section.
"""

from __future__ import annotations

import json

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.http import wsgi

from shared.logs import JsonFormatter, redact, request_id  # noqa: F401  (redact: used here since before shared.logs)

WORKER_CLASSES = {"gevent": "shared.door.evented.GeventWorker", "gthread": "shared.door.threaded.ThreadWorker"}

class RedactingLogger(Logger):
    """gunicorn's logger, with signatures taken out of every access-log field; with LOG_FORMAT=json
    its error and access lines are JSON objects like every other line (``shared.logs``)."""

    log_format = "text"  # set by Server before gunicorn starts (workers inherit it)

    def setup(self, cfg):
        super().setup(cfg)
        if self.log_format == "json":
            for handler in self.error_log.handlers + self.access_log.handlers:
                handler.setFormatter(JsonFormatter())

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "q", "f", "{referer}i"):
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms


class QuietResponse(wsgi.Response):
    """gunicorn's response without the ``Server`` header."""

    def default_headers(self):
        return [line for line in super().default_headers() if not line.startswith("Server:")]


def error_response(status: int, reason: str, message: str, code: str = "invalid_params",
                   request_id: str | None = None) -> bytes:
    """A complete HTTP/1.1 error response in the contract's shape (for errors before the app runs)."""
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=True).encode("ascii")
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + (f"X-Request-Id: {request_id}\r\n" if request_id else "")
            + f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


# gunicorn's own refusals, by exception class name: (status, reason, code, message); anything else
# it cannot parse is 400. The message never echoes what the client sent (it goes to a log too).
_REFUSALS = {
    "LimitRequestHeaders": (431, "Request Header Fields Too Large", "invalid_params", "request headers are too large"),
    "LimitRequestLine": (414, "URI Too Long", "invalid_params", "request line is too long"),
    "UnsupportedTransferCoding": (501, "Not Implemented", "invalid_params", "unsupported Transfer-Encoding"),
    "ForbiddenProxyRequest": (403, "Forbidden", "forbidden", "request forbidden"),
    "ConfigurationProblem": (500, "Internal Server Error", "internal_error", "internal error"),
    "InvalidHeader": (400, "Bad Request", "invalid_params", "malformed HTTP request header"),
    "InvalidHeaderName": (400, "Bad Request", "invalid_params", "malformed HTTP request header"),
    "ObsoleteFolding": (400, "Bad Request", "invalid_params", "malformed HTTP request header"),
}
_BAD_REQUEST = (400, "Bad Request", "invalid_params", "malformed HTTP request")


class ContractErrors:
    """A worker mixin: gunicorn's error answers in the contract's shape, and no Server header."""

    def init_process(self):
        wsgi.Response = QuietResponse  # gunicorn builds each response through this module name
        super().init_process()

    def handle_error(self, req, client, addr, exc):
        import ssl

        from gunicorn.http.errors import ParseException
        if not isinstance(exc, (ParseException, ssl.SSLError)):
            return super().handle_error(req, client, addr, exc)  # a crash: gunicorn logs it, answers 500
        status, reason, code, message = _REFUSALS.get(type(exc).__name__, _BAD_REQUEST)
        if req is None and hasattr(exc, "req"):
            req = exc.req
        rid = request_id(next((v for k, v in getattr(req, "headers", None) or () if k == "X-REQUEST-ID"), None))
        self.log.warning("refused a request from ip=%s: %s", (addr or ("",))[0], type(exc).__name__,
                         extra={"request_id": rid})
        if hasattr(req, "body"):  # a request parsed far enough to have an access-log line
            environ = wsgi.default_environ(req, client, self.cfg)
            resp = wsgi.Response(req, client, self.cfg)
            resp.status = f"{status} {reason}"
            resp.headers = [("X-Request-Id", rid)]
            resp.response_length = 0
            self.log.access(resp, req, environ, _zero())
        try:
            client.sendall(error_response(status, reason, message, code, rid))
        except OSError:
            self.log.debug("failed to send an error answer")


def _zero():
    from datetime import timedelta
    return timedelta(0)


def metrics_dir() -> tuple[str, bool]:
    """The folder where the workers keep their metrics (prometheus_client's multiprocess mode):
    PROMETHEUS_MULTIPROC_DIR emptied of an earlier run's files, else a new temporary one (True:
    made here, removed when gunicorn exits). Set in the environment before any worker starts."""
    import os
    import tempfile
    from pathlib import Path
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for old in Path(given).glob("*.db"):  # counters of dead processes would be added to the new ones
            old.unlink(missing_ok=True)
        return given, False
    path = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, True


def _worker_gone(server, worker) -> None:
    """gunicorn's child_exit hook: the dead worker's live gauges leave the sums. It runs in the
    master's SIGCHLD handler, which may interrupt anything (another such handler too): the module
    is imported beforehand (``Server``), never here, where a second import could find it half done."""
    import sys
    sys.modules["prometheus_client.multiprocess"].mark_process_dead(worker.pid)


class Server(BaseApplication):
    """gunicorn running the Flask app with the gateway's settings."""

    def __init__(self, *, bind: str, workers: int, worker_class: str, threads: int, connections: int,
                 access_log: bool, trusted_proxies: int, log_format: str = "text"):
        path, made = metrics_dir()
        import prometheus_client.multiprocess  # noqa: F401  (for _worker_gone, before any worker exits)

        def on_exit(server):  # in the master only (a worker leaving must not take the folder)
            if made:
                import shutil
                shutil.rmtree(path, ignore_errors=True)
        self.settings = {
            "bind": [bind], "workers": workers, "worker_class": WORKER_CLASSES[worker_class],
            "threads": threads, "worker_connections": connections,
            "timeout": 60, "graceful_timeout": 20, "keepalive": 5,
            "accesslog": "-" if access_log else None, "logger_class": "shared.door.RedactingLogger",
            "child_exit": _worker_gone, "on_exit": on_exit,
        }
        RedactingLogger.log_format = log_format
        self.trusted_proxies = trusted_proxies
        super().__init__()

    def load_config(self):
        for name, value in self.settings.items():
            self.cfg.set(name, value)

    def load(self):
        # Imported here, in the worker, after gevent has patched the standard library.
        from functions.app import create_app
        return create_app(trusted_proxies=self.trusted_proxies)
