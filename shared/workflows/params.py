"""Parsing the "params", "inputs" and "price" sections of a workflow file into specs, recording every problem."""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.workflows.specs import (FIELD_RE, MAX_PRICE, PRICE_KEYS, TYPES, InputSpec, ParamSpec, Price, Target,
                                    _Problems)
from shared.workflows.values import _did_you_mean, _is_int, _show, _type_reason

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
