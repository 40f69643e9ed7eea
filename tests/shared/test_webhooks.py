"""Standard Webhooks signing and verification, and the client that POSTs events (against the fake receiver)."""

from __future__ import annotations

import logging

import pytest
import requests

from shared.webhooks import (WebhookClient, WebhookRejectedError, WebhookUnavailableError, headers, secret_key,
                             sign, verify)
from tests.fakes.webhooks import FakeReceiver

# The Standard Webhooks test vector (github.com/standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function; the same in the Svix libraries).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# A secret without the whsec_ prefix is its UTF-8 bytes. Computed by hand with
#   printf '%s' 'evt_2f1c.1700000000.{"type":"job.succeeded"}' \
#     | openssl dgst -sha256 -hmac 'plain secret, not base64: 24+ chars' -binary | base64
PLAIN_SECRET = "plain secret, not base64: 24+ chars"
PLAIN_SIGNATURE = "v1,0sFKH6K1mTRovCaYDHQafWIbkSRTEallC6FWWlgP5Xs="


def spec_headers(**changes):
    h = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIGNATURE}
    h.update(changes)
    return {k: v for k, v in h.items() if v is not None}


def test_the_spec_vector_signs_and_verifies():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    assert sign(SPEC_SECRET, SPEC_ID, str(SPEC_TS), SPEC_BODY.encode()) == SPEC_SIGNATURE
    assert verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TS)
    assert verify(SPEC_SECRET, spec_headers(), SPEC_BODY.encode(), now=SPEC_TS + 299)


def test_a_secret_without_the_prefix_is_its_utf8_bytes():
    body = '{"type":"job.succeeded"}'
    assert sign(PLAIN_SECRET, "evt_2f1c", 1700000000, body) == PLAIN_SIGNATURE
    assert secret_key(PLAIN_SECRET) == PLAIN_SECRET.encode()
    assert secret_key("whsec_" + "YWJj") == b"abc"
    assert secret_key("whsec_YWJjZA") == b"abcd"  # unpadded base64 is accepted


@pytest.mark.parametrize("case, received, body, now", [
    ("tampered body", spec_headers(), '{"test": 2432232315}', SPEC_TS),
    ("wrong signature", spec_headers(**{"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}),
     SPEC_BODY, SPEC_TS),
    ("another id", spec_headers(**{"webhook-id": "msg_other"}), SPEC_BODY, SPEC_TS),
    ("too old", spec_headers(), SPEC_BODY, SPEC_TS + 301),
    ("too new", spec_headers(), SPEC_BODY, SPEC_TS - 301),
    ("no id", spec_headers(**{"webhook-id": None}), SPEC_BODY, SPEC_TS),
    ("no timestamp", spec_headers(**{"webhook-timestamp": None}), SPEC_BODY, SPEC_TS),
    ("no signature", spec_headers(**{"webhook-signature": None}), SPEC_BODY, SPEC_TS),
    ("timestamp not a number", spec_headers(**{"webhook-timestamp": "hello"}), SPEC_BODY, SPEC_TS),
    ("another version", spec_headers(**{"webhook-signature": "v2," + SPEC_SIGNATURE[3:]}), SPEC_BODY, SPEC_TS),
])
def test_verify_refuses(case, received, body, now):
    assert not verify(SPEC_SECRET, received, body, now=now), case


def test_verify_accepts_one_valid_signature_among_several_and_any_header_case():
    several = f"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {SPEC_SIGNATURE}"
    received = {"Webhook-Id": SPEC_ID, "WEBHOOK-TIMESTAMP": str(SPEC_TS), "webhook-signature": several}
    assert verify(SPEC_SECRET, received, SPEC_BODY, now=SPEC_TS)
    assert not verify("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", received, SPEC_BODY, now=SPEC_TS)


def test_headers_are_timestamped_now():
    h = headers(SPEC_SECRET, SPEC_ID, SPEC_BODY.encode(), now=SPEC_TS + 0.9)
    assert h == spec_headers()


def test_a_malformed_whsec_secret_is_refused_without_showing_it():
    with pytest.raises(ValueError) as info:
        secret_key("whsec_not*base64!")
    assert "WEBHOOK_SECRET" in str(info.value) and "not*base64" not in str(info.value)
    with pytest.raises(ValueError):
        secret_key("whsec_")


# -- the client, against the fake receiver ------------------------------------------------------------

@pytest.fixture
def receiver():
    with FakeReceiver(secret=SPEC_SECRET) as rx:
        yield rx


def client(url, timeout=2.0):
    return WebhookClient(requests.Session(), url, SPEC_SECRET, timeout=timeout)


def test_deliver_posts_a_signed_body(receiver):
    body = b'{"type":"job.succeeded","timestamp":"2026-12-01T00:00:00Z","data":{}}'
    assert client(receiver.url).deliver("evt_1", body) == 204
    [d] = receiver.deliveries
    assert d.verified and d.body == body and d.id == "evt_1" and d.headers["content-type"] == "application/json"
    assert client(receiver.url).deliver("evt_1", body) == 200  # the receiver knows it already: still a success


def test_deliver_fails_on_any_answer_but_2xx(receiver):
    receiver.fail_next(1, status=503)
    with pytest.raises(WebhookRejectedError) as info:
        client(receiver.url).deliver("evt_2", b"{}")
    assert info.value.status == 503 and str(info.value) == "HTTP 503"
    wrong = WebhookClient(requests.Session(), receiver.url, "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB")
    with pytest.raises(WebhookRejectedError, match="HTTP 401"):  # the receiver refuses a bad signature
        wrong.deliver("evt_3", b"{}")


def test_a_redirect_is_not_followed(receiver):
    receiver.fail_next(1, status=302)
    with pytest.raises(WebhookRejectedError, match="HTTP 302"):
        client(receiver.url).deliver("evt_4", b"{}")
    assert len(receiver.deliveries) == 1


def test_no_answer_in_time_and_no_connection_are_unavailable(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.hang_next(1, seconds=3)
    url = receiver.url + "?token=very-secret-token"
    with pytest.raises(WebhookUnavailableError) as info:
        client(url, timeout=0.3).deliver("evt_5", b"{}")
    assert "0.3" in str(info.value)
    receiver.down()
    with pytest.raises(WebhookUnavailableError) as info:
        client(url).deliver("evt_6", b"{}")
    # Nothing the client says or logs shows the URL (it may hold a token), the secret or a signature.
    for text in (str(info.value), repr(client(url)), caplog.text):
        assert "very-secret-token" not in text and SPEC_SECRET not in text and "v1," not in text
