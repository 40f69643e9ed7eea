"""Type checks and brief renderings of JSON values, shared by the specs, the filling and the file parser."""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, Iterable

_TYPE_REASON = {
    "string": "must be a string",
    "integer": "must be an integer",
    "number": "must be a number",
    "boolean": "must be true or false",
}


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


def _show(value: Any) -> str:
    """Render a JSON value briefly for a message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for a near miss, else ''."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""
