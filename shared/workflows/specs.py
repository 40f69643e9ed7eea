"""The data types of a loaded workflow file, its error, and the constants of the file format."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from shared.workflows.fill import fill_graph
from shared.workflows.values import _type_reason

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
TYPES = ("string", "integer", "number", "boolean")

# choices(class_type, input_name) -> the choices a ComfyUI server offers, or None if unknown.
Choices = Callable[[str, str], "list[str] | None"]
_MAX_LISTED_CHOICES = 10
PRICE_KEYS = ("per_job", "per_image", "per_megapixel", "per_gpu_second")
# Credits per unit: high enough for any real tariff, low enough that no job's total overflows
# usage_records.credits (DECIMAL(20,4)).
MAX_PRICE = 1_000_000


class WorkflowFileError(ValueError):
    """A workflow file is unusable; the message names the file and every problem found."""

    def __init__(self, file: str, problems: Iterable[str]):
        self.file = file
        self.problems = list(problems)
        super().__init__(f"{file}: {'; '.join(self.problems)}")


class _Problems(list):
    """The problems found in one file, each prefixed with where it is."""

    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}" if where else what)


@dataclass(frozen=True)
class Target:
    """One node input that a param or image input sets."""

    node_id: str
    input: str


@dataclass(frozen=True)
class ParamSpec:
    """One value an app may set, its type, its constraints and where it goes in the graph."""

    name: str
    type: str
    targets: tuple[Target, ...]
    required: bool = False
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    multiple_of: int | None = None
    max_length: int | None = None
    enum: tuple | None = None
    enum_from: str | None = None
    random_default: bool = False
    label: str | None = None
    description: str | None = None

    @property
    def enum_source(self) -> tuple[str, str] | None:
        """Return (class_type, input) of ``enum_from``, or None."""
        if self.enum_from is None:
            return None
        class_type, _, input_name = self.enum_from.rpartition(".")
        return class_type, input_name

    def allowed(self, choices: Choices | None = None) -> list | None:
        """Return the allowed values (``enum``, or ``enum_from`` via ``choices``), or None if unrestricted or unknown."""
        if self.enum is not None:
            return list(self.enum)
        source = self.enum_source
        if source is None or choices is None:
            return None
        found = choices(*source)
        return None if found is None else list(found)

    def check(self, value: Any, allowed: list | None = None) -> str | None:
        """Return why ``value`` is not acceptable (e.g. "must be at most 60"), or None."""
        reason = _type_reason(self.type, value)
        if reason:
            return reason
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum}"
        if self.multiple_of is not None and value % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"must be at most {self.max_length} characters long"
        if allowed is not None and value not in allowed:
            if not allowed:
                return "has no choices available on the server"
            if len(allowed) <= _MAX_LISTED_CHOICES:
                return "must be one of: " + ", ".join(str(a) for a in allowed)
            return f"must be one of the {len(allowed)} choices listed by GET /v1/workflows"
        return None

    def public(self, choices: Choices | None = None) -> dict:
        """Describe the param for GET /v1/workflows (no node ids)."""
        out: dict[str, Any] = {"type": self.type}
        if self.required:
            out["required"] = True
        if self.default is not None:
            out["default"] = self.default
        for key in ("minimum", "maximum", "multiple_of", "max_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        allowed = self.allowed(choices)
        if allowed is not None:
            out["enum"] = allowed
        if self.random_default:
            out["random_default"] = True
        if self.label is not None:
            out["label"] = self.label
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class InputSpec:
    """One image input: the node input that receives the uploaded file's ComfyUI name."""

    name: str
    targets: tuple[Target, ...]
    required: bool = False
    label: str | None = None
    description: str | None = None

    def public(self) -> dict:
        """Describe the image input for GET /v1/workflows (no node ids)."""
        out: dict[str, Any] = {"required": self.required}
        if self.label is not None:
            out["label"] = self.label
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Price:
    """What one job of a workflow costs, in credits: only the parts the file sets (each a number >= 0)."""

    per_job: int | float | None = None
    per_image: int | float | None = None
    per_megapixel: int | float | None = None
    per_gpu_second: int | float | None = None

    def to_json(self) -> dict:
        """The parts that are set, as the file wrote them ({"per_job": 1, "per_gpu_second": 0.1})."""
        return {key: getattr(self, key) for key in PRICE_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class Workflow:
    """A loaded, validated workflow file. ``graph`` is shared: never change it, ``fill`` copies it."""

    name: str
    title: str
    description: str
    timeout_s: int | None
    graph: dict = field(repr=False)
    params: dict[str, ParamSpec]
    inputs: dict[str, InputSpec]
    price: Price | None = None

    def public(self, choices: Choices | None = None) -> dict:
        """Return this workflow's entry of GET /v1/workflows, with ``enum_from`` resolved through ``choices``."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "params": {name: spec.public(choices) for name, spec in self.params.items()},
            "inputs": {name: spec.public() for name, spec in self.inputs.items()},
        }

    def input_targets(self) -> set[tuple[str, str]]:
        """The (node id, input) pairs that image inputs set."""
        return {(t.node_id, t.input) for spec in self.inputs.values() for t in spec.targets}

    def node_title(self, node_id: str) -> str | None:
        """Return the node's ``_meta.title``, else its class_type; None for an unknown node."""
        node = self.graph.get(str(node_id))
        if node is None:
            return None
        title = (node.get("_meta") or {}).get("title")
        return title if isinstance(title, str) and title else node["class_type"]

    def fill(self, params: dict | None, inputs: dict[str, str] | None = None, *,
             choices: Choices | None = None, rng: random.Random | None = None) -> tuple[dict, dict]:
        """Validate the app's params and return (a filled deep copy of the graph, every param's value).

        ``inputs`` maps image-input names to the ComfyUI file names to set.
        Raises ``InvalidParamsError`` whose ``details`` name every bad field
        (image inputs as ``inputs.<name>``).
        """
        return fill_graph(self, params, inputs, choices=choices, rng=rng)
