"""The AI-content label written into images as they stream, and ComfyUI's graph left out."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import struct
import time
import tracemalloc
import xml.etree.ElementTree as ET
import zlib

import pytest

from shared.images import sniff
from shared.labels import MAX_TEXT_CHUNK, XMP_NAMESPACE, LabelingReader, aigc_label, label_bytes
from tests.fakes.comfyui import JPEG_PREVIEW, make_png

JOB = "6cc31eba-9053-4126-8405-11c95b3f07c4"
PROVIDER = "示例科技有限公司 <&> \"AI\""
KW = {"job_id": JOB, "provider": PROVIDER}
GRAPH = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20}},
                    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}}})


# -- building and reading PNGs --------------------------------------------------------------

def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_chunk(kind: bytes, keyword: str, value: str) -> bytes:
    key = keyword.encode("latin-1") + b"\x00"
    if kind == b"tEXt":
        return chunk(kind, key + value.encode("latin-1"))
    if kind == b"zTXt":
        return chunk(kind, key + b"\x00" + zlib.compress(value.encode("latin-1")))
    return chunk(kind, key + b"\x00\x00" + b"en\x00" + keyword.encode() + b"\x00" + value.encode())


def png(width=40, height=30, *, texts=(), idat_parts=1, seed=0, after=()) -> bytes:
    """A real RGB PNG of random pixels: IHDR, the given text chunks, IDAT in parts, ``after`` chunks, IEND."""
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    idat = zlib.compress(raw)
    step = -(-len(idat) // idat_parts)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + b"".join(texts) + b"".join(chunk(b"IDAT", idat[i:i + step]) for i in range(0, len(idat), step))
            + b"".join(after) + chunk(b"IEND", b""))


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk of a PNG, checking the signature, each CRC and that IEND comes last."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + length]
        assert len(body) == length, f"chunk {kind} cut short"
        assert struct.unpack(">I", data[i + 8 + length:i + 12 + length])[0] == zlib.crc32(kind + body), kind
        out.append((kind, body))
        i += 12 + length
    assert out[0][0] == b"IHDR" and out[-1] == (b"IEND", b"")
    return out


def keywords(data: bytes) -> list[str]:
    return [body.split(b"\x00", 1)[0].decode("latin-1") for kind, body in chunks(data)
            if kind in (b"tEXt", b"zTXt", b"iTXt")]


def label_of_png(data: bytes) -> dict:
    """The JSON of the one AIGC chunk, which comes right after IHDR."""
    found = chunks(data)
    labels = [body for kind, body in found if kind in (b"tEXt", b"zTXt", b"iTXt") and body.startswith(b"AIGC\x00")]
    assert len(labels) == 1 and found[1] == (b"iTXt", labels[0])
    assert labels[0][:9] == b"AIGC\x00\x00\x00\x00\x00"  # uncompressed, no language, no translated keyword
    return json.loads(labels[0][9:].decode("utf-8"))


def idat(data: bytes) -> bytes:
    return b"".join(body for kind, body in chunks(data) if kind == b"IDAT")


def label_chunk() -> bytes:
    return chunk(b"iTXt", b"AIGC\x00\x00\x00\x00\x00" + json.dumps(
        aigc_label(job_id=JOB, provider=PROVIDER), ensure_ascii=False, separators=(",", ":")).encode())


# -- reading through the wrapper ------------------------------------------------------------

class Trickle:
    """A source that answers each read with a random number of bytes, as a network stream does."""

    def __init__(self, data: bytes, rng: random.Random):
        self.data, self.rng, self.pos = data, rng, 0

    def read(self, size=-1):
        n = self.rng.randint(1, size) if size and size > 0 else len(self.data)
        piece = self.data[self.pos:self.pos + n]
        self.pos += len(piece)
        return piece


def through(data: bytes, seed=0, *, content_type="image/png", **kw) -> tuple[bytes, LabelingReader]:
    """All the reader hands out over a trickling source, read in random small sizes."""
    rng = random.Random(seed)
    reader = LabelingReader(Trickle(data, rng), content_type, **{**KW, **kw}, read_size=rng.choice([1, 7, 4096]))
    out = []
    while True:
        piece = reader.read(rng.randint(1, 3000))
        if not piece:
            break
        out.append(piece)
    assert reader.read(100) == b""
    result = b"".join(out)
    assert reader.total == len(result)
    return result, reader


# -- PNG --------------------------------------------------------------------------------------

def test_label_fields():
    assert aigc_label(job_id="j", provider="p") == {
        "Label": "1", "ContentProducer": "p", "ProduceID": "j", "ReservedCode1": "",
        "ContentPropagator": "", "PropagateID": "", "ReservedCode2": ""}


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt", b"iTXt"])
@pytest.mark.parametrize("seed", range(4))
def test_png_loses_the_graph_and_gains_the_label(kind, seed):
    source = png(texts=[text_chunk(kind, "prompt", GRAPH), text_chunk(b"tEXt", "Software", "x"),
                        text_chunk(kind, "workflow", GRAPH * 3), text_chunk(kind, "prompts", "kept")],
                 idat_parts=1 + seed, seed=seed, after=[text_chunk(kind, "prompt", GRAPH)])
    out, reader = through(source, seed)
    assert keywords(out) == ["AIGC", "Software", "prompts"]
    assert label_of_png(out) == aigc_label(job_id=JOB, provider=PROVIDER)
    assert reader.labeled and reader.dropped == ["prompt", "workflow", "prompt"]
    assert [c for c in chunks(out) if c[0] == b"IDAT"] == [c for c in chunks(source) if c[0] == b"IDAT"]
    assert zlib.decompress(idat(out)) == zlib.decompress(idat(source))
    assert sniff(out[:64]) == sniff(source[:64]) == ("image/png", 40, 30)
    assert b"KSampler" not in out


def test_png_keeps_the_graph_when_asked():
    source = png(texts=[text_chunk(b"tEXt", "prompt", GRAPH), text_chunk(b"iTXt", "workflow", GRAPH)])
    out, reader = through(source, keep_comfy_metadata=True)
    assert out == source[:33] + label_chunk() + source[33:]
    assert keywords(out) == ["AIGC", "prompt", "workflow"] and reader.dropped == []


@pytest.mark.parametrize("keep", [False, True])
def test_png_carries_one_label_only(keep):
    earlier = text_chunk(b"tEXt", "AIGC", json.dumps({"Label": "1", "ContentProducer": "someone else"}))
    out, reader = through(png(texts=[earlier]), keep_comfy_metadata=keep)
    assert keywords(out) == ["AIGC"] and label_of_png(out)["ContentProducer"] == PROVIDER
    assert reader.dropped == ["AIGC"]


def test_png_from_the_fake_comfyui():
    source = make_png(64, 48, seed=3, text={"prompt": GRAPH})  # what SaveImage writes
    out, _ = through(source, 5)
    assert keywords(source) == ["prompt"] and keywords(out) == ["AIGC"]
    assert label_of_png(out)["ProduceID"] == JOB and idat(out) == idat(source)
    assert len(out) == len(source) - len(text_chunk(b"tEXt", "prompt", GRAPH)) + len(label_chunk())


def test_the_same_bytes_whatever_the_reads():
    source = png(texts=[text_chunk(b"zTXt", "workflow", GRAPH)], idat_parts=5)
    whole = label_bytes(source, **KW)
    assert all(through(source, seed)[0] == whole for seed in range(20))
    reader = LabelingReader(io.BytesIO(source), **KW)
    assert reader.read(0) == b"" and reader.read(1) == b"\x89" and reader.read() == whole[1:] and reader.read() == b""


@pytest.mark.parametrize("size", [1, 2 ** 20 + 3])
def test_png_large_text_chunks(size, monkeypatch):
    monkeypatch.setattr("shared.labels.MAX_TEXT_CHUNK", 2 ** 20)
    big = text_chunk(b"tEXt", "workflow", "x" * size)
    source = png(texts=[big])
    out, reader = through(source, 1)
    if size <= 2 ** 20:
        assert keywords(out) == ["AIGC"] and reader.dropped == ["workflow"]
    else:  # over the cap: kept whole, and the rest as it is
        assert out == source[:33] + label_chunk() + source[33:] and reader.dropped == []
    assert MAX_TEXT_CHUNK == 16 * 1024 * 1024


# -- JPEG -------------------------------------------------------------------------------------

def xmp_label(packet: bytes) -> dict:
    root = ET.fromstring(packet.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    [node] = root.iter(f"{{{XMP_NAMESPACE}}}AIGC")
    return json.loads(node.text)


def app_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


EXIF = app_segment(0xE1, b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
JFIF_END = 2 + 18  # SOI and the fake's APP0 JFIF segment


@pytest.mark.parametrize("before,after", [
    (JPEG_PREVIEW[:JFIF_END], JPEG_PREVIEW[JFIF_END:]),  # after JFIF's APP0
    (JPEG_PREVIEW[:2], JPEG_PREVIEW[JFIF_END:]),  # no APP0: right after SOI
    (JPEG_PREVIEW[:JFIF_END] + EXIF, JPEG_PREVIEW[JFIF_END:]),  # after APP0 and Exif's APP1
    (JPEG_PREVIEW[:2] + EXIF, app_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>") + JPEG_PREVIEW[JFIF_END:]),
])
def test_jpeg_gains_the_label_and_keeps_its_bytes(before, after):
    source = before + after
    out, reader = through(source, 3, content_type="image/jpeg")
    assert out.startswith(before) and out.endswith(after) and reader.labeled
    segment = out[len(before):len(out) - len(after)]
    assert segment[:2] == b"\xff\xe1" and struct.unpack(">H", segment[2:4])[0] == len(segment) - 2
    assert segment[4:33] == b"http://ns.adobe.com/xap/1.0/\x00"
    assert xmp_label(segment[33:]) == aigc_label(job_id=JOB, provider=PROVIDER)
    assert sniff(out) == ("image/jpeg", 16, 16)


# -- WebP (files made with libwebp's cwebp, img2webp and webpmux; EXIF as ComfyUI's WebP nodes write it) --

WEBP = {name: base64.b64decode(b64) for name, b64 in {
    "lossy": "UklGRiwAAABXRUJQVlA4ICAAAACQAQCdASoEAAMAAgA0JaQAAudPjMAA/k/8PI5/MAAAAA==",
    "lossless_alpha": "UklGRjwAAABXRUJQVlA4TDAAAAAvA4AAEF9AkG0zxCLc3+MOwzNaAoEkiIFH70EOsLoABAEkSimkMNwKK4wa0f+gLgc=",
    "animated_exif": "UklGRjQBAABXRUJQVlA4WAoAAAAKAAAAAwAAAgAAQU5JTQYAAAD/////AABBTk1GPgAAAAAAAAAAAAMAAAIAAGQAAAJWUDhM"
                     "JgAAAC8DgAAAXyAQSILYH3eGoRiK+U9sB4IAEqUUUhhuhRVGjeh/UJcDQU5NRlQAAAAAAAAAAAADAAACAABkAAAAVlA4"
                     "TDwAAAAvA4AAAF9ApG3Dh4eH71/jRRBp26aOh49LpG0b48PH1fT5L8L2IVD8UO4BBAEkCjGlsNMKu0wa0f/AdAdFWElG"
                     "ZQAAAE1NACoAAAAIAAAAAAAAcHJvbXB0OnsiMyI6e319eyIzIjp7fX17IjMiOnt9fXsiMyI6e319eyIzIjp7fX17IjMi"
                     "Ont9fXsiMyI6e319eyIzIjp7fX17IjMiOnt9fXsiMyI6e319AA==",
    "alpha_exif_xmp": "UklGRhoBAABXRUJQVlA4WAoAAAAcAAAAAwAAAgAAQUxQSAwAAAABH3Be9ogIRzci+h9WUDggTAAAAHACAJ0BKgQAAwAB"
                      "QCYlsAJ0ugDUAP0AA7NbhtgA/u0td4FilnX5up3JR3w91LNH+c7DVsjX/tTTJ9//ldqhTPCuBVQU72L7//IlgABFWElG"
                      "ZQAAAE1NACoAAAAIAAAAAAAAcHJvbXB0OnsiMyI6e319eyIzIjp7fX17IjMiOnt9fXsiMyI6e319eyIzIjp7fX17IjMi"
                      "Ont9fXsiMyI6e319eyIzIjp7fX17IjMiOnt9fXsiMyI6e319AFhNUCAlAAAAPHg6eG1wbWV0YSB4bWxuczp4PSJhZG9i"
                      "ZTpuczptZXRhLyIvPgA=",
}.items()}


def riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP" and struct.unpack("<I", data[4:8])[0] == len(data) - 8
    out, i = [], 12
    while i < len(data):
        kind, size = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
        assert i + 8 + size <= len(data)
        out.append((kind, data[i + 8:i + 8 + size]))
        i += 8 + size + (size & 1)
    assert i == len(data)
    return out


@pytest.mark.parametrize("name", sorted(WEBP))
@pytest.mark.parametrize("keep", [False, True])
def test_webp_gains_the_label_and_loses_the_exif(name, keep):
    source = WEBP[name]
    out, reader = through(source, 2, content_type="image/webp", keep_comfy_metadata=keep)
    before, after = riff_chunks(source), riff_chunks(out)
    assert reader.labeled and sniff(out) == sniff(source) == ("image/webp", 4, 3)
    assert after[0][0] == b"VP8X" and after[-1][0] == b"XMP "
    assert xmp_label(after[-1][1]) == aigc_label(job_id=JOB, provider=PROVIDER)
    flags = after[0][1][0]
    assert flags & 0x04 and bool(flags & 0x08) == (keep and b"EXIF" in dict(before))
    blanked = {b"XMP "} if keep else {b"XMP ", b"EXIF"}
    expected = [(b"JUNK", bytes(len(body))) if kind in blanked else (kind, body)
                for kind, body in before if kind != b"VP8X"]
    assert after[1:-1] == expected  # the image's own chunks, byte for byte, in their order
    if before[0][0] == b"VP8X":
        assert after[0][1][1:] == before[0][1][1:] and flags & ~0x0C == before[0][1][0] & ~0x0C
    else:  # a simple file became an extended one: its canvas is the frame's size, alpha as the frame says
        assert after[0][1][4:] == bytes([3, 0, 0, 2, 0, 0]) and bool(flags & 0x10) == (name == "lossless_alpha")
    assert b"prompt:" not in out or keep


# -- what is not as expected passes through ---------------------------------------------------

GOOD = png(texts=[text_chunk(b"tEXt", "prompt", GRAPH)])


@pytest.mark.parametrize("data", [
    b"", b"\x89PNG", b"GIF89a" + bytes(40), b"<html>error</html>" * 10,
    GOOD[:8] + b"\x00\x00\x00\x0dIHDX" + GOOD[16:],  # no IHDR first
    GOOD[:29] + b"\x00\x00\x00\x00" + GOOD[33:],  # IHDR's CRC wrong
    GOOD[:32],  # IHDR cut short
    b"\xff\xd8\xff\xe0\x00\x10JFIF",  # APP0 cut short
    b"\xff\xd8\xff\xe0\x00\x04\x00\x00\x12\x34" + bytes(20),  # no marker after APP0
    b"RIFF\x21\x00\x00\x00WEBPVP8 \x14\x00\x00\x00" + bytes(30),  # odd RIFF size
    b"RIFF\x20\x00\x00\x00WEBPVP8 \x40\x00\x00\x00" + bytes(30),  # first chunk past the end
    b"RIFF\x20\x00\x00\x00WEBPVP8 \x14\x00\x00\x00" + bytes(30),  # not a VP8 key frame
    b"RIFF\x20\x00\x00\x00WEBPABCD\x14\x00\x00\x00" + bytes(30),  # unknown first chunk
    b"RIFF\x20\x00\x00\x00AVI LIST\x14\x00\x00\x00" + bytes(30),
])
def test_what_is_not_as_expected_passes_through_unchanged(data):
    out, reader = through(data, 4)
    assert out == data and not reader.labeled


def test_a_png_cut_anywhere_keeps_every_byte_it_had():
    # The one change a cut file gets: the label after a whole IHDR, and the prompt chunk gone only if whole.
    start, prompt = 33, text_chunk(b"tEXt", "prompt", GRAPH)
    assert GOOD[start:start + len(prompt)] == prompt
    for cut in range(len(GOOD) + 1):
        head = GOOD[:cut]
        out = label_bytes(head, **KW)
        if cut < start:
            expected = head
        elif cut < start + len(prompt):
            expected = head[:start] + label_chunk() + head[start:]
        else:
            expected = head[:start] + label_chunk() + head[start + len(prompt):]
        assert out == expected, cut


def test_damage_after_ihdr_keeps_the_rest_as_it_is():
    prompt = text_chunk(b"tEXt", "prompt", GRAPH)
    damaged = GOOD[:33] + prompt[:-1] + bytes([prompt[-1] ^ 1]) + GOOD[33 + len(prompt):]  # the prompt's CRC
    assert label_bytes(damaged, **KW) == damaged[:33] + label_chunk() + damaged[33:]
    huge = GOOD[:33] + b"\xff\xff\xff\xffIDAT" + GOOD[41:]  # a length no PNG has
    assert label_bytes(huge, **KW) == huge[:33] + label_chunk() + huge[33:]
    odd = GOOD[:33] + b"\x00\x00\x00\x04ID1T" + GOOD[41:]  # a chunk type that is not letters
    assert label_bytes(odd, **KW) == odd[:33] + label_chunk() + odd[33:]


def test_trailing_bytes_after_the_end_stay():
    out = label_bytes(GOOD + b"trailer", **KW)
    assert out.endswith(chunk(b"IEND", b"") + b"trailer")
    webp = WEBP["lossy"] + b"trailer"
    assert label_bytes(webp, **KW).endswith(b"trailer")


@pytest.mark.parametrize("seed", range(30))
def test_damaged_images_never_raise(seed):
    rng = random.Random(seed)
    source = bytearray(rng.choice([GOOD, JPEG_PREVIEW, *WEBP.values()]))
    for _ in range(rng.randint(1, 4)):
        source[rng.randrange(len(source))] = rng.randrange(256)
    source = bytes(source[:rng.randint(1, len(source))])
    out, _ = through(source, seed)
    assert out == through(source, seed + 100)[0]  # and the same whatever the reads


# -- bounded memory ----------------------------------------------------------------------------

class BigPng:
    """A valid PNG of ``blocks`` × 64 KiB of pixels in one IDAT (stored deflate blocks), made as it is read."""

    WIDTH, ROW = 428, 1 + 428 * 3  # 65535 bytes of pixel data = 51 rows

    def __init__(self, blocks: int):
        payload = b"\x01" * 65535  # every row: filter Sub, then ones (a gradient)
        self.block = b"\x00" + struct.pack("<HH", 65535, 0) + payload
        last = b"\x01" + struct.pack("<HH", 65535, 0) + payload
        adler = 1
        for _ in range(blocks):
            adler = zlib.adler32(payload, adler)
        length = 2 + blocks * len(self.block) + 4
        crc = zlib.crc32(b"IDAT\x78\x01")
        for _ in range(blocks - 1):
            crc = zlib.crc32(self.block, crc)
        crc = zlib.crc32(last + struct.pack(">I", adler), crc)
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", self.WIDTH, blocks * 65535 // self.ROW, 8, 2, 0, 0, 0))
        self.parts = [(b"\x89PNG\r\n\x1a\n" + ihdr + text_chunk(b"tEXt", "prompt", GRAPH)
                       + struct.pack(">I", length) + b"IDAT\x78\x01", 1), (self.block, blocks - 1),
                      (last + struct.pack(">I", adler) + struct.pack(">I", crc) + chunk(b"IEND", b""), 1)]
        self.size = sum(len(p) * n for p, n in self.parts)
        self.rewind()

    def rewind(self):
        self.part, self.left, self.off = 0, self.parts[0][1], 0

    def read(self, size=-1):
        if self.part == len(self.parts):
            return b""
        data = self.parts[self.part][0]
        piece = data[self.off:self.off + size]
        self.off += len(piece)
        if self.off == len(data):
            self.off, self.left = 0, self.left - 1
            if not self.left:
                self.part += 1
                self.left = self.parts[self.part][1] if self.part < len(self.parts) else 0
        return piece


def test_big_png_is_a_png():
    big = BigPng(3)
    data = big.read(10 ** 9) + big.read(10 ** 9) + big.read(10 ** 9) + big.read(10 ** 9) + big.read(10 ** 9)
    assert len(data) == big.size and big.read(10) == b""
    out = label_bytes(data, **KW)
    assert keywords(out) == ["AIGC"] and idat(out) == idat(data)
    assert zlib.decompress(idat(out)) == b"\x01" * 3 * 65535


def test_a_50_mb_png_streams_in_bounded_memory():
    big = BigPng(800)  # 52 MB, one IDAT chunk
    assert big.size > 50 * 2 ** 20
    expected = hashlib.sha256()
    head = big.read(33)
    expected.update(head + label_chunk())
    big.read(len(text_chunk(b"tEXt", "prompt", GRAPH)))  # dropped
    while piece := big.read(2 ** 20):
        expected.update(piece)
    big.rewind()
    got, total = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        reader = LabelingReader(big, "image/png", **KW)
        started = time.perf_counter()
        while piece := reader.read(256 * 1024):  # as put_stream reads
            got.update(piece)
            total += len(piece)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.hexdigest() == expected.hexdigest() and total == reader.total
    assert peak < 3 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MB"
    print(f"{total / 2 ** 20:.0f} MB in {elapsed:.2f}s under tracemalloc, peak {peak / 2 ** 20:.2f} MB")
