"""Who answers the questions of content security: WeChat's checks, or the operator's webhook.

WeChat (``POST {WECHAT_API_BASE}/wxa/...?access_token=…``, the token of shared/wechat_token.py):

* ``msg_sec_check`` v2 ``{"content", "version": 2, "scene", "openid"}`` answers at once
  ``{"errcode": 0, "result": {"suggest": "pass"|"review"|"risky", "label": 100}, "trace_id", ...}``.
  Content is checked in pieces of at most 2,500 characters (WeChat's limit); the worst piece counts.
* ``media_check_async`` v2 ``{"media_url", "media_type": 2, "version": 2, "scene", "openid"}``
  answers ``{"errcode": 0, "trace_id"}``; the verdict comes later, pushed (functions/wechat_push.py).

The webhook (MODERATION_WEBHOOK_URL): a POST signed as Standard Webhooks (shared/webhooks.py,
with MODERATION_WEBHOOK_SECRET) of ``{"type": "moderation.text" | "moderation.image",
"timestamp", "data"}``, answered at once with 2xx ``{"suggest": "pass"|"review"|"risky"}``.

Both raise ``Unanswered`` when no verdict could be had; ``retry`` says whether asking again later
may help (down, busy, a refused token, a bad answer) or not (a refusal of the question itself,
e.g. 61010: the user has not opened the mini-program for two hours). Its text is safe to log.
"""

from __future__ import annotations

import json
import time
import uuid

from shared import webhooks
from shared.moderation import SUGGESTS
from shared.wechat import WeChatError, WeChatRefusedError, WeChatTokenError
from shared.wechat_token import TOKEN_ERRORS, post_with_token

MAX_CONTENT = 2500  # characters msg_sec_check takes at once
MAX_ANSWER = 64 * 1024
RANK = {"pass": 0, "review": 1, "risky": 2}


class Unanswered(Exception):
    """No verdict: ``retry`` if asking again may give one."""

    def __init__(self, message: str, *, retry: bool):
        super().__init__(message)
        self.retry = retry


def worst(suggests) -> str:
    return max(suggests, key=RANK.__getitem__, default="pass")


def _classify(errcode: int) -> type[WeChatRefusedError]:
    return WeChatTokenError if errcode in TOKEN_ERRORS else WeChatRefusedError


def _suggest(value, what: str) -> str:
    if value not in SUGGESTS:
        raise Unanswered(f"{what}: answer without a usable suggest", retry=True)
    return value


class WeChatChecks:
    """msg_sec_check and media_check_async of one mini-program."""

    def __init__(self, session, base_url: str, tokens, *, timeout: float, scene: int):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout
        self.scene = scene

    def __repr__(self) -> str:
        return f"WeChatChecks({self.base_url!r})"

    def _post(self, path: str, body: dict, what: str) -> dict:
        try:
            return post_with_token(self.tokens, self.session, self.base_url + path, body, what=what,
                                   timeout=self.timeout, classify=_classify)
        except WeChatTokenError as e:
            raise Unanswered(str(e), retry=True) from None
        except WeChatRefusedError as e:
            # 45009/45011 (quota) pass with time; the others are about the question or the setup.
            raise Unanswered(str(e), retry=e.errcode in (45009, 45011)) from None
        except WeChatError as e:  # unavailable, unclear, the access token not to be had
            raise Unanswered(str(e), retry=True) from None

    def check_text(self, openid: str | None, content: str) -> str:
        """The suggest for a text (``pass`` for an empty one)."""
        if openid is None:
            raise Unanswered("msg_sec_check: the user has no openid (not a WeChat login)", retry=False)
        found = []
        for start in range(0, len(content), MAX_CONTENT):
            answer = self._post("/wxa/msg_sec_check", {"content": content[start:start + MAX_CONTENT], "version": 2,
                                                       "scene": self.scene, "openid": openid}, "msg_sec_check")
            found.append(_suggest((answer.get("result") or {}).get("suggest"), "msg_sec_check"))
            if found[-1] == "risky":
                break
        return worst(found)

    def ask_image(self, openid: str | None, url: str) -> str:
        """Ask for an image's verdict; return the trace_id its push will carry."""
        if openid is None:
            raise Unanswered("media_check_async: the user has no openid (not a WeChat login)", retry=False)
        answer = self._post("/wxa/media_check_async", {"media_url": url, "media_type": 2, "version": 2,
                                                       "scene": self.scene, "openid": openid}, "media_check_async")
        trace_id = answer.get("trace_id")
        if not isinstance(trace_id, str) or not 0 < len(trace_id) <= 128:
            raise Unanswered("media_check_async: answer without a usable trace_id", retry=True)
        return trace_id


class WebhookChecks:
    """The operator's moderation endpoint: every question answered in the response (shared/webhooks.py posts it)."""

    def __init__(self, session, url: str, secret: str, *, timeout: float):
        self.client = webhooks.WebhookClient(session, url, secret, timeout=timeout, agent="comfy-gateway-moderation")

    def __repr__(self) -> str:  # neither the secret nor the URL (it may hold a token)
        return "WebhookChecks(...)"

    def ask(self, kind: str, data: dict, *, event_id: str | None = None) -> str:
        """POST one question; return the suggest. ``event_id``: the webhook-id, the same on every retry."""
        body = json.dumps({"type": kind, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "data": data}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            _, raw = self.client.post(event_id or "mod_" + uuid.uuid4().hex, body, answer_bytes=MAX_ANSWER)
        except webhooks.WebhookError as e:
            raise Unanswered(f"{kind}: {e}", retry=True) from None
        try:
            answer = json.loads(raw) if len(raw) <= MAX_ANSWER else None
        except ValueError:
            answer = None
        return _suggest(answer.get("suggest") if isinstance(answer, dict) else None, kind)


def checker(ctx):
    """The checks of the configured MODERATION (None for none)."""
    cfg = ctx.config
    if cfg.moderation == "wechat":
        return WeChatChecks(ctx.session, cfg.wechat_api_base, ctx.wechat_tokens, timeout=cfg.wechat_timeout,
                            scene=cfg.moderation_scene)
    if cfg.moderation == "webhook":
        return WebhookChecks(ctx.session, cfg.moderation_webhook_url, cfg.moderation_webhook_secret,
                             timeout=cfg.wechat_timeout)
    return None
