"""A small client for WeChat's mini-program login API (``jscode2session``).

``WeChatClient.code_to_session(code)`` exchanges a ``wx.login`` code for the
user's ``(openid, unionid | None)``. The ``session_key`` WeChat also sends is
dropped here: it never leaves this module, is never returned and never logged.

Exceptions::

    WeChatError
     ├── WeChatUnavailableError   unreachable, timed out, 5xx, not JSON, bad shape, errcode -1 (busy)
     └── WeChatRefusedError       any other errcode answer (``errcode``, ``errmsg``)
          ├── WeChatCodeError         40029 invalid code, 40163 code been used, 41008 missing code,
          │                           40226 high-risk user (WeChat blocks this login)
          ├── WeChatRateLimitedError  45011 too many logins of this user (100 per minute)
          └── WeChatConfigError       40013 invalid appid, 40125 invalid secret, 40002 bad grant_type,
                                      41002/41004 appid/secret missing, 40164 IP not whitelisted, ...

Secrets: the AppSecret (and the one-time code) travel in the query string of
the outgoing GET, as WeChat requires. Nothing here logs a URL or an exception
of ``requests`` (whose text includes the URL), exceptions raised here carry no
such cause, and ``_RedactQuery`` is installed on urllib3's loggers so their
DEBUG line ``"GET /sns/jscode2session?appid=…&secret=…"`` shows ``secret=***``.
"""

from __future__ import annotations

import json
import logging
import re
import time

import requests

log = logging.getLogger(__name__)

PATH = "/sns/jscode2session"
MAX_ANSWER_BYTES = 64 * 1024
MAX_ID_LENGTH = 128  # users.subject / users.unionid are VARCHAR(128)

CODE_ERRORS = {40029: "invalid code", 40163: "code been used", 41008: "missing code",
               40226: "high-risk user, login blocked"}
RATE_LIMIT_ERRORS = {45011: "too many logins of this user"}
CONFIG_ERRORS = {40013: "invalid appid", 40125: "invalid appsecret", 40002: "invalid grant_type",
                 41002: "appid missing", 41004: "appsecret missing", 40164: "IP not in the whitelist",
                 40001: "invalid credential", 40243: "AppSecret frozen", 61024: "not a mini-program appid"}
BUSY_ERRORS = {-1: "system busy"}


class WeChatError(Exception):
    """Any failure of a login through WeChat."""

    errcode: int | None = None
    errmsg: str = ""


class WeChatUnavailableError(WeChatError):
    """WeChat did not answer usefully: unreachable, too slow, 5xx, junk, or "system busy" (-1)."""

    def __init__(self, message: str, *, errcode: int | None = None):
        super().__init__(message)
        self.errcode = errcode


class WeChatRefusedError(WeChatError):
    """WeChat answered with an errcode (other than -1)."""

    def __init__(self, errcode: int, errmsg: str):
        super().__init__(f"jscode2session: errcode {errcode} ({errmsg})")
        self.errcode = errcode
        self.errmsg = errmsg


class WeChatCodeError(WeChatRefusedError):
    """The login code is invalid, used already, missing, or WeChat blocks this user's login."""


class WeChatRateLimitedError(WeChatRefusedError):
    """This user logged in too often (WeChat allows 100 a minute per user)."""


class WeChatConfigError(WeChatRefusedError):
    """WeChat refused the gateway's own credentials or setup (appid, secret, IP whitelist)."""


def _classify(errcode: int) -> type[WeChatRefusedError]:
    if errcode in CODE_ERRORS:
        return WeChatCodeError
    if errcode in RATE_LIMIT_ERRORS:
        return WeChatRateLimitedError
    if errcode in CONFIG_ERRORS:
        return WeChatConfigError
    return WeChatRefusedError


_REDACT = re.compile(r"((?:secret|js_code|session_key)=)[^&\s\"'<>]*")


class _RedactQuery(logging.Filter):
    """Blank the secret and the code in log lines of HTTP libraries that print request URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's business
            return True
        if "secret=" in message or "js_code=" in message or "session_key=" in message:
            record.msg, record.args = _REDACT.sub(r"\1***", message), ()
        return True


def _install_redaction() -> None:
    # A logger's filters see only records logged on that very logger, so each emitter is named.
    for name in ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry",
                 "urllib3.connection", "urllib3.response", "requests"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQuery) for f in logger.filters):
            logger.addFilter(_RedactQuery())


_install_redaction()


class WeChatClient:
    """The jscode2session call of one mini-program (appid + secret), through a requests session."""

    def __init__(self, session: requests.Session, base_url: str, appid: str, secret: str,
                 timeout: float = 5.0):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.appid = appid
        self._secret = secret
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"WeChatClient({self.base_url!r}, appid={self.appid!r}, secret=***)"

    def code_to_session(self, code: str) -> tuple[str, str | None]:
        """Exchange a wx.login code for (openid, unionid or None); raise a WeChatError."""
        data, status = self._get(code)
        errcode = data.get("errcode", 0)
        if errcode not in (0, None):
            if not isinstance(errcode, int) or isinstance(errcode, bool):
                raise WeChatUnavailableError("jscode2session: errcode is not a number")
            errmsg = self._clean(data.get("errmsg"))
            if errcode in BUSY_ERRORS:
                raise WeChatUnavailableError(f"jscode2session: errcode {errcode} ({errmsg})", errcode=errcode)
            raise _classify(errcode)(errcode, errmsg)
        if status != 200:
            raise WeChatUnavailableError(f"jscode2session: HTTP {status} without errcode")
        openid = data.get("openid")
        if not isinstance(openid, str) or not openid or len(openid) > MAX_ID_LENGTH:
            raise WeChatUnavailableError("jscode2session: answer without a usable openid")
        unionid = data.get("unionid")
        if unionid is not None and (not isinstance(unionid, str) or len(unionid) > MAX_ID_LENGTH):
            raise WeChatUnavailableError("jscode2session: answer with an unusable unionid")
        return openid, unionid or None

    def _get(self, code: str) -> tuple[dict, int]:
        """GET jscode2session; return (JSON object, HTTP status) whatever the Content-Type.

        Exceptions are raised outside the ``except`` blocks on purpose: they carry no
        ``__context__`` holding a requests exception whose text has the URL (and the secret).
        """
        params = {"appid": self.appid, "secret": self._secret, "js_code": code,
                  "grant_type": "authorization_code"}
        deadline = time.monotonic() + 2 * self.timeout  # connect + answer, even if it trickles in
        failure = None
        try:
            resp = self.session.get(self.base_url + PATH, params=params, timeout=(self.timeout, self.timeout),
                                    allow_redirects=False, stream=True)
        except requests.Timeout:
            failure = f"no answer within {self.timeout}s"
        except requests.RequestException as e:
            failure = f"unreachable ({type(e).__name__})"
        if failure:
            raise WeChatUnavailableError(f"jscode2session: {failure}")
        try:
            raw = bytearray()
            for chunk in resp.iter_content(4096):
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    failure = "answer too large"
                    break
                if time.monotonic() > deadline:
                    failure = f"answer not complete within {2 * self.timeout}s"
                    break
        except requests.RequestException as e:  # read timeout, reset while reading the body
            failure = f"answer cut short ({type(e).__name__})"
        finally:
            resp.close()
        if failure:
            raise WeChatUnavailableError(f"jscode2session: {failure}")
        status, ctype = resp.status_code, resp.headers.get("Content-Type", "")
        data = None
        try:
            data = json.loads(bytes(raw).decode("utf-8-sig"))  # WeChat often says text/plain
        except (ValueError, UnicodeDecodeError):
            pass
        if not isinstance(data, dict):
            raise WeChatUnavailableError(f"jscode2session: HTTP {status}, not a JSON object "
                                         f"(Content-Type {ctype[:60]!r}, {len(raw)} bytes)")
        return data, status

    def _clean(self, errmsg) -> str:
        """WeChat's errmsg, short, printable, and never echoing the secret."""
        text = str(errmsg) if errmsg is not None else ""
        if self._secret:
            text = text.replace(self._secret, "***")
        text = _REDACT.sub(r"\1***", text)
        return "".join(c if c.isprintable() else " " for c in text)[:200]
