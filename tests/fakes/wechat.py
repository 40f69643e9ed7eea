"""A fake WeChat server API on loopback: ``GET /sns/jscode2session`` as WeChat documents it.

    with FakeWeChat(appid="wx-test", secret="s3cr3t") as wx:
        wx.add_code("code-1", openid="o-alice", unionid="u-alice")
        ... point WECHAT_API_BASE at wx.url ...

Answers (HTTP 200, ``Content-Type: text/plain`` like the real one unless ``content_type`` is set):

- a registered code, first use: ``{"openid", "session_key"[, "unionid"]}``;
- the same code again: ``{"errcode": 40163, "errmsg": "code been used, rid: ..."}``;
- an unknown code: 40029 ``invalid code``; no ``js_code``: 41008 ``missing code``;
- wrong appid: 40013 ``invalid appid``; wrong secret: 40125 ``invalid appsecret``;
  ``grant_type`` other than ``authorization_code``: 40002 ``invalid grant_type``.

Controls: ``delay`` (seconds before answering), ``fail_next(errcode, times=1)``
(e.g. -1 system busy, 45011 rate limit, 40226 high-risk user), ``raw_next(status,
body, content_type)`` (a proxy's HTML error page, a redirect). Every request is kept
in ``requests`` (method, path, query dict, headers) for assertions; the session
keys handed out are in ``session_keys``.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ERRMSGS = {
    -1: "system error",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40029: "invalid code",
    40125: "invalid appsecret",
    40163: "code been used",
    40226: "high risk user",
    41008: "missing code",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    headers: dict


@dataclass
class _Identity:
    openid: str
    unionid: str | None
    session_key: str
    used: bool = False


@dataclass
class _Raw:
    status: int
    body: bytes
    content_type: str
    headers: dict


@dataclass
class FakeWeChat:
    appid: str = "wx-fake-appid"
    secret: str = field(default_factory=lambda: "fake-secret-" + secrets.token_hex(8))
    delay: float = 0.0
    content_type: str = "text/plain"
    requests: list = field(default_factory=list)
    session_keys: list = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._codes: dict[str, _Identity] = {}
        self._forced: list = []  # errcode ints or _Raw answers, used first-in first-out
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------------

    def add_code(self, code: str, *, openid: str, unionid: str | None = None) -> str:
        """Register a wx.login code for a user; return the session_key it will be answered with."""
        session_key = "sk-" + secrets.token_urlsafe(18)
        with self._lock:
            self._codes[code] = _Identity(openid=openid, unionid=unionid, session_key=session_key)
        return session_key

    def fail_next(self, errcode: int, times: int = 1) -> None:
        """Answer the next ``times`` requests with this errcode, whatever they ask."""
        with self._lock:
            self._forced.extend([errcode] * times)

    def raw_next(self, status: int, body: bytes | str, content_type: str = "text/html",
                 headers: dict | None = None) -> None:
        """Answer the next request with this exact HTTP answer."""
        with self._lock:
            self._forced.append(_Raw(status, body.encode() if isinstance(body, str) else body, content_type,
                                     dict(headers or {})))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeWeChat":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                fake._handle(self)

            def do_POST(self):
                fake._handle(self)

            def log_message(self, *args):  # the query string holds the secret: print nothing
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that gave up (the timeout tests) is not an error here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-wechat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed answers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> "FakeWeChat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the API --------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        with self._lock:
            self.requests.append(RecordedRequest(h.command, parts.path, query, dict(h.headers.items())))
        if self.delay and self._stopping.wait(self.delay):
            return
        if parts.path != "/sns/jscode2session" or h.command != "GET":
            return self._send(h, 404, b"<html><body>404 Not Found</body></html>", "text/html")
        with self._lock:
            forced = self._forced.pop(0) if self._forced else None
        if isinstance(forced, _Raw):
            return self._send(h, forced.status, forced.body, forced.content_type, forced.headers)
        if forced is not None:
            return self._error(h, forced)
        if query.get("appid") != self.appid:
            return self._error(h, 40013)
        if query.get("secret") != self.secret:
            return self._error(h, 40125)
        if query.get("grant_type") != "authorization_code":
            return self._error(h, 40002)
        code = query.get("js_code")
        if not code:
            return self._error(h, 41008)
        with self._lock:
            identity = self._codes.get(code)
            if identity is None:
                errcode = 40029
            elif identity.used:
                errcode = 40163
            else:
                errcode, identity.used = None, True
                self.session_keys.append(identity.session_key)
        if errcode is not None:
            return self._error(h, errcode)
        answer = {"session_key": identity.session_key, "openid": identity.openid}
        if identity.unionid:
            answer["unionid"] = identity.unionid
        self._send(h, 200, json.dumps(answer).encode(), self.content_type)

    def _error(self, h, errcode: int) -> None:
        body = {"errcode": errcode, "errmsg": f"{ERRMSGS.get(errcode, 'error')}, rid: {secrets.token_hex(4)}"}
        self._send(h, 200, json.dumps(body).encode(), self.content_type)

    @staticmethod
    def _send(h, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass  # the client gave up


if __name__ == "__main__":  # a fake for manual tries: python -m tests.fakes.wechat
    import time
    with FakeWeChat(appid="wx-dev", secret="dev-secret") as wx:
        for i in range(1, 10):
            wx.add_code(f"code{i}", openid=f"openid-{i}")
        print(f"fake WeChat at {wx.url} (appid wx-dev, secret dev-secret, codes code1..code9)", flush=True)
        while True:
            time.sleep(3600)
