"""GET and POST /v1/wechat/push: WeChat's message push (消息推送), where image verdicts arrive.

The operator sets, in the mini-program's admin console (开发管理 → 消息推送), the URL
``{PUBLIC_BASE_URL}/v1/wechat/push``, the Token (WECHAT_PUSH_TOKEN), the EncodingAESKey
(WECHAT_PUSH_AES_KEY, safe mode) and the JSON data format. WeChat checks the URL with a GET
(``signature``, ``timestamp``, ``nonce``, ``echostr``: the echostr is answered when the signature
holds), then POSTs events. Each POST is verified (shared/wxpush.py: the signature of the Token,
timestamp and nonce, and in safe mode the ``msg_signature`` over the encrypted message, which is
decrypted and must name this appid); a push that is not WeChat's is 401. The ``wxa_media_check``
event gives the verdict on one image by its ``trace_id`` (shared/moderation/outputs.py); other
events are acknowledged and ignored. WeChat sends a push again when it gets no ``success``:
a repeated verdict changes nothing.

Without MODERATION=wechat the path does not exist (404).
"""

from __future__ import annotations

import logging

from shared.errors import NotFoundError, UnauthorizedError
from shared.http import Response, lambda_handler
from shared.moderation import SUGGESTS, outputs

log = logging.getLogger(__name__)

EVENT = "wxa_media_check"


def _push_token(ctx) -> str:
    cfg = ctx.config
    if cfg.moderation != "wechat" or not cfg.wechat_push_token:
        raise NotFoundError("no such path")
    return cfg.wechat_push_token


def _text(body: str) -> Response:
    return Response(status=200, body=body.encode("utf-8"), content_type="text/plain; charset=utf-8")


def verify(ctx, req):
    """The URL check of the push settings: answer the echostr."""
    from shared.wxpush import PushError, verify_url
    token = _push_token(ctx)
    try:
        return _text(verify_url(token, req.query))
    except PushError as e:
        log.warning("message push URL check refused: %s", e)
        raise UnauthorizedError("not a WeChat push") from None


def receive(ctx, req):
    """One pushed event: record a verdict, answer "success"."""
    from shared.wxpush import PushError, open_message
    token = _push_token(ctx)
    cfg = ctx.config
    try:
        message = open_message(token, cfg.wechat_push_aes_key, cfg.wechat_appid, req.query, req.body)
    except PushError as e:
        log.warning("message push refused: %s", e)
        raise UnauthorizedError("not a WeChat push") from None
    if message.get("Event") != EVENT:
        return _text("success")
    trace_id = message.get("trace_id")
    if not isinstance(trace_id, str) or not trace_id:
        log.warning("message push: %s without a trace_id", EVENT)
        return _text("success")
    result = message.get("result") if isinstance(message.get("result"), dict) else {}
    suggest = result.get("suggest") if result.get("suggest") in SUGGESTS else None
    errcode = _int(message.get("errcode")) or 0
    label = _int(result.get("label"))
    if suggest is None and errcode == 0:
        errcode = -1  # an answer without a verdict: recorded as none (MODERATION_FAIL decides)
    with ctx.db.transaction() as conn:
        outputs.store_verdict(conn, trace_id, suggest, label, errcode)
        job_id = outputs.apply_verdict(conn, trace_id)
    if job_id is not None:
        outputs.settle(ctx, job_id)
    return _text("success")


def _int(value) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


verify_handler = lambda_handler(verify)
handler = lambda_handler(receive)
