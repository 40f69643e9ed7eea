"""Field readers for a JSON object's fields, shared by text and binary frames.

Each reader returns the field as the type it names or raises :class:`_Bad`
with a reason; the frame parsers turn that reason into an ``Ignored`` event.
"""

from __future__ import annotations

import math
from typing import Any

class _Bad(Exception):
    """A known message whose fields cannot be used."""


_MISSING = object()


def _field(data: dict, key: str, *, required: bool) -> Any:
    if key in data:
        return data[key]
    if required:
        raise _Bad(f"missing field {key!r}")
    return _MISSING


def _str(data: dict, key: str) -> str:
    value = _field(data, key, required=True)
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} is not a string")
    return value


def _opt_str(data: dict, key: str) -> str | None:
    """A string or null; a missing key reads as ``None``."""
    value = _field(data, key, required=False)
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} is not a string or null")
    return value


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise _Bad(f"field {key!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _Bad(f"field {key!r} is not an integer")


def _int(data: dict, key: str) -> int:
    return _as_int(_field(data, key, required=True), key)


def _opt_int(data: dict, key: str) -> int | None:
    value = _field(data, key, required=False)
    if value is _MISSING or value is None:
        return None
    return _as_int(value, key)


def _number(data: dict, key: str) -> float:
    value = _field(data, key, required=True)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"field {key!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise _Bad(f"field {key!r} is not finite")
    return number


def _dict(data: dict, key: str) -> dict:
    value = _field(data, key, required=True)
    if not isinstance(value, dict):
        raise _Bad(f"field {key!r} is not an object")
    return value
