"""Send the outbox's webhook events to WEBHOOK_URL: one thread per listener process.

Each event is claimed on its own (``SELECT ... FOR UPDATE SKIP LOCKED`` under READ COMMITTED,
then its ``next_attempt_at`` moved past the POST's timeout and committed) before it is sent, so
two listeners never send one event at the same time, and one that dies mid-send lets the event
come back when the hold runs out. A 2xx answer marks it sent; anything else (another status, a
timeout, no connection) is retried with exponential back-off and jitter for a day from its first
attempt, then it is given up with one ERROR line. Every attempt carries the same webhook-id:
delivery is at least once (a crash after the POST and before the row is marked sends it again),
and receivers dedupe by that id.

After a failure the pass ends: the receiver is probably down, and the next pass (POLL_S later)
tries the next due event rather than spending a timeout on each of them now.

Without WEBHOOK_URL the thread only discards the events the others write (no one will send them).
Sent and given-up events are deleted after RETENTION_S (the window of `gateway webhooks replay`).

``SubscribeSender`` is a second thread, the same loop over the ``kind='subscribe'`` rows: WeChat
subscribe messages of jobs submitted with notify (``shared/subscribe.py``). Its rules differ,
because a push cannot be deduplicated by the phone (WeChat takes no idempotency key) and each one
spends one of the user's accepted subscriptions: **at most once**, and at least once as far as
WeChat's answers allow.

* errcode 0: sent. 40001/42001 (the access token): reported (``shared/wechat_token.py``), sent
  again at once with a new token, retried with back-off if that is refused too.
* -1 (busy), 45009/45011, 5xx, junk, no connection, the access token not to be had (WeChat
  unreachable, or refusing WECHAT_APPID/WECHAT_SECRET): nothing was pushed: retried with the
  back-off above for SUBSCRIBE_RETRY_FOR_S (an hour: a later "your picture is ready" is noise),
  then given up with one ERROR line.
* 43101 (the user refused, or has no subscription left) and every other refusal (bad openid,
  template, page, data): given up at once with one WARNING; sending again cannot change it.
* Sent and no answer (a read timeout, a reset after sending): WeChat may have pushed it. Not sent
  again (a second push would spend a subscription the user gave for another job): given up with
  one WARNING, so the worst case is one push missing, never two. The same holds for a listener
  killed between claiming a push and recording WeChat's answer: the next claim finds the attempt
  unrecorded (``in_flight``) and gives it up without sending.

Without WECHAT_SUBSCRIBE_TEMPLATE_ID the thread discards the subscribe rows.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import timedelta

from shared import outbox
from shared.db import utcnow
from shared.errors import DatabaseUnavailableError
from shared.subscribe import SubscribeClient, message
from shared.webhooks import WebhookClient, WebhookError
from shared.wechat import (WeChatConfigError, WeChatError, WeChatRateLimitedError, WeChatTokenError,
                           WeChatUnavailableError, WeChatUnclearError)

log = logging.getLogger(__name__)

POLL_S = 1.0              # how often an idle sender looks for due events
TIMEOUT_S = 10.0          # one POST: connect and read
HOLD_S = 2 * TIMEOUT_S + 30.0  # a claimed event is not due for others this long (a sender died mid-send)
FIRST_DELAY_S = 5.0       # the first retry comes after about this long, then doubling...
MAX_DELAY_S = 3600.0      # ...up to an hour between attempts
RETRY_FOR_S = 86400.0     # failing for a day from its first attempt: given up
RETENTION_S = 30 * 86400.0  # sent and given-up events are kept this long (replay window)
PRUNE_EVERY_S = 3600.0
SUBSCRIBE_RETRY_FOR_S = 3600.0  # a push not possible for an hour is given up
IN_FLIGHT = "in flight: no answer recorded"  # a subscribe push's error while it is being sent


def retry_delay(attempts: int, *, rng=random.random) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: doubling, capped, with jitter
    (between half and all of it, so the events of one outage do not come back in step)."""
    delay = min(FIRST_DELAY_S * 2 ** max(attempts - 1, 0), MAX_DELAY_S)
    return delay * (0.5 + rng() / 2)


class OutboxSender:
    """The thread that sends due webhook events (or, without WEBHOOK_URL, discards them)."""

    kind = outbox.KIND_WEBHOOK
    what = "webhooks"
    in_flight: str | None = None  # webhooks are sent again after a crash mid-send (at least once)

    def __init__(self, ctx, stopping: threading.Event | None = None, *, client=None):
        self.ctx = ctx
        self.stopping = stopping or threading.Event()
        self.client = client
        self.thread = threading.Thread(target=self.run, name=f"outbox sender ({self.kind})", daemon=True)
        self.stats = {"sent": 0, "failed": 0, "given_up": 0, "discarded": 0}
        self._pruned_at = 0.0

    def start(self) -> "OutboxSender":
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self.thread.ident is not None:
            self.thread.join(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)

    def _client(self) -> WebhookClient | None:
        cfg = self.ctx.config
        if self.client is None and cfg.webhook_url:
            self.client = WebhookClient(self.ctx.session, cfg.webhook_url, cfg.webhook_secret, timeout=TIMEOUT_S)
        return self.client

    def _hold_s(self) -> float:
        return HOLD_S

    def _retry_for_s(self) -> float:
        return RETRY_FOR_S

    def run(self) -> None:
        try:
            client = self._client()
        except ValueError as e:  # a malformed whsec_ secret: the message names the setting, never its value
            log.error("%s not sent: %s", self.what, e)
            return
        while not self.stopping.is_set():
            try:
                if client is None:
                    with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:  # no gap locks on inserts
                        self.stats["discarded"] += outbox.discard_unsent(conn, kind=self.kind)
                else:
                    self.send_due(client)
                self._prune()
            except DatabaseUnavailableError:
                log.warning("outbox (%s): database unavailable; retrying", self.kind)
            except Exception:
                log.exception("outbox (%s): unexpected error (the next pass retries)", self.kind)
            self.stopping.wait(POLL_S)

    def send_due(self, client, *, most: int | None = None) -> int:
        """Send due events until none is left, one fails, or the sender stops; return how many were sent."""
        before = self.stats["sent"]
        while not self.stopping.is_set() and (most is None or self.stats["sent"] - before < most):
            with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:
                event = outbox.claim_due(conn, kind=self.kind, hold_s=self._hold_s(),
                                         retry_for_s=self._retry_for_s(), in_flight=self.in_flight)
            if event is None or not self._send(client, event):
                break
        return self.stats["sent"] - before

    def _send(self, client: WebhookClient, event: dict) -> bool:
        """Send one claimed event and record the outcome; False ends the pass (the receiver seems down)."""
        try:
            client.deliver(event["event_id"], outbox.body(event))
        except WebhookError as e:
            return self._failed(event, str(e))
        self._sent(event)
        return True

    def _sent(self, event: dict) -> None:
        with self.ctx.db.connection() as conn:
            outbox.mark_sent(conn, event["id"])
        self.stats["sent"] += 1
        log.info("%s %s (%s of job %s) sent on attempt %d", self.kind, event["event_id"], event["event_type"],
                 event["job_id"], event["attempts"])

    def _failed(self, event: dict, error: str) -> bool:
        self.stats["failed"] += 1
        with self.ctx.db.transaction() as conn:
            result = outbox.mark_failed(conn, event["id"], error, retry_delay(event["attempts"]))
        if result == "given_up":
            self.stats["given_up"] += 1
            log.error("%s %s (%s of job %s): given up after %d attempts over %s: %s%s", self.kind, event["event_id"],
                      event["event_type"], event["job_id"], event["attempts"], _span(self._retry_for_s()), error,
                      " (resend it with `gateway webhooks replay`)" if self.kind == outbox.KIND_WEBHOOK else "")
        else:
            log.warning("%s %s (%s of job %s): attempt %d failed: %s; retried later", self.kind, event["event_id"],
                        event["event_type"], event["job_id"], event["attempts"], error)
        return False

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:
            outbox.prune(conn, utcnow() - timedelta(seconds=RETENTION_S), kind=self.kind)


def _span(seconds: float) -> str:
    return "a day" if seconds == 86400 else "an hour" if seconds == 3600 else f"{seconds:g} s"


class SubscribeSender(OutboxSender):
    """The thread that pushes WeChat subscribe messages of finished notify jobs, at most once each
    (or, without WECHAT_SUBSCRIBE_TEMPLATE_ID, discards them)."""

    kind = outbox.KIND_SUBSCRIBE
    what = "subscribe messages"
    in_flight = IN_FLIGHT

    def _client(self) -> SubscribeClient | None:
        cfg = self.ctx.config
        if self.client is None and cfg.wechat_subscribe_template_id and self.ctx.wechat_tokens is not None:
            self.client = SubscribeClient(self.ctx.session, cfg.wechat_api_base, self.ctx.wechat_tokens,
                                          timeout=cfg.wechat_timeout)
        return self.client

    def _hold_s(self) -> float:
        # Past the longest attempt: two token fetches and two sends (a refused token), each at most 2 timeouts.
        return 8 * self.ctx.config.wechat_timeout + 30.0

    def _retry_for_s(self) -> float:
        return SUBSCRIBE_RETRY_FOR_S

    def _send(self, client: SubscribeClient, event: dict) -> bool:
        if event["interrupted"]:
            return self._give_up(event, "an earlier attempt was interrupted before WeChat's answer was recorded "
                                        "(it may have been pushed)", ended_pass=False)
        workflow = self.ctx.workflows.get(event["payload"]["workflow"])
        try:
            client.send(message(self.ctx.config, event["payload"], workflow.title if workflow else None))
        except WeChatUnclearError as e:
            return self._give_up(event, f"{e}: it may have been pushed", ended_pass=True)
        except (WeChatUnavailableError, WeChatTokenError, WeChatRateLimitedError, WeChatConfigError) as e:
            return self._failed(event, str(e))  # nothing was pushed: try again later
        except WeChatError as e:
            return self._give_up(event, str(e), ended_pass=False)
        self._sent(event)
        return True

    def _give_up(self, event: dict, error: str, *, ended_pass: bool) -> bool:
        """Never send this push again (WeChat refused it, or it may have been pushed already)."""
        with self.ctx.db.connection() as conn:
            outbox.give_up(conn, event["id"], error)
        self.stats["given_up"] += 1
        log.warning("subscribe message %s of job %s: given up, not sent again: %s", event["event_id"],
                    event["job_id"], error)
        return not ended_pass
