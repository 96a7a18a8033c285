"""Reading a JSON request body within limits, with the right 400/413/415/422 on failure."""

from __future__ import annotations

import json
import math
from typing import Any

import falcon
from gunicorn.http.errors import ParseException

from shared.errors import BadRequest, FieldError, InvalidInput, PayloadTooLarge, UnsupportedMediaType

_MAX_DEPTH = 64
#: The one media type a body may have; a ``charset`` parameter, if any, must say UTF-8.
JSON_TYPE = "application/json"


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; one naming a key twice is refused (json keeps the last, silently)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


def _walk(value: Any, pointer: str, depth: int, nul: list[FieldError]) -> None:
    """Refuse what no JSON document should hold (400); list each string holding U+0000 in ``nul``."""
    if depth > _MAX_DEPTH:
        raise BadRequest(f"JSON nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value, pointer, nul)
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"
            _check_text(key, inner, nul, what="the name")
            _walk(item, inner, depth + 1, nul)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{pointer}/{index}", depth + 1, nul)


def _check_text(value: str, pointer: str, nul: list[FieldError], what: str = "the string") -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode") from None
    if "\x00" in value:
        # NOTE: PostgreSQL text and jsonb cannot hold U+0000; refused on SQLite too, so both stores agree.
        nul.append(FieldError(pointer or "/", f"{what} must not contain U+0000 (\\u0000)"))


def check_content_type(req: falcon.Request) -> None:
    """415 unless the body is sent as ``application/json`` (with ``charset=utf-8`` at most)."""
    header = req.content_type
    if header is None or not header.strip():
        raise UnsupportedMediaType("the request has a body but no Content-Type; send Content-Type: application/json")
    media, params = falcon.parse_header(header)
    charset = params.pop("charset", "utf-8").lower()
    if media.lower() != JSON_TYPE or charset != "utf-8" or params:
        raise UnsupportedMediaType(f"send Content-Type: application/json (UTF-8), not {header.strip()[:100]!r}")


def read_json(req: falcon.Request, max_bytes: int) -> Any:
    """The parsed body; refuses other media types, oversized, malformed and badly framed bodies."""
    length = req.content_length
    chunked = "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
    if req.content_type is not None or length or chunked:
        check_content_type(req)
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"the body is {length} bytes; the limit is {max_bytes}")
    raw = _read(req, length, chunked, max_bytes + 1)
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
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_object)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {_MAX_DEPTH} levels") from None
    except _DuplicateKey as exc:
        raise BadRequest(f"the key {exc.key[:100]!r} appears twice in one object; give each name once") from None
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    nul: list[FieldError] = []
    _walk(value, "", 0, nul)
    if nul:
        raise InvalidInput("a string in the body holds U+0000, which no job store can keep", nul)
    return value


def _read(req: falcon.Request, length: int | None, chunked: bool, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; a body whose framing breaks is a 400, not a 500.

    NOTE: Falcon's ``bounded_stream`` reads a body sent without Content-Length (``Transfer-Encoding:
    chunked``) as empty; the WSGI server (gunicorn) decodes the chunks and ends the stream at the
    last one, and raises from ``read`` on a bad chunk size or a body that ends before its last chunk.
    The worker (``services.api.gunicorn_worker``) closes such a connection after this answer.
    """
    try:
        if length is not None:
            return req.bounded_stream.read(limit)
        if not chunked:
            return b""
        parts: list[bytes] = []
        size = 0
        while size < limit and (part := req.stream.read(min(65536, limit - size))):
            parts.append(part)
            size += len(part)
        return b"".join(parts)
    except (ParseException, OSError) as exc:
        # NOTE: gunicorn's NoMoreData (the body ended early) is an OSError, like a client's reset.
        raise BadRequest(f"the body could not be read: {str(exc)[:200] or type(exc).__name__}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    # NOTE: json reads 1e999 as inf, which no JSON document can hold (PostgreSQL refuses it, and
    # the job would be echoed back as the non-JSON token Infinity).
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:40]} is out of range")
    return value
