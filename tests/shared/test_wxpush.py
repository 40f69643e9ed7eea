"""WeChat message push: URL check, signatures, safe-mode AES, JSON and XML bodies, and what is refused."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
import sys

import pytest

from shared import wxpush
from shared.wxpush import PushError, new_aes_key, open_message, seal, signature, verify_url
from tests.stack import PROJECT_ROOT

TOKEN = "push-token-1"
APPID = "wx-push-test"
KEY = new_aes_key()
EVENT = {"ToUserName": "gh_fake", "FromUserName": "o-alice", "CreateTime": 1700000000, "MsgType": "event",
         "Event": "wxa_media_check", "appid": APPID, "trace_id": "t-1", "version": 2, "errcode": 0, "errmsg": "ok",
         "detail": [{"strategy": "content_model", "errcode": 0, "suggest": "risky", "label": 20002, "prob": 90}],
         "result": {"suggest": "risky", "label": 20002}}

# WeChat's published WXBizMsgCrypt sample (Sample.py of its Python download): token, key, appid, query and body.
SAMPLE_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SAMPLE_QUERY = {"timestamp": "1409735669", "nonce": "1320562132", "encrypt_type": "aes",
                "msg_signature": "5d197aaffba7e9b25a30732f161a50dee96bd5fa"}
SAMPLE_BODY = (
    "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]>"
    "</FromUserName><CreateTime>1409735668</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[abcdteT]]>"
    "</Content><MsgId>6054768590064713728</MsgId><Encrypt><![CDATA[hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B6"
    "55HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDW"
    "yWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8"
    "tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCu"
    "mEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=]]></Encrypt></xml>").encode()


def raw_cipher(key: str):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    k = base64.b64decode(key + "=")
    return Cipher(algorithms.AES(k), modes.CBC(k[:16]))


def encrypt_raw(key: str, plain: bytes) -> str:
    enc = raw_cipher(key).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def resigned(query: dict, encrypted: str) -> dict:
    return dict(query, msg_signature=signature(TOKEN, query["timestamp"], query["nonce"], encrypted))


def test_wechats_published_sample_decrypts():
    message = open_message("spamtest", SAMPLE_KEY, "wx2c2769f8efd9abc2", SAMPLE_QUERY, SAMPLE_BODY)
    assert message == {"ToUserName": "gh_10f6c3c3ac5a", "FromUserName": "oyORnuP8q7ou2gfYjqLzSIWZf0rs",
                       "CreateTime": "1409735668", "MsgType": "text", "Content": "abcdteT",
                       "MsgId": "6054768590064713728"}
    with pytest.raises(PushError, match="another appid"):
        open_message("spamtest", SAMPLE_KEY, "wx-someone-else", SAMPLE_QUERY, SAMPLE_BODY)


def test_signature_is_sha1_of_the_sorted_parts():
    assert signature("b", "c", "a") == hashlib.sha1(b"abc").hexdigest() == signature("a", "b", "c")


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_a_sealed_push_opens_to_the_same_message(fmt):
    query, body = seal(TOKEN, KEY, APPID, EVENT, fmt=fmt)
    assert query["encrypt_type"] == "aes" and set(query) == {"signature", "timestamp", "nonce", "encrypt_type",
                                                              "msg_signature"}
    assert b"wxa_media_check" not in body and b"o-alice" not in body  # only ToUserName and Encrypt travel
    message = open_message(TOKEN, KEY, APPID, query, body)
    if fmt == "json":
        assert message == EVENT
    else:  # XML carries strings; nested elements come back as dicts
        assert (message["Event"], message["trace_id"], message["CreateTime"]) == ("wxa_media_check", "t-1",
                                                                                   "1700000000")
        assert message["result"] == {"suggest": "risky", "label": "20002"}
        assert message["detail"]["suggest"] == "risky"


def test_the_padding_fills_32_byte_blocks_and_the_layout_is_wechats():
    query, body = seal(TOKEN, KEY, APPID, {"ToUserName": "gh_fake", "x": "y"})
    encrypted = json.loads(body)["Encrypt"]
    dec = raw_cipher(KEY).decryptor()
    plain = dec.update(base64.b64decode(encrypted)) + dec.finalize()
    assert len(plain) % 32 == 0 and 1 <= plain[-1] <= 32
    content = plain[16:-plain[-1]]
    (length,) = struct.unpack(">I", content[:4])
    assert json.loads(content[4:4 + length]) == {"ToUserName": "gh_fake", "x": "y"}
    assert content[4 + length:] == APPID.encode()


def test_xml_repeated_and_nested_tags_and_cdata_with_the_end_marker():
    message = {"ToUserName": "gh", "detail": [{"strategy": "content_model", "suggest": "pass"},
                                               {"strategy": "keyword", "suggest": "pass"}],
               "Content": "a]]>b <not a tag>"}
    query, body = seal(TOKEN, None, APPID, message, fmt="xml")
    got = open_message(TOKEN, None, APPID, query, body)
    assert got["detail"] == [{"strategy": "content_model", "suggest": "pass"},
                             {"strategy": "keyword", "suggest": "pass"}]
    assert got["Content"] == "a]]>b <not a tag>"


def test_plain_mode_needs_only_the_signature():
    query, body = seal(TOKEN, None, APPID, EVENT)
    assert "encrypt_type" not in query and json.loads(body) == EVENT
    assert open_message(TOKEN, None, APPID, query, body) == EVENT
    with pytest.raises(PushError, match="signature does not match"):
        open_message("another-token", None, APPID, query, body)


def test_safe_mode_refuses_a_plain_push():
    query, body = seal(TOKEN, None, APPID, EVENT)
    with pytest.raises(PushError, match="plain push"):
        open_message(TOKEN, KEY, APPID, query, body)


def test_an_encrypted_push_without_a_configured_key_is_refused():
    query, body = seal(TOKEN, KEY, APPID, EVENT)
    with pytest.raises(PushError, match="no EncodingAESKey"):
        open_message(TOKEN, None, APPID, query, body)


def tamper_encrypt(query, body):
    encrypted = json.loads(body)["Encrypt"]
    raw = bytearray(base64.b64decode(encrypted))
    raw[20] ^= 0x01  # garbles the second plaintext block, which holds the length
    encrypted = base64.b64encode(bytes(raw)).decode()
    return resigned(query, encrypted), json.dumps({"ToUserName": "gh_fake", "Encrypt": encrypted}).encode()


def wrong_padding(query, body):
    plain = b"\0" * 16 + struct.pack(">I", 2) + b"{}" + APPID.encode()
    plain += b"\x07" * (64 - len(plain) - 1) + b"\x05"  # last byte says 5, the 4 before it are not 5
    encrypted = encrypt_raw(KEY, plain)
    return resigned(query, encrypted), json.dumps({"Encrypt": encrypted}).encode()


def zero_padding(query, body):
    plain = b"\0" * 16 + struct.pack(">I", 2) + b"{}" + APPID.encode()
    plain += b"\0" * (-len(plain) % 32 or 32)
    encrypted = encrypt_raw(KEY, plain)
    return resigned(query, encrypted), json.dumps({"Encrypt": encrypted}).encode()


def other_appid(query, body):
    q, b = seal(TOKEN, KEY, "wx-other", EVENT, timestamp=query["timestamp"], nonce=query["nonce"])
    return q, b


def other_key(query, body):
    return seal(TOKEN, new_aes_key(), APPID, EVENT)


def encrypt_not_base64(query, body):
    return resigned(query, "@@@not base64@@@"), json.dumps({"Encrypt": "@@@not base64@@@"}).encode()


def no_encrypt(query, body):
    return query, json.dumps({"ToUserName": "gh_fake"}).encode()


@pytest.mark.parametrize("spoil, error", [
    (lambda q, b: (dict(q, msg_signature="0" * 40), b), "msg_signature does not match"),
    (lambda q, b: ({k: v for k, v in q.items() if k != "msg_signature"}, b), "without msg_signature"),
    (lambda q, b: ({k: v for k, v in q.items() if k != "timestamp"}, b), "without timestamp"),
    (lambda q, b: (dict(q, timestamp="1"), b), "msg_signature does not match"),
    (lambda q, b: (dict(q, encrypt_type="sm4"), b), "unknown encrypt_type"),
    (tamper_encrypt, "cannot decrypt"),
    (wrong_padding, "bad padding"),
    (zero_padding, "bad padding"),
    (other_appid, "another appid"),
    (other_key, "cannot decrypt"),
    (encrypt_not_base64, "not base64"),
    (no_encrypt, "without Encrypt"),
    (lambda q, b: (q, b"Encrypt=abc"), "neither JSON nor XML"),
    (lambda q, b: (q, b"{\"Encrypt\": "), "not valid JSON"),
    (lambda q, b: (q, b"<xml><Encrypt>"), "not valid XML"),
    (lambda q, b: (q, b"[1, 2]"), "neither JSON nor XML"),
    (lambda q, b: (q, b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}"), "not valid JSON"),
    (lambda q, b: (q, b"<xml>" + b"<a>" * 7000 + b"</a>" * 7000 + b"</xml>"), "without Encrypt"),
    (lambda q, b: (q, b"\xff\xfe{}"), "not UTF-8"),
    (lambda q, b: (q, b + b" " * (wxpush.MAX_BODY + 1 - len(b))), "over 65536 bytes"),
])
def test_what_is_not_wechats_is_refused(spoil, error):
    query, body = spoil(*seal(TOKEN, KEY, APPID, EVENT))
    with pytest.raises(PushError, match=error) as caught:
        open_message(TOKEN, KEY, APPID, query, body)
    assert TOKEN not in str(caught.value) and KEY not in str(caught.value)


def test_a_body_of_exactly_the_limit_is_read():
    query, body = seal(TOKEN, KEY, APPID, EVENT)
    body += b" " * (wxpush.MAX_BODY - len(body))
    assert open_message(TOKEN, KEY, APPID, query, body)["trace_id"] == "t-1"


@pytest.mark.parametrize("xml", [
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><xml><x>&b;</x></xml>',
    b'<!DOCTYPE xml SYSTEM "http://127.0.0.1:1/evil.dtd"><xml><x>1</x></xml>',
    b'<!DOCTYPE xml><xml><x>1</x></xml>',
])
def test_xml_with_a_doctype_is_refused_even_when_signed(xml):
    query, _ = seal(TOKEN, None, APPID, {})
    with pytest.raises(PushError, match="DOCTYPE"):
        open_message(TOKEN, None, APPID, query, xml)
    inner_query, body = seal(TOKEN, KEY, APPID, {})  # inside the encryption too
    encrypted = wxpush._encrypt(wxpush._key(KEY), xml, APPID)
    with pytest.raises(PushError, match="DOCTYPE"):
        open_message(TOKEN, KEY, APPID, resigned(inner_query, encrypted),
                     json.dumps({"Encrypt": encrypted}).encode())


def test_doctype_text_inside_cdata_is_only_text():
    query, body = seal(TOKEN, None, APPID, {"Content": "<!DOCTYPE x>"}, fmt="xml")
    assert open_message(TOKEN, None, APPID, query, body) == {"Content": "<!DOCTYPE x>"}


def test_verify_url_answers_the_echostr_only_when_signed():
    query = {"signature": signature(TOKEN, "1700000000", "42"), "timestamp": "1700000000", "nonce": "42",
             "echostr": "7383764826178372"}
    assert verify_url(TOKEN, query) == "7383764826178372"
    for bad in (dict(query, signature="f" * 40), dict(query, nonce="43"), {k: v for k, v in query.items()
                                                                           if k != "signature"}):
        with pytest.raises(PushError):
            verify_url(TOKEN, bad)
    with pytest.raises(PushError, match="does not match"):
        verify_url("other-token", query)
    with pytest.raises(PushError, match="echostr"):
        verify_url(TOKEN, {k: v for k, v in query.items() if k != "echostr"})


def test_keys_made_here_are_wechat_shaped_and_a_bad_key_is_a_push_error():
    key = new_aes_key()
    assert len(key) == 43 and key.isalnum() and key != new_aes_key() and wxpush.valid_aes_key(key)
    assert len(base64.b64decode(key + "=")) == 32
    for bad in ("short", KEY + "A", KEY[:-1] + "=", KEY[:-1] + "é"):
        assert not wxpush.valid_aes_key(bad)
    query, body = seal(TOKEN, KEY, APPID, EVENT)
    with pytest.raises(PushError, match="43 base64"):
        open_message(TOKEN, "short", APPID, query, body)


def test_importing_the_module_does_not_import_cryptography():
    code = "import sys, shared.wxpush; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
