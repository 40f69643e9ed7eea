"""POST /v1/auth/wechat: log in with a wx.login code; POST /v1/auth/dev: by name (only when DEV_LOGIN=1).

WeChat's answers and what the app gets (README, "Decisions the contract leaves open"):

=============================================  ==========================================
jscode2session                                 POST /v1/auth/wechat
=============================================  ==========================================
openid (+ unionid)                             200 token; one user per openid
40029 invalid code, 40163 code been used,      401 ``invalid_code`` (call wx.login again),
41008 missing code, 40226 high-risk user       ``details.wechat_errcode``
45011 too many logins of this user             429 ``rate_limited``, Retry-After: 60
-1 system busy; unreachable, slower than       503 ``backend_unavailable``, Retry-After: 5
WECHAT_TIMEOUT, 5xx, not JSON
40013 / 40125 / 40164 ... (our appid, secret,  503 ``backend_unavailable`` (logged at ERROR:
IP whitelist) and any errcode not listed here  the operator must act)
=============================================  ==========================================
"""

import logging

from shared.auth import login
from shared.errors import (BackendUnavailableError, InvalidCodeError, InvalidParamsError, NotFoundError,
                           TooManyRequestsError)
from shared.http import check_fields, json_response, lambda_handler
from shared.limits import limit_login
from shared.wechat import (WeChatClient, WeChatCodeError, WeChatConfigError, WeChatRateLimitedError,
                           WeChatRefusedError, WeChatUnavailableError)

log = logging.getLogger(__name__)

MAX_CODE_LENGTH = 128
WECHAT_BUSY_RETRY_AFTER = 5
WECHAT_RATE_LIMIT_RETRY_AFTER = 60  # WeChat counts 100 logins per user per minute

_CODE_MESSAGES = {
    40029: "WeChat refused the login code (invalid or expired): call wx.login again",
    40163: "the login code was already used: call wx.login again",
    41008: "WeChat received no login code: call wx.login again",
    40226: "WeChat blocked this login (high-risk user)",
}


def dev_login(ctx, req):
    if not ctx.config.dev_login:
        raise NotFoundError("no such endpoint")
    limit_login(ctx, req)
    body = req.json()
    check_fields(body, {"user"})
    name = body.get("user")
    # No leading or trailing blanks: MySQL's PAD SPACE comparison would make "alice " log in as "alice".
    if not isinstance(name, str) or not (1 <= len(name) <= 64) or not name.isprintable() or name != name.strip():
        raise InvalidParamsError("user must be a name of 1 to 64 characters", details={"user": "1 to 64 characters"})
    return json_response(200, login(ctx, provider="dev", subject=name))


def _valid_code(code) -> bool:
    return (isinstance(code, str) and 1 <= len(code) <= MAX_CODE_LENGTH and code.isascii()
            and code.isprintable() and not any(c.isspace() for c in code))


def wechat_client(ctx) -> WeChatClient | None:
    """The WeChat client of this deployment, or None when WECHAT_APPID / WECHAT_SECRET are not set."""
    cfg = ctx.config
    if not cfg.wechat_appid or not cfg.wechat_secret:
        return None
    return WeChatClient(ctx.session, cfg.wechat_api_base, cfg.wechat_appid, cfg.wechat_secret,
                        timeout=cfg.wechat_timeout)


def wechat_login(ctx, req):
    client = wechat_client(ctx)
    if client is None:
        raise NotFoundError("no such endpoint")
    limit_login(ctx, req)
    body = req.json()
    check_fields(body, {"code"})
    code = body.get("code")
    if not _valid_code(code):
        raise InvalidParamsError(f"code must be the string from wx.login (1 to {MAX_CODE_LENGTH} characters)",
                                 details={"code": f"a string of 1 to {MAX_CODE_LENGTH} printable ASCII characters"})
    # Only our own messages are logged below: never the URL, the secret, the code or the session_key.
    try:
        openid, unionid = client.code_to_session(code)
    except WeChatCodeError as e:
        log.info("WeChat login refused: errcode %s", e.errcode)
        raise InvalidCodeError(_CODE_MESSAGES.get(e.errcode), details={"wechat_errcode": e.errcode}) from None
    except WeChatRateLimitedError as e:
        log.warning("WeChat login rate-limited: errcode %s", e.errcode)
        raise TooManyRequestsError("too many logins: try again in a minute", details={"wechat_errcode": e.errcode},
                                   retry_after=WECHAT_RATE_LIMIT_RETRY_AFTER) from None
    except WeChatConfigError as e:
        log.error("WeChat refused this deployment's credentials or setup (errcode %s: %s): "
                  "check WECHAT_APPID, WECHAT_SECRET and the server IP whitelist", e.errcode, e.errmsg)
        raise BackendUnavailableError("WeChat login is unavailable") from None
    except WeChatRefusedError as e:
        log.error("WeChat jscode2session answered an unexpected errcode %s (%s)", e.errcode, e.errmsg)
        raise BackendUnavailableError("WeChat login is unavailable", details={"wechat_errcode": e.errcode}) from None
    except WeChatUnavailableError as e:
        log.warning("WeChat login unavailable: %s", e)
        details = {"wechat_errcode": e.errcode} if e.errcode is not None else None
        raise BackendUnavailableError("WeChat is unavailable: try again shortly", details=details,
                                      retry_after=WECHAT_BUSY_RETRY_AFTER) from None
    answer = login(ctx, provider="wechat", subject=openid, unionid=unionid)
    log.info("WeChat login: user %s", answer["user"]["id"])
    return json_response(200, answer)


dev_handler = lambda_handler(dev_login)
wechat_handler = lambda_handler(wechat_login)
