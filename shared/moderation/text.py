"""Checking what the user typed, at submit, before any job exists.

The texts checked are the values the app sent for the workflow's free-text params (type string,
no ``enum``/``enum_from``): the prompt, a negative prompt the workflow exposes, a caption...
Defaults are the operator's and choices are the operator's lists: neither is asked about.
"""

from __future__ import annotations

import logging
import time

from shared import users
from shared.errors import BackendUnavailableError, ContentRejectedError
from shared.moderation import openid_of
from shared.moderation.clients import Unanswered, checker

log = logging.getLogger(__name__)

BUDGET_S = 10.0  # seconds the text checks of one submit may take (one call under way may finish past it)


def free_texts(workflow, params: dict) -> dict[str, str]:
    """The free-text values the app sent, by param name (empty ones left out)."""
    texts = {}
    for name, value in params.items():
        spec = workflow.params.get(name)
        if (spec is not None and spec.type == "string" and spec.enum is None and spec.enum_from is None
                and isinstance(value, str) and value.strip()):
            texts[name] = value
    return texts


def check_submission(ctx, user_id: str, workflow, params: dict, *, budget_s: float = BUDGET_S,
                     clock=time.monotonic) -> None:
    """Raise ContentRejectedError (422) when any text is risky, BackendUnavailableError (503) when one
    could not be checked and MODERATION_FAIL=closed; return when the job may be created.

    A risky answer wins over any text left unchecked; the checks stop at the first risky one and
    once ``budget_s`` is spent (the texts not asked yet count as unchecked): a slow WeChat costs a
    submit seconds, not the platform's request timeout.
    """
    checks = checker(ctx)
    texts = free_texts(workflow, params)
    if checks is None or not texts:
        return
    with ctx.db.connection() as conn:
        user = users.get_user(conn, user_id)
    suggests, unchecked = _ask(ctx, checks, user, user_id, workflow, texts, clock() + budget_s, clock)
    risky = [name for name, s in suggests.items() if s == "risky"]
    if risky:
        log.info("user %s: %s refused by the content check", user_id, ", ".join(risky))
        raise ContentRejectedError("the content check rejected this text",
                                   details={name: "rejected by the content check" for name in risky})
    if unchecked:
        if ctx.config.moderation_fail == "open":
            log.warning("user %s: text not checked (%s); let through (MODERATION_FAIL=open)", user_id, unchecked)
            return
        log.warning("user %s: text not checked (%s); refused (MODERATION_FAIL=closed)", user_id, unchecked)
        raise BackendUnavailableError("the content check is not available; try again later", retry_after=10)
    if "review" in suggests.values():
        log.info("user %s: text let through for review (%s)", user_id, workflow.name)


def _ask(ctx, checks, user, user_id: str, workflow, texts: dict, deadline: float, clock) -> tuple[dict, str | None]:
    """({param: suggest} of the texts answered, why some were not: None when all were)."""
    if ctx.config.moderation == "webhook":  # one question for all the texts, one verdict for all
        try:
            suggest = checks.ask("moderation.text", {
                "user_id": user_id, "provider": user and user["provider"], "subject": user and user["subject"],
                "workflow": workflow.name, "texts": texts})
        except Unanswered as e:
            return {}, str(e)
        return {name: suggest for name in texts}, None
    suggests, why = {}, None
    for name, text in texts.items():  # the others are still asked when one is not answered: one may be risky
        if clock() > deadline:
            return suggests, why or f"no time left for {name}"
        try:
            suggests[name] = checks.check_text(openid_of(user), text)
        except Unanswered as e:
            why = why or f"{name}: {e}"
            continue
        if suggests[name] == "risky":
            return suggests, None
    return suggests, why
