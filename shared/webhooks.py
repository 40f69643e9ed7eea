"""Webhooks to the operator's backend, signed as Standard Webhooks (https://www.standardwebhooks.com/).

Every delivery is a POST of a JSON body ``{"type", "timestamp", "data"}`` with three headers:

* ``webhook-id``: the event's id, the same on every attempt (receivers dedupe by it);
* ``webhook-timestamp``: when this attempt was made, in unix seconds;
* ``webhook-signature``: ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")).

The key is WEBHOOK_SECRET: ``whsec_`` followed by base64 is decoded (the form the Standard
Webhooks libraries generate); any other string is used as its UTF-8 bytes. Receivers check a
delivery with ``verify()`` (or a Standard Webhooks library given the same key bytes).

The secret and the signatures are never logged, and no error here carries the URL (it may hold
a token): ``WebhookError`` messages are short and safe to store.

    WebhookError
    ├── WebhookUnavailableError   no answer: connection refused or reset, timeout
    └── WebhookRejectedError      an answer that is not 2xx (``status``)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import requests

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300  # a receiver refuses a delivery whose timestamp is further than this from its clock


class WebhookError(Exception):
    """A delivery did not succeed; the message is short and holds no URL or secret."""


class WebhookUnavailableError(WebhookError):
    """The receiver did not answer (no connection, or no answer within the timeout)."""


class WebhookRejectedError(WebhookError):
    """The receiver answered with a status other than 2xx."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` decoded, else the string's UTF-8 bytes."""
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX):]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("WEBHOOK_SECRET: whsec_ must be followed by base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("WEBHOOK_SECRET: must not be empty")
    return key


def sign(secret: str | bytes, event_id: str, timestamp: int | str, body: bytes | str) -> str:
    """The ``webhook-signature`` value of one delivery: ``v1,<base64 HMAC-SHA256>``."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    message = f"{event_id}.{timestamp}.".encode("utf-8") + body
    digest = hmac.new(secret_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str | bytes, event_id: str, body: bytes, *, now: float | None = None) -> dict:
    """The three Standard Webhooks headers of one attempt (timestamped now)."""
    timestamp = int(time.time() if now is None else now)
    return {"webhook-id": event_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, event_id, timestamp, body)}


def verify(secret: str | bytes, received: Mapping[str, str], body: bytes | str, *,
           tolerance_s: float = TOLERANCE_S, now: float | None = None) -> bool:
    """Whether a delivery is authentic and fresh: for receivers (and the tests).

    ``received``: the request's headers (any case); ``body``: the raw body, exactly as received.
    True when ``webhook-timestamp`` is within ``tolerance_s`` of now and one of the
    space-separated ``v1,`` signatures matches (compared in constant time).
    """
    lowered = {k.lower(): v for k, v in received.items()}
    event_id, timestamp, signatures = (lowered.get("webhook-id"), lowered.get("webhook-timestamp"),
                                       lowered.get("webhook-signature"))
    if not (event_id and timestamp and signatures):
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    expected = sign(secret, event_id, timestamp, body).encode("ascii")
    return any(hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
               for candidate in signatures.split(" ") if candidate.startswith("v1,"))


class WebhookClient:
    """POSTs signed events to one endpoint through the session it is given."""

    def __init__(self, session: requests.Session, url: str, secret: str, *, timeout: float = 10.0,
                 agent: str = "comfy-gateway-webhooks"):
        self.session = session
        self.url = url
        self._key = secret_key(secret)  # checked here, once: a bad secret stops the sender, not each send
        self.timeout = timeout
        self.agent = agent

    def __repr__(self) -> str:  # never show the secret (nor the URL, which may hold a token)
        return "WebhookClient(...)"

    def deliver(self, event_id: str, body: bytes, *, now: float | None = None) -> int:
        """POST one event; return the 2xx status, or raise a WebhookError."""
        return self.post(event_id, body, now=now)[0]

    def post(self, event_id: str, body: bytes, *, now: float | None = None, answer_bytes: int = 0) -> tuple[int, bytes]:
        """POST one signed body; return the 2xx status and the first ``answer_bytes`` (+1, so that a
        longer answer can be told) of the answer, or raise a WebhookError."""
        import requests

        sent = {**headers(self._key, event_id, body, now=now), "Content-Type": "application/json",
                "User-Agent": self.agent}
        failure = None
        try:
            response = self.session.post(self.url, data=body, headers=sent, timeout=self.timeout,
                                         allow_redirects=False,  # a redirect is not a delivery
                                         stream=bool(answer_bytes))  # else read whole: the connection is reused
        except requests.Timeout:
            failure = f"no answer within {self.timeout:g}s"
        except requests.RequestException as e:
            # The exception's text names the URL: keep only its kind.
            failure = f"no connection ({type(e).__name__})"
        if failure:
            raise WebhookUnavailableError(failure)
        try:
            answer = response.raw.read(answer_bytes + 1, decode_content=True) if answer_bytes else b""
        except Exception as e:
            failure = f"answer cut short ({type(e).__name__})"
        finally:
            response.close()
        if failure:
            raise WebhookUnavailableError(failure)
        if not 200 <= response.status_code < 300:
            raise WebhookRejectedError(response.status_code)
        return response.status_code, answer
