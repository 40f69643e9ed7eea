"""Text frames: a JSON object ``{"type": ..., "data": {...}}``, one reader per message type."""

from __future__ import annotations

import json

from listener.protocol.events import (
    Event,
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
    Progress,
    ProgressState,
    Status,
)
from listener.protocol.fields import _MISSING, _Bad, _dict, _field, _int, _number, _opt_int, _opt_str, _str

def _status(data: dict) -> Status:
    exec_info = _dict(_dict(data, "status"), "exec_info")
    return Status(queue_remaining=_int(exec_info, "queue_remaining"), sid=_opt_str(data, "sid"))


def _feature_flags(data: dict) -> FeatureFlags:
    return FeatureFlags(flags=dict(data))


def _execution_start(data: dict) -> ExecutionStart:
    return ExecutionStart(prompt_id=_str(data, "prompt_id"), timestamp_ms=_opt_int(data, "timestamp"))


def _execution_cached(data: dict) -> ExecutionCached:
    nodes = _field(data, "nodes", required=True)
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise _Bad("field 'nodes' is not a list of strings")
    return ExecutionCached(
        prompt_id=_str(data, "prompt_id"),
        nodes=tuple(nodes),
        timestamp_ms=_opt_int(data, "timestamp"),
    )


def _executing(data: dict) -> Executing:
    # "node" must be present: a missing node must not read as "finished".
    _field(data, "node", required=True)
    return Executing(prompt_id=_opt_str(data, "prompt_id"), node=_opt_str(data, "node"))


def _progress(data: dict) -> Progress:
    return Progress(
        prompt_id=_opt_str(data, "prompt_id"),
        node=_opt_str(data, "node"),
        value=_int(data, "value"),
        max=_int(data, "max"),
    )


def _progress_state(data: dict) -> ProgressState:
    nodes: dict[str, NodeState] = {}
    for key, entry in _dict(data, "nodes").items():
        if not isinstance(entry, dict):
            raise _Bad(f"node {key!r} is not an object")
        node_id = _opt_str(entry, "node_id") or key
        nodes[key] = NodeState(
            node_id=node_id,
            value=_number(entry, "value"),
            max=_number(entry, "max"),
            state=_str(entry, "state"),
        )
    return ProgressState(prompt_id=_str(data, "prompt_id"), nodes=nodes)


def _executed(data: dict) -> Executed:
    output = _field(data, "output", required=False)
    images: list[ImageRef] = []
    if output is not _MISSING and output is not None:
        if not isinstance(output, dict):
            raise _Bad("field 'output' is not an object")
        raw_images = output.get("images", [])
        if raw_images is None:
            raw_images = []
        if not isinstance(raw_images, list):
            raise _Bad("field 'output.images' is not a list")
        for item in raw_images:
            if not isinstance(item, dict):
                raise _Bad("an image entry is not an object")
            subfolder = _opt_str(item, "subfolder") or ""
            images.append(
                ImageRef(filename=_str(item, "filename"), subfolder=subfolder, type=_str(item, "type"))
            )
    return Executed(prompt_id=_str(data, "prompt_id"), node=_str(data, "node"), images=tuple(images))


def _execution_success(data: dict) -> ExecutionSuccess:
    return ExecutionSuccess(prompt_id=_str(data, "prompt_id"), timestamp_ms=_opt_int(data, "timestamp"))


def _execution_error(data: dict) -> ExecutionError:
    return ExecutionError(
        prompt_id=_str(data, "prompt_id"),
        node_id=_opt_str(data, "node_id"),
        node_type=_opt_str(data, "node_type"),
        exception_type=_str(data, "exception_type"),
        exception_message=_str(data, "exception_message"),
        timestamp_ms=_opt_int(data, "timestamp"),
    )


def _execution_interrupted(data: dict) -> ExecutionInterrupted:
    return ExecutionInterrupted(
        prompt_id=_str(data, "prompt_id"),
        node_id=_opt_str(data, "node_id"),
        node_type=_opt_str(data, "node_type"),
        timestamp_ms=_opt_int(data, "timestamp"),
    )


_TEXT_PARSERS = {
    "status": _status,
    "feature_flags": _feature_flags,
    "execution_start": _execution_start,
    "execution_cached": _execution_cached,
    "executing": _executing,
    "progress": _progress,
    "progress_state": _progress_state,
    "executed": _executed,
    "execution_success": _execution_success,
    "execution_error": _execution_error,
    "execution_interrupted": _execution_interrupted,
}


def _parse_text(text: str) -> Event:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return Ignored("text frame is not valid JSON", "text")
    if not isinstance(message, dict):
        return Ignored("text frame is not a JSON object", "text")
    kind = message.get("type")
    if not isinstance(kind, str):
        return Ignored("message has no string 'type'", "text")
    parser = _TEXT_PARSERS.get(kind)
    if parser is None:
        return Ignored("unknown message type", kind)
    data = message.get("data")
    if not isinstance(data, dict):
        return Ignored("message 'data' is not an object", kind)
    try:
        return parser(data)
    except _Bad as bad:
        return Ignored(str(bad), kind)
