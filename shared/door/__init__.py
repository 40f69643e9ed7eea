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
  ``X-Amz-Security-Token``) are written as ``[redacted]``.

Operators still put a reverse proxy in front (TLS, buffering of slow uploads,
timeouts): ``deploy/nginx.conf`` and the README's "Serving" section.
"""

from __future__ import annotations

import json
import re

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.http import wsgi

WORKER_CLASSES = {"gevent": "shared.door.evented.GeventWorker", "gthread": "shared.door.threaded.ThreadWorker"}

# Query parameters whose values sign or authorise a link: never written to a log.
_SECRET_PARAMS = re.compile(
    r"(?i)((?:^|[?&;])(?:signature|x-amz-signature|x-amz-credential|x-amz-security-token|access_token|token)=)"
    r"[^&;\s\"]*")


def redact(text: str) -> str:
    """The text with the values of signing query parameters replaced by [redacted]."""
    return _SECRET_PARAMS.sub(r"\1[redacted]", text) if "=" in text else text


class RedactingLogger(Logger):
    """gunicorn's logger, with signatures taken out of every access-log field."""

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


def error_response(status: int, reason: str, message: str, code: str = "invalid_params") -> bytes:
    """A complete HTTP/1.1 error response in the contract's shape (for errors before the app runs)."""
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=True).encode("ascii")
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
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
        self.log.warning("refused a request from ip=%s: %s", (addr or ("",))[0], type(exc).__name__)
        if req is None and hasattr(exc, "req"):
            req = exc.req
        if hasattr(req, "body"):  # a request parsed far enough to have an access-log line
            environ = wsgi.default_environ(req, client, self.cfg)
            resp = wsgi.Response(req, client, self.cfg)
            resp.status = f"{status} {reason}"
            resp.response_length = 0
            self.log.access(resp, req, environ, _zero())
        try:
            client.sendall(error_response(status, reason, message, code))
        except OSError:
            self.log.debug("failed to send an error answer")


def _zero():
    from datetime import timedelta
    return timedelta(0)


class Server(BaseApplication):
    """gunicorn running the Flask app with the gateway's settings."""

    def __init__(self, *, bind: str, workers: int, worker_class: str, threads: int, connections: int,
                 access_log: bool, trusted_proxies: int):
        self.settings = {
            "bind": [bind], "workers": workers, "worker_class": WORKER_CLASSES[worker_class],
            "threads": threads, "worker_connections": connections,
            "timeout": 60, "graceful_timeout": 20, "keepalive": 5,
            "accesslog": "-" if access_log else None, "logger_class": "shared.door.RedactingLogger",
        }
        self.trusted_proxies = trusted_proxies
        super().__init__()

    def load_config(self):
        for name, value in self.settings.items():
            self.cfg.set(name, value)

    def load(self):
        # Imported here, in the worker, after gevent has patched the standard library.
        from functions.app import create_app
        return create_app(trusted_proxies=self.trusted_proxies)
