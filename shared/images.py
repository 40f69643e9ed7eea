"""Recognise PNG, JPEG and WebP images by their first bytes and read their size."""

from __future__ import annotations

import re
import struct

HEAD_BYTES = 64 * 1024  # enough for a JPEG's frame header after typical EXIF/ICC segments
# Segments a JPEG may have before its frame header: phones write a few dozen, extended XMP
# (depth maps, up to 64 KiB a segment) a few hundred.
MAX_JPEG_SEGMENTS = 4096

_JPEG_FILL = re.compile(rb"\xff+")  # a marker's 0xFF and any fill bytes before it
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


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
    # Walk the marker segments between SOI and the frame header: each costs a few steps of
    # Python whatever its length, fill bytes are skipped by the regex engine, and a file that
    # is not this shape (a stray byte, a scan or the end before a frame header, endless
    # segments) stops the walk, so no content makes this cost more than MAX_JPEG_SEGMENTS steps.
    i = 2
    for _ in range(MAX_JPEG_SEGMENTS + 1):  # the segments, then the frame header
        fill = _JPEG_FILL.match(data, i)
        if fill is None or fill.end() >= len(data):
            return None, None  # not a marker where one must be, or the data ends
        marker = data[fill.end()]
        i = fill.end() + 1
        if marker in _JPEG_SOF:
            if i + 7 > len(data):
                return None, None
            h, w = struct.unpack(">HH", data[i + 3:i + 7])  # length, precision, height, width
            return w, h
        if marker in (0xDA, 0xD9, 0x00):  # a scan or the end before any frame header; 0xFF00 is no marker
            return None, None
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: markers without a length
            continue
        if i + 2 > len(data):
            return None, None
        seg_len = struct.unpack(">H", data[i:i + 2])[0]
        if seg_len < 2:
            return None, None
        i += seg_len
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
