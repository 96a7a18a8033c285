"""What a task may return: the types Python teams return, turned into strict JSON once.

A task's return value is stored in its job row (or in result storage when large)
and served as JSON. It is turned into JSON here, once, with a documented mapping:

==========================  ==========================================
returned                    stored as
==========================  ==========================================
``None``, bool, int, str    themselves (integers of any size, exactly)
float                       itself; NaN and infinities are refused
datetime, date, time        RFC 3339 text (``datetime.isoformat()``)
``Decimal``                 its exact text (``"12.50"``)
``UUID``                    its text
``Enum``                    its value, turned into JSON in turn
list, tuple, set            a list (a set sorted when its items sort)
dict                        an object; keys must be str (or int, as text)
dataclass instance          an object of its fields
pydantic model              ``model_dump(mode="json")``
``bytes``                   a result file (``application/octet-stream``)
==========================  ==========================================

Anything else, and any text that is not valid Unicode (a lone surrogate) or holds
NUL, fails the job at once and for good with ``ResultNotJSON`` naming the type and
the place inside the result: ``result is not JSON: datetime.timedelta at /items/0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from typing import Any

from shared.errors import PermanentTaskFailure

#: Deepest nesting accepted (a cycle would otherwise recurse until the interpreter gives up).
MAX_DEPTH = 200


class ResultNotJSON(PermanentTaskFailure):
    """A task returned something that has no JSON form; no retry can mend it."""


def encode(value: Any) -> tuple[Any, bytes]:
    """``value`` ready for the store, and its JSON text: ``(to_json(value), dumps(...))``, or ``ResultNotJSON``.

    NOTE: most results are plain JSON already; they are encoded once, in C, and only a result the
    standard encoder refuses (or one with a lone surrogate or NUL) is walked in Python.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if "\\u0000" not in text:
            return value, text.encode()
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        pass
    converted = to_json(value)
    return converted, dumps(converted)


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data (dict, list, str, int, float, bool, None), or ``ResultNotJSON``."""
    return _convert(value, "", 0)


def dumps(value: Any) -> bytes:
    """The JSON text of data ``to_json`` returned (UTF-8, compact)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _convert(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ResultNotJSON(f"result is not JSON: nested deeper than {MAX_DEPTH} levels at {path or '/'}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return _text(value if type(value) is str else str.__str__(value), path)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ResultNotJSON(
                f"result is not JSON: float {value!r} at {path or '/'} (NaN and infinities are not JSON)"
            )
        return value
    if isinstance(value, enum.Enum):
        return _convert(value.value, path, depth + 1)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ResultNotJSON(f"result is not JSON: Decimal {value} at {path or '/'}")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        converted: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise ResultNotJSON(f"result is not JSON: a key of type {_type(key)} at {path or '/'}")
            name = _text(str(key), path)
            converted[name] = _convert(item, f"{path}/{_pointer(name)}", depth + 1)
        return converted
    if isinstance(value, list | tuple):
        return [_convert(item, f"{path}/{index}", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = list(value)
        with contextlib.suppress(TypeError):
            items.sort()
        return [_convert(item, f"{path}/{index}", depth + 1) for index, item in enumerate(items)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        return _convert(fields, path, depth + 1)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and type(value).__module__.split(".")[0] != "builtins":
        try:
            dumped = model_dump(mode="json")
        except Exception as exc:
            raise ResultNotJSON(f"result is not JSON: {_type(value)} at {path or '/'} ({exc})") from None
        return _convert(dumped, path, depth + 1)
    raise ResultNotJSON(f"result is not JSON: {_type(value)} at {path or '/'}")


def _text(value: str, path: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ResultNotJSON(f"result is not JSON: text with a lone surrogate at {path or '/'}") from None
    if "\x00" in value:
        raise ResultNotJSON(f"result is not JSON: text with a NUL character at {path or '/'}")
    return value


def _pointer(name: str) -> str:
    """A key as a JSON Pointer segment (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def _type(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
