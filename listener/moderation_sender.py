"""Ask for the verdict on each stored output image: one thread per listener process (MODERATION set).

Each pass: (1) claim due checks one at a time (``SELECT ... FOR UPDATE SKIP LOCKED`` under READ
COMMITTED, its ``next_attempt_at`` moved past the call's timeout, committed), so two listeners never
ask about one image at once and one that dies mid-call lets it come back; (2) ask:

* ``wechat``: ``media_check_async`` with a signed URL of the image that lives until the check's
  deadline; the answer's ``trace_id`` is stored (state ``sent``) and any verdict already pushed for
  it applied; the verdict itself comes to ``POST /v1/wechat/push``.
* ``webhook``: the operator's endpoint answers the verdict at once (webhook-id ``modimg_<check id>``,
  the same on every retry).

An answer that may change (down, busy, a refused token) is asked again with back-off until the
deadline; one that will not (a refusal of the question) closes the check without a verdict.
(3) checks past their deadline are closed without one; (4) jobs whose checks are all answered
are settled (shared/moderation/outputs.py; the push settles its job itself, this catches one
interrupted); (5) objects of rejected images are deleted, retried until storage takes it;
(6) pushed verdicts older than a day are pruned.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from shared import users
from shared.db import execute, isoformat, query_one
from shared.errors import DatabaseUnavailableError
from shared.moderation import openid_of, outputs
from shared.moderation.clients import Unanswered, checker

log = logging.getLogger(__name__)

POLL_S = 0.5
HOLD_S = 60.0            # a claimed check is not due for others this long (its asker died); at least 10 × WECHAT_TIMEOUT
ASK_PER_PASS = 50        # checks asked per pass before the sweep's turn
FIRST_DELAY_S = 2.0      # the first retry after about this long, then doubling...
MAX_DELAY_S = 300.0      # ...up to five minutes
SWEEP_EVERY_S = 5.0      # deadlines, unsettled jobs, withdrawals
PRUNE_EVERY_S = 3600.0
MIN_URL_TTL_S = 300      # a signed URL lives until the deadline, but never less than this


def retry_delay(attempts: int, *, rng=random.random) -> float:
    delay = min(FIRST_DELAY_S * 2 ** max(attempts - 1, 0), MAX_DELAY_S)
    return delay * (0.5 + rng() / 2)


class ModerationSender:
    """The thread that asks for image verdicts and settles jobs (idle without MODERATION)."""

    def __init__(self, ctx, stopping: threading.Event | None = None, *, checks=None):
        self.ctx = ctx
        self.stopping = stopping or threading.Event()
        self.checks = checks
        self.thread = threading.Thread(target=self.run, name="moderation sender", daemon=True)
        self.stats = {"asked": 0, "answered": 0, "failed": 0, "expired": 0, "settled": 0, "withdrawn": 0}
        self._swept_at = 0.0
        self._pruned_at = 0.0

    def start(self) -> "ModerationSender":
        self.thread.start()  # also without MODERATION: checks left open when it was turned off are settled
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread.ident is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        self.checks = self.checks or checker(self.ctx)
        while not self.stopping.is_set():
            try:
                if self.checks is None:  # MODERATION=none: only what is left of an earlier setting
                    self.stopping.wait(SWEEP_EVERY_S)
                    self.close_leftovers()
                    continue
                self.pass_once()
            except DatabaseUnavailableError:
                log.warning("moderation: database unavailable; retrying")
            except Exception:
                log.exception("moderation: unexpected error (the next pass retries)")
            self.stopping.wait(POLL_S)

    def pass_once(self, *, sweep: bool | None = None) -> None:
        asked = 0
        while not self.stopping.is_set() and asked < ASK_PER_PASS and self.ask_one():
            asked += 1  # a backlog does not hold back deadlines and withdrawals
        now = time.monotonic()
        if sweep or (sweep is None and now - self._swept_at >= SWEEP_EVERY_S):
            self._swept_at = now
            self.sweep()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            with self.ctx.db.connection() as conn:
                while execute(conn, "DELETE FROM moderation_verdicts WHERE received_at < UTC_TIMESTAMP(3) "
                                    "- INTERVAL 1 DAY LIMIT 1000") == 1000 and not self.stopping.is_set():
                    pass

    def sweep(self) -> None:
        """Verdicts stored but not applied, deadlines, jobs left unsettled, objects left to withdraw."""
        with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:
            answered = outputs.apply_stored(conn)
            expired = outputs.expire(conn)
        self.stats["expired"] += len(expired)
        with self.ctx.db.connection() as conn:
            waiting = outputs.unsettled(conn)
        for job_id in dict.fromkeys(answered + expired + waiting):
            if outputs.settle(self.ctx, job_id):
                self.stats["settled"] += 1
        self.stats["withdrawn"] += outputs.withdraw(self.ctx)

    def ask_one(self) -> bool:
        """Ask about one due image; False when none is due."""
        with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:
            check = query_one(conn, """SELECT id, job_id, object_key, attempts,
                                       TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(3), deadline_at) AS left_s
                                       FROM moderation_checks WHERE state='pending' AND next_attempt_at <= UTC_TIMESTAMP(3)
                                       ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""")
            if check is None:
                return False
            execute(conn, """UPDATE moderation_checks SET attempts=attempts+1,
                             next_attempt_at=UTC_TIMESTAMP(3) + INTERVAL %s SECOND WHERE id=%s""",
                    (int(max(HOLD_S, 10 * self.ctx.config.wechat_timeout)), check["id"]))
            check.update(query_one(conn, "SELECT user_id, moderation FROM jobs WHERE id=%s", (check["job_id"],))
                         or {"user_id": None, "moderation": None})
            user = users.get_user(conn, check["user_id"])
        if check["moderation"] != "pending":  # cancelled, or settled while this waited
            with self.ctx.db.connection() as conn:
                outputs.answer(conn, check["id"], None, "not needed any more")
            return True
        self.stats["asked"] += 1
        try:
            self._ask(check, user)
        except Unanswered as e:
            self.stats["failed"] += 1
            self._failed(check, e)
        return True

    def _ask(self, check: dict, user: dict | None) -> None:
        ttl = max(int(check["left_s"] or 0), MIN_URL_TTL_S)
        url, expires = self.ctx.store.signed_url(check["object_key"], ttl)
        if self.ctx.config.moderation == "webhook":
            suggest = self.checks.ask("moderation.image", {
                "job_id": check["job_id"], "user_id": check["user_id"], "provider": user and user["provider"],
                "subject": user and user["subject"], "key": check["object_key"], "url": url,
                "expires_at": isoformat(expires)}, event_id=f"modimg_{check['id']}")
            with self.ctx.db.connection() as conn:
                outputs.answer(conn, check["id"], suggest)
            self.stats["answered"] += 1
            if outputs.settle(self.ctx, check["job_id"]):
                self.stats["settled"] += 1
            return
        trace_id = self.checks.ask_image(openid_of(user), url)
        with self.ctx.db.transaction() as conn:  # with any verdict pushed before the trace_id was stored
            execute(conn, """UPDATE moderation_checks SET state='sent', trace_id=%s, next_attempt_at=NULL,
                             last_error=NULL WHERE id=%s AND state='pending'""", (trace_id, check["id"]))
            job_id = outputs.apply_verdict(conn, trace_id)
        if job_id is not None and outputs.settle(self.ctx, job_id):
            self.stats["settled"] += 1

    def close_leftovers(self) -> None:
        """MODERATION=none: checks still open (from when it was set) get no verdict, their jobs are settled
        (let through: nobody is asked any more) and rejected objects still withdrawn."""
        with self.ctx.db.transaction(isolation="READ COMMITTED") as conn:
            jobs_ = outputs.close_open(conn, "MODERATION is none: not checked")
        for job_id in jobs_ + self._unsettled():
            if outputs.settle(self.ctx, job_id):
                self.stats["settled"] += 1
        self.stats["withdrawn"] += outputs.withdraw(self.ctx)

    def _unsettled(self) -> list[str]:
        with self.ctx.db.connection() as conn:
            return outputs.unsettled(conn)

    def _failed(self, check: dict, e: Unanswered) -> None:
        delay = retry_delay(check["attempts"] + 1)
        with self.ctx.db.connection() as conn:
            if e.retry and (check["left_s"] or 0) > delay:
                execute(conn, """UPDATE moderation_checks SET last_error=%s,
                                 next_attempt_at=UTC_TIMESTAMP(3) + INTERVAL %s MICROSECOND
                                 WHERE id=%s AND state='pending'""", (str(e)[:255], int(delay * 1e6), check["id"]))
                log.warning("job %s: image check not made (%s); asked again in %.0f s", check["job_id"], e, delay)
                return
            outputs.answer(conn, check["id"], None, str(e))
        log.warning("job %s: image check not possible (%s)", check["job_id"], e)
        outputs.settle(self.ctx, check["job_id"])
