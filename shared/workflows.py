"""Workflow files: a ComfyUI graph plus the map of what an app may set in it.

A workflow is one JSON file, ``<name>.json`` (see the contract's section
"Workflow files" and ``workflows/README.md``)::

    {"title": "...", "description": "...", "timeout_s": 600,
     "graph": {<the graph exported with "Save (API)">},
     "params": {"seed": {"node": "3", "input": "seed", "type": "integer", ...}},
     "inputs": {"image": {"title": "Load Image", "input": "image", "required": true}},
     "price": {"per_job": 1, "per_image": 2}}

``load_workflow`` checks everything when the file is read, so that a typo
fails at start-up with a message naming the file and the problem instead of
at the first job. ``Workflow.fill`` validates an app's params and returns a
deep copy of the graph in which only the mapped inputs are set: everything
else in the graph is fixed, and a param value is always a scalar, so an app
can neither rewire the graph nor add a node.

Decisions beyond the contract:

- ``integer`` accepts JSON integers only: ``1.0`` is refused ("must be an
  integer"), as are ``true``/``false`` for numbers; strings are never coerced.
- A param sent as JSON ``null`` counts as omitted (mobile serializers emit
  ``null`` for unset optional fields).
- A param with neither ``required``, ``default`` nor ``random_default`` takes
  the value its (first) target holds in the graph as its default, so every
  param has a value in the job's stored params.
- ``multiple_of`` and ``random_default`` apply to integers only; the display
  name of a param is ``label`` because ``title`` names a node.
- Values for ``enum_from`` params are only checked when the ``choices``
  function knows the choices; otherwise ComfyUI judges them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from shared.errors import InvalidParamsError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
TYPES = ("string", "integer", "number", "boolean")

# choices(class_type, input_name) -> the choices a ComfyUI server offers, or None if unknown.
Choices = Callable[[str, str], "list[str] | None"]

_FILE_KEYS = ("title", "description", "timeout_s", "graph", "params", "inputs", "price")
_TARGET_KEYS = ("node", "title", "input")
_CONSTRAINTS = ("minimum", "maximum", "multiple_of", "max_length", "enum", "enum_from", "random_default")
_PARAM_KEYS = _TARGET_KEYS + ("targets", "type", "required", "default", "label", "description") + _CONSTRAINTS
_INPUT_KEYS = _TARGET_KEYS + ("targets", "required", "label", "description")
_APPLIES = {
    "string": {"max_length", "enum", "enum_from"},
    "integer": {"minimum", "maximum", "multiple_of", "enum", "random_default"},
    "number": {"minimum", "maximum", "enum"},
    "boolean": set(),
}
_TYPE_REASON = {
    "string": "must be a string",
    "integer": "must be an integer",
    "number": "must be a number",
    "boolean": "must be true or false",
}
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
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParamsError("params must be an object", details={"params": "must be an object"})
        details: dict[str, str] = {}
        resolved: dict[str, Any] = {}
        for name, spec in self.params.items():
            value = params.get(name)
            if value is None:
                if spec.required:
                    details[name] = "is required"
                elif spec.random_default:
                    if rng is None:
                        rng = random.SystemRandom()
                    resolved[name] = _draw(spec, rng)
                elif reason := _default_reason(spec, choices):
                    details[name] = reason
                else:
                    resolved[name] = spec.default
                continue
            allowed = spec.allowed(choices) if _type_reason(spec.type, value) is None else None
            reason = spec.check(value, allowed)
            if reason:
                details[name] = reason
            else:
                resolved[name] = value
        for key in params:
            if key not in self.params:
                details[str(key)] = f"is not a parameter of {self.name}"

        files: dict[str, str] = {}
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            details["inputs"] = "must be an object"
        else:
            for name, spec in self.inputs.items():
                value = inputs.get(name)
                if value is None:
                    if spec.required:
                        details[f"inputs.{name}"] = "is required"
                elif not isinstance(value, str) or not value:
                    details[f"inputs.{name}"] = "must be a file name"
                else:
                    files[name] = value
            for key in inputs:
                if key not in self.inputs:
                    details[f"inputs.{key}"] = f"is not an image input of {self.name}"

        if details:
            message = "; ".join(f"{field} {reason}" for field, reason in details.items())
            raise InvalidParamsError(message, details=details)

        graph = copy.deepcopy(self.graph)
        for name, value in resolved.items():
            for target in self.params[name].targets:
                graph[target.node_id]["inputs"][target.input] = value
        for name, file_name in files.items():
            for target in self.inputs[name].targets:
                graph[target.node_id]["inputs"][target.input] = file_name
        return graph, resolved


def choices_from_object_info(object_info: dict, class_type: str, input_name: str) -> list[str] | None:
    """Return the choices of a combo input from ComfyUI's ``/object_info`` answer, or None if unknown.

    Accepts the answer of ``/object_info`` and of ``/object_info/<class>``, and
    both combo formats: ``[[choice, ...], {...}]`` and ``["COMBO", {"options": [...]}]``.
    """
    try:
        sections = object_info[class_type]["input"]
        spec = None
        for section in ("required", "optional"):
            group = sections.get(section)
            if isinstance(group, dict) and input_name in group:
                spec = group[input_name]
                break
        if not isinstance(spec, list) or not spec:
            return None
        if isinstance(spec[0], list):
            options = spec[0]
        elif spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            options = spec[1].get("options")
        else:
            return None
    except (KeyError, TypeError, AttributeError):
        return None
    if not isinstance(options, list):
        return None
    return [o for o in options if isinstance(o, str)]


def load_workflows(directory) -> tuple[dict[str, Workflow], list[str]]:
    """Load every ``<name>.json`` of a folder; return the workflows and one "<file>: <problem>" message per broken file.

    Files whose names start with a dot (editor lock and backup files) are ignored.
    A folder that does not exist gives no workflows and one message naming it.
    """
    folder = Path(directory)
    workflows: dict[str, Workflow] = {}
    errors: list[str] = []
    if not folder.is_dir():
        return workflows, [str(WorkflowFileError(str(folder), ["not a directory (check WORKFLOWS_DIR)"]))]
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(".json") or path.name.startswith(".") or not path.is_file():
            continue
        try:
            workflow = load_workflow(path)
        except WorkflowFileError as e:
            errors.append(str(e))
        else:
            workflows[workflow.name] = workflow
    return workflows, errors


def load_workflow(path) -> Workflow:
    """Read and validate one workflow file; raise ``WorkflowFileError`` naming the file and every problem."""
    path = Path(path)
    file = path.name
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise WorkflowFileError(file, [f"cannot be read: {e.strerror or e}"]) from None
    except UnicodeDecodeError:
        raise WorkflowFileError(file, ["is not UTF-8 text"]) from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise WorkflowFileError(file, [f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"]) from None
    except _JsonProblem as e:
        raise WorkflowFileError(file, [f"is not valid JSON: {e}"]) from None
    name = file[: -len(".json")] if file.endswith(".json") else file
    problems = _Problems()
    if not NAME_RE.fullmatch(name):
        problems.add("", f"the file name must be <name>.json where <name> is 1 to 64 lowercase letters, "
                         f"digits, '_' or '-', starting with a letter or digit (got {name!r})")
    workflow = _parse(name, doc, problems)
    if problems:
        raise WorkflowFileError(file, problems)
    return workflow


# --- loading -----------------------------------------------------------------


class _JsonProblem(ValueError):
    """A JSON construct that a workflow file must not use."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """Build a JSON object, refusing duplicate keys (the second would silently win)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _JsonProblem(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str):
    """Refuse NaN and Infinity, which are not JSON."""
    raise _JsonProblem(f"{name} is not a JSON value")


class _Problems(list):
    """The problems found in one file, each prefixed with where it is."""

    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}" if where else what)


def _parse(name: str, doc: Any, problems: _Problems) -> Workflow | None:
    """Check a parsed workflow file and build the Workflow (None when problems were found)."""
    if not isinstance(doc, dict):
        problems.add("", 'must be a JSON object {"title", "graph", "params", ...}')
        return None
    if _is_ui_format(doc):
        problems.add("", _UI_FORMAT)
        return None
    if "graph" not in doc and doc and _is_api_graph(doc):
        problems.add("", 'is a bare ComfyUI graph: put it under "graph" and add "params" '
                         "naming what an app may set (see workflows/README.md)")
        return None
    for key in doc:
        if key not in _FILE_KEYS:
            problems.add(key, "unknown key" + _did_you_mean(key, _FILE_KEYS) + f" (allowed: {', '.join(_FILE_KEYS)})")

    title = doc.get("title", name)
    if not isinstance(title, str) or not title.strip():
        problems.add("title", "must be a non-empty string")
    description = doc.get("description", "")
    if not isinstance(description, str):
        problems.add("description", "must be a string")
    timeout_s = doc.get("timeout_s")
    if timeout_s is not None and (not _is_int(timeout_s) or timeout_s <= 0):
        problems.add("timeout_s", "must be a positive whole number of seconds")

    graph = _check_graph(doc.get("graph"), problems)
    claimed: dict[Target, str] = {}
    params = _parse_group(doc.get("params", {}), "params", graph, claimed, problems)
    inputs = _parse_group(doc.get("inputs", {}), "inputs", graph, claimed, problems)
    price = _parse_price(doc.get("price"), problems)
    if problems:
        return None
    return Workflow(name=name, title=title, description=description, timeout_s=timeout_s,
                    graph=graph, params=params, inputs=inputs, price=price)


_UI_FORMAT = ("the graph is in ComfyUI's UI format (a saved workflow with \"nodes\" and \"links\"); "
              "export it with \"Save (API)\" instead (Workflow > Export (API) in newer ComfyUI menus)")


def _is_ui_format(obj: Any) -> bool:
    """Tell whether obj looks like ComfyUI's UI workflow format."""
    return isinstance(obj, dict) and isinstance(obj.get("nodes"), list) and "links" in obj


def _is_api_graph(obj: dict) -> bool:
    """Tell whether obj looks like an API-format graph (node id -> {class_type, inputs})."""
    return all(isinstance(node, dict) and "class_type" in node for node in obj.values())


def _check_graph(graph: Any, problems: _Problems) -> dict | None:
    """Check the API-format graph; return it, or None when it is too broken to map params onto."""
    if graph is None:
        problems.add("graph", 'missing: add the graph exported with "Save (API)"')
        return None
    if _is_ui_format(graph):
        problems.add("graph", _UI_FORMAT)
        return None
    if not isinstance(graph, dict) or not graph:
        problems.add("graph", 'must be a non-empty object of node id -> {"class_type", "inputs"} '
                              '(export with "Save (API)")')
        return None
    ok = True
    for node_id, node in graph.items():
        where = f"graph.{node_id}"
        if not isinstance(node, dict):
            problems.add(where, 'must be an object {"class_type", "inputs"}')
            ok = False
            continue
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            problems.add(where, 'has no "class_type" (export with "Save (API)")')
            ok = False
        if not isinstance(node.get("inputs"), dict):
            problems.add(where, 'has no "inputs" object (export with "Save (API)")')
            ok = False
            continue
        meta = node.get("_meta")
        if meta is not None and (not isinstance(meta, dict) or not isinstance(meta.get("title", ""), str)):
            problems.add(f"{where}._meta", 'must be an object with a string "title"')
            ok = False
        for input_name, value in node["inputs"].items():
            if isinstance(value, list) and not (len(value) == 2 and str(value[0]) in graph):
                problems.add(f"{where}.inputs.{input_name}",
                             f"links to {json.dumps(value)}, which is not a node of the graph")
                ok = False
    return graph if ok else None


def _parse_group(raw: Any, group: str, graph: dict | None, claimed: dict[Target, str],
                 problems: _Problems) -> dict:
    """Parse the "params" or "inputs" map into specs, recording problems."""
    if not isinstance(raw, dict):
        problems.add(group, "must be an object of name -> spec")
        return {}
    specs = {}
    for name, spec in raw.items():
        where = f"{group}.{name}"
        if not FIELD_RE.fullmatch(name):
            problems.add(where, "the name must be 1 to 64 letters, digits or '_', not starting with a digit")
        if not isinstance(spec, dict):
            problems.add(where, "must be an object")
            continue
        parser = _parse_param if group == "params" else _parse_input
        parsed = parser(name, spec, where, graph, problems)
        if parsed is None:
            continue
        for target in parsed.targets:
            other = claimed.setdefault(target, where)
            if other != where:
                problems.add(where, f"node {target.node_id} input {target.input!r} is already set by {other}")
        specs[name] = parsed
    return specs


def _check_keys(spec: dict, allowed: tuple[str, ...], where: str, problems: _Problems) -> None:
    """Record every key of spec that is not allowed (typos must not pass silently)."""
    for key in spec:
        if key not in allowed:
            problems.add(f"{where}.{key}", "unknown key" + _did_you_mean(key, allowed))


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for a near miss, else ''."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _parse_targets(spec: dict, where: str, graph: dict | None, problems: _Problems) -> tuple[Target, ...] | None:
    """Resolve the node inputs that a spec sets; None when they cannot be resolved."""
    direct = any(key in spec for key in _TARGET_KEYS)
    if "targets" not in spec:
        target = _parse_target(spec, where, graph, problems)
        return None if target is None else (target,)
    if direct:
        problems.add(where, 'give either "targets" or "node"/"title" with "input", not both')
        return None
    raw = spec["targets"]
    if not isinstance(raw, list) or not raw:
        problems.add(f"{where}.targets", 'must be a non-empty list of {"node" or "title", "input"}')
        return None
    targets: list[Target] = []
    for i, item in enumerate(raw):
        item_where = f"{where}.targets[{i}]"
        if not isinstance(item, dict):
            problems.add(item_where, 'must be an object {"node" or "title", "input"}')
            continue
        _check_keys(item, _TARGET_KEYS, item_where, problems)
        target = _parse_target(item, item_where, graph, problems)
        if target is None:
            continue
        if target in targets:
            problems.add(item_where, f"node {target.node_id} input {target.input!r} is listed twice")
            continue
        targets.append(target)
    return tuple(targets) if len(targets) == len(raw) else None


def _parse_target(spec: dict, where: str, graph: dict | None, problems: _Problems) -> Target | None:
    """Resolve one {"node" | "title", "input"} to a Target that holds a value in the graph."""
    if "node" in spec and "title" in spec:
        problems.add(where, 'give "node" or "title", not both')
        return None
    if "node" not in spec and "title" not in spec:
        problems.add(where, 'name the node with "node" (its id in the graph) or "title" (its _meta.title)')
        return None
    input_name = spec.get("input")
    if not isinstance(input_name, str) or not input_name:
        problems.add(where, '"input" (the name of the node input to set) is missing')
        return None
    if graph is None:
        return None
    if "node" in spec:
        node = spec["node"]
        if isinstance(node, bool) or not isinstance(node, (str, int)):
            problems.add(f"{where}.node", "must be a node id (a string such as \"3\")")
            return None
        node_id = str(node)
        if node_id not in graph:
            problems.add(f"{where}.node", f"there is no node {node_id!r} in the graph"
                         + _did_you_mean(node_id, graph))
            return None
    else:
        title = spec["title"]
        titles = {nid: (n.get("_meta") or {}).get("title") for nid, n in graph.items()}
        matches = [nid for nid, t in titles.items() if t == title]
        if not matches:
            known = [t for t in titles.values() if isinstance(t, str)]
            problems.add(f"{where}.title", f"no node has the title {title!r}" + _did_you_mean(title, known))
            return None
        if len(matches) > 1:
            problems.add(f"{where}.title", f"the title {title!r} is used by nodes {', '.join(matches)}: "
                                           f"give the node id with \"node\" or make the titles unique")
            return None
        node_id = matches[0]
    node = graph[node_id]
    label = f"node {node_id} ({node['class_type']})"
    if input_name not in node["inputs"]:
        problems.add(f"{where}.input", f"{label} has no input {input_name!r}"
                     + _did_you_mean(input_name, node["inputs"])
                     + f" (it has: {', '.join(node['inputs']) or 'none'})")
        return None
    if isinstance(node["inputs"][input_name], list):
        problems.add(f"{where}.input", f"{label} input {input_name!r} is a link from another node; "
                                       f"only inputs that hold a value can be set")
        return None
    return Target(node_id, input_name)


def _parse_input(name: str, spec: dict, where: str, graph: dict | None, problems: _Problems) -> InputSpec | None:
    """Parse one image input spec."""
    _check_keys(spec, _INPUT_KEYS, where, problems)
    required = spec.get("required", False)
    if not isinstance(required, bool):
        problems.add(f"{where}.required", "must be true or false")
    label, description = _texts(spec, where, problems)
    targets = _parse_targets(spec, where, graph, problems)
    if targets is None:
        return None
    for target in targets:
        value = graph[target.node_id]["inputs"][target.input]
        if not isinstance(value, str):
            problems.add(where, f"node {target.node_id} input {target.input!r} holds {_show(value)}, "
                                f"not a file name")
    return InputSpec(name=name, targets=targets, required=required is True, label=label, description=description)


def _texts(spec: dict, where: str, problems: _Problems) -> tuple[str | None, str | None]:
    """Return the optional label and description of a spec."""
    out = []
    for key in ("label", "description"):
        value = spec.get(key)
        if value is not None and not isinstance(value, str):
            problems.add(f"{where}.{key}", "must be a string")
            value = None
        out.append(value)
    return out[0], out[1]


def _parse_param(name: str, spec: dict, where: str, graph: dict | None, problems: _Problems) -> ParamSpec | None:
    """Parse one param spec and check that its constraints agree with each other and with its type."""
    before = len(problems)
    _check_keys(spec, _PARAM_KEYS, where, problems)
    label, description = _texts(spec, where, problems)
    targets = _parse_targets(spec, where, graph, problems)

    type_ = spec.get("type")
    if type_ not in TYPES:
        problems.add(f"{where}.type", ("missing" if type_ is None else f"unknown type {_show(type_)}")
                     + f": must be one of {', '.join(TYPES)}")
        return None
    for key in _CONSTRAINTS:
        if key in spec and key not in _APPLIES[type_]:
            problems.add(f"{where}.{key}", f"does not apply to {type_} params")

    fields: dict[str, Any] = {}
    for key in ("required", "random_default"):
        value = spec.get(key, False)
        if not isinstance(value, bool):
            problems.add(f"{where}.{key}", "must be true or false")
        fields[key] = value is True
    for key in ("minimum", "maximum"):
        if key in spec and key in _APPLIES[type_]:
            value = spec[key]
            if _type_reason(type_, value):
                problems.add(f"{where}.{key}", f"must be {'an integer' if type_ == 'integer' else 'a number'}")
            else:
                fields[key] = value
    for key in ("multiple_of", "max_length"):
        if key in spec and key in _APPLIES[type_]:
            value = spec[key]
            if not _is_int(value) or value <= 0:
                problems.add(f"{where}.{key}", "must be a positive integer")
            else:
                fields[key] = value
    if "enum" in spec and "enum" in _APPLIES[type_]:
        enum = spec["enum"]
        if not isinstance(enum, list) or not enum:
            problems.add(f"{where}.enum", "must be a non-empty list")
        elif any(_type_reason(type_, v) for v in enum):
            problems.add(f"{where}.enum", f"every value must be of type {type_}")
        elif len(set(enum)) != len(enum):
            problems.add(f"{where}.enum", "lists a value twice")
        else:
            fields["enum"] = tuple(enum)
    if "enum_from" in spec and "enum_from" in _APPLIES[type_]:
        source = spec["enum_from"]
        class_type, _, input_name = source.rpartition(".") if isinstance(source, str) else ("", "", "")
        if not class_type or not input_name:
            problems.add(f"{where}.enum_from", 'must be "ClassType.input", e.g. "CheckpointLoaderSimple.ckpt_name"')
        else:
            fields["enum_from"] = source
        if "enum" in spec:
            problems.add(f"{where}.enum_from", 'give "enum" or "enum_from", not both')

    lo, hi, step = fields.get("minimum"), fields.get("maximum"), fields.get("multiple_of")
    if lo is not None and hi is not None and lo > hi:
        problems.add(where, f"minimum ({lo}) is greater than maximum ({hi})")
    elif step is not None and lo is not None and hi is not None and -((-lo) // step) > hi // step:
        problems.add(where, f"no multiple of {step} lies between {lo} and {hi}")
    if fields["random_default"]:
        if lo is None or hi is None:
            problems.add(f"{where}.random_default", 'needs "minimum" and "maximum" (the range to draw from)')
        for key in ("default", "required", "enum"):
            if key in spec and spec[key] is not False:
                problems.add(f"{where}.random_default", f'cannot be combined with "{key}"')
    if fields["required"] and "default" in spec:
        problems.add(f"{where}.default", "a required param has no default: remove one of the two")
    param = ParamSpec(name=name, type=type_, targets=targets or (), label=label, description=description,
                      **fields)
    if "default" in spec:
        reason = param.check(spec["default"], list(param.enum) if param.enum else None)
        if reason:
            problems.add(f"{where}.default", reason)
        else:
            param = dataclasses.replace(param, default=spec["default"])
    for target in targets or ():
        value = graph[target.node_id]["inputs"][target.input]
        if _type_reason("number" if type_ == "integer" else type_, value):
            problems.add(where, f"node {target.node_id} input {target.input!r} holds {_show(value)}, "
                                f"which is not a {type_}: is this the right input?")
    if targets is None or len(problems) > before:
        return None
    if "default" not in spec and not param.required and not param.random_default:
        first = targets[0]
        value = graph[first.node_id]["inputs"][first.input]
        reason = param.check(value, list(param.enum) if param.enum else None)
        if reason:
            problems.add(where, f"has no \"default\", and the graph's value {_show(value)} (node {first.node_id} "
                                f"input {first.input!r}) {reason}: add a \"default\"")
            return None
        param = dataclasses.replace(param, default=value)
    return param


# --- price -------------------------------------------------------------------


def _parse_price(raw: Any, problems: _Problems) -> Price | None:
    """Check the optional "price" object (credits per job, image, megapixel, GPU second); None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add("price", 'must be an object of credits, e.g. {"per_job": 1, "per_image": 2}')
        return None
    if not raw:
        problems.add("price", f"sets no price: give one or more of {', '.join(PRICE_KEYS)} "
                              '(remove "price" for no billing; {"per_job": 0} is free)')
        return None
    parts = {}
    for key, value in raw.items():
        where = f"price.{key}"
        if key not in PRICE_KEYS:
            problems.add(where, "unknown key" + _did_you_mean(key, PRICE_KEYS) + f" (allowed: {', '.join(PRICE_KEYS)})")
        elif _type_reason("number", value):
            problems.add(where, f"must be a number of credits (got {_show(value)})")
        elif value < 0:
            problems.add(where, "must be at least 0")
        elif value > MAX_PRICE:
            problems.add(where, f"must be at most {MAX_PRICE}")
        else:
            parts[key] = value
    return Price(**parts) if len(parts) == len(raw) else None


def load_price(path) -> Price | None:
    """Read only the price of a workflow file (None: it sets none); raise ``WorkflowFileError`` when unusable.

    For usage records written after start-up: a job is billed at the price its
    workflow file states when the job finishes, even if another part of the
    file has been broken since.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except OSError as e:
        raise WorkflowFileError(path.name, [f"cannot be read: {e.strerror or e}"]) from None
    except (UnicodeDecodeError, ValueError):
        raise WorkflowFileError(path.name, ["is not valid JSON (UTF-8)"]) from None
    if not isinstance(doc, dict):
        raise WorkflowFileError(path.name, ["must be a JSON object"])
    problems = _Problems()
    price = _parse_price(doc.get("price"), problems)
    if problems:
        raise WorkflowFileError(path.name, problems)
    return price


# --- values ------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    """Tell whether value is a JSON integer (bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _type_reason(type_: str, value: Any) -> str | None:
    """Return why value is not of the param type, or None. No coercion: "5" is not an integer."""
    if type_ == "string":
        ok = isinstance(value, str)
    elif type_ == "integer":
        ok = _is_int(value)
    elif type_ == "number":
        ok = _is_int(value) or isinstance(value, float) and math.isfinite(value)
    else:
        ok = isinstance(value, bool)
    return None if ok else _TYPE_REASON[type_]


def _default_reason(spec, choices) -> str | None:
    """Why an ``enum_from`` default cannot be used on this server (a checkpoint it lacks, say), or None.

    Said at submit as a 400 naming the param, rather than a 422 from ComfyUI about its node.
    """
    if spec.default is None or spec.enum_source is None:
        return None
    reason = spec.check(spec.default, spec.allowed(choices))
    return f"has no usable default here ({spec.default!r} is not offered by the server): {reason}" if reason else None


def _draw(spec: ParamSpec, rng: random.Random) -> int:
    """Draw a random integer uniformly in [minimum, maximum], on the multiple_of grid if any."""
    step = spec.multiple_of or 1
    low = -((-spec.minimum) // step)
    high = spec.maximum // step
    return rng.randint(low, high) * step


def _show(value: Any) -> str:
    """Render a JSON value briefly for a message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
