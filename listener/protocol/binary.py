"""Binary frames: a 4-byte big-endian event type, then a payload; previews become :class:`Preview`.

Type 1 (``PREVIEW_IMAGE``) is a 4-byte image type (1 JPEG, 2 PNG) and the
image, with no prompt id. Type 4 (``PREVIEW_IMAGE_WITH_METADATA``) is a 4-byte
metadata length, that many bytes of JSON (``prompt_id``, ``node_id``,
``image_type`` as a MIME type, ...) and the image.
"""

from __future__ import annotations

import json
import struct

from listener.protocol.events import Event, Ignored, Preview
from listener.protocol.fields import _Bad, _opt_str, _str

#: Largest binary frame accepted by default (16 MiB).
DEFAULT_MAX_BINARY_BYTES = 16 * 1024 * 1024

#: Binary event type of a preview without metadata (ComfyUI ``PREVIEW_IMAGE``).
PREVIEW_IMAGE = 1
#: Binary event type of a preview with JSON metadata
#: (ComfyUI ``PREVIEW_IMAGE_WITH_METADATA``).
PREVIEW_IMAGE_WITH_METADATA = 4

#: Image type codes of type-1 previews, as MIME types.
IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}
PREVIEW_TYPES = {"image/jpeg", "image/png", "image/webp"}

_U32 = struct.Struct(">I")


def _parse_binary(frame: bytes, max_binary_bytes: int) -> Event:
    if len(frame) > max_binary_bytes:
        return Ignored(f"binary frame of {len(frame)} bytes exceeds {max_binary_bytes}", "binary")
    if len(frame) < 4:
        return Ignored("binary frame shorter than its 4-byte event type", "binary")
    (event_type,) = _U32.unpack_from(frame, 0)
    kind = f"binary:{event_type}"
    if event_type == PREVIEW_IMAGE:
        return _preview(frame, kind)
    if event_type == PREVIEW_IMAGE_WITH_METADATA:
        return _preview_with_metadata(frame, kind)
    return Ignored("unknown binary event type", kind)


def _preview(frame: bytes, kind: str) -> Event:
    if len(frame) < 8:
        return Ignored("preview frame shorter than its image type", kind)
    (code,) = _U32.unpack_from(frame, 4)
    mime = IMAGE_TYPES.get(code)
    if mime is None:
        return Ignored(f"unknown preview image type {code}", kind)
    image = frame[8:]
    if not image:
        return Ignored("preview frame has no image", kind)
    return Preview(image_type=mime, data=image)


def _preview_with_metadata(frame: bytes, kind: str) -> Event:
    if len(frame) < 8:
        return Ignored("preview frame shorter than its metadata length", kind)
    (meta_len,) = _U32.unpack_from(frame, 4)
    end = 8 + meta_len
    if end > len(frame):
        return Ignored("preview metadata runs past the end of the frame", kind)
    try:
        metadata = json.loads(frame[8:end].decode("utf-8"))
    except (ValueError, RecursionError):
        return Ignored("preview metadata is not valid JSON", kind)
    if not isinstance(metadata, dict):
        return Ignored("preview metadata is not a JSON object", kind)
    try:
        mime = _str(metadata, "image_type")
        prompt_id = _opt_str(metadata, "prompt_id")
        node_id = _opt_str(metadata, "node_id")
    except _Bad as bad:
        return Ignored(f"preview metadata: {bad}", kind)
    if mime not in PREVIEW_TYPES:  # stored and served back to apps: no SVG (scripts), nothing unexpected
        return Ignored(f"preview image type {mime!r} is not PNG, JPEG or WebP", kind)
    image = frame[end:]
    if not image:
        return Ignored("preview frame has no image", kind)
    return Preview(image_type=mime, data=image, prompt_id=prompt_id, node_id=node_id)
