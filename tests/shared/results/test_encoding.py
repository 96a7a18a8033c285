"""What a task may return: the strict JSON mapping, and the refusals that name the type and the place."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid

import pytest

from shared.results.encoding import ResultNotJSON, dumps, to_json


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    at: datetime.date


def test_the_types_python_teams_return_become_json() -> None:
    value = {
        "at": datetime.datetime(2026, 12, 4, 18, 30, tzinfo=datetime.UTC),
        "day": datetime.date(2026, 12, 4),
        "price": decimal.Decimal("12.50"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "colour": Colour.RED,
        "tags": {"b", "a"},
        "pair": (1, 2),
        "point": Point(3, datetime.date(2026, 1, 2)),
        7: "int keys become text",
        "huge": 2**64 + 1,
    }
    assert to_json(value) == {
        "at": "2026-12-04T18:30:00+00:00",
        "day": "2026-12-04",
        "price": "12.50",
        "id": "12345678-1234-5678-1234-567812345678",
        "colour": "red",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "point": {"x": 3, "at": "2026-01-02"},
        "7": "int keys become text",
        "huge": 18446744073709551617,
    }
    assert json.loads(dumps(to_json(value)))["huge"] == 2**64 + 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"at": datetime.timedelta(seconds=1)}, "result is not JSON: datetime.timedelta at /at"),
        ({"items": [1, object()]}, "result is not JSON: object at /items/1"),
        (float("nan"), "result is not JSON: float nan at /"),
        ({"x": [float("inf")]}, "result is not JSON: float inf at /x/0"),
        ({"s": "\ud800"}, "result is not JSON: text with a lone surrogate at /s"),
        ({"a/b": "\x00"}, "result is not JSON: text with a NUL character at /a~1b"),
        ({(1, 2): 3}, "result is not JSON: a key of type tuple at /"),
        (decimal.Decimal("NaN"), "result is not JSON: Decimal NaN at /"),
    ],
)
def test_anything_else_is_refused_naming_its_type_and_place(value: object, message: str) -> None:
    with pytest.raises(ResultNotJSON) as refused:
        to_json(value)
    assert str(refused.value).startswith(message)


def test_a_cycle_is_refused_not_recursed_forever() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ResultNotJSON, match="nested deeper than"):
        to_json(loop)
