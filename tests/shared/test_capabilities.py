"""What a server can run and what a job needs (shared/pool/capabilities.py): pure functions, no database."""

from __future__ import annotations

import json

import pytest
import requests

from shared.comfy import ComfyClient
from shared.config import PROJECT_ROOT
from shared.pool import capabilities as caps_mod
from shared.pool.capabilities import (CapabilitiesCache, available, can_run, digest, from_object_info, missing,
                                      model_of, needs_of, union_choices)
from shared.workflows import load_workflow, load_workflows
from tests.fakes.comfyui import FakeComfy

WORKFLOWS = PROJECT_ROOT / "workflows"
CKPT = "CheckpointLoaderSimple.ckpt_name"


def _workflows():
    found, problems = load_workflows(WORKFLOWS)
    assert not problems and {"txt2img", "img2img"} <= set(found)
    return found


def _workflow(name):
    return load_workflow(WORKFLOWS / f"{name}.json")


# -- from_object_info ------------------------------------------------------------------------

def _read(fake: FakeComfy) -> dict:
    session = requests.Session()
    try:
        return ComfyClient(session, fake.base_url, timeout=5).object_info()
    finally:
        session.close()


def test_from_a_real_object_info_answer():
    """A fake server's /object_info, read through ComfyClient, as the listener reads it."""
    classes = caps_mod.workflow_classes(_workflows()) | {"LoraLoader"}
    with FakeComfy(checkpoints=["b.safetensors", "a.safetensors"], loras=["pixel.safetensors"],
                   extra_nodes=["FaceRestore"]) as fake:
        info = _read(fake)
        caps = from_object_info(info, classes)
        again = from_object_info(_read(fake), classes)
    # Every class the server has (not only the workflows' ones), sorted.
    assert caps["classes"] == sorted(info) and "FaceRestore" in caps["classes"] and "ProbeSampler" in caps["classes"]
    choices = caps["choices"]
    assert choices[CKPT] == ["b.safetensors", "a.safetensors"]  # the server's order is kept
    assert choices["LoraLoader.lora_name"] == ["pixel.safetensors"]
    assert "euler" in choices["KSampler.sampler_name"] and "normal" in choices["KSampler.scheduler"]
    # The upload combo (the server's input folder) is not a capability: images are sent with the prompt.
    assert "LoadImage.image" not in choices
    # Only combo inputs, only of the requested classes.
    assert "KSampler.steps" not in choices and "EmptyLatentImage.width" not in choices
    assert not any(key.startswith(("ProbeSampler.", "FaceRestore.")) for key in choices)
    # Two reads of the same server give the same fingerprint.
    assert digest(caps) == digest(again)


def test_a_server_with_few_classes_offers_no_choices_of_classes_it_lacks():
    with FakeComfy(node_classes=["LoadImage", "SaveImage"], extra_nodes=["FaceRestore"]) as fake:
        caps = from_object_info(_read(fake), caps_mod.workflow_classes(_workflows()))
    assert caps == {"classes": ["FaceRestore", "LoadImage", "SaveImage"], "choices": {}}


def test_a_restarted_server_with_other_models_gives_other_capabilities():
    classes = {"CheckpointLoaderSimple"}
    with FakeComfy(checkpoints=["a.safetensors"]) as fake:
        before = from_object_info(_read(fake), classes)
        fake.set_checkpoints(["c.safetensors"])
        after = from_object_info(_read(fake), classes)
    assert before["choices"][CKPT] == ["a.safetensors"] and after["choices"][CKPT] == ["c.safetensors"]
    assert digest(before) != digest(after)


HAND_MADE = {
    "Loader": {"input": {
        "required": {"ckpt_name": [["x.safetensors", "y.safetensors"], {"tooltip": "t"}],
                     "strength": ["FLOAT", {"default": 1.0}]},
        "optional": {"vae_name": ["COMBO", {"options": ["v1", "v2"]}]},
    }},
    "NewStyle": {"input": {"required": {"mode": ["COMBO", {"options": ["fast", "slow"], "default": "fast"}],
                                        "count": ["INT", {"min": 1}]}}},
    "Upload": {"input": {"required": {"image": [["cat.png", "dog.png"], {"image_upload": True}]}}},
    "UploadCombo": {"input": {"required": {"image": ["COMBO", {"options": ["a.png"], "image_upload": True}],
                                           "channel": [["red", "green"]]}}},
    "Mixed": {"input": {"required": {"pick": [["ok", 3, None, "fine"]]}}},
    "NoInputs": {"output": ["IMAGE"]},
    "Broken": "not a dict",
    "Hidden": {"input": {"hidden": {"prompt": "PROMPT"}}},
}


@pytest.mark.parametrize("class_types, expected", [
    ({"Loader"}, {"Loader.ckpt_name": ["x.safetensors", "y.safetensors"], "Loader.vae_name": ["v1", "v2"]}),
    ({"NewStyle"}, {"NewStyle.mode": ["fast", "slow"]}),                       # the COMBO format
    ({"Upload"}, {}),                                                           # an upload combo is left out
    ({"UploadCombo"}, {"UploadCombo.channel": ["red", "green"]}),               # ... in the COMBO format too
    ({"Mixed"}, {"Mixed.pick": ["ok", "fine"]}),                               # only strings are choices
    ({"NoInputs", "Broken", "Hidden"}, {}),                                     # odd entries are no crash
    ({"NotOnThisServer"}, {}),                                                  # a class the server lacks
    (set(), {}),
])
def test_from_hand_made_object_info(class_types, expected):
    caps = from_object_info(HAND_MADE, class_types)
    assert caps["choices"] == expected
    assert caps["classes"] == sorted(HAND_MADE)
    json.dumps(caps)  # stored as JSON on the backend row


# -- needs_of --------------------------------------------------------------------------------

GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"sampler_name": "euler", "scheduler": "normal", "steps": 20,
                                               "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "upload_123.png"}},
    "_meta": "not a node",
}
KNOWN = {"KSampler.sampler_name", "KSampler.scheduler", CKPT, "LoadImage.image"}


@pytest.mark.parametrize("graph, known, skip, values", [
    (GRAPH, KNOWN, (), {"KSampler.sampler_name": "euler", "KSampler.scheduler": "normal", CKPT: "a.safetensors",
                        "LoadImage.image": "upload_123.png"}),
    # An image input is sent with the prompt: never judged against the server's input folder.
    (GRAPH, KNOWN, {("10", "image")}, {"KSampler.sampler_name": "euler", "KSampler.scheduler": "normal",
                                       CKPT: "a.safetensors"}),
    # Only inputs some server lists as a combo are values; links and numbers never are.
    (GRAPH, {CKPT, "KSampler.steps", "KSampler.model"}, (), {CKPT: "a.safetensors"}),
    (GRAPH, set(), (), {}),
    # Two nodes of one class with different values: both are needed.
    ({"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
      "14": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}}},
     {CKPT}, (), {CKPT: "a.safetensors", f"{CKPT}#14": "b.safetensors"}),
    # ... with the same value: needed once.
    ({"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
      "14": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}},
     {CKPT}, (), {CKPT: "a.safetensors"}),
    # Skipping one of two nodes of a class judges only the other.
    ({"4": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
      "5": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}},
     {"LoadImage.image"}, {("4", "image")}, {"LoadImage.image": "example.png"}),
])
def test_needs_of(graph, known, skip, values):
    needs = needs_of(graph, known, skip=skip)
    assert needs["values"] == values
    assert needs["classes"] == sorted({n["class_type"] for n in graph.values() if isinstance(n, dict)})


def test_needs_of_a_filled_workflow_skips_its_image_inputs():
    wf = _workflow("img2img")
    graph, _ = wf.fill({"prompt": "a cat", "checkpoint": "b.safetensors"}, {"image": "users_u_up_1.png"})
    needs = needs_of(graph, KNOWN, skip=wf.input_targets())
    assert needs["values"][CKPT] == "b.safetensors"
    assert "LoadImage.image" not in needs["values"] and "upload" not in json.dumps(needs["values"])
    assert "LoadImage" in needs["classes"] and "VAEEncode" in needs["classes"]
    # Without the skip the uploaded file name would be judged against the server's input folder.
    assert needs_of(graph, KNOWN)["values"]["LoadImage.image"] == "users_u_up_1.png"


# -- model_of --------------------------------------------------------------------------------

@pytest.mark.parametrize("needs, model", [
    ({"values": {CKPT: "a.safetensors", "KSampler.sampler_name": "euler"}}, "a.safetensors"),
    ({"values": {"UNETLoader.unet_name": "flux.safetensors"}}, "flux.safetensors"),
    ({"values": {"LoraLoader.lora_name": "pixel.safetensors", "KSampler.sampler_name": "euler"}}, None),
    ({"values": {f"{CKPT}#14": "b.safetensors"}}, "b.safetensors"),
    ({"values": {f"{CKPT}#14": "b.safetensors", CKPT: "a.safetensors"}}, "a.safetensors"),  # deterministic
    ({"values": {}}, None),
    ({}, None),
    (None, None),
])
def test_model_of(needs, model):
    assert model_of(needs) == model


# -- missing / can_run -----------------------------------------------------------------------

SERVER = {"classes": ["CheckpointLoaderSimple", "KSampler", "SaveImage"],
          "choices": {CKPT: ["a.safetensors", "b.safetensors"], "KSampler.sampler_name": ["euler", "lcm"]}}


@pytest.mark.parametrize("needs, server, lacking", [
    ({"classes": ["KSampler", "SaveImage"], "values": {CKPT: "a.safetensors"}}, SERVER, []),
    ({"classes": [], "values": {}}, SERVER, []),
    ({"classes": ["KSampler", "FaceRestore"], "values": {}}, SERVER, ["node class FaceRestore"]),
    ({"classes": ["KSampler"], "values": {CKPT: "c.safetensors"}}, SERVER, ["ckpt_name 'c.safetensors'"]),
    ({"classes": ["KSampler"], "values": {CKPT: "a.safetensors", f"{CKPT}#14": "b.safetensors"}}, SERVER, []),
    ({"classes": ["KSampler"], "values": {CKPT: "a.safetensors", f"{CKPT}#14": "z.safetensors"}}, SERVER,
     ["ckpt_name 'z.safetensors'"]),
    ({"classes": ["LoraLoader"], "values": {"LoraLoader.lora_name": "pixel.safetensors"}}, SERVER,
     ["node class LoraLoader", "lora_name 'pixel.safetensors'"]),
    ({"classes": ["KSampler"], "values": {}}, None, ["capabilities not known yet"]),
    ({"classes": ["KSampler"], "values": {}}, {}, ["capabilities not known yet"]),
])
def test_missing_and_can_run(needs, server, lacking):
    assert missing(needs, server) == lacking
    assert can_run(needs, server) is (lacking == [])


# -- union_choices ---------------------------------------------------------------------------

def test_union_choices_keeps_first_seen_order_without_duplicates():
    choices = union_choices([
        {"choices": {CKPT: ["b.safetensors", "a.safetensors"], "KSampler.sampler_name": ["euler"]}},
        {"classes": ["X"]},  # no choices at all
        {"choices": {CKPT: ["a.safetensors", "c.safetensors", "b.safetensors"], "LoraLoader.lora_name": []}},
        {"choices": {CKPT: ["c.safetensors", "d.safetensors", "d.safetensors"]}},  # a repeat within one list
    ])
    assert choices("CheckpointLoaderSimple", "ckpt_name") == ["b.safetensors", "a.safetensors", "c.safetensors",
                                                               "d.safetensors"]
    assert choices("KSampler", "sampler_name") == ["euler"]
    assert choices("LoraLoader", "lora_name") == []       # known, but nothing to offer
    assert choices("KSampler", "scheduler") is None       # no server knows it: left to ComfyUI
    assert union_choices([])("CheckpointLoaderSimple", "ckpt_name") is None


def test_union_choices_does_not_change_the_servers_lists():
    first = {"choices": {CKPT: ["a"]}}
    second = {"choices": {CKPT: ["b"]}}
    assert union_choices([first, second])("CheckpointLoaderSimple", "ckpt_name") == ["a", "b"]
    assert first == {"choices": {CKPT: ["a"]}} and second == {"choices": {CKPT: ["b"]}}


# -- available -------------------------------------------------------------------------------

TXT2IMG_CLASSES = ["CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler", "SaveImage",
                   "VAEDecode"]
FULL = {"classes": TXT2IMG_CLASSES, "choices": {CKPT: ["a.safetensors"], "KSampler.sampler_name": ["euler"],
                                               "KSampler.scheduler": ["normal"]}}


def _without_class(caps, cls):
    return {**caps, "classes": [c for c in caps["classes"] if c != cls]}


def _with_choices(caps, **choices):
    return {**caps, "choices": {**caps["choices"], **{k.replace("__", "."): v for k, v in choices.items()}}}


@pytest.mark.parametrize("servers, expected", [
    ([FULL], True),
    ([], False),
    ([_without_class(FULL, "SaveImage")], False),                                  # a class missing
    ([_with_choices(FULL, CheckpointLoaderSimple__ckpt_name=[])], False),           # no checkpoint at all
    ([{**FULL, "choices": {k: v for k, v in FULL["choices"].items() if k != CKPT}}], False),  # choice list unknown
    ([_without_class(FULL, "SaveImage"), FULL], True),                              # one capable server is enough
    # Every class on one server, every choice on another: no single server can run it.
    ([{**FULL, "choices": {CKPT: [], "KSampler.sampler_name": ["euler"], "KSampler.scheduler": ["normal"]}},
      _without_class(FULL, "KSampler")], False),
])
def test_available(servers, expected):
    assert available(_workflow("txt2img"), servers) is expected


# -- digest ----------------------------------------------------------------------------------

def test_digest_is_stable_and_short():
    a = {"classes": ["A", "B"], "choices": {"A.x": ["1", "2"], "B.y": ["3"]}}
    same_reordered = {"choices": {"B.y": ["3"], "A.x": ["1", "2"]}, "classes": ["A", "B"]}
    assert digest(a) == digest(same_reordered) == digest(json.loads(json.dumps(a)))
    assert len(digest(a)) == 16 and int(digest(a), 16) >= 0
    assert digest(a) != digest({**a, "choices": {"A.x": ["1", "2"], "B.y": ["3", "4"]}})
    assert digest(a) != digest({**a, "classes": ["A", "B", "C"]})


# -- CapabilitiesCache -----------------------------------------------------------------------

def test_cache_returns_what_was_put():
    cache = CapabilitiesCache()
    assert cache.get("abc") is None
    cache.put("abc", FULL)
    assert cache.get("abc") is FULL


def test_cache_is_bounded_and_forgets_the_oldest():
    cache = CapabilitiesCache()
    n = CapabilitiesCache.MAX + 10
    for i in range(n):
        cache.put(f"h{i}", {"classes": [str(i)]})
    kept = [i for i in range(n) if cache.get(f"h{i}") is not None]
    assert len(kept) == CapabilitiesCache.MAX
    assert kept == list(range(10, n))  # the newest stay
    assert cache.get(f"h{n - 1}") == {"classes": [str(n - 1)]}
