"""The building blocks of the OpenAPI document's schemas: references, nullable and closed objects, common types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.catalog import QUEUE_NAME
from shared.submission.validation import PRIORITY_RANGE

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null; keywords of one type (minimum, pattern) ignore the null."""
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def closed(properties: Mapping[str, Schema], required: Iterable[str] = (), **extra: Any) -> Schema:
    """An object with exactly these properties, as the API refuses unknown fields and answers no others."""
    schema: Schema = {"type": "object", "properties": dict(properties), "additionalProperties": False}
    if required := list(required):
        schema["required"] = required
    return {**schema, **{key: value for key, value in extra.items() if value is not None}}


STRING, NUMBER, BOOLEAN, NULL = ({"type": t} for t in ("string", "number", "boolean", "null"))
DATE_TIME = {"type": "string", "format": "date-time"}
ID = {"type": "string", "format": "uuid"}
COUNT = {"type": "integer", "minimum": 0}
QUEUE = {"type": "string", "pattern": QUEUE_NAME.pattern}
PRIORITY = {"type": "integer", "minimum": PRIORITY_RANGE[0], "maximum": PRIORITY_RANGE[1]}
