"""The entry point: one WebSocket frame in, one typed event out."""

from __future__ import annotations

from listener.protocol.binary import DEFAULT_MAX_BINARY_BYTES, _parse_binary
from listener.protocol.events import Event, Ignored
from listener.protocol.text import _parse_text

__all__ = ["parse_frame"]


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
