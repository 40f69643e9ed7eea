"""A small client for WeChat's mini-program login API (``jscode2session``), and the call and
redaction machinery every WeChat server API client here shares (``call``, ``check``,
``clean_errmsg``; the access token in ``shared/wechat_token.py``, subscribe messages in
``shared/subscribe.py``).

``WeChatClient.code_to_session(code)`` exchanges a ``wx.login`` code for the
user's ``(openid, unionid | None)``. The ``session_key`` WeChat also sends is
dropped here: it never leaves this module, is never returned and never logged.

Exceptions::

    WeChatError
     ├── WeChatUnavailableError   unreachable, timed out, 5xx, not JSON, bad shape, errcode -1 (busy)
     │    └── WeChatUnclearError      the request was sent and no complete answer came (read timeout,
     │                                reset after sending): WeChat may have acted on it
     └── WeChatRefusedError       any other errcode answer (``errcode``, ``errmsg``)
          ├── WeChatCodeError         40029 invalid code, 40163 code been used, 41008 missing code,
          │                           40226 high-risk user (WeChat blocks this login)
          ├── WeChatRateLimitedError  45011 too many logins of this user (100 per minute)
          ├── WeChatConfigError       40013 invalid appid, 40125 invalid secret, 40002 bad grant_type,
          │                           41002/41004 appid/secret missing, 40164 IP not whitelisted, ...
          └── WeChatTokenError        40001/42001/40014: the access token is invalid or expired
                                      (server APIs other than jscode2session)

Secrets: the AppSecret (and the one-time code) travel in the query string of
the outgoing GET, as WeChat requires; the access token travels in the query
string of every other server API call. Nothing here logs a URL or an exception
of ``requests`` (whose text includes the URL), exceptions raised here carry no
such cause, and ``_RedactQuery`` is installed on urllib3's loggers so their
DEBUG line ``"GET /sns/jscode2session?appid=…&secret=…"`` shows ``secret=***``
(and ``access_token=***``).
"""

from __future__ import annotations

import json
import logging
import re
import time

import requests

from shared.comfy import never_connected

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


class WeChatUnclearError(WeChatUnavailableError):
    """The request was sent but no complete answer came: WeChat may have acted on it."""


class WeChatRefusedError(WeChatError):
    """WeChat answered with an errcode (other than -1)."""

    def __init__(self, errcode: int, errmsg: str, *, what: str = "jscode2session"):
        super().__init__(f"{what}: errcode {errcode} ({errmsg})")
        self.errcode = errcode
        self.errmsg = errmsg


class WeChatCodeError(WeChatRefusedError):
    """The login code is invalid, used already, missing, or WeChat blocks this user's login."""


class WeChatRateLimitedError(WeChatRefusedError):
    """This user logged in too often (WeChat allows 100 a minute per user)."""


class WeChatConfigError(WeChatRefusedError):
    """WeChat refused the gateway's own credentials or setup (appid, secret, IP whitelist)."""


class WeChatTokenError(WeChatRefusedError):
    """The access token a call carried is invalid (40001, 40014) or expired (42001)."""


def _classify(errcode: int) -> type[WeChatRefusedError]:
    if errcode in CODE_ERRORS:
        return WeChatCodeError
    if errcode in RATE_LIMIT_ERRORS:
        return WeChatRateLimitedError
    if errcode in CONFIG_ERRORS:
        return WeChatConfigError
    return WeChatRefusedError


_HIDDEN = ("secret", "js_code", "session_key", "access_token")
_REDACT = re.compile(r"((?:" + "|".join(_HIDDEN) + r")=)[^&\s\"'<>]*")


class _RedactQuery(logging.Filter):
    """Blank the secret, the code and the access token in log lines of HTTP libraries that print request URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's business
            return True
        if any(name + "=" in message for name in _HIDDEN):
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


def clean_errmsg(errmsg, *hidden: str | None) -> str:
    """WeChat's errmsg, short, printable, and never echoing a secret or a token (``hidden``)."""
    text = str(errmsg) if errmsg is not None else ""
    for value in hidden:
        if value:
            text = text.replace(value, "***")
    text = _REDACT.sub(r"\1***", text)
    return "".join(c if c.isprintable() else " " for c in text)[:200]


def call(session: requests.Session, method: str, url: str, *, what: str, timeout: float, params=None,
         json_body=None) -> tuple[dict, int]:
    """One call of a WeChat server API; return (JSON object, HTTP status) whatever the Content-Type.

    Raises ``WeChatUnavailableError`` (``WeChatUnclearError`` when the request went out and no
    complete answer came back). Exceptions are raised outside the ``except`` blocks on purpose:
    they carry no ``__context__`` holding a requests exception whose text has the URL (and the
    secret or the token in its query string).
    """
    deadline = time.monotonic() + 2 * timeout  # connect + answer, even if it trickles in
    failure, unclear = None, False
    try:
        resp = session.request(method, url, params=params, json=json_body, timeout=(timeout, timeout),
                               allow_redirects=False, stream=True)
    except requests.ConnectTimeout:
        failure = f"no connection within {timeout}s"
    except requests.Timeout:
        failure, unclear = f"no answer within {timeout}s", True
    except requests.ConnectionError as e:
        failure, unclear = f"unreachable ({type(e).__name__})", not never_connected(e)
    except requests.RequestException as e:
        failure = f"unreachable ({type(e).__name__})"
    if failure:
        raise (WeChatUnclearError if unclear else WeChatUnavailableError)(f"{what}: {failure}")
    try:
        raw = bytearray()
        for chunk in resp.iter_content(4096):
            raw += chunk
            if len(raw) > MAX_ANSWER_BYTES:
                failure = "answer too large"
                break
            if time.monotonic() > deadline:
                failure, unclear = f"answer not complete within {2 * timeout}s", True
                break
    except requests.RequestException as e:  # read timeout, reset while reading the body
        failure, unclear = f"answer cut short ({type(e).__name__})", True
    finally:
        resp.close()
    if failure:
        raise (WeChatUnclearError if unclear else WeChatUnavailableError)(f"{what}: {failure}")
    status, ctype = resp.status_code, resp.headers.get("Content-Type", "")
    data = None
    try:
        data = json.loads(bytes(raw).decode("utf-8-sig"))  # WeChat often says text/plain
    except (ValueError, UnicodeDecodeError):
        pass
    if not isinstance(data, dict):
        raise WeChatUnavailableError(f"{what}: HTTP {status}, not a JSON object "
                                     f"(Content-Type {ctype[:60]!r}, {len(raw)} bytes)")
    return data, status


def check(data: dict, status: int, *, what: str, classify, hidden: tuple = ()) -> dict:
    """Raise the WeChatError an answer means (``classify(errcode)`` picks the refusal's class);
    return the answer when it is a success (HTTP 200, errcode 0 or none)."""
    errcode = data.get("errcode", 0)
    if errcode not in (0, None):
        if not isinstance(errcode, int) or isinstance(errcode, bool):
            raise WeChatUnavailableError(f"{what}: errcode is not a number")
        errmsg = clean_errmsg(data.get("errmsg"), *hidden)
        if errcode in BUSY_ERRORS:
            raise WeChatUnavailableError(f"{what}: errcode {errcode} ({errmsg})", errcode=errcode)
        raise classify(errcode)(errcode, errmsg, what=what)
    if status != 200:
        raise WeChatUnavailableError(f"{what}: HTTP {status} without errcode")
    return data


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
        params = {"appid": self.appid, "secret": self._secret, "js_code": code,
                  "grant_type": "authorization_code"}
        data, status = call(self.session, "GET", self.base_url + PATH, what="jscode2session", timeout=self.timeout,
                            params=params)
        check(data, status, what="jscode2session", classify=_classify, hidden=(self._secret,))
        openid = data.get("openid")
        if not isinstance(openid, str) or not openid or len(openid) > MAX_ID_LENGTH:
            raise WeChatUnavailableError("jscode2session: answer without a usable openid")
        unionid = data.get("unionid")
        if unionid is not None and (not isinstance(unionid, str) or len(unionid) > MAX_ID_LENGTH):
            raise WeChatUnavailableError("jscode2session: answer with an unusable unionid")
        return openid, unionid or None
