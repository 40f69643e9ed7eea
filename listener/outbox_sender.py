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
from shared.webhooks import WebhookClient, WebhookError

log = logging.getLogger(__name__)

POLL_S = 1.0              # how often an idle sender looks for due events
TIMEOUT_S = 10.0          # one POST: connect and read
HOLD_S = 2 * TIMEOUT_S + 30.0  # a claimed event is not due for others this long (a sender died mid-send)
FIRST_DELAY_S = 5.0       # the first retry comes after about this long, then doubling...
MAX_DELAY_S = 3600.0      # ...up to an hour between attempts
RETRY_FOR_S = 86400.0     # failing for a day from its first attempt: given up
RETENTION_S = 30 * 86400.0  # sent and given-up events are kept this long (replay window)
PRUNE_EVERY_S = 3600.0


def retry_delay(attempts: int, *, rng=random.random) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: doubling, capped, with jitter
    (between half and all of it, so the events of one outage do not come back in step)."""
    delay = min(FIRST_DELAY_S * 2 ** max(attempts - 1, 0), MAX_DELAY_S)
    return delay * (0.5 + rng() / 2)


class OutboxSender:
    """The thread that sends due events (or, without WEBHOOK_URL, discards them)."""

    def __init__(self, ctx, stopping: threading.Event | None = None, *, client: WebhookClient | None = None):
        self.ctx = ctx
        self.stopping = stopping or threading.Event()
        self.client = client
        self.thread = threading.Thread(target=self.run, name="outbox sender", daemon=True)
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

    def run(self) -> None:
        try:
            client = self._client()
        except ValueError as e:  # a malformed whsec_ secret: the message names the setting, never its value
            log.error("webhooks not sent: %s", e)
            return
        while not self.stopping.is_set():
            try:
                if client is None:
                    with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:  # no gap locks on inserts
                        self.stats["discarded"] += outbox.discard_unsent(conn)
                else:
                    self.send_due(client)
                self._prune()
            except DatabaseUnavailableError:
                log.warning("outbox: database unavailable; retrying")
            except Exception:
                log.exception("outbox: unexpected error (the next pass retries)")
            self.stopping.wait(POLL_S)

    def send_due(self, client: WebhookClient, *, most: int | None = None) -> int:
        """Send due events until none is left, one fails, or the sender stops; return how many were sent."""
        sent = 0
        while not self.stopping.is_set() and (most is None or sent < most):
            with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:
                event = outbox.claim_due(conn, hold_s=HOLD_S, retry_for_s=RETRY_FOR_S)
            if event is None:
                break
            if not self._send(client, event):
                break
            sent += 1
        return sent

    def _send(self, client: WebhookClient, event: dict) -> bool:
        try:
            client.deliver(event["event_id"], outbox.body(event))
        except WebhookError as e:
            return self._failed(event, str(e))
        with self.ctx.db.connection() as conn:
            outbox.mark_sent(conn, event["id"])
        self.stats["sent"] += 1
        log.info("webhook %s (%s of job %s) sent on attempt %d", event["event_id"], event["event_type"],
                 event["job_id"], event["attempts"])
        return True

    def _failed(self, event: dict, error: str) -> bool:
        self.stats["failed"] += 1
        with self.ctx.db.transaction() as conn:
            result = outbox.mark_failed(conn, event["id"], error, retry_delay(event["attempts"]))
        if result == "given_up":
            self.stats["given_up"] += 1
            log.error("webhook %s (%s of job %s): given up after %d attempts over a day: %s (resend it with "
                      "`gateway webhooks replay`)", event["event_id"], event["event_type"], event["job_id"],
                      event["attempts"], error)
        else:
            log.warning("webhook %s (%s of job %s): attempt %d failed: %s; retried later", event["event_id"],
                        event["event_type"], event["job_id"], event["attempts"], error)
        return False

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:
            outbox.prune(conn, utcnow() - timedelta(seconds=RETENTION_S))
