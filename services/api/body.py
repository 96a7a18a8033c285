"""Reading a JSON request body within limits, with the right 400/413/415 on failure."""

from __future__ import annotations

import json
import math
from typing import Any

import falcon

from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

_MAX_DEPTH = 64
#: JSON, no type at all, or curl's default for `-d` (the body must still be JSON).
_ACCEPTED = ("application/json", "", "application/x-www-form-urlencoded")


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise BadRequest(f"JSON nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


def _check_text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode") from None


def read_json(req: falcon.Request, max_bytes: int) -> Any:
    """The parsed body; refuses other media types, oversized and malformed bodies."""
    content_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if content_type not in _ACCEPTED and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, not {content_type}")
    length = req.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"the body is {length} bytes; the limit is {max_bytes}")
    raw = req.bounded_stream.read(max_bytes + 1) if length is not None else _read_unsized(req, max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
    if not raw.strip():
        raise BadRequest("the body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8") from None
    try:
        # NOTE: a bracket bomb overflows json's recursion before our depth check can see it.
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {_MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    _check_depth(value)
    return value


def _read_unsized(req: falcon.Request, limit: int) -> bytes:
    """A body sent without Content-Length (``Transfer-Encoding: chunked``), up to ``limit`` bytes.

    NOTE: Falcon's ``bounded_stream`` reads such a body as empty; the WSGI server (gunicorn)
    decodes the chunks and ends the stream at the last one.
    """
    if "chunked" not in (req.get_header("Transfer-Encoding") or "").lower():
        return b""
    parts: list[bytes] = []
    size = 0
    while size < limit and (part := req.stream.read(min(65536, limit - size))):
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    # NOTE: json reads 1e999 as inf, which no JSON document can hold (PostgreSQL refuses it, and
    # the job would be echoed back as the non-JSON token Infinity).
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:40]} is out of range")
    return value
