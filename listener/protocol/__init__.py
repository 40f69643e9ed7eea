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

The package, by responsibility (callers import from ``listener.protocol``
only):

* ``events.py``  -- the event dataclasses and the :data:`Event` union, with the
  facts from the recordings that shape them;
* ``parser.py``  -- :func:`parse_frame`, the entry point;
* ``text.py``    -- text frames: one small reader per message type;
* ``binary.py``  -- binary frames: the preview formats and their constants;
* ``fields.py``  -- the field readers both kinds of frame use to check a JSON
  object's fields.
"""

from __future__ import annotations

from listener.protocol.binary import (
    DEFAULT_MAX_BINARY_BYTES,
    IMAGE_TYPES,
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    PREVIEW_TYPES,
)
from listener.protocol.events import (
    Event,
    Executed,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Executing,
    FeatureFlags,
    Ignored,
    ImageRef,
    NodeState,
    Preview,
    Progress,
    ProgressState,
    Status,
)
from listener.protocol.parser import parse_frame

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
