"""The fake ComfyUI against the recordings, over real HTTP (requests) and WebSocket (websocket-client).

Where a test replays a transcript, it submits the recorded graph and checks
that the fake sends the same messages in the same order with the same
fields (same keys, same JSON types) as the real server did.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pytest
import requests
import websocket

from listener.protocol import Preview, parse_frame
from tests.fakes.comfyui import JPEG_PREVIEW, FakeComfy, image_size, make_png

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"
REPO = Path(__file__).resolve().parents[2]
CLOSED = object()


# --------------------------------------------------------------------------
# Recordings
# --------------------------------------------------------------------------


def transcript(name: str) -> list[dict]:
    path = next(FIXTURES.glob(f"{name}*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recorded_frames(name: str) -> list:
    """The frames the recorded socket received: dicts for text, descriptions tagged 'binary' for binary."""
    frames = []
    for entry in transcript(name):
        if entry["kind"] == "ws_text":
            frames.append(entry["data"])
        elif entry["kind"] == "ws_binary":
            frames.append({"binary": entry["data"]})
    return frames


def recorded_http(name: str, method: str, path: str) -> list[dict]:
    return [e["data"] for e in transcript(name) if e["kind"] == "http" and e["data"]["method"] == method
            and e["data"]["path"] == path]


def label(frame) -> str:
    if isinstance(frame, bytes):
        return f"binary:{struct.unpack('>I', frame[:4])[0]}"
    if "binary" in frame:
        return f"binary:{frame['binary']['event_type']}"
    return frame["type"]


def skeleton(value):
    """The shape of a JSON value: keys in order, list lengths, and JSON types (int and float apart)."""
    if isinstance(value, dict):
        return {key: skeleton(item) for key, item in value.items()}
    if isinstance(value, list):
        return [skeleton(item) for item in value]
    if value is None:
        return None
    return type(value).__name__


def same_shape(a, b) -> bool:
    return json.dumps(skeleton(a)) == json.dumps(skeleton(b))


def assert_same_messages(received: list, recorded: list) -> None:
    assert [label(f) for f in received] == [label(f) for f in recorded]
    for got, want in zip(received, recorded):
        if isinstance(got, bytes):
            event = parse_frame(got)
            assert isinstance(event, Preview) and event.data == JPEG_PREVIEW
            if label(got) == "binary:4":
                meta_keys = list(json.loads(got[8 : 8 + struct.unpack(">I", got[4:8])[0]]))
                assert meta_keys == list(want["binary"]["metadata"])
        else:
            assert same_shape(got, want), (got, want)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


class Client:
    """A websocket-client socket that collects frames (JSON dicts for text, bytes for binary)."""

    def __init__(self, fake: FakeComfy, client_id: str | None = None, *, feature_flags: bool = False):
        self.client_id = client_id or uuid.uuid4().hex
        self.ws = websocket.create_connection(fake.ws_url(self.client_id), timeout=5)
        if feature_flags:
            self.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))

    def recv(self, timeout: float = 5.0):
        self.ws.settimeout(timeout)
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketException, OSError):
            return CLOSED
        if frame == "" and not self.ws.connected:
            return CLOSED
        return frame if isinstance(frame, bytes) else json.loads(frame)

    def until(self, predicate, timeout: float = 10.0) -> list:
        frames, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            assert frame is not CLOSED, f"socket closed after {[label(f) for f in frames]}"
            if frame is None:
                break
            frames.append(frame)
            if predicate(frame):
                return frames
        raise AssertionError(f"condition not met; got {[label(f) for f in frames]}")

    def until_done(self, prompt_id: str, timeout: float = 10.0) -> list:
        return self.until(lambda f: is_msg(f, "executing") and f["data"]["node"] is None
                          and f["data"].get("prompt_id") == prompt_id, timeout)

    def drain(self, seconds: float) -> list:
        frames, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = self.recv(left)
            if frame is None or frame is CLOSED:
                break
            frames.append(frame)
        return frames

    def close(self) -> None:
        self.ws.close()


def is_msg(frame, kind: str) -> bool:
    return isinstance(frame, dict) and frame.get("type") == kind


def texts(frames: list, kind: str) -> list[dict]:
    return [f["data"] for f in frames if is_msg(f, kind)]


def probe_graph(*, steps: int = 3, seed: int = 11, batch: int = 2, fail_at: int = 0, width: int = 64,
                height: int = 48) -> dict:
    return {
        "3": {"class_type": "ProbeSampler", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                       "steps": steps, "seed": seed, "delay": 0.05,
                                                       "fail_at_step": fail_at}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "probe"}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def txt2img_graph(*, steps: int = 3, seed: int = 5, width: int = 64, height: int = 32, batch: int = 1,
                  prefix: str = "gw") -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def recorded_history_entry(name: str) -> dict:
    exchange = next(e for e in recorded_http_all(name) if e["method"] == "GET" and e["path"].startswith("/history/")
                    and e["response"])
    return next(iter(exchange["response"].values()))


def recorded_http_all(name: str) -> list[dict]:
    return [e["data"] for e in transcript(name) if e["kind"] == "http"]


def recorded_graph(name: str, index: int = 0) -> dict:
    return recorded_http(name, "POST", "/prompt")[index]["request"]["prompt"]


def submit(fake: FakeComfy, graph: dict, client_id: str | None = None, **extra) -> dict:
    body = {"prompt": graph, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    response = requests.post(f"{fake.base_url}/prompt", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def get_json(fake: FakeComfy, path: str, *, expect: int = 200, **params):
    response = requests.get(f"{fake.base_url}{path}", params=params, timeout=5)
    assert response.status_code == expect, response.text
    return response.json()


def history(fake: FakeComfy, prompt_id: str) -> dict:
    return get_json(fake, f"/history/{prompt_id}")


def wait_for(condition, timeout: float = 5.0, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def check_png(data: bytes) -> tuple[int, int]:
    """Validate a PNG's structure and CRCs; return its size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append(kind)
        if kind == b"IDAT":
            idat += payload
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (depth, color) == (8, 2)
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


@pytest.fixture
def fake():
    with FakeComfy(step_delay=0.01) as server:
        yield server


@pytest.fixture
def clients(fake):
    opened: list[Client] = []

    def connect(client_id: str | None = None, **kwargs) -> Client:
        client = Client(fake, client_id, **kwargs)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


# --------------------------------------------------------------------------
# Transcript scenarios
# --------------------------------------------------------------------------


def test_success_run_matches_transcript_01(fake, clients):
    ws = clients()
    hello = ws.recv()
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": ws.client_id}}

    answer = submit(fake, recorded_graph("01"), ws.client_id)
    assert list(answer) == ["prompt_id", "number", "node_errors"]
    assert answer["number"] == 0 and answer["node_errors"] == {}
    pid = answer["prompt_id"]
    frames = ws.until_done(pid)
    assert_same_messages(frames, recorded_frames("01")[1:])
    assert {f["data"]["prompt_id"] for f in frames if isinstance(f, dict) and "prompt_id" in f["data"]} == {pid}
    assert [p["value"] for p in texts(frames, "progress")] == [1, 2, 3, 4, 5]

    entry = history(fake, pid)
    assert same_shape(entry[pid], recorded_history_entry("01"))
    assert entry[pid]["prompt"][:2] == [0, pid] and entry[pid]["prompt"][4] == ["9", "10"]
    assert entry[pid]["status"]["status_str"] == "success"
    assert entry[pid]["outputs"]["9"]["images"][0] == {"filename": "probe_00001_.png", "subfolder": "", "type": "output"}

    images = entry[pid]["outputs"]["9"]["images"] + entry[pid]["outputs"]["10"]["images"]
    bodies = []
    for image in images:
        response = requests.get(f"{fake.base_url}/view", params=image, timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["Content-Disposition"] == f'filename="{image["filename"]}"'
        assert check_png(response.content) == (64, 48)
        assert response.content == fake.output_bytes(image["filename"], image["subfolder"], image["type"])
        bodies.append(response.content)
    assert bodies[0] != bodies[1]  # the batch index changes the pixels
    assert bodies[0] == bodies[2]  # the saved and the previewed copy of image 0
    assert fake.view_requests == 4
    assert get_json(fake, "/queue") == {"queue_running": [], "queue_pending": []}


def test_identical_rerun_is_cached_like_transcript_02(fake, clients):
    ws = clients()
    ws.recv()
    first = submit(fake, recorded_graph("01"), ws.client_id)["prompt_id"]
    first_frames = ws.until_done(first)
    second = submit(fake, recorded_graph("02"), ws.client_id)
    assert second["number"] == 1
    frames = ws.until_done(second["prompt_id"])
    assert_same_messages(frames, recorded_frames("02")[1:])
    assert texts(frames, "execution_cached")[0]["nodes"] == ["3", "9", "10"]
    assert [e["output"] for e in texts(frames, "executed")] == [e["output"] for e in texts(first_frames, "executed")]
    entry = history(fake, second["prompt_id"])[second["prompt_id"]]
    assert entry["outputs"]["9"]["images"][1]["filename"] == "probe_00002_.png"

    # A different seed is not cached, and the counters go on.
    third = submit(fake, probe_graph(seed=99), ws.client_id)["prompt_id"]
    frames = ws.until_done(third)
    assert texts(frames, "execution_cached")[0]["nodes"] == []
    assert texts(frames, "executed")[0]["output"]["images"][0]["filename"] == "probe_00003_.png"


def test_preview_metadata_and_client_prompt_ids_like_transcript_03(fake, clients):
    recorded = recorded_frames("03")
    ws = clients(feature_flags=True)
    assert ws.recv() == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                     "sid": ws.client_id}}
    assert ws.recv() == recorded[1]  # the server's feature flags, verbatim

    chosen = str(uuid.uuid4())
    answer = submit(fake, recorded_graph("03", 0), ws.client_id, prompt_id=chosen)
    assert answer["prompt_id"] == chosen
    frames = ws.until_done(chosen)
    end_of_first = next(i for i, f in enumerate(recorded) if label(f) == "executing" and f["data"]["node"] is None)
    assert_same_messages(frames, recorded[2 : end_of_first + 1])
    previews = [parse_frame(f) for f in frames if isinstance(f, bytes)]
    assert previews and all(p.prompt_id == chosen and p.node_id == "3" and p.image_type == "image/jpeg"
                            for p in previews)

    again = submit(fake, recorded_graph("03", 1), ws.client_id, prompt_id=chosen)
    odd = submit(fake, recorded_graph("03", 2), ws.client_id, prompt_id="not-a-uuid")
    assert (again["prompt_id"], odd["prompt_id"]) == (chosen, "not-a-uuid")
    assert odd["number"] == again["number"] + 1 == answer["number"] + 2
    ws.until_done(chosen)
    ws.until_done("not-a-uuid")
    assert [p["prompt_id"] for p in fake.prompts] == [chosen, chosen, "not-a-uuid"]
    assert history(fake, chosen)[chosen]["prompt"][2]["3"]["inputs"]["seed"] == 13  # the re-use overwrote it


def test_execution_error_like_transcript_04(fake, clients):
    ws = clients()
    ws.recv()
    pid = submit(fake, recorded_graph("04"), ws.client_id)["prompt_id"]
    frames = ws.until_done(pid)
    recorded = recorded_frames("04")
    assert_same_messages(frames, recorded[1:])
    error = texts(frames, "execution_error")[0]
    want = texts(recorded, "execution_error")[0]
    for key in ("node_id", "node_type", "executed", "exception_message", "exception_type", "current_inputs",
                "current_outputs"):
        assert error[key] == want[key], key
    assert [label(f) for f in frames[-3:]] == ["execution_error", "status", "executing"]

    entry = history(fake, pid)[pid]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_error"]
    job = get_json(fake, f"/api/jobs/{pid}")
    assert job["status"] == "failed" and job["execution_error"]["exception_type"] == "RuntimeError"


def test_fail_next_fails_any_sampler(fake, clients):
    ws = clients()
    ws.recv()
    fake.fail_next(at_step=2, message="CUDA out of memory", exception_type="torch.OutOfMemoryError")
    graph = txt2img_graph(steps=4)
    pid = submit(fake, graph, ws.client_id)["prompt_id"]
    frames = ws.until_done(pid)
    error = texts(frames, "execution_error")[0]
    assert (error["node_id"], error["node_type"]) == ("3", "KSampler")
    assert error["exception_message"] == "CUDA out of memory\n"
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert sorted(error["executed"]) == ["4", "5", "6", "7"]
    assert [p["value"] for p in texts(frames, "progress")] == [1]
    assert history(fake, pid)[pid]["status"]["status_str"] == "error"

    # Consumed: the same graph now succeeds, and the nodes that ran before the failure are cached.
    retry = submit(fake, graph, ws.client_id)["prompt_id"]
    frames = ws.until_done(retry)
    assert sorted(texts(frames, "execution_cached")[0]["nodes"]) == ["4", "5", "6", "7"]
    assert texts(frames, "execution_success")


def test_delete_pending_and_interrupt_running_like_transcript_05(fake, clients):
    ws = clients()
    ws.recv()
    running = submit(fake, probe_graph(steps=200, seed=31), ws.client_id)["prompt_id"]
    deleted = submit(fake, probe_graph(steps=2, seed=32), ws.client_id)["prompt_id"]
    survivor = submit(fake, probe_graph(steps=2, seed=33), ws.client_id)["prompt_id"]
    ws.until(lambda f: is_msg(f, "progress") and f["data"]["value"] == 2)

    queue = get_json(fake, "/queue")
    assert [q[1] for q in queue["queue_running"]] == [running]
    assert [q[1] for q in queue["queue_pending"]] == [deleted, survivor]
    assert same_shape(queue["queue_running"][0], recorded_http("05", "GET", "/queue")[0]["response"]["queue_running"][0])

    response = requests.post(f"{fake.base_url}/queue", json={"delete": [deleted]}, timeout=5)
    assert (response.status_code, response.content, response.headers.get("Content-Type")) == (200, b"", None)
    ws.until(lambda f: is_msg(f, "status") and f["data"]["status"]["exec_info"]["queue_remaining"] == 2)

    # An interrupt naming a prompt that is not running does nothing.
    requests.post(f"{fake.base_url}/interrupt", json={"prompt_id": survivor}, timeout=5)
    step = ws.until(lambda f: is_msg(f, "progress"))[-1]["data"]["value"]
    ws.until(lambda f: is_msg(f, "progress") and f["data"]["value"] == step + 2)

    assert requests.post(f"{fake.base_url}/interrupt", json={"prompt_id": running}, timeout=5).status_code == 200
    frames = ws.until_done(running)
    assert [label(f) for f in frames[-3:]] == ["execution_interrupted", "status", "executing"]
    interrupted = texts(frames, "execution_interrupted")[0]
    assert same_shape(interrupted, texts(recorded_frames("05"), "execution_interrupted")[0])
    assert (interrupted["node_id"], interrupted["node_type"], interrupted["executed"]) == ("3", "ProbeSampler", [])

    frames = ws.until_done(survivor)
    assert texts(frames, "execution_success")
    assert history(fake, deleted) == {}
    entry = history(fake, running)[running]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert get_json(fake, "/queue") == {"queue_running": [], "queue_pending": []}


def test_clear_queue_and_global_interrupt(fake, clients):
    ws = clients()
    ws.recv()
    running = submit(fake, probe_graph(steps=200), ws.client_id)["prompt_id"]
    pending = [submit(fake, probe_graph(seed=s), ws.client_id)["prompt_id"] for s in (1, 2)]
    ws.until(lambda f: is_msg(f, "progress"))
    requests.post(f"{fake.base_url}/queue", json={"clear": True}, timeout=5)
    requests.post(f"{fake.base_url}/interrupt", timeout=5)  # no body: interrupt whatever runs
    frames = ws.until_done(running)
    assert texts(frames, "execution_interrupted")
    assert all(history(fake, p) == {} for p in pending)


def test_validation_errors_match_transcript_06(fake):
    for exchange in recorded_http("06", "POST", "/prompt"):
        response = requests.post(f"{fake.base_url}/prompt", json=exchange["request"], timeout=5)
        assert response.status_code == exchange["status"] == 400
        assert response.headers["Content-Type"] == exchange["content_type"]
        assert response.json() == exchange["response"]
    # Every POST /prompt took a number, rejected ones included (03 ends at 4, 06 uses 9-13, 07 gets 14).
    assert submit(fake, probe_graph())["number"] == 5
    assert fake.prompts[0]["number"] == 5


def node_error(fake: FakeComfy, graph: dict) -> dict:
    response = requests.post(f"{fake.base_url}/prompt", json={"prompt": graph}, timeout=5)
    assert response.status_code == 400, response.text
    return response.json()


@pytest.mark.parametrize("node,field,value,kind,message", [
    ("3", "steps", 0, "value_smaller_than_min", "Value 0 smaller than min of 1"),
    ("3", "cfg", 100.5, "value_bigger_than_max", "Value 100.5 bigger than max of 100.0"),
    ("3", "denoise", -0.1, "value_smaller_than_min", "Value -0.1 smaller than min of 0.0"),
    ("5", "width", 20000, "value_bigger_than_max", "Value 20000 bigger than max of 16384"),
    ("5", "batch_size", 0, "value_smaller_than_min", "Value 0 smaller than min of 1"),
    ("3", "steps", "many", "invalid_input_type", "Failed to convert an input value to a INT value"),
])
def test_value_errors_on_real_node_classes(fake, node, field, value, kind, message):
    graph = txt2img_graph()
    graph[node]["inputs"][field] = value
    body = node_error(fake, graph)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    [error] = body["node_errors"][node]["errors"]
    assert (error["type"], error["message"], error["extra_info"]["input_name"]) == (kind, message, field)
    assert body["node_errors"][node]["dependent_outputs"] == ["9"]


def test_combo_errors(fake):
    graph = txt2img_graph()
    graph["3"]["inputs"]["sampler_name"] = "warp_drive"
    [error] = node_error(fake, graph)["node_errors"]["3"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "sampler_name: 'warp_drive' not in (list of length 40)"
    assert error["extra_info"]["input_config"] is None  # long lists are not echoed back

    graph = txt2img_graph()
    graph["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    [error] = node_error(fake, graph)["node_errors"]["4"]["errors"]
    assert error["details"] == "ckpt_name: 'missing.safetensors' not in ['v1-5-pruned-emaonly.safetensors']"
    assert error["extra_info"]["input_config"][0] == ["v1-5-pruned-emaonly.safetensors"]


def test_structural_errors(fake):
    assert node_error(fake, {"5": {"class_type": "EmptyLatentImage", "inputs": {
        "width": 64, "height": 64, "batch_size": 1}}})["error"] == {
        "type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}
    assert node_error(fake, {"1": {"inputs": {}}})["error"]["message"] == \
        "Cannot execute because a node is missing the class_type property."

    mismatch = txt2img_graph()
    mismatch["8"]["inputs"]["samples"] = ["4", 0]  # MODEL into a LATENT input
    [error] = node_error(fake, mismatch)["node_errors"]["8"]["errors"]
    assert error["type"] == "return_type_mismatch"
    assert error["details"] == "samples, received_type(MODEL) mismatch input_type(LATENT)"

    dangling = probe_graph()
    del dangling["10"]
    dangling["9"]["inputs"]["images"] = ["42", 0]
    body = node_error(fake, dangling)
    assert body["node_errors"]["9"]["errors"][0]["type"] == "exception_during_validation"

    # A link is type-checked, never compared with min/max.
    linked = probe_graph()
    linked["4"] = {"class_type": "ProbeSampler", "inputs": {**linked["3"]["inputs"], "steps": ["3", 0]}}
    linked["9"]["inputs"]["images"] = ["4", 0]
    del linked["10"]
    [error] = node_error(fake, linked)["node_errors"]["4"]["errors"]
    assert error["type"] == "return_type_mismatch" and "received_value" not in error["extra_info"]


def test_partially_valid_prompt_runs_its_valid_outputs(fake, clients):
    ws = clients()
    ws.recv()
    graph = probe_graph()
    graph["11"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad/../../x"}}
    graph["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["99", 0, 1]}}
    answer = submit(fake, graph, ws.client_id)
    assert answer["node_errors"]["12"]["errors"][0]["type"] == "bad_linked_input"
    frames = ws.until_done(answer["prompt_id"])
    assert "12" not in {e["node"] for e in texts(frames, "executed")}  # only the valid outputs run
    assert texts(frames, "execution_error")[0]["node_id"] == "11"  # saving outside the folder fails at run time


def test_upload_and_load_image_like_transcript_07(fake, clients):
    ws = clients()
    ws.recv()
    picture = make_png(20, 12, seed=3)
    response = requests.post(f"{fake.base_url}/upload/image", files={"image": ("input_probe.png", picture)},
                             timeout=5)
    recorded_upload = recorded_http("07", "POST", "/upload/image")[0]
    assert response.status_code == 200
    assert response.headers["Content-Type"] == recorded_upload["content_type"]
    assert response.json() == recorded_upload["response"]
    assert fake.uploads == {"input_probe.png": picture}
    combo = get_json(fake, "/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"]
    assert combo == [["input_probe.png"], {"image_upload": True}]

    pid = submit(fake, recorded_graph("07"), ws.client_id)["prompt_id"]
    frames = ws.until_done(pid)
    assert_same_messages(frames, recorded_frames("07")[1:])
    saved = texts(frames, "executed")[0]["output"]["images"]
    assert saved == [{"filename": "img2img_00001_.png", "subfolder": "", "type": "output"}]
    assert image_size(fake.output_bytes("img2img_00001_.png")) == (20, 12)
    check_png(fake.output_bytes("img2img_00001_.png"))

    view = requests.get(f"{fake.base_url}/view", params={"filename": "input_probe.png", "type": "input"}, timeout=5)
    assert (view.status_code, view.content) == (200, picture)
    for params, status in (({"filename": "nope.png"}, 404), ({"filename": "../secret.png"}, 400),
                           ({"filename": "x.png", "type": "weird"}, 400),
                           ({"filename": "x.png", "subfolder": "../.."}, 403)):
        response = requests.get(f"{fake.base_url}/view", params=params, timeout=5)
        assert (response.status_code, response.content) == (status, b"")


def test_upload_naming_rules(fake):
    def upload(name: str, data: bytes, **form) -> dict:
        response = requests.post(f"{fake.base_url}/upload/image", files={"image": (name, data)}, data=form,
                                 timeout=5)
        assert response.status_code == 200
        return response.json()

    first, second = make_png(8, 8, seed=1), make_png(8, 8, seed=2)
    assert upload("x.png", first)["name"] == "x.png"
    assert upload("x.png", first)["name"] == "x.png"  # the same bytes again: not stored twice
    assert upload("x.png", second)["name"] == "x (1).png"
    assert upload("x.png", make_png(9, 9))["name"] == "x (2).png"
    assert upload("x.png", second, overwrite="true")["name"] == "x.png"
    assert upload("y.png", first, subfolder="clips") == {"name": "y.png", "subfolder": "clips", "type": "input"}
    assert fake.uploads["x.png"] == second and fake.uploads["clips/y.png"] == first
    assert requests.post(f"{fake.base_url}/upload/image", files={"image": ("../z.png", first)},
                         timeout=5).status_code == 400
    assert requests.post(f"{fake.base_url}/upload/image", data={"x": "1"}, timeout=5).status_code == 400

    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "never-uploaded.png"}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    [error] = node_error(fake, graph)["node_errors"]["1"]["errors"]
    assert (error["type"], error["details"]) == ("custom_validation_failed",
                                                "image - Invalid image file: never-uploaded.png")


def test_events_only_reach_the_submitting_client_like_transcript_08(fake, clients):
    bystander, owner = clients(), clients()
    bystander.recv(), owner.recv()
    pid = submit(fake, probe_graph(), owner.client_id)["prompt_id"]
    owner.until_done(pid)
    seen = bystander.drain(0.1)
    assert [label(f) for f in seen] == [label(f) for f in recorded_frames("08")[1:]] == ["status"] * 3
    assert [f["data"]["status"]["exec_info"]["queue_remaining"] for f in seen] == [1, 1, 0]

    # Without a client_id, execution_start/success and executing-null go nowhere; the rest is broadcast.
    anonymous = submit(fake, probe_graph(seed=77))["prompt_id"]
    wait_for(lambda: history(fake, anonymous))
    seen = bystander.drain(0.1)
    kinds = {label(f) for f in seen}
    assert {"progress", "executed", "binary:1"} <= kinds
    assert not kinds & {"execution_start", "execution_success"}
    assert not [f for f in seen if is_msg(f, "executing") and f["data"]["node"] is None]


def test_same_client_id_semantics_like_transcripts_10(fake, clients):
    first = clients()
    first.recv()
    pid = submit(fake, probe_graph(steps=60), first.client_id)["prompt_id"]
    first.until(lambda f: is_msg(f, "progress") and f["data"]["value"] == 2)

    second = clients(first.client_id)
    assert second.recv() == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}},
                                                        "sid": first.client_id}}
    assert second.recv() == recorded_frames("10b")[1] == {"type": "executing", "data": {"node": "3"}}
    taken_over = texts(second.until(lambda f: is_msg(f, "progress") and f["data"]["value"] == 20), "progress")
    # From the moment the second socket registered, the first one gets nothing more.
    assert all(p["value"] < taken_over[0]["value"] for p in texts(first.drain(0.05), "progress"))
    assert fake.connected_client_ids() == [first.client_id]

    first.close()
    wait_for(lambda: fake.connected_client_ids() == [])
    second.drain(0.05)  # frames already in flight when the first socket closed
    wait_for(lambda: history(fake, pid))
    assert second.drain(0.1) == []  # alive, but unregistered: nothing, not even status
    assert second.ws.connected


def test_jobs_api_like_transcript_11(fake, clients):
    exchanges = recorded_http_all("11")
    recorded = {e["path"]: e for e in exchanges}
    recorded_by_status = {e["response"].get("status"): e for e in exchanges if "/api/jobs/" in e["path"]}
    ws = clients()
    ws.recv()
    running = submit(fake, probe_graph(steps=30), ws.client_id)["prompt_id"]
    pending = submit(fake, probe_graph(steps=2, seed=62), ws.client_id)["prompt_id"]
    ws.until(lambda f: is_msg(f, "progress"))

    job = get_json(fake, f"/api/jobs/{running}")
    assert job["status"] == "in_progress" and same_shape(job, recorded_by_status["in_progress"]["response"])
    job = get_json(fake, f"/api/jobs/{pending}")
    assert job["status"] == "pending" and same_shape(job, recorded_by_status["pending"]["response"])
    listing = get_json(fake, "/api/jobs", status="pending,in_progress", limit=10)
    assert [j["id"] for j in listing["jobs"]] == [pending, running]
    assert same_shape(listing, recorded["/api/jobs?status=pending,in_progress&limit=10"]["response"])
    missing = requests.get(f"{fake.base_url}/api/jobs/{uuid.uuid4()}", timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"error": "Job not found"})
    assert requests.get(f"{fake.base_url}/api/jobs", params={"status": "bogus"}, timeout=5).status_code == 400

    ws.until_done(pending)
    job = get_json(fake, f"/api/jobs/{running}")
    assert job["status"] == "completed" and same_shape(job, recorded_by_status["completed"]["response"])
    assert job["outputs_count"] == 4 and job["preview_output"]["nodeId"] == "9"
    assert job["execution_start_time"] <= job["execution_end_time"]
    everything = get_json(fake, "/api/jobs")
    assert {j["id"]: j["status"] for j in everything["jobs"]} == {running: "completed", pending: "completed"}


def test_restart_loses_queue_like_transcript_12(fake, clients):
    ws = clients()
    ws.recv()
    done = submit(fake, probe_graph(steps=1), ws.client_id)["prompt_id"]
    ws.until_done(done)
    running = submit(fake, probe_graph(steps=400, seed=71), ws.client_id)["prompt_id"]
    pending = submit(fake, probe_graph(steps=3, seed=72), ws.client_id)["prompt_id"]
    ws.until(lambda f: is_msg(f, "progress"))
    port = fake.port

    fake.restart(downtime=0.3, wait=False)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.base_url}/queue", timeout=1)
    ws.drain(1.0)  # whatever was in flight, then the drop
    assert ws.recv(0.5) is CLOSED

    wait_for(lambda: _answers(fake), timeout=3)
    assert fake.port == port
    assert get_json(fake, "/queue") == recorded_http("12", "GET", "/queue")[-1]["response"]
    for prompt_id in (done, running, pending):
        assert history(fake, prompt_id) == {}
        missing = requests.get(f"{fake.base_url}/api/jobs/{prompt_id}", timeout=5)
        assert (missing.status_code, missing.json()) == (404, {"error": "Job not found"})
    with pytest.raises(FileNotFoundError):
        fake.output_bytes("probe_00001_.png")
    assert submit(fake, probe_graph(steps=1))["number"] == 0  # the counter starts again
    assert [p["prompt_id"] for p in fake.prompts][:3] == [done, running, pending]  # the test's log survives


def _answers(fake: FakeComfy) -> bool:
    try:
        return requests.get(f"{fake.base_url}/queue", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_restart_blocking_can_keep_files(fake, clients):
    ws = clients()
    ws.recv()
    pid = submit(fake, probe_graph(steps=1), ws.client_id)["prompt_id"]
    ws.until_done(pid)
    fake.restart(keep_files=True)
    assert _answers(fake)
    assert check_png(fake.output_bytes("probe_00001_.png")) == (64, 48)
    assert history(fake, pid) == {}
    again = clients()
    assert again.recv()["data"]["sid"] == again.client_id


def test_discovery_like_transcript_09(fake, clients):
    recorded = {e["path"]: e for e in (x["data"] for x in transcript("09") if x["kind"] == "http")}
    assert get_json(fake, "/object_info/ProbeSampler") == recorded["/object_info/ProbeSampler"]["response"]
    loader = get_json(fake, "/object_info/CheckpointLoaderSimple")
    want = recorded["/object_info/CheckpointLoaderSimple"]["response"]
    want["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = ["v1-5-pruned-emaonly.safetensors"]
    assert loader == want
    assert get_json(fake, "/models") == recorded["/models"]["response"]
    assert get_json(fake, "/models/checkpoints") == ["v1-5-pruned-emaonly.safetensors"]
    assert get_json(fake, "/models/loras") == []
    assert requests.get(f"{fake.base_url}/models/nope", timeout=5).status_code == 404
    stats = get_json(fake, "/system_stats")
    assert same_shape(stats, recorded["/system_stats"]["response"])
    assert stats["system"]["comfyui_version"] == "0.8.0"
    assert get_json(fake, "/object_info/NoSuchNode") == {}
    assert get_json(fake, "/api/object_info/KSampler")  # every route is also under /api

    everything = get_json(fake, "/object_info")
    assert set(everything) == {"CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "EmptyLatentImage",
                               "KSampler", "VAEDecode", "VAEEncode", "SaveImage", "PreviewImage", "LoadImage",
                               "ImageInvert", "ProbeSampler"}
    ksampler = everything["KSampler"]["input"]["required"]
    assert {"euler", "euler_ancestral", "dpmpp_2m"} <= set(ksampler["sampler_name"][0])
    assert {"normal", "karras"} <= set(ksampler["scheduler"][0])
    assert ksampler["steps"][1]["min"] == 1 and ksampler["steps"][1]["max"] == 10000
    assert ksampler["denoise"][1]["min"] == 0.0 and ksampler["denoise"][1]["max"] == 1.0
    width = everything["EmptyLatentImage"]["input"]["required"]["width"][1]
    assert (width["min"], width["max"], width["step"]) == (16, 16384, 8)
    assert everything["SaveImage"]["output_node"] is True and everything["VAEDecode"]["output"] == ["IMAGE"]
    assert all(list(info)[:11] == list(want["CheckpointLoaderSimple"])[:11] for info in everything.values())

    ws = clients()
    ws.recv()
    ids = []
    for seed in (1, 2, 3):
        ids.append(submit(fake, probe_graph(steps=1, seed=seed), ws.client_id)["prompt_id"])
        ws.until_done(ids[-1])
    assert list(get_json(fake, "/history", max_items=2)) == ids[1:]
    assert list(get_json(fake, "/history")) == ids


def test_txt2img_pipeline_saves_real_pngs(fake, clients):
    ws = clients()
    ws.recv()
    pid = submit(fake, txt2img_graph(steps=4, width=48, height=32, batch=3, prefix="gw/run"), ws.client_id)[
        "prompt_id"]
    frames = ws.until_done(pid)
    assert [e["node"] for e in texts(frames, "executing") if e["node"]] == ["4", "5", "7", "6", "3", "8", "9"]
    assert [(p["node"], p["value"], p["max"]) for p in texts(frames, "progress")] == [("3", i, 4) for i in range(1, 5)]
    images = texts(frames, "executed")[0]["output"]["images"]
    assert [(i["filename"], i["subfolder"]) for i in images] == [(f"run_0000{n}_.png", "gw") for n in (1, 2, 3)]
    bodies = [fake.output_bytes(i["filename"], "gw") for i in images]
    assert all(check_png(b) == (48, 32) for b in bodies) and len(set(bodies)) == 3

    other_seed = submit(fake, txt2img_graph(steps=1, seed=6, width=48, height=32, batch=3, prefix="gw/run"),
                        ws.client_id)
    frames = ws.until_done(other_seed["prompt_id"])
    assert sorted(texts(frames, "execution_cached")[0]["nodes"]) == ["4", "5", "6", "7"]
    image = texts(frames, "executed")[0]["output"]["images"][0]
    assert image["filename"] == "run_00004_.png"
    assert fake.output_bytes("run_00004_.png", "gw") != bodies[0]  # a different seed, different pixels


# --------------------------------------------------------------------------
# Fault controls
# --------------------------------------------------------------------------


def test_drop_sockets(fake, clients):
    ws, other = clients(), clients()
    ws.recv(), other.recv()
    fake.drop_sockets()
    assert ws.recv(2) is CLOSED and other.recv(2) is CLOSED
    wait_for(lambda: fake.connected_client_ids() == [])
    assert get_json(fake, "/queue") == {"queue_running": [], "queue_pending": []}
    again = clients(ws.client_id)
    assert again.recv()["data"]["sid"] == ws.client_id


def test_go_silent(fake, clients):
    ws = clients()
    ws.recv()
    fake.go_silent(True)
    pid = submit(fake, probe_graph(), ws.client_id)["prompt_id"]
    wait_for(lambda: history(fake, pid))
    assert ws.drain(0.1) == [] and ws.ws.connected
    late = clients()
    assert late.recv(0.2) is None  # not even the greeting
    fake.go_silent(False)
    pid = submit(fake, probe_graph(seed=2), ws.client_id)["prompt_id"]
    assert texts(ws.until_done(pid), "execution_success")


def test_delay_history(fake, clients):
    ws = clients()
    ws.recv()
    fake.delay_history(0.4)
    pid = submit(fake, probe_graph(), ws.client_id)["prompt_id"]
    ws.until_done(pid)
    assert history(fake, pid) == {}
    assert requests.get(f"{fake.base_url}/api/jobs/{pid}", timeout=5).status_code == 404
    assert get_json(fake, "/queue") == {"queue_running": [], "queue_pending": []}
    assert wait_for(lambda: history(fake, pid), timeout=2)[pid]["status"]["status_str"] == "success"
    assert get_json(fake, f"/api/jobs/{pid}")["status"] == "completed"


def test_fail_view_and_slow_view(fake, clients):
    ws = clients()
    ws.recv()
    ws.until_done(submit(fake, probe_graph(steps=1), ws.client_id)["prompt_id"])
    params = {"filename": "probe_00001_.png", "type": "output", "subfolder": ""}
    fake.fail_view(status=503, times=2)
    statuses = [requests.get(f"{fake.base_url}/view", params=params, timeout=5).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert fake.view_requests == 3

    fake.slow_view(0.25)
    started = time.monotonic()
    assert requests.get(f"{fake.base_url}/view", params=params, timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.25
    with pytest.raises(requests.Timeout):
        requests.get(f"{fake.base_url}/view", params=params, timeout=0.1)
    fake.slow_view(0)
    started = time.monotonic()
    assert requests.get(f"{fake.base_url}/view", params=params, timeout=5).status_code == 200
    assert time.monotonic() - started < 0.2


def test_fail_http(fake):
    fake.fail_http("/prompt", status=502, times=1, html=True)
    response = requests.post(f"{fake.base_url}/prompt", json={"prompt": probe_graph()}, timeout=5)
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html") and "<html>" in response.text
    assert submit(fake, probe_graph())["number"] == 0  # the failed request never reached ComfyUI

    fake.fail_http("/history", status=500, times=2)
    assert [requests.get(f"{fake.base_url}/history/x", timeout=5).status_code for _ in range(3)] == [500, 500, 200]
    assert requests.get(f"{fake.base_url}/queue", timeout=5).status_code == 200

    fake.fail_http("/ws", status=503)
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(fake.ws_url("x"), timeout=5)
    ws = Client(fake)
    assert ws.recv()["type"] == "status"
    ws.close()


def test_reject_connections(fake, clients):
    ws = clients()
    ws.recv()
    session = requests.Session()
    assert session.get(f"{fake.base_url}/queue", timeout=5).status_code == 200
    pid = submit(fake, probe_graph(steps=20), ws.client_id)["prompt_id"]
    fake.reject_connections(True)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.base_url}/queue", timeout=1)
    with pytest.raises(requests.ConnectionError):
        session.get(f"{fake.base_url}/queue", timeout=1)  # a kept-alive connection is reset too
    with pytest.raises((websocket.WebSocketException, OSError)):
        websocket.create_connection(fake.ws_url("late"), timeout=1)
    assert texts(ws.until_done(pid), "execution_success")  # the open socket and the queue carry on
    fake.reject_connections(False)
    assert history(fake, pid)[pid]["status"]["completed"] is True


def test_pause_and_resume(fake, clients):
    ws = clients()
    ws.recv()
    fake.pause()
    pid = submit(fake, probe_graph(), ws.client_id)["prompt_id"]
    time.sleep(0.1)
    queue = get_json(fake, "/queue")
    assert queue["queue_running"] == [] and [q[1] for q in queue["queue_pending"]] == [pid]
    assert get_json(fake, f"/api/jobs/{pid}")["status"] == "pending"
    assert not texts(ws.drain(0.05), "execution_start")
    fake.resume()
    assert texts(ws.until_done(pid), "execution_success")


def test_step_delay_can_change_while_running(fake, clients):
    ws = clients()
    ws.recv()
    assert fake.step_delay == 0.01
    pid = submit(fake, probe_graph(steps=6), ws.client_id)["prompt_id"]
    ws.until(lambda f: is_msg(f, "progress") and f["data"]["value"] == 2)
    fake.step_delay = 0.05
    started = time.monotonic()
    ws.until_done(pid)
    assert time.monotonic() - started >= 0.15  # at least the last 3 of the 4 remaining steps were slower
    assert fake.step_delay == 0.05


def test_ordering_by_number_and_front(fake, clients):
    ws = clients()
    ws.recv()
    fake.pause()
    a = submit(fake, probe_graph(steps=1, seed=1), ws.client_id)
    b = submit(fake, probe_graph(steps=1, seed=2), ws.client_id)
    c = submit(fake, probe_graph(steps=1, seed=3), ws.client_id, front=True)
    assert (a["number"], b["number"], c["number"]) == (0, 1, -2)
    fake.resume()
    frames = ws.until_done(b["prompt_id"])
    assert [s["prompt_id"] for s in texts(frames, "execution_start")] == [c["prompt_id"], a["prompt_id"],
                                                                           b["prompt_id"]]


# --------------------------------------------------------------------------
# A pool of servers that offer different things
# --------------------------------------------------------------------------

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
TXT2IMG_CLASSES = {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
                   "SaveImage"}


def post_prompt(fake: FakeComfy, graph: dict, **extra) -> requests.Response:
    return requests.post(f"{fake.base_url}/prompt", json={"prompt": graph, **extra}, timeout=5)


def with_checkpoint(graph: dict, name: str) -> dict:
    graph["4"]["inputs"]["ckpt_name"] = name
    return graph


def lora_graph(lora: str, *, checkpoint: str = SD15, seed: int = 5) -> dict:
    """txt2img with a LoraLoader between the checkpoint and its users."""
    graph = with_checkpoint(txt2img_graph(seed=seed, width=40, height=24), checkpoint)
    graph["10"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": lora, "strength_model": 0.8, "strength_clip": -1.5}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = ["10", 1]
    graph["7"]["inputs"]["clip"] = ["10", 1]
    return graph


def png_pixels(data: bytes) -> bytes:
    """The decompressed image rows of a PNG (its tEXt chunks, which hold the prompt, left out)."""
    check_png(data)
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def test_pool_servers_each_refuse_what_they_lack_and_count_it():
    with FakeComfy(checkpoints=[SDXL], node_classes=TXT2IMG_CLASSES) as sdxl, \
            FakeComfy(checkpoints=[SD15], loras=["pixel-art.safetensors"]) as sd15:
        assert set(get_json(sdxl, "/object_info")) == TXT2IMG_CLASSES
        assert {"ProbeSampler", "LoraLoader", "LoadImage"} <= set(get_json(sd15, "/object_info"))
        assert get_json(sdxl, "/object_info/ProbeSampler") == {}  # as ComfyUI answers for any unknown class
        assert get_json(sdxl, "/models/checkpoints") == [SDXL] and get_json(sd15, "/models/checkpoints") == [SD15]
        assert get_json(sdxl, "/object_info/CheckpointLoaderSimple")["CheckpointLoaderSimple"]["input"][
            "required"]["ckpt_name"][0] == [SDXL]

        # Each runs what it has ...
        assert submit(sd15, txt2img_graph())["node_errors"] == {}
        assert submit(sdxl, with_checkpoint(txt2img_graph(), SDXL))["node_errors"] == {}
        assert submit(sd15, probe_graph())["node_errors"] == {}

        # ... and refuses what it lacks, the way ComfyUI does.
        response = post_prompt(sdxl, txt2img_graph(), prompt_id="wrong-checkpoint")
        assert response.status_code == 400
        body = response.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        [error] = body["node_errors"]["4"]["errors"]
        assert (error["type"], error["details"]) == ("value_not_in_list", f"ckpt_name: '{SD15}' not in ['{SDXL}']")
        assert body["node_errors"]["4"]["dependent_outputs"] == ["9"]

        response = post_prompt(sdxl, probe_graph(), prompt_id="wrong-class")
        assert (response.status_code, response.json()) == (400, {
            "error": {"type": "invalid_prompt", "message": "Cannot execute because node ProbeSampler does not exist.",
                      "details": "Node ID '#3'", "extra_info": {}},
            "node_errors": {}})
        assert post_prompt(sd15, with_checkpoint(txt2img_graph(), SDXL)).status_code == 400

        assert (sdxl.refusals, sd15.refusals) == (2, 1)
        assert sdxl.refusal_log == [
            ("wrong-checkpoint", f"value_not_in_list: ckpt_name: '{SD15}' not in ['{SDXL}'] (node #4)"),
            ("wrong-class", "missing_node_class: ProbeSampler (node #3)"),
        ]
        assert [p["graph"]["4"]["inputs"]["ckpt_name"] for p in sdxl.prompts] == [SDXL]  # refused ones never queue


def test_refusals_count_only_prompts_asking_for_what_is_missing(fake):
    for exchange in recorded_http("06", "POST", "/prompt"):  # one unknown class among other mistakes
        assert requests.post(f"{fake.base_url}/prompt", json=exchange["request"], timeout=5).status_code == 400
    assert fake.refusals == 1
    assert fake.refusal_log[0][1] == "missing_node_class: NoSuchNode (node #1)"

    not_counted = [
        {"1": {"inputs": {}}, "2": {"class_type": "NoSuchNode", "inputs": {}}},  # the missing class_type decides
        {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}},
    ]
    bad_steps = txt2img_graph()
    bad_steps["3"]["inputs"]["steps"] = "many"
    no_text = txt2img_graph()
    del no_text["6"]["inputs"]["text"]
    not_counted += [bad_steps, no_text]
    for graph in not_counted:
        assert post_prompt(fake, graph).status_code == 400
    assert requests.post(f"{fake.base_url}/prompt", json={"client_id": "x"}, timeout=5).status_code == 400
    # A combo value missing from one output while another output is valid: accepted, so not a refusal.
    partly = lora_graph("absent.safetensors")
    probe = probe_graph()
    partly["20"] = probe["3"]
    partly["21"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "probe"}}
    answer = submit(fake, partly)
    assert answer["node_errors"]["10"]["errors"][0]["type"] == "value_not_in_list"
    assert answer["node_errors"]["10"]["dependent_outputs"] == ["9"]
    assert fake.refusals == 1

    # A sampler name the server lacks is refused like a missing model, and several reasons are joined.
    graph = with_checkpoint(txt2img_graph(), SDXL)
    graph["3"]["inputs"]["sampler_name"] = "warp_drive"
    assert post_prompt(fake, graph, prompt_id="two").status_code == 400
    assert fake.refusals == 2
    assert fake.refusal_log[-1] == ("two", f"value_not_in_list: ckpt_name: '{SDXL}' not in ['{SD15}'] (node #4); "
                                           "value_not_in_list: sampler_name: 'warp_drive' not in (list of length 40) "
                                           "(node #3)")


def test_lora_loader_is_listed_like_comfyui_and_runs_where_the_lora_exists(clients):
    with FakeComfy(loras=["pixel-art.safetensors", "ink.safetensors"]) as fake:
        tip = "tooltip"
        strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
        assert get_json(fake, "/object_info/LoraLoader") == {"LoraLoader": {
            "input": {"required": {
                "model": ["MODEL", {tip: "The diffusion model the LoRA will be applied to."}],
                "clip": ["CLIP", {tip: "The CLIP model the LoRA will be applied to."}],
                "lora_name": [["pixel-art.safetensors", "ink.safetensors"], {tip: "The name of the LoRA."}],
                "strength_model": ["FLOAT", {**strength, tip: "How strongly to modify the diffusion model. This "
                                                              "value can be negative."}],
                "strength_clip": ["FLOAT", {**strength, tip: "How strongly to modify the CLIP model. This value "
                                                             "can be negative."}],
            }},
            "input_order": {"required": ["model", "clip", "lora_name", "strength_model", "strength_clip"]},
            "output": ["MODEL", "CLIP"],
            "output_is_list": [False, False],
            "output_name": ["MODEL", "CLIP"],
            "name": "LoraLoader",
            "display_name": "Load LoRA",
            "description": "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents "
                           "are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
            "python_module": "nodes",
            "category": "loaders",
            "output_node": False,
            "output_tooltips": ["The modified diffusion model.", "The modified CLIP model."],
        }}
        assert get_json(fake, "/models/loras") == ["pixel-art.safetensors", "ink.safetensors"]

        ws = Client(fake)
        try:
            ws.recv()
            with_lora = submit(fake, lora_graph("ink.safetensors"), ws.client_id)["prompt_id"]
            frames = ws.until_done(with_lora)
            assert texts(frames, "execution_success") and not texts(frames, "execution_error")
            assert "10" in [e["node"] for e in texts(frames, "executing")]
            [image] = texts(frames, "executed")[0]["output"]["images"]
            lora_png = fake.output_bytes(image["filename"])
            assert check_png(lora_png) == (40, 24)

            plain = submit(fake, txt2img_graph(seed=5, width=40, height=24, prefix="plain"), ws.client_id)
            frames = ws.until_done(plain["prompt_id"])
            [image] = texts(frames, "executed")[0]["output"]["images"]
            assert png_pixels(fake.output_bytes(image["filename"])) == png_pixels(lora_png)  # passed through

            fake.fail_next(at_step=1)  # the error report shows what reached the sampler: the checkpoint's model
            failed = submit(fake, lora_graph("pixel-art.safetensors", seed=9), ws.client_id)["prompt_id"]
            [error] = texts(ws.until_done(failed), "execution_error")
            assert (error["node_id"], error["current_inputs"]["model"]) == ("3", [f"<MODEL {SD15}>"])
        finally:
            ws.close()

        response = post_prompt(fake, lora_graph("absent.safetensors"))
        [error] = response.json()["node_errors"]["10"]["errors"]
        assert (response.status_code, error["type"]) == (400, "value_not_in_list")
        assert fake.refusals == 1

    with FakeComfy() as bare:  # no LoRA files: LoraLoader is still offered, with nothing to choose
        assert get_json(bare, "/object_info/LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0] == []
        response = post_prompt(bare, lora_graph("ink.safetensors"))
        assert response.status_code == 400
        assert response.json()["node_errors"]["10"]["errors"][0]["details"] == "lora_name: 'ink.safetensors' not in []"
        assert bare.refusals == 1


def test_restart_with_other_models_and_set_checkpoints_live(fake, clients):
    ws = clients()
    ws.recv()
    before = submit(fake, txt2img_graph(), ws.client_id)["prompt_id"]
    ws.until_done(before)

    fake.restart(checkpoints=[SDXL], loras=["ink.safetensors"])
    assert get_json(fake, "/models/checkpoints") == [SDXL]
    assert get_json(fake, "/models/loras") == ["ink.safetensors"]
    loader = get_json(fake, "/object_info/CheckpointLoaderSimple")["CheckpointLoaderSimple"]
    assert loader["input"]["required"]["ckpt_name"][0] == [SDXL]
    assert post_prompt(fake, txt2img_graph()).status_code == 400  # yesterday's model is gone
    assert fake.refusals == 1
    again = clients()
    again.recv()
    pid = submit(fake, lora_graph("ink.safetensors", checkpoint=SDXL), again.client_id)["prompt_id"]
    assert texts(again.until_done(pid), "execution_success")

    fake.restart()  # without models given, the same ones come back
    assert get_json(fake, "/models/checkpoints") == [SDXL]
    assert get_json(fake, "/models/loras") == ["ink.safetensors"]

    fake.restart(wait=False, downtime=0.2, checkpoints=[SD15, SDXL])
    wait_for(lambda: _answers(fake), timeout=3)
    assert get_json(fake, "/models/checkpoints") == [SD15, SDXL]

    third = clients()
    third.recv()
    done = submit(fake, txt2img_graph(), third.client_id)["prompt_id"]
    third.until_done(done)
    fake.set_checkpoints([SDXL])  # live: no restart, history and sockets stay
    assert get_json(fake, "/models/checkpoints") == [SDXL]
    assert post_prompt(fake, txt2img_graph()).status_code == 400
    assert fake.refusals == 2
    assert history(fake, done)[done]["status"]["completed"] is True
    assert third.client_id in fake.connected_client_ids()
    fake.set_loras([])
    assert get_json(fake, "/models/loras") == []
    with pytest.raises(TypeError):
        fake.set_checkpoints(SDXL)  # a lone name, not a list


def test_extra_node_runs_as_a_pass_through(clients):
    with FakeComfy(node_classes=["LoadImage", "SaveImage"], extra_nodes=["FaceRestore"]) as fake:
        everything = get_json(fake, "/object_info")
        assert set(everything) == {"LoadImage", "SaveImage", "FaceRestore"}
        info = everything["FaceRestore"]
        assert (info["category"], info["python_module"], info["output"], info["output_node"]) == (
            "custom", "custom_nodes.FaceRestore", ["IMAGE"], False)
        assert info["input"] == {"required": {"image": ["IMAGE"]}}
        assert get_json(fake, "/object_info/FaceRestore") == {"FaceRestore": info}

        picture = make_png(20, 12, seed=3)
        requests.post(f"{fake.base_url}/upload/image", files={"image": ("face.png", picture)}, timeout=5)
        ws = Client(fake)
        try:
            ws.recv()
            graph = {
                "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
                "2": {"class_type": "FaceRestore", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "restored"}},
            }
            frames = ws.until_done(submit(fake, graph, ws.client_id)["prompt_id"])
            assert [e["node"] for e in texts(frames, "executing") if e["node"]] == ["1", "2", "3"]
            restored = fake.output_bytes(texts(frames, "executed")[0]["output"]["images"][0]["filename"])

            direct = {"1": graph["1"], "3": {"class_type": "SaveImage", "inputs": {
                "images": ["1", 0], "filename_prefix": "direct"}}}
            frames = ws.until_done(submit(fake, direct, ws.client_id)["prompt_id"])
            loaded = fake.output_bytes(texts(frames, "executed")[0]["output"]["images"][0]["filename"])
            assert check_png(restored) == (20, 12)
            assert png_pixels(restored) == png_pixels(loaded)  # its input image, unchanged
        finally:
            ws.close()

        # ProbeSampler is a custom node in the full catalogue, but this server does not offer it.
        assert post_prompt(fake, probe_graph()).status_code == 400
        assert fake.refusal_log[-1][1] == "missing_node_class: ProbeSampler (node #3)"


@pytest.mark.parametrize("kwargs,error", [
    ({"node_classes": ["KSampler", "NoSuchNode"]}, ValueError),
    ({"extra_nodes": ["KSampler"]}, ValueError),
    ({"checkpoints": SDXL}, TypeError),
    ({"loras": "ink.safetensors"}, TypeError),
])
def test_pool_options_are_checked(kwargs, error):
    with pytest.raises(error):
        FakeComfy(**kwargs)


# --------------------------------------------------------------------------
# Images and the command line
# --------------------------------------------------------------------------


def test_make_png_and_image_size():
    png = make_png(5, 3, seed=1, index=2, text={"prompt": "{}"})
    assert check_png(png) == (5, 3) and image_size(png) == (5, 3)
    assert make_png(5, 3, seed=1, index=2) == make_png(5, 3, seed=1, index=2)
    assert make_png(5, 3, seed=1, index=2) != make_png(5, 3, seed=1, index=3)
    assert make_png(5, 3, seed=1) != make_png(5, 3, seed=1, invert=True)
    assert image_size(JPEG_PREVIEW) == (16, 16) and JPEG_PREVIEW.startswith(b"\xff\xd8\xff\xe0")
    assert image_size(b"GIF89a") is None


def test_command_line_runs_the_fake():
    command = [sys.executable, "-m", "tests.fakes.comfyui", "--port", "0", "--step-delay", "0.01",
               "--lora", "pixel-art.safetensors", "--node-class", "LoraLoader", "--node-class", "SaveImage",
               "--extra-node", "FaceRestore"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline()
            assert line.startswith("fake ComfyUI listening on http://127.0.0.1:")
            url = line.split()[-1]
            assert requests.get(f"{url}/system_stats", timeout=5).json()["system"]["comfyui_version"] == "0.8.0"
            assert set(requests.get(f"{url}/object_info", timeout=5).json()) == {
                "LoraLoader", "SaveImage", "FaceRestore"}
            assert requests.get(f"{url}/models/loras", timeout=5).json() == ["pixel-art.safetensors"]
        finally:
            process.terminate()
        assert process.wait(timeout=5) == 0
