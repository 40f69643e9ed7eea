"""Filling an app's params into a workflow's graph: ``Workflow.fill`` does its work here.

Every param is validated and every bad field named before anything is set;
only the mapped inputs of a deep copy of the graph change.
"""

from __future__ import annotations

import copy
import random
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidParamsError
from shared.workflows.values import _type_reason

if TYPE_CHECKING:
    from shared.workflows.specs import Choices, ParamSpec, Workflow


def fill_graph(workflow: Workflow, params: dict | None, inputs: dict[str, str] | None = None, *,
               choices: Choices | None = None, rng: random.Random | None = None) -> tuple[dict, dict]:
    """Validate the app's params and return (a filled deep copy of the workflow's graph, every param's value).

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
    for name, spec in workflow.params.items():
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
        if key not in workflow.params:
            details[str(key)] = f"is not a parameter of {workflow.name}"

    files: dict[str, str] = {}
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        details["inputs"] = "must be an object"
    else:
        for name, spec in workflow.inputs.items():
            value = inputs.get(name)
            if value is None:
                if spec.required:
                    details[f"inputs.{name}"] = "is required"
            elif not isinstance(value, str) or not value:
                details[f"inputs.{name}"] = "must be a file name"
            else:
                files[name] = value
        for key in inputs:
            if key not in workflow.inputs:
                details[f"inputs.{key}"] = f"is not an image input of {workflow.name}"

    if details:
        message = "; ".join(f"{field} {reason}" for field, reason in details.items())
        raise InvalidParamsError(message, details=details)

    graph = copy.deepcopy(workflow.graph)
    for name, value in resolved.items():
        for target in workflow.params[name].targets:
            graph[target.node_id]["inputs"][target.input] = value
    for name, file_name in files.items():
        for target in workflow.inputs[name].targets:
            graph[target.node_id]["inputs"][target.input] = file_name
    return graph, resolved


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
