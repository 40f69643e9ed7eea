"""listener.protocol against every frame of the ComfyUI recordings, and against junk.

Text frames are replayed verbatim from ``tests/fixtures/comfyui/*.jsonl``;
binary frames are rebuilt from their recorded description (event type,
image type or metadata, total length, first bytes of the image).
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from listener.protocol import (
    DEFAULT_MAX_BINARY_BYTES,
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
    parse_frame,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"
TRANSCRIPTS = sorted(FIXTURES.glob("*.jsonl"))
EVENT_TYPES = (
    Status, FeatureFlags, ExecutionStart, ExecutionCached, Executing, Progress, ProgressState,
    Executed, ExecutionSuccess, ExecutionError, ExecutionInterrupted, Preview, Ignored,
)


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def text_frames(path: Path) -> list[dict]:
    return [entry["data"] for entry in load(path) if entry["kind"] == "ws_text"]


def binary_descriptions(path: Path) -> list[dict]:
    return [entry["data"] for entry in load(path) if entry["kind"] == "ws_binary"]


def rebuild_binary(desc: dict) -> tuple[bytes, int]:
    """A frame matching a recorded ``ws_binary`` description, and its image's offset.

    ``length`` is taken as the whole frame's length; the image is the recorded
    magic bytes padded with zeros up to it.
    """
    header = struct.pack(">I", desc["event_type"])
    if desc["event_type"] == 1:
        header += struct.pack(">I", desc["image_type"])
    else:
        meta = json.dumps(desc["metadata"]).encode()
        header += struct.pack(">I", len(meta)) + meta
    magic = bytes.fromhex(desc["image_magic"])
    image = magic + b"\0" * max(0, desc["length"] - len(header) - len(magic))
    return header + image, len(header)


def expected_event(message: dict):
    """The event a recorded text message must become: an independent, literal mapping."""
    kind, d = message["type"], message["data"]
    if kind == "status":
        return Status(d["status"]["exec_info"]["queue_remaining"], d.get("sid"))
    if kind == "feature_flags":
        return FeatureFlags(d)
    if kind == "execution_start":
        return ExecutionStart(d["prompt_id"], d["timestamp"])
    if kind == "execution_cached":
        return ExecutionCached(d["prompt_id"], tuple(d["nodes"]), d["timestamp"])
    if kind == "executing":
        return Executing(d.get("prompt_id"), d["node"])
    if kind == "progress":
        return Progress(d["prompt_id"], d["node"], d["value"], d["max"])
    if kind == "progress_state":
        return ProgressState(
            d["prompt_id"],
            {k: NodeState(v["node_id"], float(v["value"]), float(v["max"]), v["state"]) for k, v in d["nodes"].items()},
        )
    if kind == "executed":
        return Executed(d["prompt_id"], d["node"], tuple(ImageRef(**i) for i in d["output"]["images"]))
    if kind == "execution_success":
        return ExecutionSuccess(d["prompt_id"], d["timestamp"])
    if kind == "execution_error":
        return ExecutionError(
            d["prompt_id"], d["node_id"], d["node_type"], d["exception_type"], d["exception_message"], d["timestamp"]
        )
    if kind == "execution_interrupted":
        return ExecutionInterrupted(d["prompt_id"], d["node_id"], d["node_type"], d["timestamp"])
    raise AssertionError(f"the recordings hold an unexpected message type {kind!r}")


# --------------------------------------------------------------------------
# Every recorded frame
# --------------------------------------------------------------------------


def test_all_transcripts_present():
    assert len(TRANSCRIPTS) == 13
    assert sum(len(text_frames(p)) for p in TRANSCRIPTS) > 300
    assert sum(len(binary_descriptions(p)) for p in TRANSCRIPTS) > 40


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_every_text_frame_becomes_its_typed_event(path):
    for message in text_frames(path):
        event = parse_frame(json.dumps(message))
        assert not isinstance(event, Ignored), (message, event)
        assert event == expected_event(message)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_every_binary_frame_becomes_a_preview(path):
    for desc in binary_descriptions(path):
        frame, offset = rebuild_binary(desc)
        event = parse_frame(frame)
        assert isinstance(event, Preview), (desc, event)
        assert event.data == frame[offset:]
        assert event.data.startswith(bytes.fromhex(desc["image_magic"]))
        if desc["event_type"] == 1:
            assert event.image_type == {1: "image/jpeg", 2: "image/png"}[desc["image_type"]]
            assert event.prompt_id is None and event.node_id is None
        else:
            assert event.image_type == desc["metadata"]["image_type"]
            assert event.prompt_id == desc["metadata"]["prompt_id"]
            assert event.node_id == desc["metadata"]["node_id"]


def test_transcript_01_event_stream():
    events = [parse_frame(json.dumps(m)) for m in text_frames(FIXTURES / "01_success_progress_previews.jsonl")]
    pid = "3057bf7d-8753-4427-967a-f159bb689a15"
    assert events[0] == Status(0, "615af3dd04c54be8a3b45c12f7bf8efb")
    assert events[1] == Status(1, None)
    assert events[3] == ExecutionStart(pid, 1795582489685)
    assert events[4] == ExecutionCached(pid, (), 1795582489686)
    assert events[5] == ProgressState(pid, {"3": NodeState("3", 0.0, 1.0, "running")})
    assert events[6] == Executing(pid, "3")
    progress = [e for e in events if isinstance(e, Progress)]
    assert [(p.value, p.max, p.node) for p in progress] == [(i, 5, "3") for i in range(1, 6)]
    executed = [e for e in events if isinstance(e, Executed)]
    assert executed == [
        Executed(pid, "9", (ImageRef("probe_00001_.png", "", "output"), ImageRef("probe_00002_.png", "", "output"))),
        Executed(
            pid,
            "10",
            (
                ImageRef("ComfyUI_temp_nfyad_00001_.png", "", "temp"),
                ImageRef("ComfyUI_temp_nfyad_00002_.png", "", "temp"),
            ),
        ),
    ]
    assert events[-3:] == [ExecutionSuccess(pid, 1795582489951), Status(0, None), Executing(pid, None)]
    final_state = [e for e in events if isinstance(e, ProgressState)][-1]
    assert {k: (v.state, v.value, v.max) for k, v in final_state.nodes.items()} == {
        "3": ("finished", 5.0, 5.0),
        "9": ("finished", 1.0, 1.0),
        "10": ("finished", 1.0, 1.0),
    }


def test_transcript_04_error_then_executing_null():
    events = [parse_frame(json.dumps(m)) for m in text_frames(FIXTURES / "04_execution_error.jsonl")]
    pid = "3ce36b6b-5d1c-4a65-aebc-40a05d5de90e"
    error = next(e for e in events if isinstance(e, ExecutionError))
    assert error == ExecutionError(pid, "3", "ProbeSampler", "RuntimeError", "probe failure at step 3\n", 1795582492546)
    assert not hasattr(error, "traceback")
    # The recording shows executing/null after the error too (README fact 4 says otherwise).
    assert events[events.index(error) + 1 :] == [Status(0, None), Executing(pid, None)]


def test_transcript_05_interrupt_then_executing_null():
    events = [parse_frame(json.dumps(m)) for m in text_frames(FIXTURES / "05_interrupt_and_delete_pending.jsonl")]
    pid = "92d12fd8-65e4-42e1-89d0-e4b561186598"
    interrupted = next(e for e in events if isinstance(e, ExecutionInterrupted))
    assert interrupted == ExecutionInterrupted(pid, "3", "ProbeSampler", 1795582493735)
    i = events.index(interrupted)
    assert events[i + 1 : i + 3] == [Status(1, None), Executing(pid, None)]


def test_transcript_03_feature_flags_answer():
    flags = [parse_frame(json.dumps(m)) for m in text_frames(FIXTURES / "03_preview_metadata_client_prompt_id.jsonl")]
    answer = next(e for e in flags if isinstance(e, FeatureFlags))
    assert answer.flags["supports_preview_metadata"] is True
    assert answer.flags["max_upload_size"] == 104857600


def test_transcript_10b_reconnect_executing_has_no_prompt_id():
    events = [parse_frame(json.dumps(m)) for m in text_frames(FIXTURES / "10b_second_socket.jsonl")]
    assert events[0] == Status(1, "b4799a7d801d429e9e4d67eca7de0f70")
    assert events[1] == Executing(None, "3")


# --------------------------------------------------------------------------
# Malformed and unknown input
# --------------------------------------------------------------------------

PID = "p-1"

MALFORMED_TEXT = [
    ("", "text"),
    ("not json", "text"),
    ("{", "text"),
    ("[1, 2]", "text"),
    ('"status"', "text"),
    ("null", "text"),
    ("{}", "text"),
    ('{"type": 7, "data": {}}', "text"),
    ('{"type": null}', "text"),
    ('{"type": "status"}', "status"),
    ('{"type": "status", "data": []}', "status"),
    ('{"type": "status", "data": {}}', "status"),
    ('{"type": "status", "data": {"status": {"exec_info": {}}}}', "status"),
    ('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": "3"}}}}', "status"),
    ('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": true}}}}', "status"),
    ('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1.5}}}}', "status"),
    ('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": NaN}}}}', "status"),
    ('{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": 5}}', "status"),
    ('{"type": "feature_flags", "data": "yes"}', "feature_flags"),
    ('{"type": "execution_start", "data": {}}', "execution_start"),
    ('{"type": "execution_start", "data": {"prompt_id": 12}}', "execution_start"),
    ('{"type": "execution_start", "data": {"prompt_id": "p", "timestamp": "now"}}', "execution_start"),
    ('{"type": "execution_start", "data": {"prompt_id": "p", "timestamp": Infinity}}', "execution_start"),
    ('{"type": "execution_cached", "data": {"prompt_id": "p"}}', "execution_cached"),
    ('{"type": "execution_cached", "data": {"prompt_id": "p", "nodes": [3]}}', "execution_cached"),
    ('{"type": "execution_cached", "data": {"prompt_id": "p", "nodes": "3"}}', "execution_cached"),
    ('{"type": "executing", "data": {"prompt_id": "p"}}', "executing"),
    ('{"type": "executing", "data": {"prompt_id": "p", "node": 3}}', "executing"),
    ('{"type": "executing", "data": {"prompt_id": ["p"], "node": null}}', "executing"),
    ('{"type": "progress", "data": {"prompt_id": "p", "node": "3", "value": "1", "max": 5}}', "progress"),
    ('{"type": "progress", "data": {"prompt_id": "p", "node": "3", "value": 1}}', "progress"),
    ('{"type": "progress", "data": {"prompt_id": "p", "node": "3", "value": 1, "max": false}}', "progress"),
    ('{"type": "progress_state", "data": {"prompt_id": "p"}}', "progress_state"),
    ('{"type": "progress_state", "data": {"prompt_id": "p", "nodes": []}}', "progress_state"),
    ('{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"3": 1}}}', "progress_state"),
    ('{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"3": {"value": "x", "max": 1, "state": "running"}}}}', "progress_state"),
    ('{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"3": {"value": 0, "max": 1}}}}', "progress_state"),
    ('{"type": "progress_state", "data": {"nodes": {}}}', "progress_state"),
    ('{"type": "executed", "data": {"prompt_id": "p"}}', "executed"),
    ('{"type": "executed", "data": {"prompt_id": "p", "node": "9", "output": []}}', "executed"),
    ('{"type": "executed", "data": {"prompt_id": "p", "node": "9", "output": {"images": {}}}}', "executed"),
    ('{"type": "executed", "data": {"prompt_id": "p", "node": "9", "output": {"images": ["a.png"]}}}', "executed"),
    ('{"type": "executed", "data": {"prompt_id": "p", "node": "9", "output": {"images": [{"type": "output"}]}}}', "executed"),
    ('{"type": "execution_success", "data": {"prompt_id": null}}', "execution_success"),
    ('{"type": "execution_error", "data": {"prompt_id": "p", "node_id": "3"}}', "execution_error"),
    ('{"type": "execution_error", "data": {"prompt_id": "p", "exception_type": "E", "exception_message": 3}}', "execution_error"),
    ('{"type": "execution_interrupted", "data": {"prompt_id": "p", "node_id": 3}}', "execution_interrupted"),
]


@pytest.mark.parametrize("text,kind", MALFORMED_TEXT)
def test_malformed_text_is_ignored(text, kind):
    event = parse_frame(text)
    assert isinstance(event, Ignored), event
    assert event.kind == kind
    assert event.reason


@pytest.mark.parametrize(
    "kind",
    ["crystools.monitor", "b_preview", "executing_v2", "STATUS", "", "progress_text", "notification"],
)
def test_unknown_types_are_ignored_with_their_kind(kind):
    event = parse_frame(json.dumps({"type": kind, "data": {"prompt_id": PID}}))
    assert event == Ignored("unknown message type", kind)


def meta_frame(metadata, image=b"\xff\xd8\xff\xe0jpeg", *, declared_len=None) -> bytes:
    raw = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
    length = len(raw) if declared_len is None else declared_len
    return struct.pack(">II", 4, length) + raw + image


GOOD_META = {"node_id": "3", "prompt_id": PID, "image_type": "image/jpeg"}

MALFORMED_BINARY = [
    (b"", "binary"),
    (b"\x00", "binary"),
    (b"\x00\x00\x01", "binary"),
    (struct.pack(">I", 1), "binary:1"),
    (struct.pack(">II", 1, 1), "binary:1"),  # no image
    (struct.pack(">II", 1, 3) + b"img", "binary:1"),  # unknown image type
    (struct.pack(">I", 1) + b"\x00\x00", "binary:1"),  # truncated image type
    (struct.pack(">I", 4), "binary:4"),
    (struct.pack(">I", 4) + b"\x00", "binary:4"),
    (meta_frame(GOOD_META, declared_len=10_000), "binary:4"),  # metadata runs past the end
    (meta_frame(b"{not json"), "binary:4"),
    (meta_frame(b"\xff\xfe"), "binary:4"),
    (meta_frame([1, 2]), "binary:4"),
    (meta_frame({"node_id": "3", "prompt_id": PID}), "binary:4"),  # no image_type
    (meta_frame({**GOOD_META, "image_type": 2}), "binary:4"),
    (meta_frame({**GOOD_META, "image_type": "text/plain"}), "binary:4"),
    (meta_frame({**GOOD_META, "image_type": "image/svg+xml"}), "binary:4"),  # would be served with its scripts
    (meta_frame({**GOOD_META, "prompt_id": 5}), "binary:4"),
    (meta_frame(GOOD_META, image=b""), "binary:4"),
    (struct.pack(">I", 2) + b"raw", "binary:2"),
    (struct.pack(">I", 3) + b"text", "binary:3"),
    (struct.pack(">I", 0xFFFFFFFF) + b"x", "binary:4294967295"),
]


@pytest.mark.parametrize("frame,kind", MALFORMED_BINARY)
def test_malformed_binary_is_ignored(frame, kind):
    event = parse_frame(frame)
    assert isinstance(event, Ignored), event
    assert event.kind == kind


def test_preview_type1_png_and_bytes_like_inputs():
    frame = struct.pack(">II", 1, 2) + b"\x89PNG\r\n\x1a\npayload"
    for data in (frame, bytearray(frame), memoryview(frame)):
        assert parse_frame(data) == Preview("image/png", b"\x89PNG\r\n\x1a\npayload")


def test_preview_type4_without_ids():
    event = parse_frame(meta_frame({"image_type": "image/png"}, image=b"png"))
    assert event == Preview("image/png", b"png", None, None)


def test_oversized_binary_frames_are_ignored():
    frame = struct.pack(">II", 1, 1) + b"\xff" * 100
    assert isinstance(parse_frame(frame, max_binary_bytes=108), Preview)
    event = parse_frame(frame, max_binary_bytes=107)
    assert isinstance(event, Ignored) and "exceeds" in event.reason
    big = struct.pack(">II", 1, 1) + bytes(DEFAULT_MAX_BINARY_BYTES)
    assert isinstance(parse_frame(big), Ignored)


@pytest.mark.parametrize("data", [None, 5, 1.5, ["x"], {"type": "status"}, object()])
def test_non_frame_inputs_are_ignored(data):
    assert isinstance(parse_frame(data), Ignored)  # type: ignore[arg-type]


def test_lenient_where_comfyui_is_loose():
    # Integral floats are accepted as ints; extra fields are ignored; non-image outputs dropped.
    event = parse_frame(
        json.dumps({"type": "progress", "data": {"value": 2.0, "max": 4.0, "prompt_id": PID, "node": "3", "x": 1}})
    )
    assert event == Progress(PID, "3", 2, 4)
    event = parse_frame(
        json.dumps(
            {
                "type": "executed",
                "data": {"node": "7", "prompt_id": PID, "output": {"text": ["hi"], "gifs": [{"filename": "a.gif"}]}},
            }
        )
    )
    assert event == Executed(PID, "7", ())
    event = parse_frame(json.dumps({"type": "execution_success", "data": {"prompt_id": PID}}))
    assert event == ExecutionSuccess(PID, None)
    event = parse_frame(json.dumps({"type": "executing", "data": {"node": None}}))
    assert event == Executing(None, None)


def test_events_are_frozen():
    event = parse_frame(json.dumps({"type": "executing", "data": {"node": "3", "prompt_id": PID}}))
    with pytest.raises(AttributeError):
        event.node = "4"  # type: ignore[misc]


# --------------------------------------------------------------------------
# Fuzzing: parse_frame must never raise
# --------------------------------------------------------------------------


def _random_json(rng: random.Random, depth: int = 0):
    choices = ["int", "float", "str", "bool", "null", "list", "dict"] if depth < 4 else ["int", "str", "null"]
    pick = rng.choice(choices)
    if pick == "int":
        return rng.choice([0, 1, -1, 2**64, rng.randint(-1000, 1000)])
    if pick == "float":
        return rng.choice([0.5, -1.0, 1e308, float("nan"), float("inf")])
    if pick == "str":
        return rng.choice(["", "3", "p", "\ud800", "x" * 50, "null"])
    if pick == "bool":
        return rng.random() < 0.5
    if pick == "null":
        return None
    if pick == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["prompt_id", "node", "node_id", "value", "max", "nodes", "status", "exec_info", "queue_remaining",
            "output", "images", "filename", "type", "timestamp", "state", "sid", "exception_type"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_fuzz_random_bytes_and_strings_never_raise():
    rng = random.Random(1234)
    alphabet = '{}[]":,0123456789abcdefnulltrue \\u\x00\x7f\u00e9\ud83d'
    for _ in range(3000):
        raw = rng.randbytes(rng.randint(0, 64))
        assert isinstance(parse_frame(raw), EVENT_TYPES)
        typed = struct.pack(">I", rng.choice([1, 2, 3, 4, 5])) + raw
        assert isinstance(parse_frame(typed), EVENT_TYPES)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert isinstance(parse_frame(text), EVENT_TYPES)


def test_fuzz_structured_messages_never_raise():
    rng = random.Random(99)
    kinds = ["status", "feature_flags", "execution_start", "execution_cached", "executing", "progress",
             "progress_state", "executed", "execution_success", "execution_error", "execution_interrupted", "x"]
    for _ in range(3000):
        message = {"type": rng.choice(kinds), "data": _random_json(rng)}
        text = json.dumps(message)
        assert isinstance(parse_frame(text), EVENT_TYPES)
        meta = json.dumps(_random_json(rng)).encode()
        frame = struct.pack(">II", 4, rng.choice([len(meta), len(meta) + 1, 0, 2**32 - 1])) + meta + b"img"
        assert isinstance(parse_frame(frame), EVENT_TYPES)


def test_fuzz_mutated_recorded_frames_never_raise():
    rng = random.Random(7)
    texts = [json.dumps(m) for p in TRANSCRIPTS for m in text_frames(p)]
    frames = [rebuild_binary(d)[0][:2048] for p in TRANSCRIPTS for d in binary_descriptions(p)[:2]]
    for _ in range(2000):
        text = rng.choice(texts)
        cut = rng.randint(0, len(text))
        mutated = text[:cut] + rng.choice(["", "}", '"', "null", "\x00"]) + text[cut + rng.randint(0, 3):]
        assert isinstance(parse_frame(mutated), EVENT_TYPES)
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        assert isinstance(parse_frame(bytes(frame[: rng.randint(0, len(frame))])), EVENT_TYPES)
