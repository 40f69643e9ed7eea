"""The OpenAPI description (shared/openapi.json) against docs/API.md, and the small validator.

No database: everything here runs on the description, sample rows and the
function cores that need no Context.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from functions.openapi import get_openapi, handler as openapi_handler
from shared import errors as errs
from shared import jobs as jobs_mod
from shared.errors import render_error
from shared.http import Request, run, to_lambda
from shared.jobs import job_object
from shared.openapi import (ANNOTATIONS, ASSERTIONS, SPEC_PATH, load_spec, resolve, response_spec, validate,
                            validate_response)

ROOT = Path(__file__).resolve().parents[1]
API_MD = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
SPEC = load_spec()
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
JOB = {"$ref": "#/components/schemas/Job"}
ERROR = {"$ref": "#/components/schemas/Error"}

# The operations of the contract (the task's list, a superset of what docs/API.md spells as `METHOD /path`).
CONTRACT_OPERATIONS = [
    ("post", "/v1/auth/wechat"), ("post", "/v1/auth/dev"), ("get", "/v1/workflows"), ("post", "/v1/uploads"),
    ("post", "/v1/jobs"), ("get", "/v1/jobs/{id}"), ("get", "/v1/jobs/{id}/result"),
    ("post", "/v1/jobs/{id}/cancel"), ("get", "/v1/jobs"), ("get", "/v1/usage"), ("get", "/healthz"),
    ("get", "/v1/openapi.json"),
]
PUBLIC_OPERATIONS = {("post", "/v1/auth/wechat"), ("post", "/v1/auth/dev"), ("get", "/healthz"),
                     ("get", "/v1/openapi.json")}


# -- helpers -----------------------------------------------------------------------

def operations(spec=SPEC):
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def deref(obj, spec=SPEC):
    while isinstance(obj, dict) and "$ref" in obj:
        obj = resolve(obj["$ref"], spec)
    return obj


def walk(node, where="#"):
    """Yield (pointer, dict) for every object in the document."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{where}/{i}")


def schemas_in(spec=SPEC):
    """Yield (pointer, schema) for every schema object in the description (not following $refs)."""
    def under(schema, where):
        if not isinstance(schema, dict):
            return
        yield where, schema
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from under(schema[key], f"{where}/{key}")
        for name, sub in schema.get("properties", {}).items():
            yield from under(sub, f"{where}/properties/{name}")
        for key in ("allOf", "anyOf", "oneOf"):
            for i, sub in enumerate(schema.get(key, ())):
                yield from under(sub, f"{where}/{key}/{i}")

    for name, schema in spec["components"]["schemas"].items():
        yield from under(schema, f"#/components/schemas/{name}")
    for name, header in spec["components"].get("headers", {}).items():
        yield from under(header["schema"], f"#/components/headers/{name}/schema")
    for method, path, op in operations(spec):
        for i, param in enumerate(op.get("parameters", ())):
            yield from under(param["schema"], f"{method} {path} parameters/{i}")
        for media in op.get("requestBody", {}).get("content", {}).values():
            yield from under(media["schema"], f"{method} {path} requestBody")
        for status, resp in op["responses"].items():
            for media in resp.get("content", {}).values():
                yield from under(media["schema"], f"{method} {path} {status}")


def error_table() -> dict[str, set[int]]:
    """docs/API.md's error table: code -> the statuses it may come with."""
    section = API_MD.split("## Errors", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"\d{3}(/\d{3})*", cells[0]):
            statuses = {int(s) for s in cells[0].split("/")}
            for code in re.findall(r"`([a-z_]+)`", cells[1]):
                table.setdefault(code, set()).update(statuses)  # content_rejected is a 409 and a 422
    return table


def contract_paths() -> set[tuple[str, str]]:
    """Every `METHOD /path` docs/API.md names."""
    return {(m.lower(), p) for m, p in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)", API_MD)}


def error_codes_of(resp) -> list[str]:
    return deref(resp).get("x-error-codes", [])


# -- the document's structure --------------------------------------------------------

def test_spec_lives_in_shared_and_loads_once():
    assert SPEC_PATH == ROOT / "shared" / "openapi.json"
    assert not (ROOT / "docs" / "openapi.json").exists(), "keep one copy of the description: shared/openapi.json"
    assert load_spec() is load_spec()
    assert SPEC["openapi"] == "3.0.3"
    assert SPEC["info"]["title"] and SPEC["info"]["version"]
    assert set(SPEC) <= {"openapi", "info", "servers", "paths", "components", "security", "tags", "externalDocs"}


def test_every_ref_resolves():
    refs = [(where, node["$ref"]) for where, node in walk(SPEC) if isinstance(node.get("$ref"), str)]
    assert len(refs) > 50
    for where, ref in refs:
        assert ref.startswith("#/components/"), (where, ref)
        resolve(ref, SPEC)  # raises KeyError if dangling


def test_every_component_is_used():
    text = json.dumps(SPEC["paths"]) + json.dumps(SPEC["components"])
    for kind in ("schemas", "responses", "headers"):
        for name in SPEC["components"].get(kind, {}):
            assert f'"#/components/{kind}/{name}"' in text, f"unused component {kind}/{name}"


def test_the_named_components_exist():
    for name in ("Error", "ErrorCode", "Job", "Progress", "JobError", "Image", "Workflow", "Param", "Upload",
                 "UsageRecord", "Health", "JobRequest"):
        assert name in SPEC["components"]["schemas"], name
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}


def test_every_contract_path_is_described():
    described = {(m, p) for m, p, _ in operations()}
    named = contract_paths()
    assert len(named) >= 10, named
    assert named <= described, named - described
    assert set(CONTRACT_OPERATIONS) <= described, set(CONTRACT_OPERATIONS) - described
    # and nothing beyond the contract's list
    assert described == set(CONTRACT_OPERATIONS)


def test_operations_are_well_formed():
    ids = []
    for method, path, op in operations():
        where = f"{method.upper()} {path}"
        ids.append(op["operationId"])
        assert op.get("summary"), where
        assert op["responses"], where
        assert any(s.startswith("2") for s in op["responses"]), f"{where}: no success response"
        for status, resp in op["responses"].items():
            assert status == "default" or re.fullmatch(r"[1-5]\d\d", status), (where, status)
            assert deref(resp).get("description"), (where, status)
        templated = set(re.findall(r"{([^}]+)}", path))
        params = op.get("parameters", [])
        declared = {p["name"] for p in params if p["in"] == "path"}
        assert templated == declared, where
        for p in params:
            assert p["in"] in ("path", "query", "header"), (where, p)
            assert "schema" in p, (where, p)
            if p["in"] == "path":
                assert p["required"] is True, (where, p)
        assert len({(p["name"], p["in"]) for p in params}) == len(params), where
        if method in ("get", "head"):
            assert "requestBody" not in op, where
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_security():
    assert SPEC["security"] == [{"bearerAuth": []}]
    schemes = SPEC["components"]["securitySchemes"]
    for method, path, op in operations():
        security = op.get("security", SPEC["security"])
        for requirement in security:
            assert set(requirement) <= set(schemes), (method, path)
        if (method, path) in PUBLIC_OPERATIONS:
            assert security == [], (method, path)
            codes = set(error_codes_of(op["responses"].get("401", {})))
            assert not codes & {"unauthorized", "token_expired"}, (method, path)
        else:
            assert security, (method, path)
            assert "401" in op["responses"], f"{method} {path}: a token-protected operation answers 401"
    assert SPEC["paths"]["/v1/usage"]["get"]["security"] == [{"operatorToken": []}]
    assert "403" in SPEC["paths"]["/v1/usage"]["get"]["responses"]


def test_error_responses_use_the_error_schema_and_retry_after():
    for method, path, op in operations():
        for status, resp in op["responses"].items():
            if status.startswith(("1", "2", "3")):
                continue
            where = f"{method.upper()} {path} {status}"
            resp = deref(resp)
            if (path, status) == ("/healthz", "503"):  # the health body names what is down
                assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}
                continue
            assert resp["content"]["application/json"]["schema"] == ERROR, where
            if status == "default":
                continue
            assert resp.get("x-error-codes"), f"{where}: list the codes in x-error-codes"
            if status == "429":
                header = deref(resp["headers"]["Retry-After"])
                assert header["required"] is True and header["schema"]["type"] == "integer", where
            if status == "503":
                assert "Retry-After" in resp["headers"], where


def test_every_operation_documents_500_and_a_default():
    for method, path, op in operations():
        assert error_codes_of(op["responses"]["500"]) == ["internal_error"], (method, path)
        assert "default" in op["responses"], (method, path)


def test_error_code_enum_is_the_contract_table_plus_two():
    table = error_table()
    assert len(table) >= 20, table
    enum = SPEC["components"]["schemas"]["ErrorCode"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == set(table) | {"internal_error", "method_not_allowed"}


def test_error_codes_come_with_their_contract_status():
    table = {**error_table(), "internal_error": {500}, "method_not_allowed": {405}}
    used = set()
    for method, path, op in operations():
        for status, resp in op["responses"].items():
            for code in error_codes_of(resp):
                assert int(status) in table[code], f"{method.upper()} {path}: {code} is not a {status}"
                used.add(code)
    assert set(error_table()) <= used, f"codes no operation gives: {set(error_table()) - used}"


@pytest.mark.parametrize("method, path, status, codes", [
    ("post", "/v1/auth/wechat", "401", {"invalid_code"}),
    ("post", "/v1/auth/dev", "404", {"not_found"}),
    ("post", "/v1/jobs", "400", {"invalid_json", "invalid_params", "unknown_workflow", "invalid_upload"}),
    ("post", "/v1/jobs", "409", {"idempotency_conflict"}),
    ("post", "/v1/jobs", "422", {"workflow_rejected", "content_rejected"}),
    ("post", "/v1/jobs", "429", {"rate_limited", "quota_exceeded", "too_many_active_jobs"}),
    ("post", "/v1/jobs", "503", {"backend_unavailable", "database_unavailable"}),
    ("get", "/v1/jobs/{id}", "404", {"not_found"}),
    ("get", "/v1/jobs/{id}/result", "409", {"job_not_finished", "job_failed", "job_cancelled", "content_rejected"}),
    ("post", "/v1/jobs/{id}/cancel", "409", {"job_finished"}),
    ("get", "/v1/usage", "403", {"forbidden"}),
    ("post", "/v1/auth/wechat", "404", {"not_found"}),
    ("post", "/v1/jobs/{id}/cancel", "429", {"rate_limited"}),
    ("post", "/v1/uploads", "413", {"payload_too_large"}),
])
def test_endpoint_specific_errors(method, path, status, codes):
    assert codes <= set(error_codes_of(SPEC["paths"][path][method]["responses"][status]))


def test_success_statuses_and_headers():
    paths = SPEC["paths"]
    assert {"200", "202"} <= set(paths["/v1/jobs"]["post"]["responses"])
    assert "201" in paths["/v1/uploads"]["post"]["responses"]
    assert "202" in paths["/v1/jobs/{id}/cancel"]["post"]["responses"]
    status = paths["/v1/jobs/{id}"]["get"]
    assert "ETag" in status["responses"]["200"]["headers"]
    assert "ETag" in status["responses"]["304"]["headers"] and "content" not in status["responses"]["304"]
    assert {"If-None-Match"} <= {p["name"] for p in status["parameters"] if p["in"] == "header"}
    submit = paths["/v1/jobs"]["post"]
    key = [p for p in submit["parameters"] if p["name"] == "Idempotency-Key"][0]
    assert key["in"] == "header" and key["required"] is False
    assert {"200", "503"} <= set(paths["/healthz"]["get"]["responses"])


@pytest.mark.parametrize("method, path, names", [
    ("get", "/v1/jobs", {"limit", "cursor"}),
    ("get", "/v1/usage", {"since", "until", "after_id", "limit"}),
])
def test_query_parameters(method, path, names):
    params = SPEC["paths"][path][method]["parameters"]
    assert {p["name"] for p in params if p["in"] == "query"} == names
    for name in names:  # and docs/API.md shows them on that path
        assert re.search(rf"`{method.upper()} {re.escape(path)}\?[^`]*\b{name}=", API_MD), name


def test_request_bodies_reject_unknown_fields():
    bodies = 0
    for method, path, op in operations():
        if "requestBody" not in op:
            continue
        bodies += 1
        assert op["requestBody"]["required"] is True
        schema = deref(op["requestBody"]["content"]["application/json"]["schema"])
        assert schema["type"] == "object" and schema["additionalProperties"] is False, (method, path)
        assert schema["required"], (method, path)
    assert bodies == 4  # wechat, dev, uploads, jobs
    job = SPEC["components"]["schemas"]["JobRequest"]
    assert job["required"] == ["workflow"]
    assert set(job["properties"]) == {"workflow", "params", "inputs", "notify"}
    assert job["properties"]["notify"] == {**job["properties"]["notify"], "type": "boolean", "default": False}
    value = deref(job["properties"]["params"]["additionalProperties"])
    assert {s["type"] for s in value["anyOf"]} == {"string", "integer", "number", "boolean"}
    assert job["properties"]["inputs"]["additionalProperties"]["type"] == "string"


def test_object_schemas_are_consistent():
    for where, schema in schemas_in():
        if "required" in schema:
            assert set(schema["required"]) <= set(schema.get("properties", {})), where
            assert len(schema["required"]) == len(set(schema["required"])), where
        if "nullable" in schema:
            assert "type" in schema, f"{where}: nullable needs a type beside it (OpenAPI 3.0.3)"
        if "$ref" in schema:
            assert set(schema) == {"$ref"}, f"{where}: siblings of $ref are ignored in OpenAPI 3.0"


def test_the_validator_covers_every_keyword_the_description_uses():
    for where, schema in schemas_in():
        unknown = {k for k in schema if k not in ASSERTIONS | ANNOTATIONS and not k.startswith("x-")}
        assert not unknown, (where, unknown)
        if "format" in schema:
            assert schema["format"] in ("date-time", "uri"), where


def test_every_example_validates():
    checked = 0
    for name, schema in SPEC["components"]["schemas"].items():
        if "example" in schema:
            assert validate(schema["example"], schema) == [], name
            checked += 1
    media_objects = []
    for method, path, op in operations():
        for media in op.get("requestBody", {}).get("content", {}).values():
            media_objects.append((f"{method} {path} body", media))
        for status, resp in op["responses"].items():
            for media in deref(resp).get("content", {}).values():
                media_objects.append((f"{method} {path} {status}", media))
    for where, media in media_objects:
        examples = [media["example"]] if "example" in media else []
        examples += [e["value"] for e in media.get("examples", {}).values()]
        for example in examples:
            assert validate(example, media["schema"]) == [], where
            checked += 1
    assert checked > 30


def test_error_examples_carry_their_responses_codes():
    for method, path, op in operations():
        for status, resp in op["responses"].items():
            resp = deref(resp)
            for name, example in resp.get("content", {}).get("application/json", {}).get("examples", {}).items():
                assert example["value"]["error"]["code"] in resp["x-error-codes"], (method, path, status, name)


def test_job_object_fields_follow_the_contract():
    job = SPEC["components"]["schemas"]["Job"]
    fence = API_MD.split("A job object:", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    documented = set(re.findall(r'"([a-z_]+)":', fence)) - {"percent", "node", "node_title", "value", "max",
                                                             "prompt", "width"}
    added = {"eta_seconds"}  # added on top of the contract's example (issue: status responses add eta_seconds)
    assert documented | added == set(job["properties"]) == set(job["required"])
    statuses = re.search(r"`status` is one of ([^.]+)\.", API_MD).group(1)
    assert job["properties"]["status"]["enum"] == re.findall(r"`([a-z_]+)`", statuses)
    error_line = [line for line in API_MD.splitlines() if line.startswith("- `error`")][0]
    codes = re.findall(r'"([a-z_]+)"', error_line.split('"message"')[0])
    assert SPEC["components"]["schemas"]["JobError"]["properties"]["code"]["enum"] == [c for c in codes if c != "code"]


# -- the validator ---------------------------------------------------------------

S = {"components": {"schemas": {
    "Thing": {"type": "object", "additionalProperties": False, "required": ["id"],
              "properties": {"id": {"type": "integer", "minimum": 1},
                             "name": {"type": "string", "minLength": 1, "maxLength": 3, "nullable": True},
                             "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
                             "at": {"type": "string", "format": "date-time"},
                             "link": {"type": "string", "format": "uri"},
                             "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                             "flag": {"type": "boolean"},
                             "map": {"type": "object", "additionalProperties": {"type": "integer"}},
                             "open": {"type": "object"}}},
    "Scalar": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]},
    "Either": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    "MaybeThing": {"allOf": [{"$ref": "#/components/schemas/Thing"}], "nullable": True},
    "One": {"type": "integer", "enum": [1]},
}}}
REF = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731


@pytest.mark.parametrize("schema, instance", [
    ("Thing", {"id": 1}),
    ("Thing", {"id": 7, "name": None, "tags": ["a", "b"], "at": "2026-11-25T05:01:02Z", "ratio": 0.5,
               "link": "https://example.com/x?y=1", "flag": False, "map": {"x": 1}, "open": {"anything": [1]}}),
    ("Thing", {"id": 1, "at": "2026-11-25T05:01:02.123Z"}),
    ("Thing", {"id": 1, "at": "2026-11-25T05:01:02+08:00", "ratio": 1, "name": "abc", "tags": []}),
    ("Scalar", "x"), ("Scalar", 3), ("Scalar", True),
    ("Either", 1.5),
    ("MaybeThing", None), ("MaybeThing", {"id": 2}),
    ("One", 1),
])
def test_validator_accepts(schema, instance):
    assert validate(instance, REF(schema), S) == []


@pytest.mark.parametrize("schema, instance, fragment", [
    ("Thing", [], "$: [] is not of type object"),
    ("Thing", {}, "missing required property 'id'"),
    ("Thing", {"id": 1, "extra": 1}, "unexpected property 'extra'"),
    ("Thing", {"id": 0}, "$.id: 0 is less than the minimum 1"),
    ("Thing", {"id": "1"}, '$.id: "1" is not of type integer'),
    ("Thing", {"id": 1.0}, "$.id: 1.0 is not of type integer"),
    ("Thing", {"id": True}, "$.id: true is not of type integer"),
    ("Thing", {"id": 1, "name": ""}, "shorter than 1"),
    ("Thing", {"id": 1, "name": "abcd"}, "longer than 3"),
    ("Thing", {"id": 1, "tags": ["c"]}, "$.tags[0]: \"c\" is not one of"),
    ("Thing", {"id": 1, "tags": "a"}, "$.tags: \"a\" is not of type array"),
    ("Thing", {"id": 1, "at": "2026-11-25 05:01:02"}, "not an ISO 8601 date-time"),
    ("Thing", {"id": 1, "at": "2026-11-25T05:01:02"}, "not an ISO 8601 date-time"),
    ("Thing", {"id": 1, "link": "not a url"}, "is not a URI"),
    ("Thing", {"id": 1, "ratio": 1.5}, "more than the maximum 1"),
    ("Thing", {"id": 1, "flag": 0}, "not of type boolean"),
    ("Thing", {"id": 1, "map": {"x": "1"}}, "$.map.x"),
    ("Thing", None, "null is not of type object"),
    ("Scalar", None, "matches none of anyOf"),
    ("Scalar", 1.5, "matches none of anyOf"),
    ("Scalar", {}, "matches none of anyOf"),
    ("Either", 1, "matches 2 of oneOf"),
    ("Either", "1", "matches 0 of oneOf"),
    ("MaybeThing", {"id": "x"}, "$.id"),
    ("One", True, "is not of type integer"),
])
def test_validator_rejects(schema, instance, fragment):
    problems = validate(instance, REF(schema), S)
    assert problems and any(fragment in p for p in problems), problems


def test_validator_refuses_what_it_does_not_support():
    with pytest.raises(ValueError, match="pattern"):
        validate("x", {"type": "string", "pattern": "^x$"}, S)
    with pytest.raises(KeyError):
        validate(1, REF("Nope"), S)


# -- real values against the description -----------------------------------------

NOW = datetime(2026, 11, 25, 5, 1, 2)
LATER = datetime(2026, 11, 25, 5, 1, 9, 250000)


def row(**over):
    base = {"id": "6cc31eba-9053-4126-8405-11c95b3f07c4", "workflow": "txt2img", "status": "queued", "ahead": 2,
            "progress_percent": 0, "progress_node": None, "progress_value": 0, "progress_max": 0,
            "error_code": None, "error_message": None, "error_node_id": None, "error_node_type": None,
            "params": {"prompt": "a cat", "width": 512, "cfg": 7.0, "seed": 42, "hires": False},
            "created_at": NOW, "started_at": None, "finished_at": None, "preview_key": None}
    base.update(over)
    return base


JOB_ROWS = {
    "submitting": row(status="submitting", ahead=None),
    "queued": row(),
    "running": row(status="running", ahead=0, started_at=NOW, progress_percent=42.5, progress_node="3",
                   progress_value=9, progress_max=20),
    "succeeded": row(status="succeeded", ahead=None, started_at=NOW, finished_at=LATER, progress_percent=100),
    "failed": row(status="failed", started_at=NOW, finished_at=LATER, progress_percent=12, error_code="execution_error",
                  error_message="CUDA out of memory", error_node_id="3", error_node_type="KSampler"),
    "backend_lost": row(status="failed", finished_at=LATER, error_code="backend_lost",
                        error_message="the ComfyUI server lost the job"),
    "cancelled": row(status="cancelled", finished_at=LATER),
    # content security: images waiting for the check's verdict (shown as running), then rejected
    "checking": row(status="checking", ahead=None, started_at=NOW, progress_percent=100, moderation="pending"),
    "content_rejected": row(status="failed", ahead=None, started_at=NOW, finished_at=LATER, progress_percent=100,
                            error_code="content_rejected", error_message="the content check rejected the image",
                            moderation="rejected"),
}


@pytest.mark.parametrize("name", sorted(JOB_ROWS))
def test_rendered_job_objects_validate(name):
    preview = "https://bucket.s3.amazonaws.com/p.jpg?X-Amz-Signature=1" if name == "running" else None
    job = job_object(JOB_ROWS[name], node_title=lambda node: "KSampler", preview_url=preview)
    assert validate(job, JOB) == []
    assert validate_response("GET", "/v1/jobs/{id}", 200, {"job": job}) == []
    assert validate_response("POST", "/v1/jobs", 202, {"job": job}) == []


def test_a_job_waiting_for_the_content_check_is_shown_as_the_contract_says():
    job = job_object(JOB_ROWS["checking"], node_title=lambda node: "KSampler")
    assert job["status"] == "running" and job["poll_after_ms"] == 2000 and job["queue_position"] is None
    waiting = {"percent": 100.0, "node": None, "node_title": "content_check", "value": 0, "max": 0}
    assert job["progress"] == waiting == SPEC["components"]["schemas"]["Progress"]["example"]
    assert "`progress` = `" + json.dumps(waiting) + "`" in API_MD


def broken(**changes):
    job = job_object(JOB_ROWS["queued"])
    for dotted, value in changes.items():
        target, *rest = job, *dotted.split("__")
        for key in rest[:-1]:
            target = target[key]
        if value is KeyError:
            del target[rest[-1]]
        else:
            target[rest[-1]] = value
    return job


@pytest.mark.parametrize("job, fragment", [
    (broken(status="done"), "$.status"),
    (broken(queue_position="3"), "$.queue_position"),
    (broken(queue_position=-1), "$.queue_position"),
    (broken(created_at="2026-11-25 05:01:02"), "$.created_at"),
    (broken(created_at=None), "$.created_at"),
    (broken(poll_after_ms=1.5), "$.poll_after_ms"),
    (broken(id=6), "$.id"),
    (broken(params={"prompt": ["6", 0]}), "$.params.prompt"),
    (broken(progress__percent=101.0), "$.progress.percent"),
    (broken(progress__value=None), "$.progress.value"),
    (broken(progress__eta=3), "unexpected property 'eta'"),
    (broken(error={"code": "oops", "message": "x", "node_id": None, "node_type": None}), "$.error.code"),
    (broken(error={"code": "timeout"}), "missing required property 'message'"),
    (broken(error="failed"), "$.error"),
    (broken(preview_url="not a url"), "$.preview_url"),
    (broken(workflow=KeyError), "missing required property 'workflow'"),
    (broken(eta_ms=3), "unexpected property 'eta_ms'"),
])
def test_broken_job_objects_do_not_validate(job, fragment):
    problems = validate(job, JOB)
    assert problems and any(fragment in p for p in problems), problems


def test_broken_rows_render_invalid_jobs():
    """A row the renderer cannot make valid is caught (unknown error code, percent over 100)."""
    assert validate(job_object(row(status="failed", error_code="oops", error_message="x")), JOB)
    assert validate(job_object(row(status="running", progress_percent=250, progress_node="3")), JOB)


@pytest.mark.parametrize("exc", [
    errs.InvalidJsonError(), errs.InvalidParamsError("width bad", details={"width": "must be a multiple of 8"}),
    errs.UnknownWorkflowError(), errs.InvalidUploadError(), errs.UnauthorizedError(), errs.InvalidCodeError(),
    errs.TokenExpiredError(), errs.ForbiddenError(), errs.NotFoundError(), errs.MethodNotAllowedError(),
    errs.ConflictError(code="idempotency_conflict"), errs.ConflictError(code="job_not_finished"),
    errs.ConflictError(code="job_failed", details={"code": "timeout", "message": "too slow", "node_id": None,
                                                   "node_type": None}),
    errs.ConflictError(code="job_cancelled"), errs.ConflictError(code="job_finished"),
    errs.PayloadTooLargeError(), errs.WorkflowRejectedError(details={"node_errors": {}, "error": {}}),
    errs.ContentRejectedError(details={"prompt": "rejected by the content check"}),
    errs.ConflictError(code="content_rejected"),
    errs.TooManyRequestsError(retry_after=3), errs.TooManyRequestsError(code="quota_exceeded", retry_after=60),
    errs.TooManyRequestsError(code="too_many_active_jobs", retry_after=5),
    errs.BackendUnavailableError(retry_after=5), errs.StorageUnavailableError(), errs.DatabaseUnavailableError(),
    errs.ApiError(), RuntimeError("boom"),
])
def test_rendered_errors_validate(exc):
    status, headers, body = render_error(exc)
    assert validate(body, ERROR) == []
    assert str(status) in {"400", "401", "403", "404", "405", "409", "413", "422", "429", "500", "503"}
    if status == 429:
        assert int(headers["Retry-After"]) >= 0


@pytest.mark.parametrize("body", [
    {"error": {"code": "conflict", "message": "x"}},  # ConflictError without a contract code
    {"error": {"code": "invalid_json"}},
    {"error": {"code": "invalid_json", "message": "x", "trace": "..."}},
    {"error": {"code": "invalid_json", "message": "x", "details": "x"}},
    {"code": "invalid_json", "message": "x"},
])
def test_bad_error_bodies_do_not_validate(body):
    assert validate(body, ERROR)


def test_shipped_workflows_validate():
    from shared.workflows import load_workflows
    workflows, problems = load_workflows(ROOT / "workflows")
    assert workflows and not problems
    body = {"workflows": [{**wf.public(lambda cls, name: ["a.safetensors", "b.safetensors"]), "available": True}
                          for _, wf in sorted(workflows.items())]}
    assert validate_response("GET", "/v1/workflows", 200, body) == []
    body["workflows"][0]["params"]["prompt"]["node"] = "6"  # node ids are never public
    assert validate_response("GET", "/v1/workflows", 200, body)


def test_health_answer_validates():
    from functions.health import health

    class Down:
        def connection(self):
            raise OSError("no database")

    class Store:
        def check(self):
            pass

    class Ctx:
        db, store = Down(), Store()
        config = type("C", (), {"comfyui_urls": ["http://127.0.0.1:8188"]})()

    resp = health(Ctx(), Request("GET", "/healthz"))
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert validate_response("GET", "/healthz", 503, resp.body) == []
    ok = {"status": "ok", "database": "ok", "storage": "ok",
          "backends": [{"url": "http://127.0.0.1:8188", "state": "down", "listener_connected": False, "owner": None,
                        "standby_alive": False, "slots": 2, "slots_in_use": 0, "queue_remaining": 0,
                        "last_event_at": None}]}
    assert validate_response("GET", "/healthz", 200, ok) == []
    ok["backends"][0]["state"] = "asleep"
    assert validate_response("GET", "/healthz", 200, ok)


def test_other_answers_validate():
    login = {"token": "a.b", "expires_at": "2026-12-02T05:01:02Z", "user": {"id": "17"}}
    assert validate_response("POST", "/v1/auth/dev", 200, login) == []
    assert validate_response("POST", "/v1/auth/wechat", 200, {**login, "session_key": "x"})
    url = "http://127.0.0.1:8000/v1/files/outputs/j/9_0.png?expires=1&signature=s"
    result = {"job_id": "j", "images": [{"url": url, "expires_at": "2026-11-25T06:01:02Z", "content_type": "image/png",
                                         "bytes": 9666, "width": None, "height": None, "node_id": "9", "index": 0}]}
    assert validate_response("GET", "/v1/jobs/{id}/result", 200, result) == []
    jobs = {"jobs": [job_object(r) for r in JOB_ROWS.values()], "next_cursor": None}
    assert validate_response("GET", "/v1/jobs", 200, jobs) == []
    assert validate_response("GET", "/v1/jobs", 200, {"jobs": []})  # next_cursor is always there
    assert validate_response("GET", "/v1/jobs/{id}", 304, None) == []
    assert validate_response("GET", "/v1/jobs/{id}", 304, {"job": {}})
    assert validate_response("GET", "/v1/jobs/{id}", 405, {"error": {"code": "method_not_allowed",
                                                                    "message": "method not allowed"}}) == []
    assert validate_response("GET", "/v1/nope", 200, {}) == ["GET /v1/nope: status 200 is not described"]
    usage = SPEC["components"]["schemas"]["UsageList"]["example"]
    assert validate_response("GET", "/v1/usage", 200, usage) == []
    assert validate_response("GET", "/v1/usage", 200, {"records": [{**usage["records"][0], "status": "queued"}],
                                                       "next_after_id": 17})


@pytest.mark.parametrize("body, ok", [
    ({"workflow": "txt2img"}, True),
    ({"workflow": "txt2img", "params": {"prompt": "a cat", "seed": 42, "cfg": 7.5, "hires": True},
      "inputs": {"image": "up_1"}}, True),
    ({"workflow": "txt2img", "extra": 1}, False),
    ({"params": {}}, False),
    ({"workflow": 5}, False),
    ({"workflow": "txt2img", "params": {"prompt": ["6", 0]}}, False),
    ({"workflow": "txt2img", "params": {"prompt": {"x": 1}}}, False),
    ({"workflow": "txt2img", "params": []}, False),
    ({"workflow": "txt2img", "inputs": {"image": 3}}, False),
])
def test_job_request_schema(body, ok):
    assert (validate(body, {"$ref": "#/components/schemas/JobRequest"}) == []) is ok


@pytest.mark.parametrize("body, ok", [
    ({"content_type": "image/png", "size": 123456}, True),
    ({"content_type": "image/gif", "size": 1}, False),
    ({"content_type": "image/png", "size": 0}, False),
    ({"content_type": "image/png"}, True),
    ({"size": 1}, False),
    ({"content_type": "image/png", "size": 1, "name": "x.png"}, False),
])
def test_upload_request_schema(body, ok):
    assert (validate(body, {"$ref": "#/components/schemas/UploadRequest"}) == []) is ok


def test_response_spec_follows_refs():
    resp = response_spec("GET", "/v1/workflows", 401)
    assert resp["x-error-codes"] == ["unauthorized", "token_expired"]
    default = SPEC["paths"]["/v1/workflows"]["get"]["responses"]["default"]
    assert response_spec("get", "/v1/workflows", 499) == deref(default)
    assert response_spec("DELETE", "/v1/workflows", 200) is None


# -- the endpoint ------------------------------------------------------------------

def test_get_openapi_serves_the_description_without_a_token():
    req = Request(method="GET", path="/v1/openapi.json")
    resp = get_openapi(None, req)
    assert resp.status == 200 and resp.body == SPEC
    out = to_lambda(run(get_openapi, lambda: None, req))
    assert out["statusCode"] == 200 and out["headers"]["Content-Type"] == "application/json"
    assert json.loads(out["body"]) == SPEC
    assert validate_response("GET", "/v1/openapi.json", 200, json.loads(out["body"])) == []
    assert openapi_handler.core is get_openapi
    assert copy.deepcopy(SPEC) == load_spec()  # nobody changed the cached copy


# -- the running API against the description (Flask door, test database) ------------

TEMPLATES = [(re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$"), path) for path in SPEC["paths"]]


def template_of(path: str) -> str | None:
    path = path.split("?", 1)[0]
    for pattern, template in sorted(TEMPLATES, key=lambda t: t[1].count("{")):
        if pattern.match(path):
            return template
    return None


class Checked:
    """A Flask test client that checks every answer against the description."""

    def __init__(self, client):
        self.client = client
        self.seen: set[tuple[str, str, int]] = set()

    def call(self, method, path, **kw):
        r = self.client.open(path, method=method, **kw)
        template = template_of(path)
        assert template, f"{path} is not described"
        body = r.get_json(silent=True) if r.data else None
        if method.lower() not in SPEC["paths"][template]:  # a method the path does not have
            assert r.status_code == 405 and validate(body, ERROR) == [], (method, path, r.status_code, body)
            assert body["error"]["code"] == "method_not_allowed"
            self.seen.add((method.lower(), template, r.status_code))
            return r
        responses = SPEC["paths"][template][method.lower()]["responses"]
        status = str(r.status_code)
        assert status in responses, f"{method} {template}: {status} is not described"
        problems = validate_response(method, template, r.status_code, body)
        assert problems == [], (method, path, r.status_code, problems)
        resp = deref(responses.get(status, responses["default"]))
        if body and "x-error-codes" in resp:
            assert body["error"]["code"] in resp["x-error-codes"], (method, path, status, body)
        for name, header in resp.get("headers", {}).items():
            if deref(header).get("required"):
                assert name in r.headers, (method, path, status, name)
        self.seen.add((method.lower(), template, r.status_code))
        return r


def test_routes_match_the_description():
    from functions.app import ROUTES
    mounted = {(m.lower(), re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)) for m, rule, _ in ROUTES}
    described = {(m, p) for m, p, _ in operations()}
    # /v1/files serves the opaque signed links of local storage: apps never build these paths.
    # /v1/wechat/push is WeChat's callback (message push), not the apps' API (README, "Content security").
    local_files = {("get", "/v1/files/{key}"), ("post", "/v1/files"), ("get", "/v1/wechat/push"),
                   ("post", "/v1/wechat/push")}
    assert mounted - local_files <= described, mounted - local_files - described
    assert described - mounted <= {("get", "/v1/openapi.json")}, described - mounted


def test_running_api_matches_the_description(ctx, db_conn):
    from functions.app import create_app
    api = Checked(create_app(lambda: ctx).test_client())
    token = api.call("POST", "/v1/auth/dev", json={"user": "alice"}).get_json()["token"]
    user_id = api.call("POST", "/v1/auth/dev", json={"user": "alice"}).get_json()["user"]["id"]
    h = {"Authorization": f"Bearer {token}"}
    api.call("POST", "/v1/auth/dev", json={"user": "alice", "extra": 1})
    api.call("POST", "/v1/auth/dev", data=b"{nope", headers={"Content-Type": "application/json"})

    api.call("GET", "/v1/workflows", headers=h)
    api.call("GET", "/v1/workflows")
    api.call("GET", "/v1/workflows", headers={"Authorization": "Bearer nonsense"})

    assert api.call("POST", "/v1/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}},
                    headers=h).status_code == 503  # no ComfyUI connected
    api.call("POST", "/v1/jobs", json={"workflow": "nope"}, headers=h)
    api.call("POST", "/v1/jobs", json={"workflow": "txt2img", "params": {"prompt": "x", "width": 100}}, headers=h)
    api.call("POST", "/v1/jobs", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
             headers={**h, "Content-Type": "application/json"})
    api.call("DELETE", "/v1/jobs", headers=h)

    ids = {}
    for status in ("submitting", "queued", "running", "succeeded", "failed", "cancelled"):
        ids[status] = job_id = str(uuid.uuid4())
        jobs_mod.create_job(db_conn, job_id=job_id, user_id=user_id, workflow="txt2img",
                            params={"prompt": "x", "seed": 7, "cfg": 7.5}, prompt={}, backend_id=None, client_id="c")
        with db_conn.cursor() as cur:
            cur.execute("UPDATE jobs SET status=%s, progress_node=IF(%s='running','3',NULL), progress_value=4, "
                        "progress_max=20, progress_percent=20, started_at=IF(%s IN ('running','succeeded','failed'), "
                        "created_at, NULL), finished_at=IF(%s IN ('succeeded','failed','cancelled'), created_at, NULL),"
                        " error_code=IF(%s='failed','execution_error',NULL), error_message=IF(%s='failed','OOM',NULL)"
                        " WHERE id=%s", (status, status, status, status, status, status, job_id))
    jobs_mod.add_output(db_conn, job_id=ids["succeeded"], node_id="9", index=0, content_type="image/png",
                        key=f"outputs/{ids['succeeded']}/9_0.png", size=9666, width=512, height=512)

    listed = api.call("GET", "/v1/jobs?limit=2", headers=h).get_json()
    api.call("GET", f"/v1/jobs?limit=2&cursor={listed['next_cursor']}", headers=h)
    api.call("GET", "/v1/jobs?limit=0", headers=h)
    for status, job_id in ids.items():
        r = api.call("GET", f"/v1/jobs/{job_id}", headers=h)
        api.call("GET", f"/v1/jobs/{job_id}", headers={**h, "If-None-Match": r.headers["ETag"]})
        api.call("GET", f"/v1/jobs/{job_id}/result", headers=h)
    api.call("GET", "/v1/jobs/nope", headers=h)
    api.call("GET", "/v1/jobs/nope/result", headers=h)
    api.call("POST", f"/v1/jobs/{ids['queued']}/cancel", headers=h)
    api.call("POST", f"/v1/jobs/{ids['succeeded']}/cancel", headers=h)
    api.call("POST", "/v1/jobs/nope/cancel", headers=h)

    api.call("POST", "/v1/uploads", json={"content_type": "image/png", "size": 1000}, headers=h)
    api.call("POST", "/v1/uploads", json={"content_type": "image/gif", "size": 1000}, headers=h)
    api.call("POST", "/v1/uploads", json={"content_type": "image/png", "size": 10**12}, headers=h)

    admin = {"Authorization": f"Bearer {ctx.config.admin_token}"}
    usage = api.call("GET", "/v1/usage?after_id=0&limit=10", headers=admin).get_json()
    api.call("GET", f"/v1/usage?after_id={usage['next_after_id']}", headers=admin)
    api.call("GET", "/v1/usage?since=2026-01-01T00:00:00Z&until=2100-01-01T00:00:00Z", headers=admin)
    api.call("GET", "/v1/usage?since=yesterday", headers=admin)
    api.call("GET", "/v1/usage", headers=h)
    api.call("GET", "/v1/usage")

    api.call("GET", "/healthz")

    statuses = {s for _, _, s in api.seen}
    assert {200, 201, 202, 304, 400, 401, 403, 404, 405, 409, 413, 503} <= statuses, statuses
    assert usage["records"], "the cancelled job's usage record is listed"
    assert {("get", "/v1/jobs/{id}/result", 200), ("get", "/v1/jobs/{id}/result", 409),
            ("post", "/v1/jobs/{id}/cancel", 202), ("post", "/v1/jobs/{id}/cancel", 409)} <= api.seen
