"""What a ComfyUI server can run, and what a job needs.

A server's capabilities are read from its ``/object_info`` by the listener and
stored on its backend row as ``{"classes": [...], "choices": {"Class.input":
[...]}}``: every node class it has, and the choices of every combo input of
the classes the workflows use (checkpoints, LoRAs, samplers...). Upload combos
(``LoadImage.image``, the server's input folder) are left out: input images
are sent with the prompt.

A job's needs are the node classes of its filled graph and every value it sets
on a combo input (``{"classes": [...], "values": {"Class.input": value}}``). A
server can run a job when it has every class and offers every value: a job is
never sent where ComfyUI would refuse it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Iterable

from shared.workflows import choices_from_object_info

MODEL_INPUTS = ("ckpt_name", "unet_name")  # the inputs whose value is "the model" (affinity)


def graph_classes(graph: dict) -> set[str]:
    return {node["class_type"] for node in graph.values() if isinstance(node, dict) and "class_type" in node}


def workflow_classes(workflows: dict) -> set[str]:
    """Every node class any workflow uses."""
    out: set[str] = set()
    for wf in workflows.values():
        out |= graph_classes(wf.graph)
    return out


def _is_upload(spec) -> bool:
    return isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and bool(spec[1].get("image_upload"))


def from_object_info(info: dict, class_types: Iterable[str]) -> dict:
    """Capabilities from a full ``/object_info`` answer, with the choices of these classes' combo inputs."""
    choices: dict[str, list[str]] = {}
    for cls in sorted(set(class_types) & set(info)):
        sections = info[cls].get("input") if isinstance(info[cls], dict) else None
        for section in ("required", "optional"):
            group = sections.get(section) if isinstance(sections, dict) else None
            for name, spec in group.items() if isinstance(group, dict) else ():
                if _is_upload(spec):
                    continue
                found = choices_from_object_info(info, cls, name)
                if found is not None:
                    choices[f"{cls}.{name}"] = found
    return {"classes": sorted(info), "choices": choices}


def digest(caps: dict) -> str:
    """A short fingerprint of capabilities (stored beside them: readers parse them only when it changes)."""
    return hashlib.sha256(json.dumps(caps, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def needs_of(graph: dict, known_combos: Iterable[str], skip: Iterable[tuple[str, str]] = ()) -> dict:
    """What a filled graph needs of a server: its classes, and its values on known combo inputs.

    ``skip`` lists (node id, input) pairs that are not to be judged (image inputs, sent with the prompt).
    """
    combos = set(known_combos)
    skipped = set(skip)
    values: dict[str, str] = {}
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            continue
        cls = node.get("class_type")
        for name, value in (node.get("inputs") or {}).items():
            key = f"{cls}.{name}"
            if isinstance(value, str) and key in combos and (node_id, name) not in skipped:
                values.setdefault(key, value)
                if values[key] != value:  # two nodes of a class set different values: both are needed
                    values[f"{key}#{node_id}"] = value
    return {"classes": sorted(graph_classes(graph)), "values": values}


def model_of(needs: dict) -> str | None:
    """The checkpoint (or diffusion model) a job loads, for model affinity."""
    for key, value in sorted((needs or {}).get("values", {}).items()):
        if key.split("#")[0].rpartition(".")[2] in MODEL_INPUTS:
            return value
    return None


def missing(needs: dict, caps: dict | None) -> list[str]:
    """What of the needs a server lacks (empty: it can run the job)."""
    if not caps:
        return ["capabilities not known yet"]
    have = set(caps.get("classes") or ())
    out = [f"node class {cls}" for cls in needs.get("classes", ()) if cls not in have]
    choices = caps.get("choices") or {}
    for key, value in needs.get("values", {}).items():
        combo = key.split("#")[0]
        if value not in (choices.get(combo) or ()):
            out.append(f"{combo.rpartition('.')[2]} {value!r}")
    return out


def can_run(needs: dict, caps: dict | None) -> bool:
    return not missing(needs, caps)


def union_choices(caps_list: Iterable[dict]):
    """A workflow ``choices(class_type, input)`` callable: the union over servers, in first-seen order.

    None for an input no server knows (its values are then left to ComfyUI).
    """
    merged: dict[str, list[str]] = {}
    for caps in caps_list:
        for key, options in (caps.get("choices") or {}).items():
            seen = merged.setdefault(key, [])
            seen.extend(o for o in options if o not in seen)

    def choices(class_type: str, input_name: str):
        return merged.get(f"{class_type}.{input_name}")
    return choices


def available(workflow, caps_list: list[dict]) -> bool:
    """Whether some server has every node class of the workflow and a choice for each enum_from param."""
    classes = graph_classes(workflow.graph)
    for caps in caps_list:
        have = set(caps.get("classes") or ())
        choices = caps.get("choices") or {}
        if classes <= have and all(choices.get(spec.enum_from) for spec in workflow.params.values()
                                   if spec.enum_from):
            return True
    return False


class CapabilitiesCache:
    """Parsed capabilities by fingerprint, so an instance reads and parses a server's only when they change."""

    MAX = 64

    def __init__(self):
        self._lock = threading.Lock()
        self._by_hash: dict[str, dict] = {}

    def get(self, digest_: str) -> dict | None:
        with self._lock:
            return self._by_hash.get(digest_)

    def put(self, digest_: str, caps: dict) -> None:
        with self._lock:
            if len(self._by_hash) >= self.MAX:
                self._by_hash.pop(next(iter(self._by_hash)))
            self._by_hash[digest_] = caps
