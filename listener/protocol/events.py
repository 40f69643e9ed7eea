"""The typed events :func:`listener.protocol.parse_frame` returns: frozen dataclasses.

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

from dataclasses import dataclass
from typing import Union

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
