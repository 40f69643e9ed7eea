"""Content security for the fake WeChat (``FakeWeChat`` mixes this in): ``POST /wxa/msg_sec_check`` and
``POST /wxa/media_check_async``, and the message push that carries the image verdicts.

msg_sec_check (``?access_token=``; body ``{"content", "version": 2, "scene": 1..4, "openid"[, "title",
"nickname", "signature"]}``), checked in this order:

- token: 40001 unknown or revoked, 42001 expired; an empty body: 44002; not a JSON object: 47001;
- ``version`` missing or 1: the retired 1.0 answer (``{"errcode": 0, "errmsg": "ok"}`` or 87014 ``risky
  content``, no ``result``); another version: 47001;
- ``openid`` not an openid-shaped string: 40003; ``scene`` not 1..4: 40129; ``content`` missing or empty:
  44002; not a string, over 2500 characters, or a ``title``/``nickname``/``signature`` that is not a
  string: 47001 (the documents give the limit, not the code: assumed);
- else ``{"errcode": 0, "errmsg": "ok", "detail": [{"strategy": "content_model", ...}, {"strategy":
  "keyword", "errcode": 0}], "trace_id", "result": {"suggest", "label"}}``. The verdict comes from
  ``text_verdicts`` (word → ``"risky"``/``"review"`` or ``(suggest, label)``; substring of content, title,
  nickname or signature; any risky word beats any review word): labels 100 pass, 20002 risky, 21000 review.
  61010 (the user has not opened the mini-program for two hours) and the rest come from ``fail_next``.

media_check_async (``?access_token=``; body ``{"media_url", "media_type": 1|2, "version": 2, "scene",
"openid"}``): the same token, body, version, openid and scene checks; a ``media_url`` that is not http(s)
or a ``media_type`` not 1 or 2: 47001. Answers ``{"errcode": 0, "errmsg": "ok", "trace_id"}``; then, after
``push_delay`` seconds, a background thread GETs the URL (kept in ``media_fetches``: trace_id, url,
status, length, ok), asks ``image_judge(url, data)`` for ``"pass"``/``"review"``/``"risky"`` (or
``(suggest, label)``), keeps the event in ``verdicts[trace_id]`` and pushes it. A fetch that fails pushes
nothing unless ``push_on_fetch_failure`` is set (then a ``pass``: what WeChat has been seen to do with
links it cannot download). Version 1 pushes the old event (``isrisky``, ``extra_info_json``).

The push (``configure_push(url, token=, aes_key=, appid=, mode="safe"|"plain", fmt="json"|"xml")``):
``shared.wxpush.seal`` makes the query and body, POSTed to the URL; an answer of HTTP 200 with an empty
body or ``success`` is delivered, anything else is retried ``push_retry_s`` later, 3 attempts in all.
Every attempt is kept in ``push_attempts`` (trace_id, attempt, status, body, delivered). Failures:
``drop_pushes(n)`` (the next n verdicts are never pushed; their trace_ids go to ``dropped``),
``duplicate_pushes = True`` (each verdict pushed twice), ``push(trace_id)`` (push a kept verdict again,
now, in the caller's thread). Anything that went wrong inside the fake itself is in ``errors``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

from shared.wxpush import seal

SEC_CHECK = "/wxa/msg_sec_check"
MEDIA_CHECK = "/wxa/media_check_async"
LABELS = {"pass": 100, "risky": 20002, "review": 21000}
MAX_CONTENT = 2500
PUSH_ATTEMPTS = 3
_OPENID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ModerationMixin:
    """The content-security endpoints and the verdict push; needs ``_lock``, ``_stopping`` and the helpers of FakeWeChat."""

    def _init_moderation(self) -> None:
        self.text_verdicts = {"RISKY": "risky", "REVIEW": "review"}
        self.image_judge = lambda url, data: "pass"
        self.push_delay = 0.05
        self.push_retry_s = 0.2
        self.push_timeout = 5.0
        self.push_on_fetch_failure = False
        self.duplicate_pushes = False
        self.media_fetches: list[dict] = []
        self.push_attempts: list[dict] = []
        self.verdicts: dict[str, dict] = {}
        self.dropped: list[str] = []
        self.errors: list[str] = []
        self._push_config: dict | None = None
        self._drop = 0
        self._jobs: list[threading.Thread] = []

    # -- control --------------------------------------------------------------------------------

    def configure_push(self, url: str, *, token: str, aes_key: str | None = None, appid: str | None = None,
                       mode: str = "safe", fmt: str = "json") -> None:
        """Push verdicts to ``url`` as the console's 消息推送 settings would (safe mode needs ``aes_key``)."""
        if mode not in ("safe", "plain") or fmt not in ("json", "xml") or (mode == "safe" and not aes_key):
            raise ValueError("mode is safe (with aes_key) or plain; fmt is json or xml")
        self._push_config = {"url": url, "token": token, "aes_key": aes_key if mode == "safe" else None,
                             "appid": appid or self.appid, "fmt": fmt}

    def drop_pushes(self, n: int = 1) -> None:
        """Never push the next ``n`` verdicts (WeChat lost them)."""
        with self._lock:
            self._drop += n

    def push(self, trace_id: str) -> bool:
        """Push a kept verdict again, now; tell whether it was delivered."""
        return self._deliver(self.verdicts[trace_id])

    def sec_check_requests(self) -> list:
        return [r for r in self.requests if r.path == SEC_CHECK]

    def media_check_requests(self) -> list:
        return [r for r in self.requests if r.path == MEDIA_CHECK]

    def wait_pushes(self, n: int, timeout: float = 5.0, *, delivered: bool = True) -> list[dict]:
        """Wait until ``n`` pushes were delivered (or, with ``delivered=False``, attempted); return the attempts."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                attempts = list(self.push_attempts)
            if sum(1 for a in attempts if a["delivered"] or not delivered) >= n:
                return attempts
            if time.monotonic() >= deadline:
                raise AssertionError(f"{n} pushes {'delivered' if delivered else 'attempted'} awaited for "
                                     f"{timeout}s; attempts: {attempts}; errors: {self.errors}")
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every media check has been fetched, judged and pushed (or given up)."""
        deadline = time.monotonic() + timeout
        for job in list(self._jobs):
            job.join(max(deadline - time.monotonic(), 0))
            if job.is_alive():
                raise AssertionError(f"media checks still running after {timeout}s")

    def _stop_moderation(self) -> None:
        for job in list(self._jobs):  # _stopping is set: delays and retries end at once
            job.join(self.push_timeout + 1)

    # -- the API --------------------------------------------------------------------------------

    def _check_request(self, query: dict, body) -> int | None:
        """The checks both endpoints share; return the errcode to answer with, if any."""
        with self._lock:
            token = self._tokens.get(query.get("access_token", ""))
        if token is None or token.revoked:
            return 40001
        if token.expires_at <= time.monotonic():
            return 42001
        if body is None:  # nothing posted
            return 44002
        if not isinstance(body, dict):
            return 47001
        if body.get("version") in (None, 1):
            return None
        if body.get("version") != 2:
            return 47001
        openid = body.get("openid")
        if not isinstance(openid, str) or not _OPENID.fullmatch(openid):
            return 40003
        if body.get("scene") not in (1, 2, 3, 4) or isinstance(body.get("scene"), bool):
            return 40129
        return None

    def _msg_sec_check(self, h, query: dict, body) -> None:
        errcode = self._check_request(query, body)
        if errcode is not None:
            return self._error(h, errcode)
        content = body.get("content")
        if content is None or content == "":
            return self._error(h, 44002)
        extras = [body.get(k, "") for k in ("title", "nickname", "signature")]
        if not isinstance(content, str) or len(content) > MAX_CONTENT or not all(isinstance(x, str) for x in extras):
            return self._error(h, 47001)
        suggest, label = self._judge_text(" ".join([content, *extras]))
        if body.get("version") in (None, 1):
            return self._error(h, 87014) if suggest == "risky" else self._answer(h, {"errcode": 0, "errmsg": "ok"})
        self._answer(h, {"errcode": 0, "errmsg": "ok", "detail": [
            {"strategy": "content_model", "errcode": 0, "suggest": suggest, "label": label, "prob": 90},
            {"strategy": "keyword", "errcode": 0}], "trace_id": _trace_id(), "result": {"suggest": suggest,
                                                                                         "label": label}})

    def _media_check_async(self, h, query: dict, body) -> None:
        errcode = self._check_request(query, body)
        if errcode is not None:
            return self._error(h, errcode)
        url = body.get("media_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) \
                or body.get("media_type") not in (1, 2) or isinstance(body.get("media_type"), bool):
            return self._error(h, 47001)
        trace_id = _trace_id()
        job = threading.Thread(target=self._check_media, args=(trace_id, dict(body)), name=f"fake-wechat-{trace_id}",
                               daemon=True)
        with self._lock:
            self._jobs.append(job)
        job.start()
        self._answer(h, {"errcode": 0, "errmsg": "ok", "trace_id": trace_id})

    def _answer(self, h, answer: dict) -> None:
        self._send(h, 200, json.dumps(answer).encode(), self.content_type)

    def _judge_text(self, text: str) -> tuple[str, int]:
        found = [_verdict(v) for word, v in self.text_verdicts.items() if word in text]
        return next((v for v in found if v[0] == "risky"), found[0] if found else ("pass", LABELS["pass"]))

    # -- the background check and the push ------------------------------------------------------

    def _check_media(self, trace_id: str, body: dict) -> None:
        try:
            if self._stopping.wait(self.push_delay):
                return
            url = body["media_url"]
            status, data, ok = self._fetch(url)
            with self._lock:
                self.media_fetches.append({"trace_id": trace_id, "url": url, "status": status,
                                           "length": len(data), "ok": ok})
            if not ok and not self.push_on_fetch_failure:
                return
            suggest, label = _verdict(self.image_judge(url, data)) if ok else ("pass", LABELS["pass"])
            event = self._event(trace_id, body, suggest, label)
            with self._lock:
                self.verdicts[trace_id] = event
                dropped = self._drop > 0
                if dropped:
                    self._drop -= 1
                    self.dropped.append(trace_id)
            if not dropped:
                for _ in range(2 if self.duplicate_pushes else 1):
                    self._deliver(event)
        except Exception as exc:  # a fake's own failure: kept for the test to see
            with self._lock:
                self.errors.append(f"{trace_id}: {exc!r}")

    def _fetch(self, url: str) -> tuple[int | None, bytes, bool]:
        try:
            with _NO_PROXY.open(url, timeout=self.push_timeout) as answer:
                data = answer.read()
                return answer.status, data, answer.status == 200
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), False
        except OSError:
            return None, b"", False

    def _event(self, trace_id: str, body: dict, suggest: str, label: int) -> dict:
        event = {"ToUserName": "gh_fake", "FromUserName": body.get("openid", ""), "CreateTime": int(time.time()),
                 "MsgType": "event", "Event": "wxa_media_check", "appid": self.appid, "trace_id": trace_id}
        if body.get("version") in (None, 1):
            return dict(event, isrisky=int(suggest == "risky"), extra_info_json="", status_code=0)
        return dict(event, version=2, errcode=0, errmsg="ok", result={"suggest": suggest, "label": label},
                    detail=[{"strategy": "content_model", "errcode": 0, "suggest": suggest, "label": label,
                             "prob": 90}])

    def _deliver(self, event: dict) -> bool:
        config = self._push_config
        if config is None:
            with self._lock:
                self.errors.append(f"{event['trace_id']}: no push URL configured (configure_push)")
            return False
        query, body = seal(config["token"], config["aes_key"], config["appid"], event, fmt=config["fmt"])
        url = config["url"] + ("&" if "?" in config["url"] else "?") + urlencode(query)
        content_type = "application/json" if config["fmt"] == "json" else "text/xml"
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            if attempt > 1 and self._stopping.wait(self.push_retry_s):
                return False
            request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
            try:
                with _NO_PROXY.open(request, timeout=self.push_timeout) as answer:
                    status, text = answer.status, answer.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                status, text = exc.code, exc.read().decode("utf-8", "replace")
            except OSError as exc:
                status, text = None, repr(exc)
            delivered = status == 200 and text.strip() in ("", "success")
            with self._lock:
                self.push_attempts.append({"trace_id": event["trace_id"], "attempt": attempt, "status": status,
                                           "body": text, "delivered": delivered})
            if delivered:
                return True
        return False


def _trace_id() -> str:
    return "-".join(secrets.token_hex(4) for _ in range(3))  # like WeChat's "62987eb8-18ca076c-37fc373b"


def _verdict(value) -> tuple[str, int]:
    suggest, label = (value, LABELS.get(value)) if isinstance(value, str) else value
    if suggest not in LABELS or not isinstance(label, int):
        raise ValueError(f"a verdict is pass, review or risky (or a (suggest, label) pair), not {value!r}")
    return suggest, label
