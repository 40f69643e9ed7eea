"""Sniffing images by their bytes: real shapes are measured, hostile ones cost bounded CPU."""

from __future__ import annotations

import struct
import time

import pytest

from shared.images import MAX_JPEG_SEGMENTS, sniff
from tests.fakes.comfyui import make_png

MB = 1024 * 1024


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def frame(marker: int, width: int, height: int) -> bytes:
    """A frame header (SOFn): precision, height, width and three components."""
    return segment(marker, b"\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01")


JFIF = segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
EXIF = segment(0xE1, b"Exif\x00\x00" + b"II*\x00" + b"\x00" * 200)
DQT = segment(0xDB, b"\x00" + bytes(range(64)))
XMP_EXTENSION = segment(0xE1, b"http://ns.adobe.com/xmp/extension/\x00" + b"d" * 65_000)
SCAN = segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00") + b"\x12\x34\xff\x00\x56" + b"\xff\xd9"


@pytest.mark.parametrize("data, expected", [
    (b"\xff\xd8" + JFIF + DQT + frame(0xC0, 640, 480) + SCAN, ("image/jpeg", 640, 480)),
    (b"\xff\xd8" + EXIF + JFIF + DQT + frame(0xC2, 333, 222) + SCAN, ("image/jpeg", 333, 222)),  # progressive
    (b"\xff\xd8" + JFIF + b"\xff\xff\xff" + DQT + b"\xff" + frame(0xC1, 10, 20) + SCAN, ("image/jpeg", 10, 20)),
    # a phone's depth map in ~200 extended-XMP segments of 64 KB before the frame header
    (b"\xff\xd8" + EXIF + XMP_EXTENSION * 200 + DQT + frame(0xC0, 4032, 3024) + SCAN, ("image/jpeg", 4032, 3024)),
    (b"\xff\xd8" + segment(0xFE, b"c") * MAX_JPEG_SEGMENTS + frame(0xC0, 7, 9), ("image/jpeg", 7, 9)),
    (make_png(32, 24), ("image/png", 32, 24)),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 10 + struct.pack("<HH", 300, 200), ("image/webp", 300, 200)),
    (b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (299).to_bytes(3, "little") + (199).to_bytes(3, "little"),
     ("image/webp", 300, 200)),
    (b"GIF89a" + b"\x00" * 20, None),
])
def test_real_images_are_measured(data, expected):
    assert sniff(data) == expected


@pytest.mark.parametrize("data", [
    # a scan (or the end) before any frame header: what follows is entropy-coded data, not segments
    b"\xff\xd8" + JFIF + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x12\x34" + frame(0xC0, 640, 480),
    b"\xff\xd8" + JFIF + b"\xff\xd9\x00\x02" + frame(0xC0, 640, 480),
    # a byte that is not a marker where a marker must be
    b"\xff\xd8" + JFIF + b"\x00garbage" + frame(0xC0, 640, 480),
    b"\xff\xd8" + JFIF + b"\xff\x00\x00\x02" + frame(0xC0, 640, 480),
    # a segment shorter than its own length field
    b"\xff\xd8" + JFIF + b"\xff\xe1\x00\x01" + frame(0xC0, 640, 480),
    # more segments than any real file has before its frame header
    b"\xff\xd8" + segment(0xFE, b"c") * (MAX_JPEG_SEGMENTS + 1) + frame(0xC0, 7, 9),
    b"\xff\xd8" + b"\xff\xd0" * (MAX_JPEG_SEGMENTS + 1) + frame(0xC0, 7, 9),
    # cut off inside the frame header
    b"\xff\xd8" + JFIF + frame(0xC0, 640, 480)[:8],
], ids=["scan", "end", "stray_byte", "stuffed_zero", "short_segment", "segments", "restarts", "truncated"])
def test_jpegs_without_a_reachable_frame_header_have_no_size(data):
    assert sniff(data) == ("image/jpeg", None, None)


@pytest.mark.parametrize("body", [
    b"\xff" * (10 * MB),                                  # one run of fill bytes
    b"\xff\x02\x00\x02" * (10 * MB // 4),                 # empty segments, one after another
    JFIF + b"\x00" * (10 * MB),                           # a header, then no marker at all
], ids=["fill", "empty_segments", "no_marker"])
def test_a_10_mb_jpeg_without_a_frame_header_costs_bounded_cpu(body):
    """What check_upload re-sniffs when the first 64 KiB hold no frame header: 50 ms a MB at most."""
    data = b"\xff\xd8" + body
    started = time.process_time()
    found = sniff(data)
    spent = time.process_time() - started
    assert found == ("image/jpeg", None, None)
    assert spent < 0.5, f"sniffing 10 MB took {spent:.3f} s of CPU"
