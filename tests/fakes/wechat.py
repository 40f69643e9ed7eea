"""A fake WeChat server API on loopback: ``GET /sns/jscode2session``, ``POST /cgi-bin/stable_token``,
``POST /cgi-bin/message/subscribe/send`` and content security (``POST /wxa/msg_sec_check``,
``POST /wxa/media_check_async`` with its verdict pushed to the gateway: see ``wechat_moderation``)
as WeChat documents them.

    with FakeWeChat(appid="wx-test", secret="s3cr3t") as wx:
        wx.add_code("code-1", openid="o-alice", unionid="u-alice")
        wx.subscribe("o-alice", "tmpl-1")            # the user accepted one message of that template
        ... point WECHAT_API_BASE at wx.url ...

Answers (HTTP 200, ``Content-Type: text/plain`` like the real one unless ``content_type`` is set):

jscode2session (GET):

- a registered code, first use: ``{"openid", "session_key"[, "unionid"]}``;
- the same code again: ``{"errcode": 40163, "errmsg": "code been used, rid: ..."}``;
- an unknown code: 40029 ``invalid code``; no ``js_code``: 41008 ``missing code``;
- wrong appid: 40013 ``invalid appid``; wrong secret: 40125 ``invalid appsecret``;
  ``grant_type`` other than ``authorization_code``: 40002 ``invalid grant_type``.

stable_token (POST, JSON body ``{"grant_type": "client_credential", "appid", "secret", "force_refresh"}``):

- ``{"access_token", "expires_in"}``: the current token while more than ``renew_within_s`` of it is
  left, else a new one (the old one stays valid until it expires, as WeChat does); with
  ``force_refresh: true`` always a new one, and the earlier ones stop working (counted in
  ``force_refreshes``); tokens live ``token_expires_in`` seconds;
- wrong grant_type 40002, appid 40013, secret 40125; a body that is not JSON: 47001.

subscribe/send (POST ``?access_token=``, JSON body ``{"touser", "template_id", "page", "data",
"miniprogram_state", "lang"}``):

- an unknown or revoked token: 40001; an expired one: 42001;
- ``template_id`` not in ``templates`` (when that set is not empty): 40037; a ``touser`` that has
  not accepted a message of that template (``subscribe()``), or has used what it accepted: 43101;
  ``data`` not ``{key: {"value": str}}``, a ``thing`` over 20 characters, a bad
  ``miniprogram_state``: 47003;
- else ``{"errcode": 0, "errmsg": "ok"}``, the message kept in ``pushes`` (one subscription used).

Controls: ``delay`` (seconds before answering anything), ``send_delay`` (seconds after a
subscribe/send was processed and pushed before answering it: a timeout after sending),
``fail_next(errcode, times=1, path=None)`` (e.g. -1 system busy, 45011 rate limit, 40226
high-risk user, 43101; only requests to ``path`` when given), ``raw_next(status, body,
content_type, path=None)`` (a proxy's HTML error page, a redirect), ``outage(status=503)`` /
``restore()`` (every request answered with a proxy's error page), ``revoke_tokens()`` and
``expire_tokens()``. Every request is kept in ``requests`` (method, path, query dict, headers,
JSON body) for assertions; the session keys handed out are in ``session_keys``, the tokens in
``tokens_issued``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.fakes.wechat_moderation import MEDIA_CHECK, SEC_CHECK, ModerationMixin

ERRMSGS = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40037: "invalid template_id",
    42001: "access_token expired",
    43101: "user refuse to accept the msg",
    45009: "reach max api daily quota limit",
    47001: "data format error",
    47003: "argument invalid!",
    40013: "invalid appid",
    40029: "invalid code",
    40125: "invalid appsecret",
    40163: "code been used",
    40226: "high risk user",
    40129: "invalid scene",
    43302: "require POST method",
    44002: "empty post data",
    61010: "code is expired",
    87014: "risky content",
    41008: "missing code",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
}


_NOT_JSON = object()
STATES = ("formal", "trial", "developer")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    headers: dict
    json: object = None


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
class _Token:
    value: str
    expires_at: float  # time.monotonic()
    revoked: bool = False


@dataclass
class FakeWeChat(ModerationMixin):
    appid: str = "wx-fake-appid"
    secret: str = field(default_factory=lambda: "fake-secret-" + secrets.token_hex(8))
    delay: float = 0.0
    send_delay: float = 0.0
    content_type: str = "text/plain"
    token_expires_in: int = 7200
    renew_within_s: float = 300.0
    templates: set = field(default_factory=set)
    requests: list = field(default_factory=list)
    session_keys: list = field(default_factory=list)
    tokens_issued: list = field(default_factory=list)
    pushes: list = field(default_factory=list)
    force_refreshes: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._codes: dict[str, _Identity] = {}
        self._forced: list = []  # (path or None, errcode int or _Raw answer), used first-in first-out
        self._outage: _Raw | None = None
        self._tokens: dict[str, _Token] = {}
        self._current: _Token | None = None
        self._subscriptions: dict[tuple[str, str], int] = {}
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._init_moderation()

    # -- control --------------------------------------------------------------------------------

    def add_code(self, code: str, *, openid: str, unionid: str | None = None) -> str:
        """Register a wx.login code for a user; return the session_key it will be answered with."""
        session_key = "sk-" + secrets.token_urlsafe(18)
        with self._lock:
            self._codes[code] = _Identity(openid=openid, unionid=unionid, session_key=session_key)
        return session_key

    def fail_next(self, errcode: int, times: int = 1, path: str | None = None) -> None:
        """Answer the next ``times`` requests (to ``path`` if given) with this errcode, whatever they ask."""
        with self._lock:
            self._forced.extend([(path, errcode)] * times)

    def raw_next(self, status: int, body: bytes | str, content_type: str = "text/html",
                 headers: dict | None = None, path: str | None = None) -> None:
        """Answer the next request (to ``path`` if given) with this exact HTTP answer."""
        with self._lock:
            self._forced.append((path, _Raw(status, body.encode() if isinstance(body, str) else body, content_type,
                                            dict(headers or {}))))

    def outage(self, status: int = 503) -> None:
        """Answer every request with a proxy's error page until ``restore()``."""
        self._outage = _Raw(status, f"<html><body>{status} Service Unavailable</body></html>".encode(), "text/html",
                            {})

    def restore(self) -> None:
        self._outage = None

    def subscribe(self, openid: str, template_id: str, times: int = 1) -> None:
        """The user accepted ``times`` messages of this template (wx.requestSubscribeMessage)."""
        with self._lock:
            self._subscriptions[(openid, template_id)] = self._subscriptions.get((openid, template_id), 0) + times

    def subscriptions_left(self, openid: str, template_id: str) -> int:
        with self._lock:
            return self._subscriptions.get((openid, template_id), 0)

    def revoke_tokens(self) -> None:
        """Every token handed out stops working (40001), as after a force_refresh by someone else."""
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True
            self._current = None

    def expire_tokens(self) -> None:
        """Every token handed out expires now (42001)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = time.monotonic()
            self._current = None

    def token_requests(self) -> list:
        return [r for r in self.requests if r.path == "/cgi-bin/stable_token"]

    def send_requests(self) -> list:
        return [r for r in self.requests if r.path == "/cgi-bin/message/subscribe/send"]

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
        self._stopping.set()  # wakes delayed answers, media checks and push retries
        self._stop_moderation()
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
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = _NOT_JSON
        with self._lock:
            self.requests.append(RecordedRequest(h.command, parts.path, query, dict(h.headers.items()),
                                                 None if body is _NOT_JSON else body))
        if self.delay and self._stopping.wait(self.delay):
            return
        route = {("GET", "/sns/jscode2session"): self._jscode2session,
                 ("POST", "/cgi-bin/stable_token"): self._stable_token,
                 ("POST", "/cgi-bin/message/subscribe/send"): self._subscribe_send,
                 ("POST", SEC_CHECK): self._msg_sec_check,
                 ("POST", MEDIA_CHECK): self._media_check_async}.get((h.command, parts.path))
        if route is None and parts.path in (SEC_CHECK, MEDIA_CHECK):
            return self._error(h, 43302)
        if route is None:
            return self._send(h, 404, b"<html><body>404 Not Found</body></html>", "text/html")
        outage = self._outage
        if outage is not None:
            return self._send(h, outage.status, outage.body, outage.content_type, outage.headers)
        with self._lock:
            forced = next((f for f in self._forced if f[0] in (None, parts.path)), None)
            if forced is not None:
                self._forced.remove(forced)
                forced = forced[1]
        if isinstance(forced, _Raw):
            return self._send(h, forced.status, forced.body, forced.content_type, forced.headers)
        if forced is not None:
            return self._error(h, forced)
        route(h, query, body)

    def _jscode2session(self, h, query: dict, body) -> None:
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

    def _stable_token(self, h, query: dict, body) -> None:
        if not isinstance(body, dict):
            return self._error(h, 47001)
        if body.get("grant_type") != "client_credential":
            return self._error(h, 40002)
        if body.get("appid") != self.appid:
            return self._error(h, 40013)
        if body.get("secret") != self.secret:
            return self._error(h, 40125)
        now = time.monotonic()
        with self._lock:
            if body.get("force_refresh") is True:
                self.force_refreshes += 1
                for token in self._tokens.values():
                    token.revoked = True
                self._current = None
            current = self._current
            if current is None or current.revoked or current.expires_at - now <= self.renew_within_s:
                current = _Token("tok-" + secrets.token_urlsafe(24), now + self.token_expires_in)
                self._tokens[current.value] = self._current = current
                self.tokens_issued.append(current.value)
            left = max(int(round(current.expires_at - now)), 1)
        self._send(h, 200, json.dumps({"access_token": current.value, "expires_in": left}).encode(), self.content_type)

    def _subscribe_send(self, h, query: dict, body) -> None:
        with self._lock:
            token = self._tokens.get(query.get("access_token", ""))
        if token is None or token.revoked:
            return self._error(h, 40001)
        if token.expires_at <= time.monotonic():
            return self._error(h, 42001)
        if not isinstance(body, dict):
            return self._error(h, 47001)
        template = body.get("template_id")
        if not isinstance(template, str) or (self.templates and template not in self.templates):
            return self._error(h, 40037)
        data = body.get("data")
        if (not isinstance(data, dict) or not data or body.get("miniprogram_state", "formal") not in STATES
                or not all(isinstance(v, dict) and isinstance(v.get("value"), str) for v in data.values())
                or any(k.startswith("thing") and len(v["value"]) > 20 for k, v in data.items())):
            return self._error(h, 47003)
        touser = body.get("touser")
        with self._lock:
            left = self._subscriptions.get((touser, template), 0)
            if left > 0:
                self._subscriptions[(touser, template)] = left - 1
                self.pushes.append(body)
        if left <= 0:
            return self._error(h, 43101)
        if self.send_delay and self._stopping.wait(self.send_delay):
            return
        self._send(h, 200, json.dumps({"errcode": 0, "errmsg": "ok"}).encode(), self.content_type)

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
