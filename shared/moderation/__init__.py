"""Content security: what users type is checked before a job exists, what it makes before an app sees it.

``MODERATION`` picks who answers: ``wechat`` (WeChat's own service, which a mini-program with
user-generated content must use to go live) or ``webhook`` (the operator's endpoint, signed like
webhooks); ``none`` checks nothing. Every answer is a *suggest*: ``pass``, ``review`` (let
through; WeChat asks a person to look, the gateway records it) or ``risky`` (refused).

* **Text** (``text.py``), at submit: the prompt and every free-text param the app sent (string
  params without a list of choices) go to WeChat's ``msg_sec_check`` v2, one call each, or to the
  webhook in one call. ``risky`` is 422 ``content_rejected`` and no job is created.
* **Images** (``outputs.py``): the listener stores a job's outputs, then asks for each a verdict
  (``media_check_async`` v2 with a signed URL that lives until the deadline; WeChat pushes the
  verdict to ``POST /v1/wechat/push``, ``functions/wechat_push.py``; the webhook answers at once).
  ``MODERATION_OUTPUTS=hold``: the job stays ``running`` (``progress.node_title`` is
  ``content_check``) until every image has one, then succeeds, or fails with ``content_rejected``.
  ``publish``: it succeeds at once and is withdrawn on a risky verdict (its objects deleted, the
  result 409 ``content_rejected``). The usage record is written at the verdict, with it.
* **No answer** (WeChat or the webhook down, a refusal such as an openid WeChat does not know, no
  verdict before ``MODERATION_DEADLINE_S``): ``MODERATION_FAIL=closed`` refuses (submit: 503
  ``backend_unavailable``; images: as risky), ``open`` lets it through (the job's moderation is
  ``unchecked``) with one WARNING line.

WeChat's checks are per user: v2 takes the user's openid, so users who did not log in through
WeChat (``POST /v1/auth/dev``) cannot be checked by WeChat and follow ``MODERATION_FAIL``.
"""

from __future__ import annotations

SUGGESTS = ("pass", "review", "risky")
PASSED, REVIEW, REJECTED, UNCHECKED, PENDING = "passed", "review", "rejected", "unchecked", "pending"
CHECKING_TITLE = "content_check"  # progress.node_title of a job whose images wait for their verdict


def enabled(config) -> bool:
    return config.moderation != "none"


def openid_of(user: dict | None) -> str | None:
    """The openid WeChat's checks need (None for users who did not log in through WeChat)."""
    return user["subject"] if user and user["provider"] == "wechat" else None
