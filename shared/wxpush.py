"""WeChat message push (消息推送) to the mini-program's server: URL check, signatures, safe mode.

WeChat calls the URL configured under 开发管理 → 消息推送 with ``?signature=&timestamp=&nonce=``:

- ``GET`` with ``echostr``: the URL check; answer the echostr when ``signature`` is right
  (``verify_url``);
- ``POST``: a message or event (``wxa_media_check`` and the like). In plain mode (明文模式) the body
  is the message, signed by ``signature`` only. In safe mode (安全模式) the query adds
  ``encrypt_type=aes&msg_signature=`` and the body holds only ``ToUserName`` and ``Encrypt``
  (``open_message``).

The signatures: ``signature = sha1(''.join(sorted([token, timestamp, nonce])))`` and
``msg_signature`` the same over ``[token, timestamp, nonce, Encrypt]``. Safe mode is WeChat's
WXBizMsgCrypt: the 43-character EncodingAESKey plus ``=`` is base64 for a 32-byte key; AES-256-CBC
with IV = key[:16]; the plaintext is 16 random bytes, the message length as 4 big-endian bytes,
the message, then the appid, PKCS#7-padded to a multiple of 32 bytes; ``Encrypt`` is its base64.

Bodies and inner messages are JSON or XML (the format chosen in the console). XML is read with
expat and refused outright when it declares a DOCTYPE or an entity. ``seal`` does WeChat's side
of all this, for the fake WeChat and the tests. ``cryptography`` is imported only where AES is
used: Lambda cold starts import this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import struct
import time
from collections.abc import Mapping
from xml.parsers import expat

MAX_BODY = 64 * 1024
BLOCK = 32  # WXBizMsgCrypt pads to 32 bytes, not AES's 16
_KEY_CHARS = string.ascii_letters + string.digits
_B64_CHARS = frozenset(_KEY_CHARS + "+/")


class PushError(ValueError):
    """A push that is not WeChat's: bad or missing signature, cannot be decrypted, wrong appid, not JSON/XML.

    str() is safe to log (no token/key)."""


def signature(*parts: str) -> str:
    """Return WeChat's signature over these strings: sha1 hex of them sorted and joined."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def verify_url(token: str, query: Mapping[str, str]) -> str:
    """Check WeChat's GET on the push URL and return the ``echostr`` to answer with."""
    timestamp, nonce = _stamp(query)
    _check(query.get("signature"), signature(token, timestamp, nonce), "signature")
    echostr = query.get("echostr")
    if not echostr:
        raise PushError("no echostr in the URL check")
    return echostr


def open_message(token: str, aes_key: str | None, appid: str, query: Mapping[str, str], body: bytes) -> dict:
    """Check a POSTed push (and decrypt it in safe mode); return the message as a dict."""
    if len(body) > MAX_BODY:
        raise PushError(f"push body over {MAX_BODY} bytes")
    timestamp, nonce = _stamp(query)
    encrypt_type = query.get("encrypt_type") or "raw"
    if encrypt_type == "aes":
        if not aes_key:
            raise PushError("an encrypted push, but no EncodingAESKey is configured")
        key = _key(aes_key)
        encrypted = _parse(body).get("Encrypt")
        if not isinstance(encrypted, str) or not encrypted:
            raise PushError("encrypted push without Encrypt")
        _check(query.get("msg_signature"), signature(token, timestamp, nonce, encrypted), "msg_signature")
        return _parse(_decrypt(key, encrypted, appid))
    if encrypt_type != "raw":
        raise PushError("unknown encrypt_type")
    if aes_key:  # an operator who configured safe mode accepts nothing in the clear
        raise PushError("a plain push, but safe mode is configured")
    _check(query.get("signature"), signature(token, timestamp, nonce), "signature")
    return _parse(body)


def seal(token: str, aes_key: str | None, appid: str, message: dict, *, timestamp: str | None = None,
         nonce: str | None = None, fmt: str = "json") -> tuple[dict, bytes]:
    """Make the push WeChat would send for ``message``: (query, body). ``aes_key=None`` makes a plain-mode push."""
    if fmt not in ("json", "xml"):
        raise ValueError("fmt is json or xml")
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or str(secrets.randbelow(9 * 10 ** 9) + 10 ** 9)
    query = {"signature": signature(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}
    inner = _render(message, fmt)
    if aes_key is None:
        return query, inner
    encrypted = _encrypt(_key(aes_key), inner, appid)
    query.update(encrypt_type="aes", msg_signature=signature(token, timestamp, nonce, encrypted))
    return query, _render({"ToUserName": message.get("ToUserName", ""), "Encrypt": encrypted}, fmt)


def new_aes_key() -> str:
    """Return a random EncodingAESKey: 43 letters and digits, as the WeChat console makes them."""
    return "".join(secrets.choice(_KEY_CHARS) for _ in range(43))


def valid_aes_key(aes_key: str) -> bool:
    """Tell whether this is a usable EncodingAESKey (for validating configuration)."""
    try:
        _key(aes_key)
    except PushError:
        return False
    return True


# -- signatures -------------------------------------------------------------------------------

def _stamp(query: Mapping[str, str]) -> tuple[str, str]:
    timestamp, nonce = query.get("timestamp"), query.get("nonce")
    if not timestamp or not nonce:
        raise PushError("push without timestamp or nonce")
    return timestamp, nonce


def _check(given: str | None, expected: str, name: str) -> None:
    if not given:
        raise PushError(f"push without {name}")
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise PushError(f"{name} does not match")


# -- AES (WXBizMsgCrypt) ----------------------------------------------------------------------

def _key(aes_key: str) -> bytes:
    if not isinstance(aes_key, str) or len(aes_key) != 43 or not set(aes_key) <= _B64_CHARS:
        raise PushError("EncodingAESKey is not 43 base64 characters")
    return base64.b64decode(aes_key + "=")


def _cipher(key: bytes):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # lazily: cold starts
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def _encrypt(key: bytes, message: bytes, appid: str) -> str:
    plain = secrets.token_bytes(16) + struct.pack(">I", len(message)) + message + appid.encode("utf-8")
    pad = BLOCK - len(plain) % BLOCK
    encryptor = _cipher(key).encryptor()
    return base64.b64encode(encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()).decode("ascii")


def _decrypt(key: bytes, encrypted: str, appid: str) -> bytes:
    try:
        data = base64.b64decode(encrypted, validate=True)
    except ValueError:
        raise PushError("Encrypt is not base64") from None
    if not data or len(data) % 16:
        raise PushError("Encrypt is not whole AES blocks")
    decryptor = _cipher(key).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise PushError("cannot decrypt the push (bad padding: wrong key or tampered)")
    content = plain[16:-pad]
    if len(content) < 4:
        raise PushError("cannot decrypt the push (too short)")
    (length,) = struct.unpack(">I", content[:4])
    if 4 + length > len(content):
        raise PushError("cannot decrypt the push (bad length)")
    if not hmac.compare_digest(content[4 + length:], appid.encode("utf-8")):
        raise PushError("push for another appid")
    return content[4:4 + length]


# -- JSON and XML -----------------------------------------------------------------------------

def _parse(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PushError("push is not UTF-8") from None
    start = text.lstrip()[:1]
    if start == "{":
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack, unsigned yet
            raise PushError("push is not valid JSON") from None
    elif start == "<":
        message = _parse_xml(raw)
    else:
        raise PushError("push is neither JSON nor XML")
    if not isinstance(message, dict):
        raise PushError("push is not an object")
    return message


def _parse_xml(raw: bytes) -> dict:
    """Read flat or nested elements into dicts (repeated tags into lists); refuse DOCTYPEs and entities."""
    stack: list[tuple[list, list]] = [([], [])]  # (children as (tag, value), text parts) per open element

    def refuse(*_args):
        raise PushError("XML with a DOCTYPE or entity declaration is refused")

    def end(tag):
        children, text = stack.pop()
        stack[-1][0].append((tag, _xml_value(children, text)))

    parser = expat.ParserCreate("UTF-8")
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = lambda tag, attrs: stack.append(([], []))
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda data: stack[-1][1].append(data)
    try:
        parser.Parse(raw, True)
    except expat.ExpatError:
        raise PushError("push is not valid XML") from None
    (_root, value), = stack[0][0]
    if not isinstance(value, dict):
        raise PushError("push XML has no fields")
    return value


def _xml_value(children: list, text: list):
    if not children:
        return "".join(text)
    value: dict = {}
    for tag, child in children:
        if tag not in value:
            value[tag] = child
        elif isinstance(value[tag], list):
            value[tag].append(child)
        else:
            value[tag] = [value[tag], child]
    return value


def _render(message: dict, fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(message, ensure_ascii=False).encode("utf-8")
    return f"<xml>{_xml_fields(message)}</xml>".encode("utf-8")


def _xml_fields(fields: dict) -> str:
    out = []
    for tag, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                inner = _xml_fields(item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                inner = str(item)
            else:
                inner = "<![CDATA[" + str(item).replace("]]>", "]]]]><![CDATA[>") + "]]>"
            out.append(f"<{tag}>{inner}</{tag}>")
    return "".join(out)
