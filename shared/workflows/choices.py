"""Choices of ComfyUI combo inputs (checkpoints, samplers ...) from its ``/object_info`` answer."""

from __future__ import annotations


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
