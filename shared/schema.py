"""JSON Schema derived from a function's type hints: the signature is the source of truth.

Supported hints: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
``list[T]``, ``dict[str, T]``, ``Literal[...]``, unions (``T | None``) and
``Annotated[T, Schema(minimum=0, ...)]`` to add JSON Schema keywords.
A parameter with a default is optional; unknown arguments are refused.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from shared.errors import TaskError

JsonSchema = dict[str, Any]


class Schema:
    """Extra JSON Schema keywords for an ``Annotated`` hint, e.g. ``Schema(minimum=0)``."""

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords


_SIMPLE: dict[Any, JsonSchema] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}


def schema_for_hint(hint: Any, where: str) -> JsonSchema:
    """The JSON Schema of one type hint; ``where`` names the parameter in errors."""
    if hint is Any:
        return {}
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = schema_for_hint(args[0], where)
        for extra in args[1:]:
            if isinstance(extra, Schema):
                schema.update(extra.keywords)
        return schema
    if origin is tuple and args and args[-1] is not Ellipsis:
        # A fixed tuple: one schema per position, and exactly that many items.
        items = [schema_for_hint(arg, where) for arg in args]
        return {"type": "array", "prefixItems": items, "items": False, "minItems": len(items)}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        item = args[0] if args else Any
        return {"type": "array", "items": schema_for_hint(item, where)}
    if origin is dict or hint is dict:
        if args and args[0] is not str:
            raise TaskError(f"{where}: dict keys must be str (JSON object keys)")
        value = args[1] if args else Any
        value_schema = schema_for_hint(value, where)
        return {"type": "object", "additionalProperties": value_schema} if value_schema else {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        members = [schema_for_hint(arg, where) for arg in args]
        types_only = [m.get("type") for m in members]
        if all(isinstance(t, str) and len(m) == 1 for t, m in zip(types_only, members, strict=True)):
            return {"type": types_only}
        return {"anyOf": members}
    raise TaskError(f"{where}: type hint {hint!r} has no JSON Schema; use str, int, float, bool, list, dict")


def schema_for_function(fn: Callable[..., Any]) -> JsonSchema:
    """An object schema for the keyword arguments of ``fn``."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TaskError(f"{fn.__qualname__}: cannot resolve type hints: {exc}") from exc
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TaskError(f"{fn.__qualname__}: parameter {name!r} must be a plain keyword parameter")
        if name not in hints:
            raise TaskError(f"{fn.__qualname__}: parameter {name!r} needs a type hint")
        schema = schema_for_hint(hints[name], f"{fn.__qualname__}({name})")
        if param.default is param.empty:
            required.append(name)
        else:
            schema["default"] = param.default
        properties[name] = schema
    result: JsonSchema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        result["required"] = required
    return result
