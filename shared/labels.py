"""The implicit AI-generated-content label (GB 45438-2025), written into each image while it streams.

``LabelingReader`` wraps the stream of an image and hands out the same image
with the label in its metadata, reading a piece at a time: it holds a chunk or
segment header and a small window, never the image.

- PNG: an ``iTXt`` chunk ``AIGC`` (the label as UTF-8 JSON) right after IHDR;
  the ``tEXt``/``zTXt``/``iTXt`` chunks ``prompt`` and ``workflow`` (ComfyUI's
  whole graph) are dropped unless kept, and any earlier ``AIGC`` chunk always
  is (a file carries one label). A dropped chunk is held (up to
  ``MAX_TEXT_CHUNK``) until its CRC shows it whole; every other chunk streams
  through as it comes.
- JPEG: an APP1 XMP segment (``TC260:AIGC``, the same JSON) after SOI and any
  leading JFIF/Exif segments. A JPEG's own XMP, if it has one, stays after ours.
- WebP: an ``XMP `` chunk at the end of the RIFF payload, whose size the header
  already gives; a simple (VP8/VP8L) file becomes an extended one (a VP8X chunk
  from the frame's size). Unless kept, EXIF (where ComfyUI's WebP nodes write
  the graph) and any earlier XMP become ``JUNK`` chunks of the same size,
  zero-filled, so the header's size stays right without reading ahead.

Anything else, and anything from the first byte that is not where the format
says, passes through unchanged: the image's own oddities never raise and never
lose a byte. Errors of the source (network, deadline) propagate as they are.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import sys
import zlib
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
"""Bytes asked of the source at a time."""

MAX_TEXT_CHUNK = 16 * 1024 * 1024
"""A PNG text chunk to drop is held whole to check its CRC; a larger one is kept and labeling stops there."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABEL_KEYWORD = b"AIGC"
COMFY_KEYWORDS = frozenset({b"prompt", b"workflow"})
_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_KEYWORD_WINDOW = 80  # a PNG keyword is 1-79 bytes, then NUL

XMP_NAMESPACE = "http://www.tc260.org.cn/ns/AIGC/1.0/"  # TC260-PG-20258A's namespace for the label
_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"

_WEBP_ALPHA, _WEBP_EXIF, _WEBP_XMP = 0x10, 0x08, 0x04  # VP8X flags
_U32 = 0xFFFFFFFF


def aigc_label(*, job_id: str, provider: str) -> dict:
    """The implicit label's fields: AI-generated (1), by ``provider``, its content number the job id."""
    return {"Label": "1", "ContentProducer": provider, "ProduceID": job_id, "ReservedCode1": "",
            "ContentPropagator": "", "PropagateID": "", "ReservedCode2": ""}


def _label_json(job_id: str, provider: str) -> str:
    return json.dumps(aigc_label(job_id=job_id, provider=provider), ensure_ascii=False, separators=(",", ":"))


def _xmp_packet(label: str) -> bytes:
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:TC260="{XMP_NAMESPACE}"><TC260:AIGC>{escape(label)}</TC260:AIGC>'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _u32le(n: int) -> bytes:
    return struct.pack("<I", n)


def _simple_webp_size(kind: bytes, data: bytes) -> tuple[int, int, bool] | None:
    """(width, height, alpha) from the first bytes of a VP8 key frame or a VP8L bitstream."""
    if kind == b"VP8 " and len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[6:10])
        return (w & 0x3FFF, h & 0x3FFF, False) if w & 0x3FFF and h & 0x3FFF else None
    if kind == b"VP8L" and len(data) >= 5 and data[0] == 0x2F:
        bits = struct.unpack("<I", data[1:5])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool(bits >> 28 & 1)
    return None


class _Source:
    """The wrapped stream, read in pieces, with the count of bytes taken from it."""

    def __init__(self, raw, read_size: int):
        self.raw = raw
        self.read_size = read_size
        self.buf = b""
        self.off = 0
        self.pos = 0

    def _read(self) -> bytes:
        data = self.raw.read(self.read_size)
        return bytes(data) if data and not isinstance(data, bytes) else data or b""

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer only at the end)."""
        if len(self.buf) - self.off >= n:
            data = self.buf[self.off:self.off + n]
            self.off += n
        else:
            parts = [self.buf[self.off:]]
            have = len(parts[0])
            while have < n:
                more = self._read()
                if not more:
                    break
                parts.append(more)
                have += len(more)
            self.buf = b"".join(parts)
            data = self.buf[:n]
            self.off = len(data)
        self.pos += len(data)
        return data

    def pieces(self, n: int = sys.maxsize):
        """Yield the next ``n`` bytes (all that is left by default) in pieces as they arrive."""
        while n > 0:
            if self.off >= len(self.buf):
                self.buf, self.off = self._read(), 0
                if not self.buf:
                    return
            k = min(n, len(self.buf) - self.off)
            piece = self.buf if k == len(self.buf) else self.buf[self.off:self.off + k]
            self.off += k
            self.pos += k
            n -= k
            yield piece

    def push(self, data: bytes) -> None:
        """Put bytes just taken back in front."""
        self.buf = data + self.buf[self.off:]
        self.off = 0
        self.pos -= len(data)


class LabelingReader:
    """A file-like ``read(size)`` over ``raw`` that hands out the image labeled and without ComfyUI's graph.

    ``content_type`` is what the server declared; the leading bytes decide the
    format, so a PNG declared as something else is still labeled. ``total`` is
    the bytes handed out so far; ``labeled`` and ``dropped`` (keywords of the
    PNG chunks left out, EXIF/XMP for WebP) say what was done.
    """

    def __init__(self, raw, content_type: str = "", *, job_id: str, provider: str, keep_comfy_metadata: bool = False,
                 read_size: int = READ_SIZE):
        self.content_type = content_type
        self.job_id = job_id
        self.keep_comfy_metadata = keep_comfy_metadata
        self.total = 0
        self.labeled = False
        self.dropped: list[str] = []
        self._label = _label_json(job_id, provider)
        self._src = _Source(raw, read_size)
        self._pieces = self._run()
        self._pending = b""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data = b"".join([self._pending, *self._pieces])
            self._pending = b""
        else:
            parts, have = [self._pending], len(self._pending)
            while have < size:
                piece = next(self._pieces, None)
                if piece is None:
                    break
                parts.append(piece)
                have += len(piece)
            joined = b"".join(parts)
            data, self._pending = (joined, b"") if len(joined) <= size else (joined[:size], joined[size:])
        self.total += len(data)
        return data

    # -- the transformation: a generator of non-empty output pieces

    def _run(self):
        head = self._src.take(12)
        self._src.push(head)
        if head.startswith(PNG_SIGNATURE):
            steps, kind = self._png(), "PNG"
        elif head.startswith(b"\xff\xd8\xff"):
            steps, kind = self._jpeg(), "JPEG"
        elif len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            steps, kind = self._webp(), "WebP"
        else:
            steps, kind = iter(()), None
        for piece in steps:
            if piece:
                yield piece
        if not self.labeled:
            if kind:
                log.warning("job %s: a %s output is stored without the AI-content label: its bytes are not as "
                            "expected at byte %d", self.job_id, kind, self._src.pos)
            else:
                log.info("job %s: an output (declared %s) is not PNG, JPEG or WebP: stored without a label",
                         self.job_id, self.content_type or "without a type")
        yield from self._src.pieces()

    def _drops(self, keyword: bytes) -> bool:
        return keyword == LABEL_KEYWORD or (keyword in COMFY_KEYWORDS and not self.keep_comfy_metadata)

    def _png(self):
        src = self._src
        start = src.take(len(PNG_SIGNATURE) + 25)  # the signature and IHDR (13 bytes of data)
        if len(start) < 33 or start[8:16] != b"\x00\x00\x00\x0dIHDR" \
                or zlib.crc32(start[12:29]) != struct.unpack(">I", start[29:33])[0]:
            yield start
            return
        yield start
        yield _png_chunk(b"iTXt", LABEL_KEYWORD + b"\x00\x00\x00\x00\x00" + self._label.encode())
        self.labeled = True
        while True:
            header = src.take(8)
            if len(header) < 8:
                yield header
                return
            length, kind = struct.unpack(">I4s", header)
            if length > 0x7FFFFFFF or not kind.isalpha():
                yield header
                return
            if kind in _TEXT_CHUNKS:
                first = src.take(min(length, _KEYWORD_WINDOW))
                keyword = first.split(b"\x00", 1)[0]
                if self._drops(keyword):
                    if length > MAX_TEXT_CHUNK:
                        yield header + first
                        return
                    body = first + src.take(length - len(first) + 4)  # the rest of the data and the CRC
                    if len(body) == length + 4 and zlib.crc32(body[:length], zlib.crc32(kind)) == \
                            struct.unpack(">I", body[length:])[0]:
                        self.dropped.append(keyword.decode("latin-1"))
                        continue
                    yield header + body  # cut short or damaged: kept as it is, and so is the rest
                    return
                yield header + first
                yield from src.pieces(length - len(first) + 4)
            else:
                yield header
                yield from src.pieces(length + 4)
            if kind == b"IEND":
                return

    def _jpeg(self):
        src = self._src
        yield src.take(2)  # SOI
        for _ in range(2):  # JFIF's APP0 and Exif's APP1 want to come first: the label goes after them
            seg = src.take(4)
            if len(seg) < 4 or seg[0] != 0xFF:
                yield seg
                return
            length = struct.unpack(">H", seg[2:4])[0]
            if seg[1] not in (0xE0, 0xE1) or length < 2:
                src.push(seg)
                break
            ident = src.take(min(6, length - 2))
            if seg[1] == 0xE1 and ident != b"Exif\x00\x00":
                src.push(seg + ident)
                break
            yield seg + ident
            wanted = length - 2 - len(ident)
            for piece in src.pieces(wanted):
                wanted -= len(piece)
                yield piece
            if wanted:
                return
        payload = _XMP_APP1 + _xmp_packet(self._label)
        if len(payload) + 2 > 0xFFFF:
            return
        yield b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
        self.labeled = True

    def _webp(self):
        src = self._src
        head = src.take(30)  # RIFF header, the first chunk's header and its first 10 bytes
        src.push(head)
        if len(head) < 30:
            return
        riff_size, first, first_size = struct.unpack("<I", head[4:8])[0], head[12:16], \
            struct.unpack("<I", head[16:20])[0]
        end = 8 + riff_size  # where the RIFF payload ends in the input
        if riff_size & 1 or 20 + first_size + (first_size & 1) > end:
            return
        xmp = _xmp_packet(self._label)
        xmp_chunk = b"XMP " + _u32le(len(xmp)) + xmp + b"\x00" * (len(xmp) & 1)
        drop = {b"XMP "} if self.keep_comfy_metadata else {b"XMP ", b"EXIF"}  # one label; no graph
        if first == b"VP8X" and first_size == 10:
            flags = (head[20] if self.keep_comfy_metadata else head[20] & ~_WEBP_EXIF) | _WEBP_XMP
            vp8x, skip = b"VP8X" + _u32le(10) + bytes([flags]) + head[21:30], 30
        elif first in (b"VP8 ", b"VP8L") and (size := _simple_webp_size(first, head[20:30])):
            width, height, alpha = size
            vp8x = b"VP8X" + _u32le(10) + bytes([_WEBP_XMP | (_WEBP_ALPHA if alpha else 0), 0, 0, 0]) \
                + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
            skip = 12
        else:
            return
        added = len(vp8x) - (skip - 12) + len(xmp_chunk)
        if riff_size + added > _U32:
            return
        src.take(skip)
        yield b"RIFF" + _u32le(riff_size + added) + b"WEBP" + vp8x
        self.labeled = True
        while src.pos + 8 <= end:  # walk the chunks to blank the ones to drop
            header = src.take(8)
            size = struct.unpack("<I", header[4:])[0] if len(header) == 8 else 0
            padded = size + (size & 1)
            if len(header) < 8 or src.pos + padded > end:
                yield header
                break
            if header[:4] in drop:
                self.dropped.append(header[:4].decode("latin-1").strip())
                yield b"JUNK" + header[4:]
                for piece in src.pieces(padded):
                    yield bytes(len(piece))
            else:
                yield header
                yield from src.pieces(padded)
        yield from src.pieces(max(0, end - src.pos))
        if src.pos == end:
            yield xmp_chunk


def label_bytes(data: bytes, content_type: str = "", **kwargs) -> bytes:
    """``data`` as ``LabelingReader`` hands it out (keyword arguments as its own)."""
    return LabelingReader(io.BytesIO(data), content_type, **kwargs).read()
