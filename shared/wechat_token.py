"""The mini-program's access token, shared by every function instance and listener through MySQL.

WeChat's server APIs other than jscode2session (subscribe messages, ...) take an access token in
their query string. ``POST {WECHAT_API_BASE}/cgi-bin/stable_token`` with
``{"grant_type": "client_credential", "appid", "secret", "force_refresh": false}`` answers
``{"access_token", "expires_in"}`` (seconds, 7200 today) or ``{"errcode", "errmsg"}``::

    tokens = AccessTokens(ctx.db, ctx.session, cfg.wechat_api_base, cfg.wechat_appid, cfg.wechat_secret)
    token = tokens.access_token()      # the stored one, or a fresh one
    ...                                # a call with it answers 40001/42001 (WeChatTokenError):
    tokens.invalidate(token)           # the next access_token() fetches with force_refresh

How it is shared:

* One row per appid in ``wechat_tokens`` (sql/0010_wechat_token.sql), read by every process.
* From ``refresh_at`` (5 minutes before it expires, or half its life if that is shorter: a token
  handed out again with little time left is not fetched on every call) a new one is fetched, by
  one process at a time: under the MySQL named lock ``wechat_token:<appid>``; a process that
  waited for the lock reads the row again and uses what the holder fetched. While a refresh
  fails, the stored token is used until it really expires.
* ``force_refresh`` (limited by WeChat: a few a day, 30 s apart) is asked only when the row still
  holds the token a caller reported bad: any number of callers that got 40001 with one token
  cause one forced fetch.

Call it outside a transaction: the lock and the row are written on the borrowed connection.

Errors, from shared/wechat.py's tree: ``WeChatUnavailableError`` (unreachable, busy, a bad answer,
another process's refresh not done in time), ``WeChatRateLimitedError`` (45009/45011: the token
API's quota), ``WeChatConfigError`` (anything else WeChat refuses: appid, secret, IP whitelist:
the operator must act).

The secret travels in the JSON body, the token in answers and in the query string of the calls
that use it; neither is logged, put in an exception's text, or shown by ``repr`` (urllib3's DEBUG
lines are redacted by shared/wechat.py's filter).
"""

from __future__ import annotations

import logging
import math

from shared.db import execute, query_one
from shared.wechat import (WeChatConfigError, WeChatRateLimitedError, WeChatRefusedError, WeChatUnavailableError,
                           call, check)

log = logging.getLogger(__name__)

PATH = "/cgi-bin/stable_token"
REFRESH_EARLY_S = 300.0   # fetch a new token this long before the stored one expires
MAX_TOKEN_LENGTH = 1024   # wechat_tokens.access_token
RATE_LIMIT_ERRORS = {45009: "daily quota reached", 45011: "too frequent"}


def _classify(errcode: int) -> type[WeChatRefusedError]:
    # The call carries only the gateway's own appid and secret: any other refusal is the operator's to fix.
    return WeChatRateLimitedError if errcode in RATE_LIMIT_ERRORS else WeChatConfigError


def _read(conn, appid: str) -> dict | None:
    """The stored token with what the database's clock says of it (fresh: before refresh_at; usable: not expired)."""
    return query_one(conn, """SELECT access_token, invalidated, refresh_at > UTC_TIMESTAMP(3) AS fresh,
                              expires_at > UTC_TIMESTAMP(3) AS usable FROM wechat_tokens WHERE appid=%s""", (appid,))


def _good(row: dict | None, key: str) -> bool:
    return bool(row and row[key] and not row["invalidated"])


def _store(conn, appid: str, token: str, expires_in: int, early_s: float) -> None:
    expires = int(expires_in * 1e6)
    refresh = int((expires_in - min(early_s, expires_in / 2)) * 1e6)
    execute(conn, """INSERT INTO wechat_tokens (appid, access_token, expires_at, refresh_at, invalidated, fetched_at)
                     VALUES (%s, %s, UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND,
                             UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND, 0, UTC_TIMESTAMP(3))
                     ON DUPLICATE KEY UPDATE access_token=VALUES(access_token), expires_at=VALUES(expires_at),
                       refresh_at=VALUES(refresh_at), invalidated=0, fetched_at=VALUES(fetched_at)""",
            (appid, token, expires, refresh))


class AccessTokens:
    """The access token of one mini-program (appid + secret), kept in MySQL, fetched through a requests session."""

    def __init__(self, db, session, base_url: str, appid: str, secret: str, *, timeout: float = 5.0,
                 refresh_early_s: float = REFRESH_EARLY_S):
        self.db = db
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.appid = appid
        self._secret = secret
        self.timeout = timeout
        self.refresh_early_s = refresh_early_s
        self._lock = f"wechat_token:{appid}"[:64]  # MySQL's limit on lock names
        self._lock_wait_s = math.ceil(3 * timeout) + 1  # longer than one fetch takes at most
        self.fetches = 0  # stable_token calls made by this process (tests, operators' checks)

    def __repr__(self) -> str:
        return f"AccessTokens({self.base_url!r}, appid={self.appid!r}, secret=***)"

    def access_token(self) -> str:
        """A valid access token: the stored one, or one fetched now (by this process or the one holding the lock)."""
        with self.db.connection() as conn:
            row = _read(conn, self.appid)
            if _good(row, "fresh"):
                return row["access_token"]
            got = query_one(conn, "SELECT GET_LOCK(%s, %s) AS got", (self._lock, self._lock_wait_s))["got"]
            try:
                row = _read(conn, self.appid)  # what the process that held the lock fetched
                if _good(row, "fresh"):
                    return row["access_token"]
                if got != 1:
                    if _good(row, "usable"):
                        return row["access_token"]
                    raise WeChatUnavailableError("stable_token: another process is fetching the access token")
                return self._refresh(conn, row)
            finally:
                if got == 1:
                    query_one(conn, "SELECT RELEASE_LOCK(%s) AS released", (self._lock,))

    def invalidate(self, token: str) -> bool:
        """Report a token WeChat called invalid or expired (40001/42001): the next access_token() fetches a
        new one with force_refresh, unless another process has replaced it already. True if it was the stored one."""
        with self.db.connection() as conn:
            changed = execute(conn, "UPDATE wechat_tokens SET invalidated=1 WHERE appid=%s AND access_token=%s "
                                    "AND invalidated=0", (self.appid, token)) == 1
        if changed:
            log.warning("WeChat access token of %s reported invalid: the next call fetches a new one", self.appid)
        return changed

    def _refresh(self, conn, row: dict | None) -> str:
        """Fetch and store a new token (holding the lock); keep using a stored one that still works if that fails."""
        force = bool(row and row["invalidated"])
        try:
            token, expires_in = self._fetch(force)
        except (WeChatUnavailableError, WeChatRefusedError) as e:
            if not _good(row, "usable"):
                raise
            log.warning("WeChat access token of %s: refresh failed (%s); the stored one is used until it expires",
                        self.appid, e)
            return row["access_token"]
        _store(conn, self.appid, token, expires_in, self.refresh_early_s)
        log.info("WeChat access token of %s fetched%s, valid %d s", self.appid, " (force_refresh)" if force else "",
                 expires_in)
        return token

    def _fetch(self, force: bool) -> tuple[str, int]:
        """POST stable_token; return (access_token, expires_in)."""
        body = {"grant_type": "client_credential", "appid": self.appid, "secret": self._secret,
                "force_refresh": force}
        self.fetches += 1
        failure = None
        try:
            data, status = call(self.session, "POST", self.base_url + PATH, what="stable_token",
                                timeout=self.timeout, json_body=body)
        except WeChatUnavailableError as e:  # "unclear" means nothing here: a fetch can simply be made again
            failure = str(e)
        if failure is not None:
            raise WeChatUnavailableError(failure)
        check(data, status, what="stable_token", classify=_classify, hidden=(self._secret,))
        token, expires_in = data.get("access_token"), data.get("expires_in")
        if (not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH or not token.isascii()
                or not token.isprintable() or " " in token):
            raise WeChatUnavailableError("stable_token: answer without a usable access_token")
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
            raise WeChatUnavailableError("stable_token: answer without a usable expires_in")
        return token, expires_in


TOKEN_ERRORS = {40001: "invalid credential", 40014: "invalid access_token", 42001: "access_token expired"}


def post_with_token(tokens: AccessTokens, session, url: str, body: dict, *, what: str, timeout: float,
                    classify) -> dict:
    """POST one server API call carrying the access token; return WeChat's answer (errcode 0).

    A token WeChat refuses (40001/40014/42001, which ``classify`` must map to ``WeChatTokenError``)
    is reported and the call made again at once with a new one: WeChat did nothing with the first.
    Raises shared/wechat.py's errors (the token's own: ``WeChatConfigError``, ``WeChatUnavailableError``).
    """
    from shared.wechat import WeChatTokenError
    for attempt in (1, 2):
        token = tokens.access_token()
        data, status = call(session, "POST", url, what=what, timeout=timeout, params={"access_token": token},
                            json_body=body)
        try:
            return check(data, status, what=what, classify=classify, hidden=(token,))
        except WeChatTokenError:
            tokens.invalidate(token)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
