"""JSON Schema derived from type hints: each supported hint, defaults, and refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from jsonschema import Draft202012Validator

from shared.errors import TaskError
from shared.schema import JsonSchema, Schema, schema_for_function, schema_for_hint


def derive(fn: Callable[..., Any]) -> JsonSchema:
    """The schema of ``fn``, checked to be a valid Draft 2020-12 schema."""
    schema = schema_for_function(fn)
    Draft202012Validator.check_schema(schema)
    return schema


def hint_schema(hint: Any) -> JsonSchema:
    """The schema of one hint, checked to be a valid Draft 2020-12 schema."""
    schema = schema_for_hint(hint, "test(x)")
    Draft202012Validator.check_schema(schema)
    return schema


def is_valid(schema: JsonSchema, instance: object) -> bool:
    return Draft202012Validator(schema).is_valid(instance)


# --- single hints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (type(None), {"type": "null"}),
        (Any, {}),
    ],
)
def test_simple_hints(hint: Any, expected: JsonSchema) -> None:
    assert hint_schema(hint) == expected


def test_simple_schemas_are_fresh_copies() -> None:
    # Given: a schema handed out and then changed by the caller
    first = hint_schema(int)
    first["minimum"] = 5

    # When/Then: the next schema for the same hint is untouched
    assert hint_schema(int) == {"type": "integer"}


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (list[str], {"type": "array", "items": {"type": "string"}}),
        (list[list[float]], {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}),
        (list, {"type": "array", "items": {}}),
        (list[Any], {"type": "array", "items": {}}),
        (set[str], {"type": "array", "items": {"type": "string"}}),
        (frozenset[int], {"type": "array", "items": {"type": "integer"}}),
        (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    ],
)
def test_sequences_become_arrays(hint: Any, expected: JsonSchema) -> None:
    assert hint_schema(hint) == expected


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
        (
            dict[str, list[str]],
            {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        ),
        (dict[str, Any], {"type": "object"}),
        (dict, {"type": "object"}),
    ],
)
def test_string_keyed_dicts_become_objects(hint: Any, expected: JsonSchema) -> None:
    assert hint_schema(hint) == expected


def test_dict_values_are_validated() -> None:
    schema = hint_schema(dict[str, int])

    assert is_valid(schema, {"a": 1, "b": 2})
    assert not is_valid(schema, {"a": "one"})
    assert not is_valid(schema, [1, 2])


@pytest.mark.parametrize("hint", [dict[int, str], dict[float, Any], dict[tuple[str, str], int]])
def test_dicts_with_non_string_keys_are_refused(hint: Any) -> None:
    with pytest.raises(TaskError, match=r"^test\(x\): dict keys must be str"):
        schema_for_hint(hint, "test(x)")


def test_literal_becomes_enum() -> None:
    schema = hint_schema(Literal["csv", "json", 3])

    assert schema == {"enum": ["csv", "json", 3]}
    assert is_valid(schema, "csv")
    assert is_valid(schema, 3)
    assert not is_valid(schema, "xml")


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045 - the spelling under test
        (Union[str, int], {"type": ["string", "integer"]}),  # noqa: UP007 - the spelling under test
        (int | None, {"type": ["integer", "null"]}),
        (str | int | float, {"type": ["string", "integer", "number"]}),
    ],
)
def test_unions_of_simple_types_become_type_lists(hint: Any, expected: JsonSchema) -> None:
    assert hint_schema(hint) == expected


def test_unions_of_richer_types_become_any_of() -> None:
    schema = hint_schema(list[int] | None)

    assert schema == {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]}
    assert is_valid(schema, [1, 2])
    assert is_valid(schema, None)
    assert not is_valid(schema, ["x"])


def test_union_with_literal_becomes_any_of() -> None:
    schema = hint_schema(Literal["a", "b"] | None)

    assert schema == {"anyOf": [{"enum": ["a", "b"]}, {"type": "null"}]}


def test_annotated_adds_schema_keywords() -> None:
    schema = hint_schema(Annotated[int, Schema(minimum=0, maximum=10)])

    assert schema == {"type": "integer", "minimum": 0, "maximum": 10}
    assert is_valid(schema, 0)
    assert is_valid(schema, 10)
    assert not is_valid(schema, -1)
    assert not is_valid(schema, 11)


def test_annotated_merges_several_schemas_and_ignores_other_metadata() -> None:
    schema = hint_schema(Annotated[str, "a note", Schema(minLength=1), Schema(maxLength=5, pattern="^[a-z]+$")])

    assert schema == {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"}


def test_annotated_inside_a_union_keeps_its_keywords() -> None:
    schema = hint_schema(Annotated[int, Schema(minimum=1)] | None)

    assert schema == {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}
    assert not is_valid(schema, 0)
    assert is_valid(schema, None)


def test_annotated_list_items() -> None:
    schema = hint_schema(list[Annotated[float, Schema(exclusiveMinimum=0)]])

    assert schema == {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}}


class _Point:
    x: int


@pytest.mark.parametrize("hint", [bytes, complex, Path, _Point, object, Callable[[int], int]])
def test_unsupported_hints_are_refused_naming_the_parameter(hint: Any) -> None:
    with pytest.raises(TaskError, match=r"^job\(arg\): type hint .* has no JSON Schema"):
        schema_for_hint(hint, "job(arg)")


def test_unsupported_hint_nested_in_a_list_is_refused() -> None:
    with pytest.raises(TaskError, match="has no JSON Schema"):
        schema_for_hint(list[bytes], "job(arg)")


def test_heterogeneous_tuple_is_refused_or_described_correctly() -> None:
    """``tuple[int, str]`` must not yield a schema that refuses ``[1, "x"]``."""
    try:
        schema = schema_for_hint(tuple[int, str], "job(pair)")
    except TaskError:
        return
    Draft202012Validator.check_schema(schema)
    assert is_valid(schema, [1, "x"])


# --- functions ------------------------------------------------------------------------------


def _report(
    month: str,
    rows: list[dict[str, int]],
    fmt: Literal["csv", "json"] = "csv",
    limit: Annotated[int, Schema(minimum=1)] = 100,
    note: str | None = None,
) -> None:
    """Sample task signature."""


def test_function_schema_describes_every_parameter() -> None:
    schema = derive(_report)

    assert schema == {
        "type": "object",
        "properties": {
            "month": {"type": "string"},
            "rows": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "integer"}}},
            "fmt": {"enum": ["csv", "json"], "default": "csv"},
            "limit": {"type": "integer", "minimum": 1, "default": 100},
            "note": {"type": ["string", "null"], "default": None},
        },
        "additionalProperties": False,
        "required": ["month", "rows"],
    }


def test_function_schema_validates_arguments() -> None:
    schema = derive(_report)

    assert is_valid(schema, {"month": "2024-05", "rows": [{"a": 1}]})
    assert is_valid(schema, {"month": "2024-05", "rows": [], "fmt": "json", "limit": 1, "note": None})
    assert not is_valid(schema, {"month": "2024-05"})  # rows missing
    assert not is_valid(schema, {"month": "2024-05", "rows": [], "extra": 1})  # unknown argument
    assert not is_valid(schema, {"month": "2024-05", "rows": [], "fmt": "xml"})
    assert not is_valid(schema, {"month": "2024-05", "rows": [], "limit": 0})
    assert not is_valid(schema, {"month": 202405, "rows": []})


def test_defaults_make_parameters_optional_and_are_recorded() -> None:
    def fn(a: int = 1, b: list[str] | None = None, c: bool = False) -> None: ...

    schema = derive(fn)

    assert "required" not in schema
    assert schema["properties"]["a"] == {"type": "integer", "default": 1}
    assert schema["properties"]["b"]["default"] is None
    assert schema["properties"]["c"] == {"type": "boolean", "default": False}
    assert is_valid(schema, {})


def test_a_none_hint_becomes_null() -> None:
    def fn(nothing: None) -> None: ...

    assert derive(fn)["properties"]["nothing"] == {"type": "null"}


def test_a_function_without_parameters_takes_an_empty_object() -> None:
    def fn() -> None: ...

    schema = derive(fn)

    assert schema == {"type": "object", "properties": {}, "additionalProperties": False}
    assert is_valid(schema, {})
    assert not is_valid(schema, {"x": 1})


def test_keyword_only_parameters_are_allowed() -> None:
    def fn(*, a: int, b: str = "x") -> None: ...

    schema = derive(fn)

    assert schema["required"] == ["a"]
    assert list(schema["properties"]) == ["a", "b"]


def test_required_keeps_parameter_order() -> None:
    def fn(zeta: int, alpha: str, mid: float = 0.5, beta: bool = True) -> None: ...

    schema = derive(fn)

    assert schema["required"] == ["zeta", "alpha"]
    assert list(schema["properties"]) == ["zeta", "alpha", "mid", "beta"]


def test_the_return_hint_is_not_a_parameter() -> None:
    def fn(a: int) -> dict[int, bytes]:
        return {}

    assert list(derive(fn)["properties"]) == ["a"]


def test_a_parameter_without_a_hint_is_refused() -> None:
    def fn(a: int, b) -> None: ...

    with pytest.raises(TaskError, match=r"fn: parameter 'b' needs a type hint"):
        schema_for_function(fn)


def test_var_positional_is_refused() -> None:
    def fn(a: int, *args: int) -> None: ...

    with pytest.raises(TaskError, match=r"parameter 'args' must be a plain keyword parameter"):
        schema_for_function(fn)


def test_var_keyword_is_refused() -> None:
    def fn(a: int, **kwargs: Any) -> None: ...

    with pytest.raises(TaskError, match=r"parameter 'kwargs' must be a plain keyword parameter"):
        schema_for_function(fn)


def test_positional_only_is_refused() -> None:
    def fn(a: int, /, b: int) -> None: ...

    with pytest.raises(TaskError, match=r"parameter 'a' must be a plain keyword parameter"):
        schema_for_function(fn)


def test_unsupported_parameter_hint_names_function_and_parameter() -> None:
    def fn(blob: bytes) -> None: ...

    with pytest.raises(TaskError, match=r"fn\(blob\): type hint .* has no JSON Schema"):
        schema_for_function(fn)


def test_non_string_dict_keys_in_a_parameter_are_refused() -> None:
    def fn(counts: dict[int, int]) -> None: ...

    with pytest.raises(TaskError, match=r"fn\(counts\): dict keys must be str"):
        schema_for_function(fn)


def test_unresolvable_hints_are_refused() -> None:
    class Local:
        pass

    # With postponed annotations, "Local" cannot be resolved from the module's globals.
    def fn(a: Local) -> None: ...

    with pytest.raises(TaskError, match=r"fn: cannot resolve type hints"):
        schema_for_function(fn)


def test_task_error_has_its_title() -> None:
    def fn(*args: int) -> None: ...

    with pytest.raises(TaskError) as info:
        schema_for_function(fn)

    assert info.value.title == "Task error"
    assert info.value.detail == str(info.value)
