"""Workflow files: loading and its errors, filling params into the graph, the public description."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from shared.errors import InvalidParamsError
from shared.workflows import (InputSpec, ParamSpec, Price, Target, Workflow, WorkflowFileError,
                              choices_from_object_info, load_price, load_workflow, load_workflows)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "comfyui"


# --- a small but complete workflow used by most tests -------------------------

def base_graph() -> dict:
    """Return the test graph (API format, as "Save (API)" writes it)."""
    return {
        "3": {"inputs": {"seed": 1, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                         "latent_image": ["5", 0]},
              "class_type": "KSampler", "_meta": {"title": "KSampler"}},
        "4": {"inputs": {"ckpt_name": "a.safetensors"}, "class_type": "CheckpointLoaderSimple",
              "_meta": {"title": "Load Checkpoint"}},
        "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage",
              "_meta": {"title": "Empty Latent Image"}},
        "6": {"inputs": {"text": "", "clip": ["4", 1]}, "class_type": "CLIPTextEncode",
              "_meta": {"title": "Positive"}},
        "7": {"inputs": {"text": "bad hands", "clip": ["4", 1]}, "class_type": "CLIPTextEncode",
              "_meta": {"title": "Negative"}},
        "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode",
              "_meta": {"title": "VAE Decode"}},
        "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage",
              "_meta": {"title": "Save Image"}},
        "10": {"inputs": {"image": "example.png"}, "class_type": "LoadImage"},
        "11": {"inputs": {"enabled": False, "images": ["8", 0]}, "class_type": "MaybePreview",
               "_meta": {"title": "Preview switch"}},
    }


def base_params() -> dict:
    """Return the test map: every type, both ways of naming a node, a multi-target param."""
    return {
        "prompt": {"title": "Positive", "input": "text", "type": "string", "required": True, "max_length": 20},
        "negative": {"title": "Negative", "input": "text", "type": "string", "default": ""},
        "size": {"targets": [{"node": "5", "input": "width"}, {"title": "Empty Latent Image", "input": "height"}],
                 "type": "integer", "default": 512, "minimum": 64, "maximum": 1024, "multiple_of": 8},
        "seed": {"node": "3", "input": "seed", "type": "integer", "minimum": 0, "maximum": 1000,
                 "random_default": True},
        "steps": {"node": 3, "input": "steps", "type": "integer", "minimum": 1, "maximum": 50},
        "cfg": {"node": "3", "input": "cfg", "type": "number", "default": 7.5, "minimum": 1, "maximum": 30},
        "sampler": {"node": "3", "input": "sampler_name", "type": "string", "enum": ["euler", "ddim"],
                    "default": "euler"},
        "scheduler": {"node": "3", "input": "scheduler", "type": "string", "enum_from": "KSampler.scheduler",
                      "default": "normal"},
        "checkpoint": {"node": "4", "input": "ckpt_name", "type": "string",
                       "enum_from": "CheckpointLoaderSimple.ckpt_name", "label": "Model"},
        "preview": {"node": "11", "input": "enabled", "type": "boolean", "default": True},
    }


def base_doc() -> dict:
    return {"title": "Test", "description": "for tests", "timeout_s": 30, "graph": base_graph(),
            "params": base_params(),
            "inputs": {"image": {"node": "10", "input": "image", "required": True}}}


# Every (node, input) that the map above may set; everything else must never change.
MAPPED = {("6", "text"), ("7", "text"), ("5", "width"), ("5", "height"), ("3", "seed"), ("3", "steps"),
          ("3", "cfg"), ("3", "sampler_name"), ("3", "scheduler"), ("4", "ckpt_name"), ("11", "enabled"),
          ("10", "image")}

SCHEDULERS = ["normal", "karras"]


def choices(class_type: str, input_name: str):
    """Stand in for the gateway's cached /object_info lookup."""
    if (class_type, input_name) == ("KSampler", "scheduler"):
        return list(SCHEDULERS)
    return None


def write(folder: Path, file: str, doc) -> Path:
    """Write a workflow file: a document as JSON, or the exact text or bytes given."""
    path = folder / file
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def wf(tmp_path) -> Workflow:
    return load_workflow(write(tmp_path, "t.json", base_doc()))


def without_mapped(graph: dict) -> dict:
    """Return the graph with every mapped input removed (what must stay identical)."""
    out = copy.deepcopy(graph)
    for node_id, input_name in MAPPED:
        out[node_id]["inputs"].pop(input_name, None)
    return out


def fill_ok(wf, params, inputs=None, **kw):
    return wf.fill(params, {"image": "in.png"} if inputs is None else inputs, **kw)


# --- loading: the good case ----------------------------------------------------

def test_load_builds_specs(wf):
    assert (wf.name, wf.title, wf.description, wf.timeout_s) == ("t", "Test", "for tests", 30)
    assert wf.graph == base_graph()
    assert wf.params["prompt"] == ParamSpec(name="prompt", type="string", targets=(Target("6", "text"),),
                                            required=True, max_length=20)
    assert wf.params["size"].targets == (Target("5", "width"), Target("5", "height"))
    assert wf.params["steps"].targets == (Target("3", "steps"),)  # "node": 3 (a number) names node "3"
    assert wf.params["steps"].default == 20  # no "default": the graph's value
    assert wf.params["checkpoint"].default == "a.safetensors"
    assert wf.params["seed"].default is None and wf.params["seed"].random_default
    assert wf.params["checkpoint"].enum_source == ("CheckpointLoaderSimple", "ckpt_name")
    assert wf.inputs == {"image": InputSpec(name="image", targets=(Target("10", "image"),), required=True)}


def test_name_comes_from_file_name_and_title_defaults_to_it(tmp_path):
    doc = base_doc()
    del doc["title"], doc["description"], doc["timeout_s"], doc["inputs"]
    wf = load_workflow(write(tmp_path, "my-flow_2.json", doc))
    assert (wf.name, wf.title, wf.description, wf.timeout_s, wf.inputs) == ("my-flow_2", "my-flow_2", "", None, {})


@pytest.mark.parametrize("node_id, title", [("6", "Positive"), (6, "Positive"), ("10", "LoadImage"), ("99", None)])
def test_node_title(wf, node_id, title):
    assert wf.node_title(node_id) == title


# --- filling: valid values -----------------------------------------------------

DEFAULTS = {"prompt": "a cat", "negative": "", "size": 512, "steps": 20, "cfg": 7.5, "sampler": "euler",
            "scheduler": "normal", "checkpoint": "a.safetensors", "preview": True}

ALL_SET = {"prompt": "x", "negative": "y", "size": 64, "seed": 7, "steps": 50, "cfg": 1, "sampler": "ddim",
           "scheduler": "karras", "checkpoint": "b.safetensors", "preview": False}


@pytest.mark.parametrize("params, expected, kw", [
    # only the required param: defaults (explicit and from the graph) fill the rest
    ({"prompt": "a cat"}, DEFAULTS, {}),
    # null counts as omitted
    ({"prompt": "a cat", "steps": None, "negative": None}, DEFAULTS, {}),
    # every param set; an integer is a valid number (cfg 1)
    (ALL_SET, ALL_SET, {"choices": choices}),
    # the boundaries are inclusive; length counts characters, not bytes
    ({"prompt": "猫" * 20, "size": 1024, "seed": 1000, "steps": 1, "cfg": 30.0},
     {**DEFAULTS, "prompt": "猫" * 20, "size": 1024, "seed": 1000, "steps": 1, "cfg": 30.0}, {}),
    ({"prompt": "", "seed": 0, "size": 64}, {**DEFAULTS, "prompt": "", "seed": 0, "size": 64}, {}),
    # enum_from with unknown choices: ComfyUI judges the value
    ({"prompt": "a", "scheduler": "anything"}, {**DEFAULTS, "prompt": "a", "scheduler": "anything"}, {}),
    ({"prompt": "a", "scheduler": "karras"}, {**DEFAULTS, "prompt": "a", "scheduler": "karras"},
     {"choices": choices}),
])
def test_fill_valid(wf, params, expected, kw):
    graph, resolved = fill_ok(wf, params, rng=random.Random(5), **kw)
    seed = resolved["seed"]
    assert resolved == {"seed": seed, **expected}
    assert 0 <= seed <= 1000
    inputs = {(n, i): graph[n]["inputs"][i] for n, i in MAPPED}
    assert inputs == {
        ("6", "text"): resolved["prompt"], ("7", "text"): resolved["negative"],
        ("5", "width"): resolved["size"], ("5", "height"): resolved["size"],  # one value, two targets
        ("3", "seed"): seed, ("3", "steps"): resolved["steps"], ("3", "cfg"): resolved["cfg"],
        ("3", "sampler_name"): resolved["sampler"], ("3", "scheduler"): resolved["scheduler"],
        ("4", "ckpt_name"): resolved["checkpoint"], ("11", "enabled"): resolved["preview"],
        ("10", "image"): "in.png",
    }
    assert without_mapped(graph) == without_mapped(base_graph())  # nothing else moved
    assert wf.graph == base_graph()


@pytest.mark.parametrize("rng_seed", range(20))
def test_random_seed_is_drawn_in_range_and_stored(wf, rng_seed):
    graph, resolved = fill_ok(wf, {"prompt": "a"}, rng=random.Random(rng_seed))
    assert 0 <= resolved["seed"] <= 1000
    assert graph["3"]["inputs"]["seed"] == resolved["seed"]


def test_random_seed_default_rng_and_given_seed_wins(wf):
    drawn = {fill_ok(wf, {"prompt": "a"})[1]["seed"] for _ in range(30)}
    assert all(0 <= s <= 1000 for s in drawn) and len(drawn) > 1
    graph, resolved = fill_ok(wf, {"prompt": "a", "seed": 42}, rng=random.Random(0))
    assert resolved["seed"] == graph["3"]["inputs"]["seed"] == 42


class EdgeRng:
    """An rng that always picks the lowest or the highest value and records what it was asked."""

    def __init__(self, high: bool):
        self.high, self.calls = high, []

    def randint(self, a, b):
        self.calls.append((a, b))
        return b if self.high else a


@pytest.mark.parametrize("minimum, maximum, multiple_of, high, expected", [
    (0, 4294967295, None, False, 0),
    (0, 4294967295, None, True, 4294967295),
    (10, 100, 7, False, 14),  # the draw stays on the multiple_of grid
    (10, 100, 7, True, 98),
    (-20, -3, 5, False, -20),
    (-20, -3, 5, True, -5),
])
def test_random_default_range(tmp_path, minimum, maximum, multiple_of, high, expected):
    doc = base_doc()
    doc["params"]["seed"].update(minimum=minimum, maximum=maximum)
    if multiple_of:
        doc["params"]["seed"]["multiple_of"] = multiple_of
    wf = load_workflow(write(tmp_path, "t.json", doc))
    rng = EdgeRng(high)
    _, resolved = fill_ok(wf, {"prompt": "a"}, rng=rng)
    assert resolved["seed"] == expected
    assert len(rng.calls) == 1


def test_fill_returns_a_deep_copy(wf):
    graph, _ = fill_ok(wf, {"prompt": "a"})
    graph["3"]["inputs"]["model"][0] = "99"
    graph["6"]["inputs"]["text"] = "changed"
    graph["8"]["_meta"]["title"] = "changed"
    graph["new"] = {"class_type": "Evil", "inputs": {}}
    assert wf.graph == base_graph()
    again, _ = fill_ok(wf, {"prompt": "b"})
    assert again["3"]["inputs"]["model"] == ["4", 0] and "new" not in again
    assert again["3"]["inputs"]["model"] is not wf.graph["3"]["inputs"]["model"]
    assert again["8"]["_meta"] is not wf.graph["8"]["_meta"]


# --- filling: invalid values ---------------------------------------------------

@pytest.mark.parametrize("params, inputs, details", [
    ({"prompt": "a", "promt": "b"}, None, {"promt": "is not a parameter of t"}),
    ({}, None, {"prompt": "is required"}),
    ({"prompt": None}, None, {"prompt": "is required"}),
    ({"prompt": 5}, None, {"prompt": "must be a string"}),
    ({"prompt": True}, None, {"prompt": "must be a string"}),
    ({"prompt": "a" * 21}, None, {"prompt": "must be at most 20 characters long"}),
    ({"prompt": "a", "steps": "20"}, None, {"steps": "must be an integer"}),  # strings are not coerced
    ({"prompt": "a", "steps": 20.0}, None, {"steps": "must be an integer"}),
    ({"prompt": "a", "steps": True}, None, {"steps": "must be an integer"}),  # bool is not an integer
    ({"prompt": "a", "steps": 0}, None, {"steps": "must be at least 1"}),
    ({"prompt": "a", "steps": 51}, None, {"steps": "must be at most 50"}),
    ({"prompt": "a", "seed": -1}, None, {"seed": "must be at least 0"}),
    ({"prompt": "a", "seed": 2 ** 64}, None, {"seed": "must be at most 1000"}),
    ({"prompt": "a", "size": 100}, None, {"size": "must be a multiple of 8"}),
    ({"prompt": "a", "size": 56}, None, {"size": "must be at least 64"}),
    ({"prompt": "a", "size": 1032}, None, {"size": "must be at most 1024"}),
    ({"prompt": "a", "cfg": "7"}, None, {"cfg": "must be a number"}),
    ({"prompt": "a", "cfg": False}, None, {"cfg": "must be a number"}),
    ({"prompt": "a", "cfg": float("nan")}, None, {"cfg": "must be a number"}),
    ({"prompt": "a", "cfg": 0.5}, None, {"cfg": "must be at least 1"}),
    ({"prompt": "a", "cfg": 30.01}, None, {"cfg": "must be at most 30"}),
    ({"prompt": "a", "preview": 1}, None, {"preview": "must be true or false"}),
    ({"prompt": "a", "preview": "true"}, None, {"preview": "must be true or false"}),
    ({"prompt": "a", "sampler": "heun"}, None, {"sampler": "must be one of: euler, ddim"}),
    ({"prompt": "a", "scheduler": "fancy"}, None, {"scheduler": "must be one of: normal, karras"}),
    ({"prompt": "a"}, {}, {"inputs.image": "is required"}),
    ({"prompt": "a"}, {"image": None}, {"inputs.image": "is required"}),
    ({"prompt": "a"}, {"image": ""}, {"inputs.image": "must be a file name"}),
    ({"prompt": "a"}, {"image": 5}, {"inputs.image": "must be a file name"}),
    ({"prompt": "a"}, {"image": "x.png", "mask": "m.png"}, {"inputs.mask": "is not an image input of t"}),
    ({"prompt": "a"}, ["x.png"], {"inputs": "must be an object"}),
    (["a"], None, {"params": "must be an object"}),
    # several bad fields are reported together
    ({"prompt": 1, "size": 100, "steps": 0, "cfg": True, "bogus": 1}, {},
     {"prompt": "must be a string", "size": "must be a multiple of 8", "steps": "must be at least 1",
      "cfg": "must be a number", "bogus": "is not a parameter of t", "inputs.image": "is required"}),
])
def test_fill_invalid(wf, params, inputs, details):
    with pytest.raises(InvalidParamsError) as caught:
        wf.fill(params, {"image": "in.png"} if inputs is None else inputs, choices=choices)
    err = caught.value
    assert (err.status, err.code) == (400, "invalid_params")
    assert err.details == details
    for field, reason in details.items():
        assert f"{field} {reason}" in err.message
    assert wf.graph == base_graph()


def test_long_choice_lists_are_not_spelled_out(wf):
    many = [f"s{i}" for i in range(12)]
    with pytest.raises(InvalidParamsError) as caught:
        fill_ok(wf, {"prompt": "a", "scheduler": "x"}, choices=lambda c, i: many if c == "KSampler" else None)
    assert caught.value.details == {"scheduler": "must be one of the 12 choices listed by GET /v1/workflows"}


def test_no_choices_on_the_server(wf):
    with pytest.raises(InvalidParamsError) as caught:
        fill_ok(wf, {"prompt": "a", "checkpoint": "a.safetensors"},
                choices=lambda c, i: [] if c == "CheckpointLoaderSimple" else None)
    assert caught.value.details == {"checkpoint": "has no choices available on the server"}


# --- security: an app can set only what the map names, and only to a scalar ---

@pytest.mark.parametrize("name", ["text", "seed_", "3", "ckpt_name", "class_type", "graph", "inputs", "image",
                                  "__class__", "filename_prefix"])
def test_unknown_param_sets_nothing(wf, name):
    with pytest.raises(InvalidParamsError) as caught:
        fill_ok(wf, {"prompt": "a", name: "evil"})
    assert caught.value.details == {name: "is not a parameter of t"}


@pytest.mark.parametrize("param", sorted(base_params()))
@pytest.mark.parametrize("value", [["4", 0], ["9", 0], [], {}, {"class_type": "Evil", "inputs": {}}, [1, 2, 3]])
def test_list_or_dict_value_rejected(wf, param, value):
    with pytest.raises(InvalidParamsError) as caught:
        fill_ok(wf, {"prompt": "a", param: value})
    assert set(caught.value.details) == {param}
    assert caught.value.details[param].startswith("must be ")


@pytest.mark.parametrize("value", [["4", 0], {"class_type": "Evil"}])
def test_list_or_dict_image_rejected(wf, value):
    with pytest.raises(InvalidParamsError) as caught:
        wf.fill({"prompt": "a"}, {"image": value})
    assert caught.value.details == {"inputs.image": "must be a file name"}


@pytest.mark.parametrize("prompt", ['","class_type":"Evil', '["4", 0]', "{}", "\u0000\n</script>"])
def test_string_values_land_verbatim_and_nothing_else_changes(wf, prompt):
    graph, _ = fill_ok(wf, {"prompt": prompt}, rng=random.Random(0))
    assert graph["6"]["inputs"]["text"] == prompt
    assert graph.keys() == base_graph().keys()
    assert {n: node["inputs"].keys() for n, node in graph.items()} == \
        {n: node["inputs"].keys() for n, node in base_graph().items()}
    assert without_mapped(graph) == without_mapped(base_graph())


# --- enum_from: ComfyUI's /object_info, both combo formats ---------------------

def fixture_object_info(class_type: str) -> dict:
    """Return the recorded /object_info/<class> answer of the discovery transcript."""
    for line in (FIXTURES / "09_discovery.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "http" and entry["data"]["path"] == f"/object_info/{class_type}":
            return entry["data"]["response"]
    raise AssertionError(f"no /object_info/{class_type} in the transcript")


LEGACY = {"KSampler": {"input": {"required": {"scheduler": [["normal", "karras"], {"tooltip": "t"}],
                                              "seed": ["INT", {"default": 0, "min": 0}]}}}}
COMBO = {"KSampler": {"input": {"required": {"scheduler": ["COMBO", {"options": ["normal", "karras"],
                                                                      "tooltip": "t"}]}}}}
OPTIONAL = {"KSampler": {"input": {"required": {}, "optional": {"scheduler": [["normal", "karras"]]}}}}


@pytest.mark.parametrize("info, class_type, input_name, expected", [
    (LEGACY, "KSampler", "scheduler", ["normal", "karras"]),
    (COMBO, "KSampler", "scheduler", ["normal", "karras"]),
    (OPTIONAL, "KSampler", "scheduler", ["normal", "karras"]),
    ({**LEGACY, **{"Other": {}}}, "KSampler", "scheduler", ["normal", "karras"]),
    (fixture_object_info("CheckpointLoaderSimple"), "CheckpointLoaderSimple", "ckpt_name", []),
    (fixture_object_info("ProbeSampler"), "ProbeSampler", "width", None),  # INT, not a combo
    (LEGACY, "KSampler", "seed", None),
    (LEGACY, "KSampler", "nope", None),
    (LEGACY, "Nope", "scheduler", None),
    ({"KSampler": {"input": {"required": {"scheduler": ["COMBO", {}]}}}}, "KSampler", "scheduler", None),
    ({"KSampler": {"input": {"required": {"scheduler": []}}}}, "KSampler", "scheduler", None),
    ({"KSampler": []}, "KSampler", "scheduler", None),
    ({"KSampler": {"input": None}}, "KSampler", "scheduler", None),
    ({}, "KSampler", "scheduler", None),
])
def test_choices_from_object_info(info, class_type, input_name, expected):
    assert choices_from_object_info(info, class_type, input_name) == expected


@pytest.mark.parametrize("info", [LEGACY, COMBO])
def test_enum_from_through_object_info(wf, info):
    def lookup(class_type, input_name):
        return choices_from_object_info(info, class_type, input_name)
    assert wf.public(lookup)["params"]["scheduler"]["enum"] == ["normal", "karras"]
    assert "enum" not in wf.public(lookup)["params"]["checkpoint"]  # unknown class: no enum
    _, resolved = fill_ok(wf, {"prompt": "a", "scheduler": "karras"}, choices=lookup)
    assert resolved["scheduler"] == "karras"
    with pytest.raises(InvalidParamsError) as caught:
        fill_ok(wf, {"prompt": "a", "scheduler": "exponential"}, choices=lookup)
    assert caught.value.details == {"scheduler": "must be one of: normal, karras"}


# --- public(): the GET /v1/workflows entry -------------------------------------

PUBLIC_PARAM_KEYS = {"type", "required", "default", "minimum", "maximum", "multiple_of", "max_length", "enum",
                     "random_default", "label", "description"}


def test_public_of_test_workflow(wf):
    pub = wf.public(choices)
    assert list(pub) == ["name", "title", "description", "params", "inputs"]
    assert pub["params"]["prompt"] == {"type": "string", "required": True, "max_length": 20}
    assert pub["params"]["size"] == {"type": "integer", "default": 512, "minimum": 64, "maximum": 1024,
                                     "multiple_of": 8}
    assert pub["params"]["seed"] == {"type": "integer", "minimum": 0, "maximum": 1000, "random_default": True}
    assert pub["params"]["scheduler"] == {"type": "string", "default": "normal", "enum": SCHEDULERS}
    assert pub["params"]["checkpoint"] == {"type": "string", "default": "a.safetensors", "label": "Model"}
    assert pub["params"]["preview"] == {"type": "boolean", "default": True}
    assert pub["inputs"] == {"image": {"required": True}}
    assert "enum" not in wf.public()["params"]["scheduler"]  # no choices function: no enum


def test_public_never_exposes_the_graph(wf):
    pub = wf.public(choices)
    for spec in pub["params"].values():
        assert set(spec) <= PUBLIC_PARAM_KEYS
    text = json.dumps(pub)
    for secret in ('"node"', "targets", "class_type", "enum_from", "_meta", "KSampler", "Positive", "ckpt_name"):
        assert secret not in text


# The example answer of GET /v1/workflows in the API contract, section "Workflows".
CONTRACT_EXAMPLE = {"name": "txt2img", "title": "Text to image", "params": {
    "prompt": {"type": "string", "required": True, "max_length": 2000},
    "width": {"type": "integer", "default": 512, "minimum": 64, "maximum": 2048, "multiple_of": 8},
    "checkpoint": {"type": "string", "enum": ["v1-5-pruned-emaonly.safetensors"]}}, "inputs": {}}


def test_shipped_txt2img_public_matches_the_contract_example():
    example = CONTRACT_EXAMPLE
    workflows, errors = load_workflows(ROOT / "workflows")
    assert errors == []
    checkpoints = example["params"]["checkpoint"]["enum"]
    pub = workflows["txt2img"].public(
        lambda c, i: checkpoints if (c, i) == ("CheckpointLoaderSimple", "ckpt_name") else None)
    assert set(example) <= set(pub)
    assert {k: pub[k] for k in ("name", "title", "inputs")} == {k: example[k] for k in ("name", "title", "inputs")}
    for name, spec in example["params"].items():
        assert spec.items() <= pub["params"][name].items(), name
    for spec in pub["params"].values():
        assert set(spec) <= PUBLIC_PARAM_KEYS
    json.dumps(pub)  # serialisable as is


# --- the shipped workflow files ------------------------------------------------

def test_shipped_txt2img():
    wf = load_workflow(ROOT / "workflows" / "txt2img.json")
    assert (wf.name, wf.title, wf.timeout_s) == ("txt2img", "Text to image", 600)
    assert {n: node["class_type"] for n, node in wf.graph.items()} == {
        "3": "KSampler", "4": "CheckpointLoaderSimple", "5": "EmptyLatentImage", "6": "CLIPTextEncode",
        "7": "CLIPTextEncode", "8": "VAEDecode", "9": "SaveImage"}
    assert (wf.node_title("6"), wf.node_title("7")) == ("Positive", "Negative")
    assert wf.graph["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    assert wf.graph["9"]["inputs"]["filename_prefix"] == "ComfyUI"
    assert all(isinstance(node.get("_meta", {}).get("title"), str) for node in wf.graph.values())
    graph, resolved = wf.fill({"prompt": "a cat", "width": 768}, rng=random.Random(1))
    assert resolved == {"prompt": "a cat", "negative_prompt": "", "width": 768, "height": 512, "batch_size": 1,
                        "seed": resolved["seed"], "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                        "scheduler": "normal", "checkpoint": "v1-5-pruned-emaonly.safetensors"}
    assert 0 <= resolved["seed"] <= 4294967295 and graph["3"]["inputs"]["seed"] == resolved["seed"]
    assert graph["6"]["inputs"] == {"text": "a cat", "clip": ["4", 1]}
    assert graph["7"]["inputs"] == {"text": "", "clip": ["4", 1]}
    assert graph["5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}
    assert graph["3"]["inputs"]["latent_image"] == ["5", 0]
    with pytest.raises(InvalidParamsError) as caught:
        wf.fill({"prompt": "a", "width": 2049, "batch_size": 5, "steps": 61, "cfg": 31})
    assert set(caught.value.details) == {"width", "batch_size", "steps", "cfg"}


def test_an_enum_from_default_the_server_lacks_is_a_400_naming_the_param():
    wf = load_workflow(ROOT / "workflows" / "txt2img.json")
    offered = {"CheckpointLoaderSimple": ["sdxl.safetensors"]}

    def lookup(class_type, input_name):
        return offered.get(class_type)
    with pytest.raises(InvalidParamsError) as caught:
        wf.fill({"prompt": "a"}, choices=lookup)
    assert set(caught.value.details) == {"checkpoint"}
    assert "'v1-5-pruned-emaonly.safetensors' is not offered" in caught.value.details["checkpoint"]
    _, resolved = wf.fill({"prompt": "a", "checkpoint": "sdxl.safetensors"}, choices=lookup)
    assert resolved["checkpoint"] == "sdxl.safetensors"
    _, resolved = wf.fill({"prompt": "a"}, choices=None)  # choices unknown: the default stands
    assert resolved["checkpoint"] == "v1-5-pruned-emaonly.safetensors"


def test_shipped_img2img():
    wf = load_workflow(ROOT / "workflows" / "img2img.json")
    assert wf.name == "img2img" and wf.timeout_s == 600
    (target,) = wf.inputs["image"].targets
    assert wf.graph[target.node_id]["class_type"] == "LoadImage" and target.input == "image"
    assert wf.inputs["image"].required
    assert {"prompt", "negative_prompt", "seed", "steps", "cfg", "sampler_name", "scheduler", "checkpoint",
            "denoise"} == set(wf.params)
    graph, resolved = wf.fill({"prompt": "a cat"}, {"image": "gw_upload_1.png"}, rng=random.Random(2))
    assert graph[target.node_id]["inputs"]["image"] == "gw_upload_1.png"
    assert resolved["denoise"] == 0.75
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    encode = graph[sampler["inputs"]["latent_image"][0]]
    assert encode["class_type"] == "VAEEncode" and encode["inputs"]["pixels"][0] == target.node_id
    assert wf.public()["inputs"]["image"]["required"] is True
    with pytest.raises(InvalidParamsError) as caught:
        wf.fill({"prompt": "a", "denoise": 1.5})
    assert caught.value.details == {"denoise": "must be at most 1", "inputs.image": "is required"}


# --- load errors: each broken file is named with its problem; the others load ---

def doc_with(**changes) -> dict:
    """Return base_doc() with top-level keys replaced (None removes a key)."""
    doc = base_doc()
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def param_with(name: str, **changes) -> dict:
    """Return base_doc() with one param spec changed (None removes a key)."""
    doc = base_doc()
    spec = doc["params"].setdefault(name, {})
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return doc


def graph_with(node_id: str, node) -> dict:
    doc = base_doc()
    doc["graph"][node_id] = node
    return doc


UI_FORMAT = {"last_node_id": 9, "last_link_id": 9, "version": 0.4, "links": [[1, 4, 0, 3, 0, "MODEL"]],
             "nodes": [{"id": 3, "type": "KSampler", "widgets_values": [1, "randomize", 20]}]}

TWO_POSITIVES = base_doc()
TWO_POSITIVES["graph"]["7"]["_meta"]["title"] = "Positive"

LOAD_ERRORS = [
    # (case, file name, content, fragments of the message after "<file>: ")
    ("not json", "broken.json", '{"title": ', ["is not valid JSON", "line 1"]),
    ("duplicate key", "broken.json", '{"title": "a", "title": "b", "graph": {}}', ["'title' appears twice"]),
    ("NaN", "broken.json", '{"timeout_s": NaN}', ["NaN is not a JSON value"]),
    ("not an object", "broken.json", "[]", ["must be a JSON object"]),
    ("not utf-8", "broken.json", b'{"title": "\xff"}', ["is not UTF-8 text"]),
    ("bad file name", "Text2Img.json", base_doc(), ["file name must be <name>.json", "'Text2Img'"]),
    ("UI format file", "broken.json", UI_FORMAT, ["UI format", "Save (API)"]),
    ("UI format graph", "broken.json", doc_with(graph=UI_FORMAT), ["graph: ", "UI format", "Save (API)"]),
    ("bare graph", "broken.json", base_graph(), ['put it under "graph"']),
    ("no graph", "broken.json", doc_with(graph=None), ["graph: missing"]),
    ("empty graph", "broken.json", doc_with(graph={}), ["graph: must be a non-empty object"]),
    ("node without class_type", "broken.json", graph_with("3", {"inputs": {}}), ['graph.3: has no "class_type"']),
    ("node without inputs", "broken.json", graph_with("12", {"class_type": "X"}), ['graph.12: has no "inputs"']),
    ("node not an object", "broken.json", graph_with("12", "X"), ["graph.12: must be an object"]),
    ("dangling link", "broken.json", graph_with("12", {"class_type": "X", "inputs": {"a": ["77", 0]}}),
     ['graph.12.inputs.a: links to ["77", 0]']),
    ("unknown top-level key", "broken.json", doc_with(param={}), ['param: unknown key (did you mean "params"?)']),
    ("title empty", "broken.json", doc_with(title=" "), ["title: must be a non-empty string"]),
    ("description not text", "broken.json", doc_with(description=5), ["description: must be a string"]),
    ("timeout zero", "broken.json", doc_with(timeout_s=0), ["timeout_s: must be a positive whole number"]),
    ("timeout string", "broken.json", doc_with(timeout_s="600"), ["timeout_s: must be a positive"]),
    ("timeout float", "broken.json", doc_with(timeout_s=1.5), ["timeout_s: must be a positive"]),
    ("timeout bool", "broken.json", doc_with(timeout_s=True), ["timeout_s: must be a positive"]),
    ("params not an object", "broken.json", doc_with(params=[]), ["params: must be an object"]),
    ("param not an object", "broken.json", doc_with(params={"x": "y"}), ["params.x: must be an object"]),
    ("param name", "broken.json", doc_with(params={"my-param": base_params()["steps"]}),
     ["params.my-param: the name must be"]),
    ("unknown param key", "broken.json", param_with("steps", maximun=5),
     ['params.steps.maximun: unknown key (did you mean "maximum"?)']),
    ("missing type", "broken.json", param_with("steps", type=None), ["params.steps.type: missing"]),
    ("unknown type", "broken.json", param_with("steps", type="int"), ['params.steps.type: unknown type "int"']),
    ("no node named", "broken.json", param_with("steps", node=None), ['params.steps: name the node with "node"']),
    ("node and title", "broken.json", param_with("steps", title="KSampler"), ['give "node" or "title", not both']),
    ("no input", "broken.json", param_with("steps", input=None), ['params.steps: "input"']),
    ("unknown node", "broken.json", param_with("steps", node="99"), ["params.steps.node: there is no node '99'"]),
    ("node not an id", "broken.json", param_with("steps", node=["3"]), ["params.steps.node: must be a node id"]),
    ("unknown title", "broken.json", param_with("prompt", title="Positve"),
     ["params.prompt.title: no node has the title 'Positve' (did you mean \"Positive\"?)"]),
    ("ambiguous title", "broken.json", TWO_POSITIVES,
     ["params.prompt.title: the title 'Positive' is used by nodes 6, 7"]),
    ("unknown input", "broken.json", param_with("steps", input="stepz"),
     ["params.steps.input: node 3 (KSampler) has no input 'stepz' (did you mean \"steps\"?)"]),
    ("input is a link", "broken.json", param_with("steps", input="model"),
     ["params.steps.input: node 3 (KSampler) input 'model' is a link"]),
    ("targets and node", "broken.json", param_with("steps", targets=[{"node": "3", "input": "steps"}]),
     ['params.steps: give either "targets" or "node"/"title"']),
    ("empty targets", "broken.json", param_with("size", targets=[]), ["params.size.targets: must be a non-empty"]),
    ("target key typo", "broken.json", param_with("size", targets=[{"nodes": "5", "input": "width"}]),
     ["params.size.targets[0].nodes: unknown key"]),
    ("target twice", "broken.json",
     param_with("size", targets=[{"node": "5", "input": "width"}, {"title": "Empty Latent Image", "input": "width"}]),
     ["params.size.targets[1]: node 5 input 'width' is listed twice"]),
    ("two params one input", "broken.json", param_with("steps2", node="3", input="steps", type="integer"),
     ["params.steps2: node 3 input 'steps' is already set by params.steps"]),
    ("param type vs graph value", "broken.json", param_with("steps", type="string", minimum=None, maximum=None),
     ["params.steps: node 3 input 'steps' holds 20, which is not a string"]),
    ("default out of range", "broken.json", param_with("steps", default=51), ["params.steps.default: must be at most 50"]),
    ("default wrong type", "broken.json", param_with("steps", default="20"),
     ["params.steps.default: must be an integer"]),
    ("default a list", "broken.json", param_with("negative", default=[]), ["params.negative.default: must be a string"]),
    ("default not a multiple", "broken.json", param_with("size", default=500),
     ["params.size.default: must be a multiple of 8"]),
    ("default not in enum", "broken.json", param_with("sampler", default="heun"),
     ["params.sampler.default: must be one of: euler, ddim"]),
    ("default too long", "broken.json", param_with("negative", default="x" * 5, max_length=4),
     ["params.negative.default: must be at most 4 characters long"]),
    ("graph value outside range", "broken.json", param_with("steps", maximum=10),
     ['params.steps: has no "default", and the graph\'s value 20 (node 3 input \'steps\') must be at most 10']),
    ("minimum above maximum", "broken.json", param_with("steps", minimum=10, maximum=5),
     ["params.steps: minimum (10) is greater than maximum (5)"]),
    ("no multiple in range", "broken.json", param_with("seed", minimum=1, maximum=6, multiple_of=7),
     ["params.seed: no multiple of 7 lies between 1 and 6"]),
    ("float minimum on integer", "broken.json", param_with("steps", minimum=1.5), ["params.steps.minimum: must be an integer"]),
    ("string maximum on number", "broken.json", param_with("cfg", maximum="30"), ["params.cfg.maximum: must be a number"]),
    ("multiple_of zero", "broken.json", param_with("size", multiple_of=0),
     ["params.size.multiple_of: must be a positive integer"]),
    ("max_length negative", "broken.json", param_with("prompt", max_length=-1),
     ["params.prompt.max_length: must be a positive integer"]),
    ("max_length on integer", "broken.json", param_with("steps", max_length=3),
     ["params.steps.max_length: does not apply to integer params"]),
    ("minimum on string", "broken.json", param_with("prompt", minimum=1),
     ["params.prompt.minimum: does not apply to string params"]),
    ("enum on boolean", "broken.json", param_with("preview", enum=[True]),
     ["params.preview.enum: does not apply to boolean params"]),
    ("enum empty", "broken.json", param_with("sampler", enum=[]), ["params.sampler.enum: must be a non-empty list"]),
    ("enum of wrong type", "broken.json", param_with("sampler", enum=["euler", 1]),
     ["params.sampler.enum: every value must be of type string"]),
    ("enum value twice", "broken.json", param_with("sampler", enum=["euler", "euler"]),
     ["params.sampler.enum: lists a value twice"]),
    ("enum and enum_from", "broken.json", param_with("scheduler", enum=["normal"]),
     ['params.scheduler.enum_from: give "enum" or "enum_from", not both']),
    ("enum_from malformed", "broken.json", param_with("scheduler", enum_from="KSampler"),
     ['params.scheduler.enum_from: must be "ClassType.input"']),
    ("enum_from on integer", "broken.json", param_with("steps", enum_from="KSampler.steps"),
     ["params.steps.enum_from: does not apply to integer params"]),
    ("random_default without range", "broken.json", param_with("seed", maximum=None),
     ['params.seed.random_default: needs "minimum" and "maximum"']),
    ("random_default and default", "broken.json", param_with("seed", default=5),
     ['params.seed.random_default: cannot be combined with "default"']),
    ("random_default and required", "broken.json", param_with("seed", required=True),
     ['params.seed.random_default: cannot be combined with "required"']),
    ("random_default on number", "broken.json", param_with("cfg", random_default=True),
     ["params.cfg.random_default: does not apply to number params"]),
    ("random_default not bool", "broken.json", param_with("seed", random_default="yes"),
     ["params.seed.random_default: must be true or false"]),
    ("required and default", "broken.json", param_with("prompt", default="x"),
     ["params.prompt.default: a required param has no default"]),
    ("required not bool", "broken.json", param_with("negative", required="no"),
     ["params.negative.required: must be true or false"]),
    ("label not text", "broken.json", param_with("negative", label=3), ["params.negative.label: must be a string"]),
    ("input key typo", "broken.json", doc_with(inputs={"image": {"node": "10", "input": "image", "requird": True}}),
     ['inputs.image.requird: unknown key (did you mean "required"?)']),
    ("input on a non-file", "broken.json", doc_with(inputs={"image": {"node": "5", "input": "width"}}),
     ["inputs.image: node 5 input 'width' holds 512, not a file name"]),
    ("input and param on one input", "broken.json",
     doc_with(inputs={"image": {"title": "Positive", "input": "text"}}),
     ["inputs.image: node 6 input 'text' is already set by params.prompt"]),
    ("input on unknown node", "broken.json", doc_with(inputs={"image": {"node": "12", "input": "image"}}),
     ["inputs.image.node: there is no node '12'"]),
]


@pytest.mark.parametrize("case, file, content, fragments", LOAD_ERRORS, ids=[c[0] for c in LOAD_ERRORS])
def test_load_errors(tmp_path, case, file, content, fragments):
    write(tmp_path, "good.json", base_doc())
    write(tmp_path, file, content)
    workflows, errors = load_workflows(tmp_path)
    assert list(workflows) == ["good"]  # the others still load
    assert len(errors) == 1
    assert errors[0].startswith(f"{file}: ")
    for fragment in fragments:
        assert fragment in errors[0]
    with pytest.raises(WorkflowFileError) as caught:
        load_workflow(tmp_path / file)
    assert str(caught.value) == errors[0]
    assert caught.value.file == file and caught.value.problems


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    doc = param_with("steps", maximun=5, default=99)
    doc["params"]["prompt"]["title"] = "Nope"
    doc["timeout_s"] = -1
    with pytest.raises(WorkflowFileError) as caught:
        load_workflow(write(tmp_path, "multi.json", doc))
    message = str(caught.value)
    assert message.startswith("multi.json: ")
    for fragment in ("timeout_s: must be", "params.steps.maximun: unknown key", "params.steps.default: must be at most 50",
                     "params.prompt.title: no node has the title 'Nope'"):
        assert fragment in message
    assert len(caught.value.problems) == 4


def test_load_workflows_skips_other_files_and_reports_in_order(tmp_path):
    write(tmp_path, "b.json", base_doc())
    write(tmp_path, "a.json", base_doc())
    write(tmp_path, "z-broken.json", "nope")
    write(tmp_path, "c-broken.json", "[]")
    write(tmp_path, "README.md", "# not a workflow")
    write(tmp_path, ".#a.json", "lock file of an editor")
    (tmp_path / "sub.json").mkdir()
    workflows, errors = load_workflows(str(tmp_path))
    assert sorted(workflows) == ["a", "b"]
    assert [e.split(":")[0] for e in errors] == ["c-broken.json", "z-broken.json"]


def test_load_workflows_of_a_missing_folder(tmp_path):
    missing = tmp_path / "missing"
    assert load_workflows(missing) == ({}, [f"{missing}: not a directory (check WORKFLOWS_DIR)"])


def test_load_workflow_of_a_missing_file(tmp_path):
    with pytest.raises(WorkflowFileError, match="^gone.json: cannot be read"):
        load_workflow(tmp_path / "gone.json")


def test_readme_worked_example_loads(tmp_path):
    readme = (ROOT / "workflows" / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```json\n")[1:]]
    (example,) = [b for b in blocks if '"CheckpointLoaderSimple"' in b]
    wf = load_workflow(write(tmp_path, "portrait.json", example))
    _, resolved = wf.fill({"prompt": "an old fisherman, oil painting", "steps": 30}, rng=random.Random(0))
    assert resolved["steps"] == 30 and resolved["checkpoint"] == "v1-5-pruned-emaonly.safetensors"
    assert 0 <= resolved["seed"] <= 4294967295
    assert wf.price == Price(per_image=2, per_gpu_second=0.05)


# --- price (billing) -------------------------------------------------------------

@pytest.mark.parametrize("price, expected", [
    ({"per_job": 1, "per_image": 2, "per_megapixel": 0.5, "per_gpu_second": 0.1},
     Price(per_job=1, per_image=2, per_megapixel=0.5, per_gpu_second=0.1)),
    ({"per_gpu_second": 0.00025}, Price(per_gpu_second=0.00025)),
    ({"per_image": 3}, Price(per_image=3)),
    ({"per_job": 0}, Price(per_job=0)),  # free, and the records say so
    ({"per_megapixel": 1000000}, Price(per_megapixel=1000000)),
    (None, None),  # "price": null is no price, like an absent key
])
def test_price_loads(tmp_path, price, expected):
    wf = load_workflow(write(tmp_path, "priced.json", doc_with(price=price)))
    assert wf.price == expected
    if price is not None:
        assert wf.price.to_json() == price
        assert load_price(tmp_path / "priced.json") == expected


def test_no_price_and_price_is_never_public(wf, tmp_path):
    assert wf.price is None
    priced = load_workflow(write(tmp_path, "priced.json", doc_with(price={"per_job": 1})))
    assert priced.public(choices) == wf.public(choices) | {"name": "priced"}
    assert "per_job" not in json.dumps(priced.public(choices))


PRICE_ERRORS = [
    # (case, price, fragments of the message after "<file>: ")
    ("not an object", 5, ['price: must be an object of credits']),
    ("a list", [{"per_job": 1}], ['price: must be an object of credits']),
    ("a string", "free", ['price: must be an object of credits']),
    ("empty", {}, ["price: sets no price", "per_job, per_image, per_megapixel, per_gpu_second"]),
    ("unknown key", {"per_imgae": 2}, ['price.per_imgae: unknown key (did you mean "per_image"?)', "allowed: per_job"]),
    ("unrelated key", {"currency": "CNY"}, ["price.currency: unknown key"]),
    ("string number", {"per_job": "1"}, ['price.per_job: must be a number of credits (got "1")']),
    ("boolean", {"per_image": True}, ["price.per_image: must be a number of credits (got true)"]),
    ("null part", {"per_image": None}, ["price.per_image: must be a number of credits (got null)"]),
    ("object part", {"per_image": {"amount": 1}}, ["price.per_image: must be a number of credits"]),
    ("negative", {"per_gpu_second": -0.1}, ["price.per_gpu_second: must be at least 0"]),
    ("negative integer", {"per_job": -1}, ["price.per_job: must be at least 0"]),
    ("too big", {"per_megapixel": 1000001}, ["price.per_megapixel: must be at most 1000000"]),
    ("overflowing", '{"per_job": 1e400}', ["price.per_job: must be a number of credits (got Infinity)"]),
]


def _with_price(price) -> str:
    """A whole workflow file whose "price" is the given value (or JSON text, for what json.dumps cannot write)."""
    text = json.dumps(doc_with(price={"per_job": 0}))
    return text.replace('"price": {"per_job": 0}', '"price": ' + (price if isinstance(price, str) and
                                                                   price.startswith("{") else json.dumps(price)))


@pytest.mark.parametrize("case, price, fragments", PRICE_ERRORS, ids=[c[0] for c in PRICE_ERRORS])
def test_price_errors_are_load_problems(tmp_path, case, price, fragments):
    write(tmp_path, "good.json", doc_with(price={"per_job": 1}))
    write(tmp_path, "priced.json", _with_price(price))
    workflows, errors = load_workflows(tmp_path)
    assert list(workflows) == ["good"]  # a bad price skips only its own file
    assert len(errors) == 1 and errors[0].startswith("priced.json: ")
    for fragment in fragments:
        assert fragment in errors[0]
    with pytest.raises(WorkflowFileError) as caught:
        load_price(tmp_path / "priced.json")  # what usage records read later says the same
    assert str(caught.value) == errors[0]


def test_every_price_problem_is_reported_at_once(tmp_path):
    doc = doc_with(price={"per_job": -1, "per_imag": 1, "per_gpu_second": "0.1"}, timeout_s=-1)
    with pytest.raises(WorkflowFileError) as caught:
        load_workflow(write(tmp_path, "multi.json", doc))
    assert len(caught.value.problems) == 4
    for fragment in ("timeout_s: must be", "price.per_job: must be at least 0", "price.per_imag: unknown key",
                     "price.per_gpu_second: must be a number"):
        assert fragment in str(caught.value)


def test_price_key_typo_at_top_level(tmp_path):
    with pytest.raises(WorkflowFileError, match='prices: unknown key \\(did you mean "price"\\?\\)'):
        load_workflow(write(tmp_path, "typo.json", doc_with(prices={"per_job": 1})))


@pytest.mark.parametrize("content, expected", [
    (doc_with(price={"per_job": 1}), Price(per_job=1)),
    (doc_with(), None),
    # the rest of the file broken since start-up: its price still holds for the jobs still running
    (doc_with(price={"per_image": 2}, graph={}), Price(per_image=2)),
])
def test_load_price_reads_only_the_price(tmp_path, content, expected):
    assert load_price(write(tmp_path, "w.json", content)) == expected


@pytest.mark.parametrize("content, fragment", [
    (None, "gone.json: cannot be read"),
    ('{"price": ', "w.json: is not valid JSON"),
    (b'{"price": "\xff"}', "w.json: is not valid JSON"),
    ("[]", "w.json: must be a JSON object"),
    ('{"price": {"per_job": 1}, "price": {"per_job": 0}}', "w.json: is not valid JSON"),
])
def test_load_price_of_an_unusable_file(tmp_path, content, fragment):
    path = tmp_path / "gone.json" if content is None else write(tmp_path, "w.json", content)
    with pytest.raises(WorkflowFileError, match="^" + fragment):
        load_price(path)
