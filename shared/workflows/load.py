"""Reading workflow files: strict JSON, the file's shape and its graph; the sections are parsed in ``params``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.workflows.params import _parse_group, _parse_price
from shared.workflows.specs import NAME_RE, Price, Target, Workflow, WorkflowFileError, _Problems
from shared.workflows.values import _did_you_mean, _is_int

_FILE_KEYS = ("title", "description", "timeout_s", "graph", "params", "inputs", "price")


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
