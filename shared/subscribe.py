"""WeChat subscribe messages ("your picture is ready"): the message of a finished job, and the send call.

A mini-program may push one subscribe message for each time the user accepted one: the app calls
``wx.requestSubscribeMessage({tmplIds: [WECHAT_SUBSCRIBE_TEMPLATE_ID]})`` and, when the user
accepted, submits with ``"notify": true``. When the job is final, ``shared/outbox.py`` writes a
``kind='subscribe'`` row in the same transaction and the listener sends it
(``listener/outbox_sender.py``) with ``SubscribeClient.send(message(...))``:
``POST {WECHAT_API_BASE}/cgi-bin/message/subscribe/send?access_token=…`` with
``{"touser", "template_id", "page", "data", "miniprogram_state", "lang"}``.

``WECHAT_SUBSCRIBE_DATA`` maps the template's keys to text with placeholders from a closed set
(``parse_data`` checks it at start-up)::

    {"thing1": "{workflow_title}", "phrase2": "{status_text}", "time3": "{finished_at}"}

    workflow        the workflow's name (txt2img)
    workflow_title  its title in the workflow file (Text to image), else its name
    status          succeeded, failed or cancelled
    status_text     成功, 失败 or 已取消
    finished_at     when it ended, as WeChat's time and date types want it: 2026-12-01 20:00:00 (Asia/Shanghai)
    job_id          the job's id

Each value is cut to what WeChat accepts for its key's type (``thing``: 20 characters, ...), the
last kept character replaced by "…".

``send`` raises shared/wechat.py's errors: ``WeChatUnclearError`` (sent, no answer: it may have
been pushed), ``WeChatUnavailableError`` (not pushed: unreachable, busy, 5xx, junk),
``WeChatTokenError`` (the token was refused twice, even after a new one was fetched),
``WeChatRateLimitedError``, and for the access token ``WeChatConfigError``; any other refusal is a
``WeChatRefusedError`` (43101: the user has no subscription left or refused; 40003 bad openid;
40037 bad template id; 41030 bad page; 47003 bad data): final for that message.
"""

from __future__ import annotations

import json
import re
import string
from datetime import datetime, timedelta, timezone

from shared.wechat import WeChatRateLimitedError, WeChatRefusedError, WeChatTokenError
from shared.wechat_token import TOKEN_ERRORS, post_with_token

PATH = "/cgi-bin/message/subscribe/send"
PLACEHOLDERS = ("workflow", "workflow_title", "status", "status_text", "finished_at", "job_id")
STATUS_TEXT = {"succeeded": "成功", "failed": "失败", "cancelled": "已取消"}
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")  # no daylight saving time since 1991
# The longest value WeChat takes for a key of each type (the key is the type plus a number: thing1).
LIMITS = {"thing": 20, "short_thing": 5, "phrase": 5, "name": 10, "character_string": 32, "letter": 32,
          "number": 32, "symbol": 5, "car_number": 8, "phone_number": 17}
KEY = re.compile(r"([a-z]+(?:_[a-z]+)*)([0-9]+)")
RATE_LIMIT_ERRORS = {45009: "daily quota reached", 45011: "too frequent"}
MAX_KEYS = 20


def parse_data(value: str) -> tuple[tuple[str, str], ...]:
    """WECHAT_SUBSCRIBE_DATA checked: a JSON object of template keys to text with known placeholders."""
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError("must be a JSON object like {\"thing1\": \"{workflow_title}\"}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError("must be a non-empty JSON object like {\"thing1\": \"{workflow_title}\"}")
    if len(data) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} keys")
    for key, text in data.items():
        if not KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a template key like thing1 or time3")
        if not isinstance(text, str) or not text:
            raise ValueError(f"{key}: must be a non-empty string")
        try:
            fields = list(string.Formatter().parse(text))
        except ValueError as e:
            raise ValueError(f"{key}: {e} (write {{{{ and }}}} for braces)") from None
        for _, name, spec, conversion in fields:
            if name is not None and (name not in PLACEHOLDERS or spec or conversion):
                raise ValueError(f"{key}: {{{name}}} is not one of " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    return tuple(data.items())


def _cut(key: str, text: str) -> str:
    limit = LIMITS.get(KEY.fullmatch(key).group(1))
    if limit is None or len(text) <= limit:
        return text
    return text[:limit - 1] + "…"


def facts(payload: dict, title: str | None) -> dict:
    """The placeholders' values for one finished job (``payload``: the outbox row's)."""
    finished = payload.get("finished_at")
    when = datetime.fromisoformat(finished.replace("Z", "+00:00")) if finished else datetime.now(timezone.utc)
    return {"workflow": payload["workflow"], "workflow_title": title or payload["workflow"],
            "status": payload["status"], "status_text": STATUS_TEXT.get(payload["status"], payload["status"]),
            "finished_at": when.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"), "job_id": payload["job_id"]}


def message(config, payload: dict, title: str | None) -> dict:
    """The body of subscribe/send for one finished job, as the settings say."""
    values = facts(payload, title)
    page = config.wechat_subscribe_page
    return {"touser": payload["touser"], "template_id": config.wechat_subscribe_template_id,
            "page": f"{page}{'&' if '?' in page else '?'}job={payload['job_id']}",
            "data": {key: {"value": _cut(key, text.format(**values))} for key, text in config.wechat_subscribe_data},
            "miniprogram_state": config.wechat_miniprogram_state, "lang": "zh_CN"}


def _classify(errcode: int) -> type[WeChatRefusedError]:
    if errcode in TOKEN_ERRORS:
        return WeChatTokenError
    if errcode in RATE_LIMIT_ERRORS:
        return WeChatRateLimitedError
    return WeChatRefusedError


class SubscribeClient:
    """subscribe/send of one mini-program, with the shared access token, through a requests session."""

    def __init__(self, session, base_url: str, tokens, *, timeout: float = 5.0):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SubscribeClient({self.base_url!r})"

    def send(self, body: dict) -> None:
        """Push one message; return once WeChat said errcode 0, else raise a WeChatError (a refused
        token is replaced and the message sent again at once: WeChat pushed nothing)."""
        post_with_token(self.tokens, self.session, self.base_url + PATH, body, what="subscribe/send",
                        timeout=self.timeout, classify=_classify)
