"""Typed events from ComfyUI WebSocket frames: a pure parser, no I/O.

ComfyUI (0.8.0, recorded in ``tests/fixtures/comfyui``) speaks two kinds of
frame on ``/ws?clientId=...``:

* **Text frames**: a JSON object ``{"type": ..., "data": {...}}``. The types the
  gateway cares about become frozen dataclasses: :class:`Status`,
  :class:`FeatureFlags`, :class:`ExecutionStart`, :class:`ExecutionCached`,
  :class:`Executing`, :class:`Progress`, :class:`ProgressState`,
  :class:`Executed`, :class:`ExecutionSuccess`, :class:`ExecutionError` and
  :class:`ExecutionInterrupted`.
* **Binary frames**: a 4-byte big-endian event type, then a payload. Type 1 is
  a preview: a 4-byte image type (1 JPEG, 2 PNG) and the image; it carries no
  prompt id, it belongs to whichever prompt is running. Type 4 (sent only to
  a socket that announced ``supports_preview_metadata``) is a preview with
  metadata: a 4-byte metadata length, that many bytes of JSON (``prompt_id``,
  ``node_id``, ``image_type`` as a MIME type, ...) and the image. Both become
  :class:`Preview`.

Anything else -- an unknown message type, text that is not JSON, a known
type whose fields have the wrong types, a truncated or oversized binary frame
-- becomes :class:`Ignored` with a human-readable ``reason`` and a ``kind``
(the message type when there is one, ``"text"``/``"binary"`` otherwise, and
``"binary:N"`` for a binary frame of event type N).

The single entry point, :func:`parse_frame`, never raises: a listener can
feed it every frame it receives and branch on the type of the result.

Facts from the recordings that shape these types:

* ``executing`` with ``node: null`` means the prompt is finished (history is
  already written). ComfyUI sends it after success, after ``execution_error``
  and after ``execution_interrupted`` alike. A socket that reconnects with
  the id of the running prompt's client gets ``{"node": "<id>"}`` with no
  ``prompt_id`` (so :attr:`Executing.prompt_id` may be ``None``).
* ``progress_state`` values are floats (``0.0``/``1.0``) for plain nodes and
  step counts for samplers; both are kept as ``float``.
* ``executed`` outputs other than ``images`` (text, gifs, ...) are ignored.
* Error tracebacks are not kept: they are long and only useful in logs.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "DEFAULT_MAX_BINARY_BYTES",
    "PREVIEW_IMAGE",
    "PREVIEW_IMAGE_WITH_METADATA",
    "IMAGE_TYPES",
    "Event",
    "Status",
    "FeatureFlags",
    "ExecutionStart",
    "ExecutionCached",
    "Executing",
    "Progress",
    "NodeState",
    "ProgressState",
    "ImageRef",
    "Executed",
    "ExecutionSuccess",
    "ExecutionError",
    "ExecutionInterrupted",
    "Preview",
    "Ignored",
    "parse_frame",
]

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


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """``status``: how many prompts the server holds (running included, all clients)."""

    queue_remaining: int
    sid: str | None = None


@dataclass(frozen=True)
class FeatureFlags:
    """``feature_flags``: the server's answer to the client's feature flags."""

    flags: dict


@dataclass(frozen=True)
class ExecutionStart:
    prompt_id: str
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class ExecutionCached:
    prompt_id: str
    nodes: tuple[str, ...]
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Executing:
    """``executing``: ``node`` is about to run; ``node is None`` means the prompt finished."""

    prompt_id: str | None
    node: str | None


@dataclass(frozen=True)
class Progress:
    prompt_id: str | None
    node: str | None
    value: int
    max: int


@dataclass(frozen=True)
class NodeState:
    node_id: str
    value: float
    max: float
    state: str


@dataclass(frozen=True)
class ProgressState:
    """``progress_state``: the state of every node of the prompt that has started."""

    prompt_id: str
    nodes: dict[str, NodeState]


@dataclass(frozen=True)
class ImageRef:
    """An image a node produced; fetch it with ``GET /view?filename=&subfolder=&type=``."""

    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True)
class Executed:
    prompt_id: str
    node: str
    images: tuple[ImageRef, ...]


@dataclass(frozen=True)
class ExecutionSuccess:
    prompt_id: str
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class ExecutionError:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class ExecutionInterrupted:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Preview:
    """A preview image from a binary frame. ``prompt_id``/``node_id`` only come with type 4."""

    image_type: str
    data: bytes
    prompt_id: str | None = None
    node_id: str | None = None


@dataclass(frozen=True)
class Ignored:
    """A frame the gateway does not use or cannot read."""

    reason: str
    kind: str


Event = Union[
    Status,
    FeatureFlags,
    ExecutionStart,
    ExecutionCached,
    Executing,
    Progress,
    ProgressState,
    Executed,
    ExecutionSuccess,
    ExecutionError,
    ExecutionInterrupted,
    Preview,
    Ignored,
]


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def parse_frame(
    data: str | bytes, *, max_binary_bytes: int = DEFAULT_MAX_BINARY_BYTES
) -> Event:
    """Turn one WebSocket frame into a typed event. Never raises.

    ``str`` is a text frame; ``bytes``/``bytearray``/``memoryview`` a binary
    frame. Binary frames longer than ``max_binary_bytes`` are ignored unread.
    """
    try:
        if isinstance(data, str):
            return _parse_text(data)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return _parse_binary(bytes(data), max_binary_bytes)
        return Ignored(f"unsupported frame of type {type(data).__name__}", "unknown")
    except Exception as exc:  # pragma: no cover - a safety net, not a code path
        return Ignored(f"parser error: {type(exc).__name__}", "unknown")


# --------------------------------------------------------------------------
# Field readers: each raises _Bad with a reason when a field is unusable
# --------------------------------------------------------------------------


class _Bad(Exception):
    """A known message whose fields cannot be used."""


_MISSING = object()


def _field(data: dict, key: str, *, required: bool) -> Any:
    if key in data:
        return data[key]
    if required:
        raise _Bad(f"missing field {key!r}")
    return _MISSING


def _str(data: dict, key: str) -> str:
    value = _field(data, key, required=True)
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} is not a string")
    return value


def _opt_str(data: dict, key: str) -> str | None:
    """A string or null; a missing key reads as ``None``."""
    value = _field(data, key, required=False)
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} is not a string or null")
    return value


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise _Bad(f"field {key!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _Bad(f"field {key!r} is not an integer")


def _int(data: dict, key: str) -> int:
    return _as_int(_field(data, key, required=True), key)


def _opt_int(data: dict, key: str) -> int | None:
    value = _field(data, key, required=False)
    if value is _MISSING or value is None:
        return None
    return _as_int(value, key)


def _number(data: dict, key: str) -> float:
    value = _field(data, key, required=True)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"field {key!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise _Bad(f"field {key!r} is not finite")
    return number


def _dict(data: dict, key: str) -> dict:
    value = _field(data, key, required=True)
    if not isinstance(value, dict):
        raise _Bad(f"field {key!r} is not an object")
    return value


# --------------------------------------------------------------------------
# Text frames
# --------------------------------------------------------------------------


def _status(data: dict) -> Status:
    exec_info = _dict(_dict(data, "status"), "exec_info")
    return Status(queue_remaining=_int(exec_info, "queue_remaining"), sid=_opt_str(data, "sid"))


def _feature_flags(data: dict) -> FeatureFlags:
    return FeatureFlags(flags=dict(data))


def _execution_start(data: dict) -> ExecutionStart:
    return ExecutionStart(prompt_id=_str(data, "prompt_id"), timestamp_ms=_opt_int(data, "timestamp"))


def _execution_cached(data: dict) -> ExecutionCached:
    nodes = _field(data, "nodes", required=True)
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise _Bad("field 'nodes' is not a list of strings")
    return ExecutionCached(
        prompt_id=_str(data, "prompt_id"),
        nodes=tuple(nodes),
        timestamp_ms=_opt_int(data, "timestamp"),
    )


def _executing(data: dict) -> Executing:
    # "node" must be present: a missing node must not read as "finished".
    _field(data, "node", required=True)
    return Executing(prompt_id=_opt_str(data, "prompt_id"), node=_opt_str(data, "node"))


def _progress(data: dict) -> Progress:
    return Progress(
        prompt_id=_opt_str(data, "prompt_id"),
        node=_opt_str(data, "node"),
        value=_int(data, "value"),
        max=_int(data, "max"),
    )


def _progress_state(data: dict) -> ProgressState:
    nodes: dict[str, NodeState] = {}
    for key, entry in _dict(data, "nodes").items():
        if not isinstance(entry, dict):
            raise _Bad(f"node {key!r} is not an object")
        node_id = _opt_str(entry, "node_id") or key
        nodes[key] = NodeState(
            node_id=node_id,
            value=_number(entry, "value"),
            max=_number(entry, "max"),
            state=_str(entry, "state"),
        )
    return ProgressState(prompt_id=_str(data, "prompt_id"), nodes=nodes)


def _executed(data: dict) -> Executed:
    output = _field(data, "output", required=False)
    images: list[ImageRef] = []
    if output is not _MISSING and output is not None:
        if not isinstance(output, dict):
            raise _Bad("field 'output' is not an object")
        raw_images = output.get("images", [])
        if raw_images is None:
            raw_images = []
        if not isinstance(raw_images, list):
            raise _Bad("field 'output.images' is not a list")
        for item in raw_images:
            if not isinstance(item, dict):
                raise _Bad("an image entry is not an object")
            subfolder = _opt_str(item, "subfolder") or ""
            images.append(
                ImageRef(filename=_str(item, "filename"), subfolder=subfolder, type=_str(item, "type"))
            )
    return Executed(prompt_id=_str(data, "prompt_id"), node=_str(data, "node"), images=tuple(images))


def _execution_success(data: dict) -> ExecutionSuccess:
    return ExecutionSuccess(prompt_id=_str(data, "prompt_id"), timestamp_ms=_opt_int(data, "timestamp"))


def _execution_error(data: dict) -> ExecutionError:
    return ExecutionError(
        prompt_id=_str(data, "prompt_id"),
        node_id=_opt_str(data, "node_id"),
        node_type=_opt_str(data, "node_type"),
        exception_type=_str(data, "exception_type"),
        exception_message=_str(data, "exception_message"),
        timestamp_ms=_opt_int(data, "timestamp"),
    )


def _execution_interrupted(data: dict) -> ExecutionInterrupted:
    return ExecutionInterrupted(
        prompt_id=_str(data, "prompt_id"),
        node_id=_opt_str(data, "node_id"),
        node_type=_opt_str(data, "node_type"),
        timestamp_ms=_opt_int(data, "timestamp"),
    )


_TEXT_PARSERS = {
    "status": _status,
    "feature_flags": _feature_flags,
    "execution_start": _execution_start,
    "execution_cached": _execution_cached,
    "executing": _executing,
    "progress": _progress,
    "progress_state": _progress_state,
    "executed": _executed,
    "execution_success": _execution_success,
    "execution_error": _execution_error,
    "execution_interrupted": _execution_interrupted,
}


def _parse_text(text: str) -> Event:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return Ignored("text frame is not valid JSON", "text")
    if not isinstance(message, dict):
        return Ignored("text frame is not a JSON object", "text")
    kind = message.get("type")
    if not isinstance(kind, str):
        return Ignored("message has no string 'type'", "text")
    parser = _TEXT_PARSERS.get(kind)
    if parser is None:
        return Ignored("unknown message type", kind)
    data = message.get("data")
    if not isinstance(data, dict):
        return Ignored("message 'data' is not an object", kind)
    try:
        return parser(data)
    except _Bad as bad:
        return Ignored(str(bad), kind)


# --------------------------------------------------------------------------
# Binary frames
# --------------------------------------------------------------------------


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
