"""A fake ComfyUI server on loopback, faithful to the recordings in tests/fixtures/comfyui.

It is an aiohttp application (ComfyUI itself is one) whose event loop runs in a
background thread, so synchronous tests and the gateway's threads can talk to
it over real HTTP and WebSocket::

    with FakeComfy(step_delay=0.01) as fake:      # or fake.start() / fake.stop()
        base = fake.base_url                      # "http://127.0.0.1:PORT"
        ...

What it says, it says the way ComfyUI 0.8.0 does (the transcripts win):

* ``POST /prompt`` validates like ComfyUI (same error types, messages,
  ``node_errors`` and ``dependent_outputs``), accepts a client-chosen
  ``prompt_id`` without de-duplication and increments ``number`` on every
  request, rejected ones included.
* One prompt runs at a time, lowest ``number`` first; nodes run in ComfyUI's
  order (output nodes as soon as they can). Events go only to the socket
  registered under the prompt's ``client_id``; ``status`` goes to every
  registered socket. A socket that connects with an id already in use
  replaces the older one, and when the older one closes the id is removed
  from the registry, silencing the newer socket (transcripts 10/10b).
* Sampler nodes (``KSampler``, ``ProbeSampler``) run ``steps`` steps of
  ``step_delay`` seconds with ``progress_state``/``progress`` and a JPEG
  preview per step (binary type 1, or type 4 with metadata for a socket that
  negotiated ``supports_preview_metadata``). ``SaveImage`` and
  ``PreviewImage`` write real PNGs whose pixels depend on the seed and the
  batch index. Identical re-runs are answered from the cache
  (``execution_cached`` lists every node).
* Errors end with ``execution_error`` and interrupts with
  ``execution_interrupted``; like the recordings (and unlike README fact 4)
  both are followed by ``status`` and ``executing`` with ``node: null``.

Servers in a pool differ, as real ones do: each offers its own model files and
node classes, and ``/object_info``, ``/models/{folder}`` and validation follow::

    sdxl = FakeComfy(checkpoints=["sd_xl_base_1.0.safetensors"])
    sd15 = FakeComfy(checkpoints=["v1-5-pruned-emaonly.safetensors"], loras=["pixel-art.safetensors"])
    pack = FakeComfy(node_classes=["LoadImage", "SaveImage"], extra_nodes=["FaceRestore"])

``LoraLoader`` passes its model and clip through; an ``extra_nodes`` class
(category ``custom``, ``python_module`` ``custom_nodes.<name>``) passes its
``image`` through. A prompt using a class the server lacks gets ComfyUI's
``invalid_prompt`` answer, one using a checkpoint or LoRA it lacks gets
``value_not_in_list``; both are 400 and counted in :attr:`FakeComfy.refusals`.

Fault controls (thread-safe methods): :meth:`FakeComfy.drop_sockets`,
:meth:`~FakeComfy.go_silent`, :meth:`~FakeComfy.restart` (optionally with
other ``checkpoints``/``loras``), :meth:`~FakeComfy.set_checkpoints`,
:meth:`~FakeComfy.set_loras`,
:meth:`~FakeComfy.delay_history`, :meth:`~FakeComfy.fail_view`,
:meth:`~FakeComfy.slow_view`, :meth:`~FakeComfy.drip_view`, :meth:`~FakeComfy.fail_http`,
:meth:`~FakeComfy.reject_connections`, :meth:`~FakeComfy.pause` /
:meth:`~FakeComfy.resume` and :meth:`~FakeComfy.fail_next`. Inspection:
:attr:`~FakeComfy.prompts`, :meth:`~FakeComfy.output_bytes`,
:attr:`~FakeComfy.view_requests`, :attr:`~FakeComfy.uploads`,
:meth:`~FakeComfy.connected_client_ids`, :attr:`~FakeComfy.refusals` and
:attr:`~FakeComfy.refusal_log`.

Run it by hand with ``python -m tests.fakes.comfyui --port 8188 --step-delay 0.05``
(``--checkpoint``, ``--lora``, ``--node-class`` and ``--extra-node`` repeat).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import dataclasses
import hashlib
import json
import logging
import mimetypes
import posixpath
import random
import signal
import struct
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import WSMsgType, web

__all__ = ["FakeComfy", "make_png", "image_size", "JPEG_PREVIEW", "main"]

# ==========================================================================
# Constants
# ==========================================================================

#: A real 16x16 JPEG (JFIF), sent as every sampler preview.
JPEG_PREVIEW = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hn"
    "Pk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2P/wAARCAAQABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQID"
    "AAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlq"
    "c3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3"
    "+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEI"
    "FEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImK"
    "kpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDn"
    "7ex6cVp29j04rTt7HpxWnb2PTiqq4sMvx22p/9k="
)

#: What ComfyUI answers to a client's ``feature_flags`` (transcript 03).
SERVER_FEATURES = {
    "supports_preview_metadata": True,
    "max_upload_size": 104857600,
    "extension": {"manager": {"supports_v4": True}},
}

MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
    "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
]

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]
MAX_RESOLUTION = 16384
FILE_KINDS = ("input", "output", "temp")

_PREVIEW_IMAGE = 1
_PREVIEW_IMAGE_WITH_METADATA = 4


def _now_ms() -> int:
    return int(time.time() * 1000)


# ==========================================================================
# Images
# ==========================================================================

_ADD_TABLES: dict[int, bytes] = {}
_INVERT_TABLE = bytes(255 - v for v in range(256))


def _add_table(shift: int) -> bytes:
    table = _ADD_TABLES.get(shift)
    if table is None:
        table = _ADD_TABLES[shift] = bytes((v + shift) & 255 for v in range(256))
    return table


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def make_png(
    width: int, height: int, *, seed: int = 0, index: int = 0, invert: bool = False, text: dict | None = None
) -> bytes:
    """A real RGB PNG whose pixels are a gradient chosen by ``seed`` and ``index``.

    ``text`` adds tEXt chunks (SaveImage stores the prompt there).
    """
    rng = random.Random(f"{seed}:{index}")
    dx_r, dx_g, dy = rng.randint(1, 7), rng.randint(1, 7), rng.randint(1, 7)
    r0, g0, b0 = rng.randrange(256), rng.randrange(256), rng.randrange(256)
    base = bytearray(width * 3)
    for x in range(width):
        base[3 * x] = (r0 + x * dx_r) & 255
        base[3 * x + 1] = (g0 + x * dx_g) & 255
        base[3 * x + 2] = b0
    base_row = bytes(base)
    rows = []
    for y in range(height):
        row = base_row.translate(_add_table((y * dy) & 255))
        if invert:
            row = row.translate(_INVERT_TABLE)
        rows.append(b"\x00" + row)
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        chunks.append(_png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG, or None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


# ==========================================================================
# Node catalogue (object_info in ComfyUI's format)
# ==========================================================================


@dataclass(frozen=True)
class NodeDef:
    name: str
    display_name: str
    category: str
    inputs: dict  # {"required": {...}, "optional": {...}, "hidden": {...}} as INPUT_TYPES returns
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    output_tooltips: tuple[str, ...] | None = None
    output_node: bool = False
    description: str = ""
    python_module: str = "nodes"
    sampler: bool = False
    custom_validation: tuple[str, ...] = ()  # inputs checked by VALIDATE_INPUTS instead of min/max/combo

    def info(self) -> dict:
        entry = {
            "input": copy.deepcopy(self.inputs),
            "input_order": {category: list(specs) for category, specs in self.inputs.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.output_tooltips:
            entry["output_tooltips"] = list(self.output_tooltips)
        return entry

    def validated_inputs(self) -> Iterable[tuple[str, str, list]]:
        for category in ("required", "optional"):
            for name, spec in self.inputs.get(category, {}).items():
                yield name, category, spec


def node_catalogue(
    checkpoints: Iterable[str], input_files: Iterable[str], loras: Iterable[str] = ()
) -> dict[str, NodeDef]:
    """The node classes the fake knows, with the choices that depend on its files."""
    tip = "tooltip"
    nodes = [
        NodeDef(
            "CheckpointLoaderSimple", "Load Checkpoint", "loaders",
            {"required": {"ckpt_name": [list(checkpoints), {tip: "The name of the checkpoint (model) to load."}]}},
            ("MODEL", "CLIP", "VAE"),
            output_tooltips=(
                "The model used for denoising latents.",
                "The CLIP model used for encoding text prompts.",
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        ),
        NodeDef(
            "LoraLoader", "Load LoRA", "loaders",
            {"required": {
                "model": ["MODEL", {tip: "The diffusion model the LoRA will be applied to."}],
                "clip": ["CLIP", {tip: "The CLIP model the LoRA will be applied to."}],
                "lora_name": [list(loras), {tip: "The name of the LoRA."}],
                "strength_model": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                             tip: "How strongly to modify the diffusion model. This value can be "
                                             "negative."}],
                "strength_clip": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                            tip: "How strongly to modify the CLIP model. This value can be "
                                            "negative."}],
            }},
            ("MODEL", "CLIP"),
            output_tooltips=("The modified diffusion model.", "The modified CLIP model."),
            description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents "
            "are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
        ),
        NodeDef(
            "CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning",
            {"required": {
                "text": ["STRING", {"multiline": True, "dynamicPrompts": True, tip: "The text to be encoded."}],
                "clip": ["CLIP", {tip: "The CLIP model used for encoding the text."}],
            }},
            ("CONDITIONING",),
            output_tooltips=("A conditioning containing the embedded text used to guide the diffusion model.",),
            description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide "
            "the diffusion model towards generating specific images.",
        ),
        NodeDef(
            "EmptyLatentImage", "Empty Latent Image", "latent",
            {"required": {
                "width": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                                  tip: "The width of the latent images in pixels."}],
                "height": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                                   tip: "The height of the latent images in pixels."}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096,
                                       tip: "The number of latent images in the batch."}],
            }},
            ("LATENT",),
            output_tooltips=("The empty latent image batch.",),
            description="Create a new batch of empty latent images to be denoised via sampling.",
        ),
        NodeDef(
            "KSampler", "KSampler", "sampling",
            {"required": {
                "model": ["MODEL", {tip: "The model used for denoising the input latent."}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 tip: "The random seed used for creating the noise."}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000,
                                  tip: "The number of steps used in the denoising process."}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  tip: "The Classifier-Free Guidance scale balances creativity and adherence to "
                                  "the prompt. Higher values result in images more closely matching the "
                                  "prompt however too high values will negatively impact quality."}],
                "sampler_name": [list(SAMPLERS), {tip: "The algorithm used when sampling, this can affect the "
                                                  "quality, speed, and style of the generated output."}],
                "scheduler": [list(SCHEDULERS), {tip: "The scheduler controls how noise is gradually removed "
                                                 "to form the image."}],
                "positive": ["CONDITIONING", {tip: "The conditioning describing the attributes you want to "
                                              "include in the image."}],
                "negative": ["CONDITIONING", {tip: "The conditioning describing the attributes you want to "
                                              "exclude from the image."}],
                "latent_image": ["LATENT", {tip: "The latent image to denoise."}],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      tip: "The amount of denoising applied, lower values will maintain the "
                                      "structure of the initial image allowing for image to image sampling."}],
            }},
            ("LATENT",),
            output_tooltips=("The denoised latent.",),
            description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
            sampler=True,
        ),
        NodeDef(
            "VAEDecode", "VAE Decode", "latent",
            {"required": {
                "samples": ["LATENT", {tip: "The latent to be decoded."}],
                "vae": ["VAE", {tip: "The VAE model used for decoding the latent."}],
            }},
            ("IMAGE",),
            output_tooltips=("The decoded image.",),
            description="Decodes latent images back into pixel space images.",
        ),
        NodeDef("VAEEncode", "VAE Encode", "latent", {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}}, ("LATENT",)),
        NodeDef(
            "SaveImage", "Save Image", "image",
            {
                "required": {
                    "images": ["IMAGE", {tip: "The images to save."}],
                    "filename_prefix": ["STRING", {"default": "ComfyUI", tip: "The prefix for the file to save. "
                                                   "This may include formatting information such as "
                                                   "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include "
                                                   "values from nodes."}],
                },
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            },
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "PreviewImage", "Preview Image", "image",
            {
                "required": {"images": ["IMAGE"]},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            },
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "LoadImage", "Load Image", "image",
            {"required": {"image": [sorted(input_files), {"image_upload": True}]}},
            ("IMAGE", "MASK"),
            custom_validation=("image",),
        ),
        NodeDef("ImageInvert", "Invert Image", "image", {"required": {"image": ["IMAGE"]}}, ("IMAGE",)),
        NodeDef(
            "ProbeSampler", "Probe Sampler (acceptance)", "testing",
            {"required": {
                "width": ["INT", {"default": 512, "min": 8, "max": 4096}],
                "height": ["INT", {"default": 512, "min": 8, "max": 4096}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 16}],
                "steps": ["INT", {"default": 10, "min": 1, "max": 1000}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615}],
                "delay": ["FLOAT", {"default": 0.05, "min": 0.0, "max": 60.0}],
                "fail_at_step": ["INT", {"default": 0, "min": 0, "max": 1000}],
            }},
            ("IMAGE",),
            python_module="custom_nodes.gateway_probe",
            sampler=True,
        ),
    ]
    return {node.name: node for node in nodes}


def custom_node(name: str) -> NodeDef:
    """A class from a custom node pack: one IMAGE in, the same IMAGE out."""
    return NodeDef(name, name, "custom", {"required": {"image": ["IMAGE"]}}, ("IMAGE",),
                   python_module=f"custom_nodes.{name}")


#: Every built-in class name (the choices do not change which classes exist).
BUILTIN_CLASSES = frozenset(node_catalogue((), ()))


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):  # a lone name would otherwise become its letters
        raise TypeError(f"{what} must be an iterable of names, not a string")
    return tuple(values)


def refusal_reasons(graph: Any, error: dict, node_errors: dict, catalogue: dict[str, NodeDef]) -> list[str]:
    """Why a refused prompt asked for what this server lacks: a node class, or a combo value.

    Empty when the refusal had another cause (no outputs, bad types, missing inputs ...).
    """
    if error.get("type") == "invalid_prompt":
        # Walk the nodes as validate_prompt does: the first bad node decides the answer.
        for node_id, node in (graph.items() if isinstance(graph, dict) else ()):
            if not isinstance(node, dict) or "class_type" not in node:
                break
            class_type = node["class_type"]
            if not isinstance(class_type, str) or class_type not in catalogue:
                return [f"missing_node_class: {class_type} (node #{node_id})"]
        return []
    return [f"value_not_in_list: {e['details']} (node #{node_id})"
            for node_id, entry in node_errors.items() for e in entry["errors"] if e["type"] == "value_not_in_list"]


# ==========================================================================
# Prompt validation (ComfyUI's execution.validate_prompt, same answers)
# ==========================================================================


def _error(kind: str, message: str, details: str, extra_info: dict | None = None) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _types_match(received: Any, expected: Any) -> bool:
    if not isinstance(received, str) or not isinstance(expected, str):
        return True
    if "*" in (received, expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _validate_inputs(
    prompt: dict, unique_id: str, validated: dict, catalogue: dict[str, NodeDef], file_exists: Callable[[str], bool],
    visiting: set,
) -> tuple[bool, list]:
    if unique_id in validated:
        return validated[unique_id]
    if unique_id in visiting:
        raise RuntimeError(f"Dependency cycle detected at node {unique_id}")
    visiting.add(unique_id)
    node = prompt[unique_id]
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        inputs = node["inputs"] = {}
    node_def = catalogue[node["class_type"]]
    errors: list[dict] = []
    valid = True
    for name, category, spec in node_def.validated_inputs():
        input_type = spec[0]
        options = spec[1] if len(spec) > 1 else {}
        input_config = [input_type, options]
        if name not in inputs:
            if category == "required":
                errors.append(_error("required_input_missing", "Required input is missing", name,
                                     {"input_name": name}))
            continue
        value = inputs[name]
        if isinstance(value, list):  # a link: ["node_id", output_index]
            if len(value) != 2:
                errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of "
                                     "[node_id, slot_index]", name,
                                     {"input_name": name, "input_config": input_config, "received_value": value}))
                continue
            source_id = value[0]
            source_type = catalogue[prompt[source_id]["class_type"]].outputs[value[1]]
            if not _types_match(source_type, input_type):
                errors.append(_error(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{name}, received_type({source_type}) mismatch input_type({input_type})",
                    {"input_name": name, "input_config": input_config, "received_type": source_type,
                     "linked_node": value},
                ))
                continue
            try:
                if _validate_inputs(prompt, source_id, validated, catalogue, file_exists, visiting)[0] is False:
                    valid = False
            except Exception as exc:  # ComfyUI reports any failure below a link this way
                valid = False
                validated[source_id] = (False, [_error(
                    "exception_during_inner_validation", "Exception when validating inner node", str(exc),
                    {"input_name": name, "input_config": input_config, "exception_message": str(exc),
                     "exception_type": type(exc).__name__, "traceback": [], "linked_node": value},
                )])
            continue
        try:
            if isinstance(value, dict) and "__value__" in value:
                value = inputs[name] = value["__value__"]
            converter = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(input_type) \
                if isinstance(input_type, str) else None
            if converter is not None:
                value = inputs[name] = converter(value)
        except Exception as exc:
            errors.append(_error(
                "invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                f"{name}, {value}, {exc}",
                {"input_name": name, "input_config": input_config, "received_value": value,
                 "exception_message": str(exc)},
            ))
            continue
        if name in node_def.custom_validation:
            if not (isinstance(value, str) and file_exists(value)):
                errors.append(_error("custom_validation_failed", "Custom validation failed for node",
                                     f"{name} - Invalid image file: {value}", {"input_name": name}))
            continue
        extra = {"input_name": name, "input_config": input_config, "received_value": value}
        if "min" in options and value < options["min"]:
            errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                 name, extra))
            continue
        if "max" in options and value > options["max"]:
            errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                 name, extra))
            continue
        if isinstance(input_type, list) and value not in input_type:
            if len(input_type) > 20:
                list_info, config = f"(list of length {len(input_type)})", None
            else:
                list_info, config = str(input_type), input_config
            errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {list_info}",
                                 {"input_name": name, "input_config": config, "received_value": value}))
    visiting.discard(unique_id)
    result = (False, errors) if errors or not valid else (True, [])
    validated[unique_id] = result
    return result


def validate_prompt(
    prompt: Any, catalogue: dict[str, NodeDef], file_exists: Callable[[str], bool],
    partial_execution_targets: list | None = None,
) -> tuple[bool, dict | None, list[str], dict]:
    """(valid, error, outputs to execute, node_errors), as ComfyUI computes them."""
    if not isinstance(prompt, dict):
        return False, _error("invalid_prompt", "Cannot execute because the prompt is not an object.", ""), [], {}
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return False, _error("invalid_prompt", "Cannot execute because a node is missing the class_type "
                                 "property.", f"Node ID '#{node_id}'"), [], {}
        class_type = node["class_type"]
        node_def = catalogue.get(class_type) if isinstance(class_type, str) else None
        if node_def is None:
            return False, _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                                 f"Node ID '#{node_id}'"), [], {}
        if node_def.output_node and (partial_execution_targets is None or node_id in partial_execution_targets):
            outputs.append(node_id)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    validated: dict[str, tuple[bool, list]] = {}
    failures: list[tuple[str, list]] = []
    node_errors: dict[str, dict] = {}
    good_outputs = []
    for output in outputs:
        try:
            valid, reasons = _validate_inputs(prompt, output, validated, catalogue, file_exists, set())
        except Exception as exc:
            valid = False
            reasons = [_error("exception_during_validation", "Exception when validating node", str(exc),
                              {"exception_type": type(exc).__name__, "traceback": []})]
            validated[output] = (False, reasons)
        if valid:
            good_outputs.append(output)
            continue
        if reasons:
            failures.append((output, reasons))
        for node_id, (node_valid, node_reasons) in validated.items():
            if not node_valid and node_reasons:
                entry = node_errors.setdefault(node_id, {
                    "errors": node_reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"],
                })
                entry["dependent_outputs"].append(output)
    if not good_outputs:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failures for e in reasons)
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), \
            [], node_errors
    return True, None, good_outputs, node_errors


# ==========================================================================
# Execution planning and values
# ==========================================================================


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def plan_execution(
    graph: dict, outputs: list[str], cached: set[str], catalogue: dict[str, NodeDef]
) -> tuple[list[str], list[str]]:
    """(execution order, staged nodes in staging order), like ComfyUI's ExecutionList.

    Output nodes are always staged; their inputs only when not cached. Among
    the nodes ready to run, output nodes go first, then nodes feeding an
    output node directly, then at two removes, then the first ready one.
    """
    pending: dict[str, None] = {}
    blocking: dict[str, set[str]] = {}
    block_count: dict[str, int] = {}

    def add_node(root: str) -> None:
        stack, links = [root], []
        while stack:
            node_id = stack.pop()
            if node_id in pending:
                continue
            pending[node_id] = None
            blocking.setdefault(node_id, set())
            block_count.setdefault(node_id, 0)
            for value in graph[node_id].get("inputs", {}).values():
                if _is_link(value):
                    if value[0] not in cached:
                        stack.append(value[0])
                    links.append((value[0], node_id))
        for source, target in links:
            if source not in cached and target not in blocking[source]:
                blocking[source].add(target)
                block_count[target] += 1

    for output in outputs:
        add_node(output)
    staged = list(pending)

    def is_output(node_id: str) -> bool:
        return catalogue[graph[node_id]["class_type"]].output_node

    order = []
    while pending:
        ready = [n for n in pending if block_count[n] == 0]
        if not ready:
            raise RuntimeError("Dependency cycle detected")
        pick = next((n for n in ready if is_output(n)), None)
        pick = pick or next((n for n in ready if any(is_output(b) for b in blocking[n])), None)
        pick = pick or next(
            (n for n in ready if any(is_output(c) for b in blocking[n] for c in blocking[b])), None
        )
        pick = pick or ready[0]
        order.append(pick)
        del pending[pick]
        for blocked in blocking[pick]:
            block_count[blocked] -= 1
    return order, staged


@dataclass(frozen=True)
class Handle:
    """A model, CLIP, VAE, conditioning or mask: only its identity matters here."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"<{self.kind} {self.name}>"


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    count: int
    seed: int


@dataclass(frozen=True)
class Images:
    width: int
    height: int
    count: int
    seed: int
    inverted: bool = False


class NodeFailure(Exception):
    """A node raised: becomes ``execution_error``."""

    def __init__(self, exception_type: str, message: str, frame: str = ""):
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message
        self.frame = frame


class _Interrupted(Exception):
    """``/interrupt`` reached the running node: becomes ``execution_interrupted``."""


_TRACEBACK_HEAD = [  # the frames ComfyUI 0.8.0 reports above a failing node (transcript 04)
    "  File \"/opt/ComfyUI/execution.py\", line 518, in execute\n    output_data, output_ui, has_subgrap"
    "h, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, executio"
    "n_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n                 "
    "                                             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
    "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
    "^^^^\n",
    "  File \"/opt/ComfyUI/execution.py\", line 329, in get_output_data\n    return_values = await _asyn"
    "c_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=Tr"
    "ue, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n     "
    "               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
    "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
    "^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"/opt/ComfyUI/execution.py\", line 303, in _async_map_node_over_list\n    await process_inp"
    "uts(input_dict, i)\n",
    "  File \"/opt/ComfyUI/execution.py\", line 291, in process_inputs\n    result = f(**inputs)\n       "
    "      ^^^^^^^^^^^\n",
]
_NODE_FRAMES = {
    "ProbeSampler": '  File "/opt/ComfyUI/custom_nodes/gateway_probe.py", line 42, in sample\n    raise '
    'RuntimeError(f"probe failure at step {step}")\n',
    "KSampler": '  File "/opt/ComfyUI/nodes.py", line 1525, in sample\n    return common_ksampler(model, seed, '
    "steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=denoise)\n",
}


def _format_input(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# ==========================================================================
# Server state
# ==========================================================================


@dataclass(eq=False)
class _Socket:
    ws: web.WebSocketResponse
    request: web.Request
    sid: str
    generation: int
    feature_flags: dict = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, payload: str | bytes) -> None:
        if self.ws.closed:
            return
        try:
            async with self.lock:
                if isinstance(payload, str):
                    await self.ws.send_str(payload)
                else:
                    await self.ws.send_bytes(payload)
        except Exception:  # a vanished client never stops the queue (ComfyUI logs and goes on)
            pass

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


@dataclass
class _Item:
    number: int | float
    prompt_id: str
    graph: dict
    extra_data: dict
    outputs: list[str]

    def as_list(self) -> list:
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")


@dataclass
class _Run:
    """One prompt being executed."""

    item: _Item
    messages: list = field(default_factory=list)
    progress: dict = field(default_factory=dict)  # node_id -> {"value", "max", "state"}
    executed: list = field(default_factory=list)
    ui: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def prompt_id(self) -> str:
        return self.item.prompt_id

    @property
    def client_id(self) -> str | None:
        return self.item.client_id


@dataclass
class _CacheEntry:
    outputs: tuple
    ui: dict | None


@dataclass
class _FailRule:
    prefix: str
    status: int
    remaining: int
    html: bool


def _fault_response(status: int, html: bool) -> web.Response:
    try:
        from http import HTTPStatus

        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    if html:
        body = (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} "
                f"{reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
        return web.Response(status=status, text=body, content_type="text/html")
    return web.Response(status=status, text=f"{status}: {reason}")


class _Server:
    """The fake ComfyUI proper. Everything here runs on the event loop thread."""

    def __init__(
        self, *, host: str, port: int, step_delay: float, checkpoints: tuple[str, ...], loras: tuple[str, ...] = (),
        node_classes: frozenset[str] | None = None, extra_nodes: tuple[str, ...] = (),
    ):
        self.host, self.port = host, port
        self.step_delay = step_delay
        # What this server offers (a restart may change the models, never the classes).
        self.checkpoints = tuple(checkpoints)
        self.loras = tuple(loras)
        self.node_classes = node_classes
        self.extra_nodes = tuple(extra_nodes)
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.worker: asyncio.Task | None = None
        self.wakeup = asyncio.Event()
        # Test-side knobs and records (kept across restarts).
        self.prompts_log: list[dict] = []
        self.refusal_log: list[tuple[str, str]] = []
        self.view_requests = 0
        self.silent = False
        self.paused = False
        self.rejecting = False
        self.down = False
        self.history_delay = 0.0
        self.view_failures: list[int] = []
        self.view_delay = 0.0
        self.view_drip: tuple[int, float] | None = None
        self.fail_rules: list[_FailRule] = []
        self.pending_failure: tuple[int, str, str] | None = None
        self.generation = 0
        self._reset_state(keep_files=False)

    def _reset_state(self, *, keep_files: bool) -> None:
        """What a ComfyUI process holds in memory (and, unless kept, its files)."""
        self.sockets: dict[str, _Socket] = {}
        self.open_sockets: set[_Socket] = set()
        self.pending: list[_Item] = []
        self.running: _Item | None = None
        self.history: dict[str, tuple[dict, float]] = {}  # prompt_id -> (entry, visible from monotonic)
        if not keep_files:
            self.files: dict[tuple[str, str, str], bytes] = {}
        self.cache: dict[str, _CacheEntry] = {}
        self.preview_prefixes: dict[tuple[str, str], str] = {}
        self.number = 0
        self.interrupt_flag = False
        self.current_client: str | None = None
        self.last_node_id: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        middlewares = [self._fault_middleware]
        app = web.Application(client_max_size=SERVER_FEATURES["max_upload_size"], middlewares=middlewares)
        self._add_routes(app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        await self._listen()
        self.port = self.runner.addresses[0][1]
        self.worker = asyncio.create_task(self._worker())
        return self.port

    async def _listen(self) -> None:
        if self.site is None and self.runner is not None:
            site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
            await site.start()
            self.site = site

    async def _unlisten(self) -> None:
        if self.site is not None:
            site, self.site = self.site, None
            await site.stop()

    def _abort_connections(self) -> None:
        for conn in list(self.open_sockets):
            conn.abort()
        if self.runner is not None and self.runner.server is not None:
            for handler in self.runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()

    async def _stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
            self.worker = None

    async def shutdown(self) -> None:
        await self._stop_worker()
        self._abort_connections()
        if self.runner is not None:
            await self.runner.cleanup()
        self.site = self.runner = None

    async def go_down(
        self, keep_files: bool, checkpoints: tuple[str, ...] | None = None, loras: tuple[str, ...] | None = None
    ) -> None:
        """The process dies: sockets drop, the running prompt stops, memory is lost.

        Given ``checkpoints`` or ``loras``, it comes back with those models instead.
        """
        self.down = True
        await self._unlisten()
        await self._stop_worker()
        self._abort_connections()
        self.generation += 1
        self._reset_state(keep_files=keep_files)
        if checkpoints is not None:
            self.checkpoints = checkpoints
        if loras is not None:
            self.loras = loras

    async def come_up(self) -> None:
        if not self.down or self.runner is None:
            return
        self.down = False
        if not self.rejecting:
            await self._listen()
        self.worker = asyncio.create_task(self._worker())

    async def set_rejecting(self, on: bool) -> None:
        self.rejecting = on
        if on:
            await self._unlisten()
        elif not self.down:
            await self._listen()

    # ------------------------------------------------------------------ messages

    def queue_remaining(self) -> int:
        return len(self.pending) + (1 if self.running is not None else 0)

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.queue_remaining()}}

    async def _deliver(self, payload: str | bytes, sid: str | None) -> None:
        if self.silent:
            return
        if sid is None:
            targets = list(self.sockets.values())
        else:
            conn = self.sockets.get(sid)
            targets = [conn] if conn is not None else []
        for conn in targets:
            await conn.send(payload)

    async def send(self, event: str, data: dict, sid: str | None = None) -> None:
        await self._deliver(json.dumps({"type": event, "data": data}), sid)

    async def broadcast_status(self) -> None:
        await self.send("status", {"status": self.queue_info()})

    def _supports_metadata(self, sid: str | None) -> bool:
        conn = self.sockets.get(sid) if sid is not None else None
        return bool(conn and conn.feature_flags.get("supports_preview_metadata"))

    # ------------------------------------------------------------------ HTTP plumbing

    def _add_routes(self, app: web.Application) -> None:
        routes = [
            ("GET", "/ws", self.ws_handler),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.post_interrupt),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("GET", "/view", self.get_view),
            ("POST", "/upload/image", self.post_upload_image),
            ("GET", "/object_info", self.get_object_info),
            ("GET", "/object_info/{node_class}", self.get_object_info_node),
            ("GET", "/system_stats", self.get_system_stats),
            ("GET", "/features", self.get_features),
            ("GET", "/models", self.get_models),
            ("GET", "/models/{folder}", self.get_models_folder),
        ]
        for method, path, handler in routes:  # ComfyUI serves every route under /api too
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        app.router.add_get("/api/jobs", self.get_jobs)
        app.router.add_get("/api/jobs/{job_id}", self.get_job)

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable]):
        if self.rejecting or self.down:
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if request.path in ("/view", "/api/view"):
            self.view_requests += 1
        for rule in self.fail_rules:
            if request.path.startswith(rule.prefix) and rule.remaining > 0:
                rule.remaining -= 1
                self.fail_rules = [r for r in self.fail_rules if r.remaining > 0]
                return _fault_response(rule.status, rule.html)
        return await handler(request)

    # ------------------------------------------------------------------ WebSocket

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)  # reusing an id replaces the older socket
        else:
            sid = uuid.uuid4().hex
        conn = _Socket(ws, request, sid, self.generation)
        self.sockets[sid] = conn
        self.open_sockets.add(conn)
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.current_client == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data", {})
                    conn.feature_flags = flags if isinstance(flags, dict) else {}
                    await self.send("feature_flags", copy.deepcopy(SERVER_FEATURES), sid)
                first_message = False
        finally:
            self.open_sockets.discard(conn)
            if conn.generation == self.generation:
                # ComfyUI pops the id whichever socket holds it now (transcripts 10/10b).
                self.sockets.pop(sid, None)
        return ws

    # ------------------------------------------------------------------ prompts and queue

    def catalogue(self) -> dict[str, NodeDef]:
        """The classes this server offers: the built-in ones it keeps, then its custom nodes."""
        top_level_inputs = [name for (kind, sub, name) in self.files if kind == "input" and not sub]
        nodes = node_catalogue(self.checkpoints, top_level_inputs, self.loras)
        if self.node_classes is not None:
            nodes = {name: node for name, node in nodes.items() if name in self.node_classes}
        nodes.update((name, custom_node(name)) for name in self.extra_nodes)
        return nodes

    def _input_key(self, name: str) -> tuple[str, str, str] | None:
        name = name.strip()
        if name.endswith("[input]"):
            name = name[: -len("[input]")].strip()
        path = posixpath.normpath(name)
        if path.startswith("..") or path.startswith("/"):
            return None
        sub, base = posixpath.split(path)
        return ("input", sub, base)

    def _input_exists(self, name: str) -> bool:
        key = self._input_key(name)
        return key is not None and key in self.files

    @staticmethod
    async def _json_object(request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if not isinstance(body, dict):
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if "number" in body:
            number: int | float = float(body["number"])
        else:
            number = -self.number if body.get("front") else self.number
            self.number += 1
        if "prompt" not in body:
            error = _error("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        graph = copy.deepcopy(body["prompt"])
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        catalogue = self.catalogue()
        valid, error, outputs, node_errors = validate_prompt(
            graph, catalogue, self._input_exists, body.get("partial_execution_targets")
        )
        if not valid:
            reasons = refusal_reasons(body["prompt"], error, node_errors, catalogue)
            if reasons:
                self.refusal_log.append((prompt_id, "; ".join(reasons)))
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        for secret in ("auth_token_comfy_org", "api_key_comfy_org"):
            extra_data.pop(secret, None)
        extra_data["create_time"] = _now_ms()
        item = _Item(number, prompt_id, graph, extra_data, outputs)
        self.pending.append(item)
        self.prompts_log.append({"prompt_id": prompt_id, "client_id": item.client_id, "number": number,
                                 "graph": copy.deepcopy(graph)})
        await self.broadcast_status()
        self.wakeup.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _sorted_pending(self) -> list[_Item]:
        return sorted(self.pending, key=lambda item: item.number)

    async def get_queue(self, request: web.Request) -> web.Response:
        running = [self.running.as_list()] if self.running is not None else []
        pending = [item.as_list() for item in self._sorted_pending()]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        if body.get("clear"):
            self.pending.clear()
            await self.broadcast_status()
        for prompt_id in body.get("delete", []) or []:
            for item in self.pending:
                if item.prompt_id == prompt_id:
                    if len(self.pending) == 1:  # ComfyUI wipes the queue then: two status messages
                        self.pending.clear()
                        await self.broadcast_status()
                    else:
                        self.pending.remove(item)
                    await self.broadcast_status()
                    break
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id:
            if self.running is not None and self.running.prompt_id == prompt_id:
                self.interrupt_flag = True
        else:
            self.interrupt_flag = True
        return web.Response(status=200)

    # ------------------------------------------------------------------ history and jobs

    def visible_history(self) -> dict[str, dict]:
        now = time.monotonic()
        return {pid: entry for pid, (entry, visible) in self.history.items() if visible <= now}

    async def get_history(self, request: web.Request) -> web.Response:
        items = list(self.visible_history().items())
        max_items = request.query.get("max_items")
        offset = int(request.query.get("offset", -1))
        if max_items is not None:
            count = int(max_items)
            if offset < 0:
                offset = max(0, len(items) - count)
            items = items[offset : offset + count]
        elif offset > 0:
            items = items[offset:]
        return web.json_response(dict(items))

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.visible_history().get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []) or []:
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    @staticmethod
    def _queue_job(item: _Item, status: str) -> dict:
        return {"id": item.prompt_id, "status": status, "priority": item.number,
                "create_time": item.extra_data.get("create_time"), "outputs_count": 0}

    @staticmethod
    def _history_job(prompt_id: str, entry: dict, *, full: bool) -> dict:
        number, _, graph, extra_data, _ = entry["prompt"]
        status = entry.get("status") or {}
        job: dict[str, Any] = {
            "id": prompt_id,
            "status": "failed" if status.get("status_str") == "error" else "completed",
            "priority": number,
            "create_time": extra_data.get("create_time"),
        }
        for event, data in status.get("messages", []):
            if event == "execution_start":
                job["execution_start_time"] = data.get("timestamp")
            elif event in ("execution_success", "execution_error", "execution_interrupted"):
                job["execution_end_time"] = data.get("timestamp")
                if event == "execution_error":
                    job["execution_error"] = data
        count, preview, fallback = 0, None, None
        for node_id, node_outputs in entry.get("outputs", {}).items():
            for media_type, items in node_outputs.items():
                if not isinstance(items, list):
                    continue
                for image in items:
                    count += 1
                    if preview is None and media_type in ("images", "video", "audio"):
                        enriched = {**image, "nodeId": node_id, "mediaType": media_type}
                        if image.get("type") == "output":
                            preview = enriched
                        elif fallback is None:
                            fallback = enriched
        job["outputs_count"] = count
        if preview or fallback:
            job["preview_output"] = preview or fallback
        if full:
            job["outputs"] = entry.get("outputs", {})
            job["execution_status"] = status
            job["workflow"] = {"prompt": graph, "extra_data": extra_data}
        return job

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        history = self.visible_history()
        if job_id in history:
            return web.json_response(self._history_job(job_id, history[job_id], full=True))
        if self.running is not None and self.running.prompt_id == job_id:
            return web.json_response(self._queue_job(self.running, "in_progress"))
        for item in self.pending:
            if item.prompt_id == job_id:
                return web.json_response(self._queue_job(item, "pending"))
        return web.json_response({"error": "Job not found"}, status=404)

    async def get_jobs(self, request: web.Request) -> web.Response:
        query = request.query
        allowed = ("pending", "in_progress", "completed", "failed")
        statuses = [s.strip() for s in query.get("status", ",".join(allowed)).split(",") if s.strip()]
        invalid = [s for s in statuses if s not in allowed]
        if invalid:
            return web.json_response({"error": f"Invalid status value(s): {', '.join(invalid)}"}, status=400)
        jobs = []
        if "in_progress" in statuses and self.running is not None:
            jobs.append(self._queue_job(self.running, "in_progress"))
        if "pending" in statuses:
            jobs.extend(self._queue_job(item, "pending") for item in self.pending)
        for prompt_id, entry in self.visible_history().items():
            job = self._history_job(prompt_id, entry, full=False)
            if job["status"] in statuses:
                jobs.append(job)
        jobs.sort(key=lambda job: job.get("create_time") or 0, reverse=query.get("sort_order", "desc") == "desc")
        total = len(jobs)
        offset = int(query.get("offset", 0))
        limit = int(query["limit"]) if "limit" in query else None
        jobs = jobs[offset:]
        if limit is not None:
            jobs = jobs[:limit]
        return web.json_response({"jobs": jobs, "pagination": {
            "offset": offset, "limit": limit, "total": total, "has_more": offset + len(jobs) < total}})

    # ------------------------------------------------------------------ files

    async def get_view(self, request: web.Request) -> web.Response:
        if self.view_delay > 0:
            await asyncio.sleep(self.view_delay)
        if self.view_failures:
            return _fault_response(self.view_failures.pop(0), html=False)
        query = request.query
        filename = query.get("filename")
        if filename is None:
            return web.Response(status=404)
        kind = None
        for annotation in FILE_KINDS:
            if filename.endswith(f"[{annotation}]"):
                filename, kind = filename[: -len(annotation) - 2].strip(), annotation
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        kind = kind or query.get("type", "output")
        if kind not in FILE_KINDS:
            return web.Response(status=400)
        subfolder = query.get("subfolder", "")
        if subfolder:
            subfolder = posixpath.normpath(subfolder)
            if subfolder.startswith("..") or subfolder.startswith("/"):
                return web.Response(status=403)
            subfolder = "" if subfolder == "." else subfolder
        name = posixpath.basename(filename)
        data = self.files.get((kind, subfolder, name))
        if data is None:
            return web.Response(status=404)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers = {"Content-Disposition": f'filename="{name}"', "Content-Type": content_type}
        if self.view_drip is not None:
            return await self._drip(request, data, headers, *self.view_drip)
        return web.Response(body=data, headers=headers)

    @staticmethod
    async def _drip(request: web.Request, data: bytes, headers: dict, size: int, interval: float):
        """Send ``data`` ``size`` bytes at a time, ``interval`` seconds apart: slow, but never silent."""
        resp = web.StreamResponse(headers={**headers, "Content-Length": str(len(data))})
        await resp.prepare(request)
        try:
            for start in range(0, len(data), size):
                await resp.write(data[start:start + size])
                await asyncio.sleep(interval)
            await resp.write_eof()
        except ConnectionError:  # the client gave up: as ComfyUI, just stop sending
            pass
        return resp

    async def post_upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = post.get("type") or "input"
        kind = kind if kind in FILE_KINDS else "input"
        subfolder = str(post.get("subfolder", "") or "")
        overwrite = post.get("overwrite") in ("true", "1")
        filename = image.filename
        path = posixpath.normpath(posixpath.join(subfolder, filename))
        if path.startswith("..") or path.startswith("/"):
            return web.Response(status=400)
        folder = posixpath.dirname(path)
        data = image.file.read()
        stem, ext = posixpath.splitext(posixpath.basename(path))
        name, i = posixpath.basename(path), 1
        if not overwrite:
            while (kind, folder, name) in self.files:
                if self.files[(kind, folder, name)] == data:  # same bytes: not stored twice
                    break
                name = f"{stem} ({i}){ext}"
                filename = name
                i += 1
        self.files[(kind, folder, name)] = data
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    # ------------------------------------------------------------------ discovery

    async def get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: node.info() for name, node in self.catalogue().items()})

    async def get_object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        node = self.catalogue().get(name)
        return web.json_response({name: node.info()} if node is not None else {})

    async def get_system_stats(self, request: web.Request) -> web.Response:
        ram = 25276514304
        return web.json_response({
            "system": {
                "os": "linux", "ram_total": ram, "ram_free": 24108953600, "comfyui_version": "0.8.0",
                "required_frontend_version": "1.35.9", "installed_templates_version": "0.7.67",
                "required_templates_version": "0.7.67", "python_version": sys.version,
                "pytorch_version": "2.14.1+cu130", "embedded_python": False,
                "argv": ["main.py", "--cpu", "--listen", self.host, "--port", str(self.port),
                         "--disable-auto-launch"],
            },
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": ram, "vram_free": 24108953600,
                         "torch_vram_total": ram, "torch_vram_free": 24108953600}],
        })

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def get_models(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def get_models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(list({"checkpoints": self.checkpoints, "loras": self.loras}.get(folder, ())))

    # ------------------------------------------------------------------ the queue worker

    async def _worker(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending and not self.paused:
                item = self._sorted_pending()[0]
                self.pending.remove(item)
                self.running = item
                await self.broadcast_status()
                try:
                    await self._execute(item)
                except Exception:  # a bug in the fake must not wedge the queue
                    logging.getLogger(__name__).exception("fake ComfyUI: prompt %s crashed", item.prompt_id)
                    self.running = None
                    await self.broadcast_status()

    async def _execute(self, item: _Item) -> None:
        run = _Run(item)
        pid, client = run.prompt_id, run.client_id
        graph = item.graph
        catalogue = self.catalogue()
        self.interrupt_flag = False
        self.current_client = client
        self.preview_prefixes = {key: prefix for key, prefix in self.preview_prefixes.items()
                                 if key[0] in graph and graph[key[0]]["class_type"] == key[1]}

        await self._add_message(run, "execution_start", {"prompt_id": pid})
        signatures = self._signatures(graph)
        cached = [node_id for node_id in graph if signatures[node_id] in self.cache]
        wanted = set(signatures.values())
        self.cache = {sig: entry for sig, entry in self.cache.items() if sig in wanted}
        await self._add_message(run, "execution_cached", {"nodes": cached, "prompt_id": pid})

        cached_set = set(cached)
        order, staged = plan_execution(graph, item.outputs, cached_set, catalogue)
        values = {node_id: self.cache[signatures[node_id]].outputs for node_id in cached}
        node_id, class_type, inputs = "", "", {}
        success = False
        try:
            for node_id in order:
                class_type = graph[node_id]["class_type"]
                if node_id in cached_set:
                    await self._report_ui(run, node_id, self.cache[signatures[node_id]].ui)
                    await self._finish_progress(run, node_id)
                    continue
                await self._start_progress(run, node_id)
                self.last_node_id = node_id
                await self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid}, client)
                inputs = {name: values[value[0]][value[1]] if _is_link(value) else value
                          for name, value in graph[node_id].get("inputs", {}).items()}
                if self.interrupt_flag:
                    raise _Interrupted()
                try:
                    outputs, ui = await self._run_node(run, node_id, class_type, inputs)
                except (_Interrupted, NodeFailure, asyncio.CancelledError):
                    raise
                except Exception as exc:  # a bug in a fake node still reads like a ComfyUI node error
                    raise NodeFailure(type(exc).__name__, str(exc)) from exc
                values[node_id] = outputs
                self.cache[signatures[node_id]] = _CacheEntry(outputs, ui)
                run.executed.append(node_id)
                await self._report_ui(run, node_id, ui)
                await self._finish_progress(run, node_id)
        except _Interrupted:
            await self._add_message(run, "execution_interrupted", {
                "prompt_id": pid, "node_id": node_id, "node_type": class_type, "executed": list(run.executed),
            }, broadcast=True)
        except NodeFailure as failure:
            raw_inputs = graph[node_id].get("inputs", {})
            await self._add_message(run, "execution_error", {
                "prompt_id": pid,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(run.executed),
                "exception_message": failure.message + "\n",
                "exception_type": failure.exception_type,
                "traceback": _TRACEBACK_HEAD + [failure.frame or _NODE_FRAMES.get(class_type) or
                                                f'  File "/opt/ComfyUI/nodes.py", line 1, in {class_type}\n'],
                "current_inputs": {name: [_format_input(inputs.get(name, value))]
                                   for name, value in raw_inputs.items()},
                "current_outputs": staged,
            })
        else:
            success = True
            await self._add_message(run, "execution_success", {"prompt_id": pid})
        self.last_node_id = None

        entry = {
            "prompt": item.as_list(),
            "outputs": run.ui,
            "status": {"status_str": "success" if success else "error", "completed": success,
                       "messages": [[event, data] for event, data in run.messages]},
            "meta": run.meta,
        }
        self.history[pid] = (copy.deepcopy(entry), time.monotonic() + self.history_delay)
        self.running = None
        await self.broadcast_status()
        if client is not None:
            await self.send("executing", {"node": None, "prompt_id": pid}, client)

    async def _add_message(self, run: _Run, event: str, data: dict, *, broadcast: bool = False) -> None:
        data = {**data, "timestamp": _now_ms()}
        run.messages.append((event, data))
        if run.client_id is not None or broadcast:
            await self.send(event, data, run.client_id)

    async def _report_ui(self, run: _Run, node_id: str, ui: dict | None) -> None:
        if ui is None:
            return
        run.ui[node_id] = ui
        run.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                             "real_node_id": node_id}
        await self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                     "prompt_id": run.prompt_id}, run.client_id)

    def _signatures(self, graph: dict) -> dict[str, str]:
        """Cache keys: class, constant inputs, the keys of linked nodes, and a loaded file's hash."""
        memo: dict[str, str] = {}

        def signature(node_id: str, path: tuple) -> str:
            if node_id in memo:
                return memo[node_id]
            node = graph.get(node_id, {})
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            parts: dict[str, Any] = {"class": node.get("class_type"), "inputs": {}}
            for name, value in sorted(inputs.items()):
                if _is_link(value) and value[0] not in path:
                    parts["inputs"][name] = ["link", signature(value[0], path + (node_id,)), value[1]]
                else:
                    parts["inputs"][name] = value
            if parts["class"] == "LoadImage":
                key = self._input_key(str(inputs.get("image", "")))
                data = self.files.get(key) if key else None
                parts["file"] = hashlib.sha256(data).hexdigest() if data is not None else None
            memo[node_id] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
            return memo[node_id]

        return {node_id: signature(node_id, ()) for node_id in graph}

    # ------------------------------------------------------------------ progress

    def _node_progress(self, run: _Run, node_id: str) -> dict:
        return run.progress.setdefault(node_id, {"value": 0, "max": 1, "state": "pending"})

    async def _send_progress_state(self, run: _Run) -> None:
        nodes = {
            node_id: {"value": st["value"], "max": st["max"], "state": st["state"], "node_id": node_id,
                      "prompt_id": run.prompt_id, "display_node_id": node_id, "parent_node_id": None,
                      "real_node_id": node_id}
            for node_id, st in run.progress.items() if st["state"] != "pending"
        }
        await self.send("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes}, run.client_id)

    async def _start_progress(self, run: _Run, node_id: str) -> None:
        self._node_progress(run, node_id).update(state="running", value=0.0, max=1.0)
        await self._send_progress_state(run)

    async def _finish_progress(self, run: _Run, node_id: str) -> None:
        state = self._node_progress(run, node_id)
        state.update(state="finished", value=state["max"])
        await self._send_progress_state(run)

    async def _step(self, run: _Run, node_id: str, value: int, total: int) -> None:
        """One sampler step as ComfyUI's progress hook reports it."""
        if self.interrupt_flag:
            raise _Interrupted()
        client = run.client_id
        self._node_progress(run, node_id).update(state="running", value=value, max=total)
        await self._send_progress_state(run)
        with_metadata = self._supports_metadata(client)
        if with_metadata:
            metadata = json.dumps({"node_id": node_id, "prompt_id": run.prompt_id, "display_node_id": node_id,
                                   "parent_node_id": None, "real_node_id": node_id,
                                   "image_type": "image/jpeg"}).encode()
            frame = struct.pack(">II", _PREVIEW_IMAGE_WITH_METADATA, len(metadata)) + metadata + JPEG_PREVIEW
            await self._deliver(frame, client)
        await self.send("progress", {"value": value, "max": total, "prompt_id": run.prompt_id, "node": node_id},
                        client)
        if not with_metadata:
            await self._deliver(struct.pack(">II", _PREVIEW_IMAGE, 1) + JPEG_PREVIEW, client)

    async def _sample(self, run: _Run, node_id: str, steps: int, fail_at: int | None, failure: NodeFailure) -> None:
        if self.pending_failure is not None:
            at_step, exception_type, message = self.pending_failure
            self.pending_failure = None
            fail_at = max(1, min(at_step, steps))
            failure = NodeFailure(exception_type, message)
        for step in range(1, steps + 1):
            if step == fail_at:
                raise failure
            await asyncio.sleep(self.step_delay)
            await self._step(run, node_id, step, steps)

    # ------------------------------------------------------------------ nodes

    async def _run_node(self, run: _Run, node_id: str, class_type: str, inputs: dict) -> tuple[tuple, dict | None]:
        if class_type == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            return (Handle("MODEL", name), Handle("CLIP", name), Handle("VAE", name)), None
        if class_type == "LoraLoader":  # the fake's models are names: applying a LoRA changes nothing
            return (inputs["model"], inputs["clip"]), None
        if class_type in self.extra_nodes:
            return (inputs["image"],), None
        if class_type == "CLIPTextEncode":
            return (Handle("CONDITIONING", inputs["text"][:60]),), None
        if class_type == "EmptyLatentImage":
            return (Latent(inputs["width"], inputs["height"], inputs["batch_size"], 0),), None
        if class_type == "KSampler":
            latent = inputs["latent_image"]
            await self._sample(run, node_id, inputs["steps"], None, NodeFailure("RuntimeError", "sampling failed"))
            return (Latent(latent.width, latent.height, latent.count, inputs["seed"]),), None
        if class_type == "ProbeSampler":
            step = inputs["fail_at_step"]
            await self._sample(run, node_id, inputs["steps"], step or None,
                               NodeFailure("RuntimeError", f"probe failure at step {step}"))
            return (Images(inputs["width"], inputs["height"], inputs["batch_size"], inputs["seed"]),), None
        if class_type == "VAEDecode":
            samples = inputs["samples"]
            return (Images(samples.width, samples.height, samples.count, samples.seed),), None
        if class_type == "VAEEncode":
            pixels = inputs["pixels"]
            return (Latent(pixels.width, pixels.height, pixels.count, pixels.seed + int(pixels.inverted)),), None
        if class_type == "ImageInvert":
            image = inputs["image"]
            return (dataclasses.replace(image, inverted=not image.inverted),), None
        if class_type == "LoadImage":
            key = self._input_key(inputs["image"])
            data = self.files.get(key) if key else None
            size = image_size(data) if data is not None else None
            if size is None:
                raise NodeFailure("PIL.UnidentifiedImageError",
                                  f"cannot identify image file '/opt/ComfyUI/input/{inputs['image']}'")
            seed = int(hashlib.sha256(data).hexdigest()[:12], 16)
            return (Images(size[0], size[1], 1, seed), Handle("MASK", inputs["image"])), None
        if class_type == "SaveImage":
            return (), {"images": self._save_images(run, inputs["images"], inputs["filename_prefix"], "output")}
        if class_type == "PreviewImage":
            key = (node_id, class_type)
            if key not in self.preview_prefixes:
                self.preview_prefixes[key] = "ComfyUI_temp_" + "".join(
                    random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
            return (), {"images": self._save_images(run, inputs["images"], self.preview_prefixes[key], "temp")}
        raise NodeFailure("KeyError", f"'{class_type}'")

    def _save_images(self, run: _Run, images: Images, prefix: str, kind: str) -> list[dict]:
        path = posixpath.normpath(prefix)
        if path.startswith("..") or path.startswith("/"):
            raise NodeFailure("Exception", "**** ERROR: Saving image outside the output folder is not allowed."
                              f"\n full_output_folder: /opt/ComfyUI/output/{path}")
        subfolder, base = posixpath.split(path)
        counter = 1 + max((self._counter_of(name, base) for (k, sub, name) in self.files
                           if k == kind and sub == subfolder), default=0)
        text = {"prompt": json.dumps(run.item.graph)}
        results = []
        for index in range(images.count):
            name = f"{base}_{counter:05}_.png"
            self.files[(kind, subfolder, name)] = make_png(
                images.width, images.height, seed=images.seed, index=index, invert=images.inverted, text=text)
            results.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        return results

    @staticmethod
    def _counter_of(name: str, base: str) -> int:
        if not name.lower().startswith(base.lower() + "_"):
            return 0
        digits = name[len(base) + 1 :].split("_")[0]
        return int(digits) if digits.isdigit() else 0


# ==========================================================================
# The thread-owning facade
# ==========================================================================


class FakeComfy:
    """A fake ComfyUI 0.8.0 on loopback, its aiohttp loop in a background thread.

    Several can run side by side as a pool of servers that offer different things:
    ``checkpoints`` and ``loras`` are the model files (the choices of
    ``CheckpointLoaderSimple`` and ``LoraLoader``), ``node_classes`` keeps only
    these built-in classes (None keeps them all) and ``extra_nodes`` adds
    custom-node classes that pass one IMAGE through. A prompt using a class the
    server lacks, or a model it lacks, is refused as ComfyUI refuses it (and
    counted in :attr:`refusals`).

    All methods are thread-safe: they hand their work to the loop and wait.
    """

    def __init__(
        self,
        step_delay: float = 0.01,
        checkpoints: Iterable[str] = ("v1-5-pruned-emaonly.safetensors",),
        *,
        loras: Iterable[str] = (),
        node_classes: Iterable[str] | None = None,
        extra_nodes: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self._host, self._port = host, port
        self._step_delay = step_delay
        self._checkpoints = _names(checkpoints, "checkpoints")
        self._loras = _names(loras, "loras")
        self._extra_nodes = _names(extra_nodes, "extra_nodes")
        clashes = sorted(BUILTIN_CLASSES.intersection(self._extra_nodes))
        if clashes:
            raise ValueError(f"extra_nodes must not reuse built-in class names: {clashes}")
        self._node_classes = None if node_classes is None else frozenset(_names(node_classes, "node_classes"))
        unknown = sorted((self._node_classes or set()) - BUILTIN_CLASSES - set(self._extra_nodes))
        if unknown:
            raise ValueError(f"unknown node_classes {unknown}; known: {sorted(BUILTIN_CLASSES)}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start serving; returns the base URL. Port 0 picks a free port."""
        if self._loop is not None:
            return self.base_url
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-comfyui", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

        async def create() -> None:
            self._server = _Server(host=self._host, port=self._port, step_delay=self._step_delay,
                                   checkpoints=self._checkpoints, loras=self._loras,
                                   node_classes=self._node_classes, extra_nodes=self._extra_nodes)
            self._port = await self._server.start()

        try:
            self._run(create())
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._server is not None:
            try:
                self._run(self._server.shutdown())
            except Exception:
                pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> "FakeComfy":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def step_delay(self) -> float:
        """Seconds per sampler step; settable at any time (applies from the next step)."""
        return self._step_delay

    @step_delay.setter
    def step_delay(self, seconds: float) -> None:
        self._step_delay = seconds
        if self._server is not None:
            self._call(lambda s: setattr(s, "step_delay", seconds))

    def ws_url(self, client_id: str | None = None) -> str:
        url = f"ws://{self._host}:{self._port}/ws"
        return f"{url}?clientId={client_id}" if client_id else url

    # ------------------------------------------------------------------ plumbing

    def _run(self, coro: Awaitable, timeout: float = 30.0) -> Any:
        if self._loop is None:
            raise RuntimeError("FakeComfy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def _call(self, fn: Callable[[_Server], Any]) -> Any:
        """Run ``fn(server)`` on the loop thread (or here, once stopped) and return its result."""
        server = self._require_server()
        if self._loop is None or not self._loop.is_running():
            return fn(server)

        async def call() -> Any:
            return fn(server)

        return self._run(call())

    def _require_server(self) -> _Server:
        if self._server is None:
            raise RuntimeError("FakeComfy was never started")
        return self._server

    # ------------------------------------------------------------------ fault controls

    def drop_sockets(self) -> None:
        """Close every WebSocket abruptly (no close frame); the server keeps running."""
        self._call(lambda s: [conn.abort() for conn in list(s.open_sockets)])

    def go_silent(self, on: bool = True) -> None:
        """Keep sockets open but send nothing on them (messages are dropped, not queued)."""
        self._call(lambda s: setattr(s, "silent", on))

    def restart(
        self, downtime: float = 0.0, *, wait: bool = True, keep_files: bool = False,
        checkpoints: Iterable[str] | None = None, loras: Iterable[str] | None = None,
    ) -> None:
        """Kill and restart: sockets drop, the running prompt stops, queue, history, cache,
        the ``number`` counter and (unless ``keep_files``) all files are forgotten
        (transcript 12). Connections are refused for ``downtime`` seconds, then the
        server listens again on the same port. With ``wait=False`` this returns at once.
        Given ``checkpoints`` or ``loras``, it comes back offering those models instead.
        """
        server = self._require_server()
        if checkpoints is not None:
            self._checkpoints = _names(checkpoints, "checkpoints")
        if loras is not None:
            self._loras = _names(loras, "loras")
        self._run(server.go_down(keep_files, None if checkpoints is None else self._checkpoints,
                                 None if loras is None else self._loras))
        if wait:
            time.sleep(downtime)
            self._run(server.come_up())
        else:
            loop = self._loop
            assert loop is not None
            loop.call_soon_threadsafe(
                lambda: loop.call_later(downtime, lambda: asyncio.ensure_future(server.come_up()))
            )

    def set_checkpoints(self, names: Iterable[str]) -> None:
        """Offer these checkpoints from now on, without a restart (files added or removed live)."""
        self._checkpoints = _names(names, "checkpoints")
        if self._server is not None:
            self._call(lambda s: setattr(s, "checkpoints", self._checkpoints))

    def set_loras(self, names: Iterable[str]) -> None:
        """Offer these LoRAs from now on, without a restart."""
        self._loras = _names(names, "loras")
        if self._server is not None:
            self._call(lambda s: setattr(s, "loras", self._loras))

    def delay_history(self, seconds: float) -> None:
        """Prompts finishing from now on show in /history and /api/jobs only ``seconds`` after they end."""
        self._call(lambda s: setattr(s, "history_delay", max(0.0, seconds)))

    def fail_view(self, status: int = 500, times: int = 1) -> None:
        """The next ``times`` GET /view requests answer ``status``."""
        self._call(lambda s: s.view_failures.extend([status] * times))

    def slow_view(self, seconds: float) -> None:
        """Every GET /view waits ``seconds`` before answering (0 to stop)."""
        self._call(lambda s: setattr(s, "view_delay", max(0.0, seconds)))

    def drip_view(self, size: int = 0, interval: float = 0.1) -> None:
        """Every GET /view sends its body ``size`` bytes at a time, ``interval`` seconds apart
        (a slow but steady stream that no per-read timeout catches); size 0 stops it."""
        self._call(lambda s: setattr(s, "view_drip", (size, interval) if size > 0 else None))

    def fail_http(self, path_prefix: str, status: int = 500, times: int = 1, html: bool = False) -> None:
        """The next ``times`` requests whose path starts with ``path_prefix`` (WebSocket
        upgrades included) answer ``status``; ``html=True`` answers a proxy-style HTML page."""
        self._call(lambda s: s.fail_rules.append(_FailRule(path_prefix, status, times, html)))

    def reject_connections(self, on: bool = True) -> None:
        """Refuse new TCP connections and reset requests on kept-alive ones; open
        WebSockets stay up and the queue keeps running."""
        self._run(self._require_server().set_rejecting(on))

    def send_raw(self, payload: str | bytes) -> None:
        """Send one raw frame (text or binary, well-formed or not) to every registered socket."""
        self._run(self._require_server()._deliver(payload, None))

    def pause(self) -> None:
        """Hold the queue: the running prompt finishes, nothing new starts."""
        self._call(lambda s: setattr(s, "paused", True))

    def resume(self) -> None:
        def resume(server: _Server) -> None:
            server.paused = False
            server.wakeup.set()

        self._call(resume)

    def fail_next(self, at_step: int = 3, message: str = "fake failure", exception_type: str = "RuntimeError") -> None:
        """The next sampler node to run (KSampler or ProbeSampler) raises at step ``at_step``
        (clamped to its step count)."""
        self._call(lambda s: setattr(s, "pending_failure", (at_step, exception_type, message)))

    # ------------------------------------------------------------------ inspection

    @property
    def prompts(self) -> list[dict]:
        """Every accepted submission ({prompt_id, client_id, number, graph}), across restarts."""
        return self._call(lambda s: copy.deepcopy(s.prompts_log))

    def output_bytes(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        data = self._call(lambda s: s.files.get((type, subfolder, filename)))
        if data is None:
            raise FileNotFoundError(f"{type}/{subfolder}/{filename}".replace("//", "/"))
        return data

    @property
    def refusals(self) -> int:
        """How many POST /prompt answered 400 because the prompt used a node class or a combo
        value (a checkpoint, a LoRA ...) this server does not offer, across restarts."""
        return self._call(lambda s: len(s.refusal_log))

    @property
    def refusal_log(self) -> list[tuple[str, str]]:
        """(prompt_id, reason) for each of :attr:`refusals`, oldest first."""
        return self._call(lambda s: list(s.refusal_log))

    @property
    def view_requests(self) -> int:
        """How many GET /view requests arrived (failed and slow ones included)."""
        return self._call(lambda s: s.view_requests)

    @property
    def uploads(self) -> dict[str, bytes]:
        """Input files by name ("sub/name.png" when uploaded to a subfolder)."""
        return self._call(lambda s: {posixpath.join(sub, name): data
                                     for (kind, sub, name), data in s.files.items() if kind == "input"})

    def connected_client_ids(self) -> list[str]:
        """Client ids that messages are routed to now (ComfyUI's socket registry)."""
        return self._call(lambda s: list(s.sockets))


# ==========================================================================
# Command line
# ==========================================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.comfyui", description="Run the fake ComfyUI.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188, help="0 picks a free port")
    parser.add_argument("--step-delay", type=float, default=0.05, help="seconds per sampler step")
    parser.add_argument("--checkpoint", action="append", dest="checkpoints",
                        help="a checkpoint name to offer (repeatable)")
    parser.add_argument("--lora", action="append", dest="loras", default=[],
                        help="a LoRA name to offer (repeatable)")
    parser.add_argument("--node-class", action="append", dest="node_classes",
                        help="offer only these built-in node classes (repeatable; default: all)")
    parser.add_argument("--extra-node", action="append", dest="extra_nodes", default=[],
                        help="a custom node class to add, IMAGE in and out (repeatable)")
    args = parser.parse_args(argv)
    fake = FakeComfy(step_delay=args.step_delay,
                     checkpoints=args.checkpoints or ("v1-5-pruned-emaonly.safetensors",),
                     loras=args.loras, node_classes=args.node_classes, extra_nodes=args.extra_nodes,
                     host=args.host, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    url = fake.start()
    print(f"fake ComfyUI listening on {url}", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
