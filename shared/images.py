"""Recognise PNG, JPEG and WebP images by their first bytes and read their size."""

from __future__ import annotations

import struct

HEAD_BYTES = 64 * 1024  # enough for a JPEG's frame header after typical EXIF/ICC segments


def sniff(head: bytes) -> tuple[str, int | None, int | None] | None:
    """Return (content type, width, height) for an image's leading bytes, or None if not an image."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) >= 24 and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return "image/png", w, h
        return "image/png", None, None
    if head.startswith(b"\xff\xd8\xff"):
        w, h = _jpeg_size(head)
        return "image/jpeg", w, h
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        w, h = _webp_size(head)
        return "image/webp", w, h
    return None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + seg_len
    return None, None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h
    if chunk == b"VP8X" and len(data) >= 30:
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h
    return None, None


class HeadCapture:
    """A read-through wrapper that keeps the first bytes and counts the rest."""

    def __init__(self, raw, keep: int = HEAD_BYTES):
        self.raw = raw
        self.keep = keep
        self.head = bytearray()
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            if len(self.head) < self.keep:
                self.head += data[: self.keep - len(self.head)]
            self.total += len(data)
        return data
