"""The OpenAPI 3.0.3 description of the mobile API, and a small validator for it.

The description lives next to this module, in ``shared/openapi.json`` (so the
Lambda zip, which packs every file under ``shared/``, carries it). It covers
the whole contract of docs/API.md, including endpoints a release may not
serve yet. ``GET /v1/openapi.json`` (functions/openapi.py) serves it.

``validate(instance, schema, spec)`` checks a value against a schema of the
description and returns what is wrong (an empty list when it is valid). It
supports exactly the subset of OpenAPI 3.0 schemas the description uses:
``type``, ``properties``, ``required``, ``additionalProperties``, ``items``,
``enum``, ``nullable``, ``$ref``, ``oneOf``/``anyOf``/``allOf``,
``minimum``/``maximum``, ``minLength``/``maxLength`` and ``format``
(``date-time`` and ``uri`` loosely); annotations (``description``,
``example``, ``default``, ``x-...``) are ignored. Any other keyword raises
``ValueError`` rather than being silently accepted, so a description that
outgrows the validator is noticed.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

SPEC_PATH = Path(__file__).with_name("openapi.json")

#: keywords ``validate`` checks
ASSERTIONS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum", "nullable",
                        "$ref", "oneOf", "anyOf", "allOf", "minimum", "maximum", "minLength", "maxLength",
                        "format"})
#: keywords ``validate`` ignores
ANNOTATIONS = frozenset({"description", "example", "default", "title", "readOnly", "writeOnly", "deprecated"})

_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+\Z")
_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


@lru_cache(maxsize=1)
def load_spec() -> dict:
    """The OpenAPI description, read once per process. Shared: do not modify it."""
    with open(SPEC_PATH, encoding="utf-8") as f:
        return json.load(f)


def resolve(ref: str, spec: dict):
    """The object a local ``$ref`` (``#/components/schemas/Job``) points to; KeyError if none."""
    if not ref.startswith("#/"):
        raise KeyError(f"only local $refs are supported: {ref}")
    node = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"unresolvable $ref: {ref}")
        node = node[part]
    return node


def validate(instance, schema: dict, spec: dict | None = None, path: str = "$") -> list[str]:
    """Return every way ``instance`` breaks ``schema`` (an empty list when it is valid).

    ``schema`` is a schema object of ``spec`` (or a ``{"$ref": ...}`` into it);
    ``spec`` defaults to the project's description. Each message starts with
    the JSON path of the offending value (``$.job.status: ...``).
    """
    if spec is None:
        spec = load_spec()
    errors: list[str] = []
    _check(instance, schema, spec, path, errors)
    return errors


def _check(value, schema: dict, spec: dict, path: str, errors: list[str]) -> None:
    if not isinstance(schema, dict):
        raise ValueError(f"{path}: schema must be an object, not {schema!r}")
    if "$ref" in schema:  # OpenAPI 3.0: siblings of $ref are ignored
        _check(value, resolve(schema["$ref"], spec), spec, path, errors)
        return
    unknown = [k for k in schema if k not in ASSERTIONS and k not in ANNOTATIONS and not k.startswith("x-")]
    if unknown:
        raise ValueError(f"{path}: unsupported schema keyword(s): {', '.join(sorted(unknown))}")

    if value is None and schema.get("nullable") is True:
        return
    if "type" in schema:
        check_type = _TYPES.get(schema["type"])
        if check_type is None:
            raise ValueError(f"{path}: unknown type {schema['type']!r}")
        if not check_type(value):
            errors.append(f"{path}: {_show(value)} is not of type {schema['type']}")
            return
    if "enum" in schema and not any(_same(value, choice) for choice in schema["enum"]):
        errors.append(f"{path}: {_show(value)} is not one of {schema['enum']}")

    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is less than the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is more than the maximum {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: {_show(value)} is shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: string is longer than {schema['maxLength']} characters")
        fmt = schema.get("format")
        if fmt == "date-time" and not _DATE_TIME.match(value):
            errors.append(f"{path}: {_show(value)} is not an ISO 8601 date-time")
        elif fmt == "uri" and not _URI.match(value):
            errors.append(f"{path}: {_show(value)} is not a URI")

    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                errors.append(f"{path}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            where = f"{path}.{name}"
            if name in props:
                _check(item, props[name], spec, where, errors)
            elif extra is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                _check(item, extra, spec, where, errors)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], spec, f"{path}[{i}]", errors)

    for sub in schema.get("allOf", ()):
        _check(value, sub, spec, path, errors)
    if "anyOf" in schema:
        results = [_sub(value, sub, spec, path) for sub in schema["anyOf"]]
        if all(results):
            errors.append(f"{path}: {_show(value)} matches none of anyOf ({'; '.join(r[0] for r in results)})")
    if "oneOf" in schema:
        results = [_sub(value, sub, spec, path) for sub in schema["oneOf"]]
        matched = sum(1 for r in results if not r)
        if matched != 1:
            errors.append(f"{path}: {_show(value)} matches {matched} of oneOf, not exactly one")


def _sub(value, schema: dict, spec: dict, path: str) -> list[str]:
    errors: list[str] = []
    _check(value, schema, spec, path, errors)
    return errors


def _same(a, b) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return type(a) is type(b) and a == b or (_TYPES["number"](a) and _TYPES["number"](b) and a == b)


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# -- responses -------------------------------------------------------------------

def response_spec(method: str, path: str, status: int | str, spec: dict | None = None) -> dict | None:
    """The response object of ``method path`` (a template: ``/v1/jobs/{id}``) for ``status``.

    Falls back to the operation's ``default`` response; None if the operation
    or the response is not described.
    """
    if spec is None:
        spec = load_spec()
    op = spec.get("paths", {}).get(path, {}).get(method.lower())
    if op is None:
        return None
    responses = op.get("responses", {})
    resp = responses.get(str(status), responses.get("default"))
    if resp is not None and "$ref" in resp:
        resp = resolve(resp["$ref"], spec)
    return resp


def validate_response(method: str, path: str, status: int | str, body, spec: dict | None = None) -> list[str]:
    """Check a response body (parsed JSON, or None for no body) against the description."""
    if spec is None:
        spec = load_spec()
    resp = response_spec(method, path, status, spec)
    if resp is None:
        return [f"{method.upper()} {path}: status {status} is not described"]
    media = resp.get("content", {}).get("application/json")
    if media is None:
        return [] if body in (None, b"", "") else [f"{method.upper()} {path} {status}: no body is described"]
    return validate(body, media["schema"], spec)
