"""Declaring flow limits: rates parsed, key paths checked against the task's arguments, bad ones named."""

from __future__ import annotations

import pytest

from shared.catalog import Catalog
from shared.errors import TaskError
from shared.flow.limits import LimitError, bucket_name, key_value, parse_rate


@pytest.mark.parametrize(
    ("text", "count", "period_s"),
    [("100/m", 100, 60.0), ("5/s", 5, 1.0), ("3/h", 3, 3600.0), (" 10 / minute ", 10, 60.0), ("1/S", 1, 1.0)],
)
def test_a_rate_is_a_count_per_period(text: str, count: int, period_s: float) -> None:
    rate = parse_rate(text)

    assert (rate.count, rate.period_s) == (count, period_s)
    assert rate.interval_s == pytest.approx(period_s / count)


@pytest.mark.parametrize(
    ("text", "says"),
    [("100/x", "unknown unit 'x'"), ("0/s", "at least 1"), ("fast", "must look like"), ("1.5/s", "must look like")],
)
def test_a_malformed_rate_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(LimitError, match=says):
        parse_rate(text)


def test_a_malformed_rate_at_decoration_names_the_task() -> None:
    catalog = Catalog()

    with pytest.raises(TaskError, match=r"task vendor\.call: rate_limit '100/x': unknown unit 'x'"):

        @catalog.task(name="vendor.call", rate_limit="100/x")
        def call(url: str) -> None: ...


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"concurrency": 2.5}, "concurrency must be a whole number"),
        ({"concurrency": True}, "concurrency must be a whole number"),
        ({"concurrency_key": "customer_id"}, "concurrency_key needs concurrency"),
        ({"rate_limit_key": "customer_id"}, "rate_limit_key needs rate_limit"),
        ({"concurrency": 1, "concurrency_key": "customer"}, "names no argument of the task .it has: customer_id, url"),
        ({"concurrency": 1, "concurrency_key": "a..b"}, "must be an argument name or a dotted path"),
        ({"rate_limit": "1/s", "rate_limit_key": "tenant"}, "rate_limit_key 'tenant' names no argument"),
    ],
)
def test_limits_that_make_no_sense_fail_at_decoration(options: dict, says: str) -> None:
    catalog = Catalog()

    with pytest.raises(TaskError, match=says):

        @catalog.task(name="vendor.call", **options)
        def call(customer_id: str, url: str) -> None: ...


def test_declared_limits_are_on_the_spec() -> None:
    catalog = Catalog()

    @catalog.task(name="vendor.call", concurrency=2, concurrency_key="order.customer_id", rate_limit="100/m")
    def call(order: dict, url: str) -> None: ...

    limits = catalog.get("vendor.call").spec.limits()

    assert (limits.concurrency, limits.concurrency_key, limits.rate_key) == (2, "order.customer_id", None)
    assert limits.rate is not None and limits.rate.per_s == pytest.approx(100 / 60)


def test_a_task_without_limits_has_none() -> None:
    catalog = Catalog()

    @catalog.task(name="plain.task")
    def plain() -> None: ...

    assert not catalog.get("plain.task").spec.limits().any


def test_key_values_follow_dotted_paths_and_missing_ones_are_none() -> None:
    args = {"order": {"customer_id": "c1", "lines": [{"sku": "x"}]}, "n": 3}

    assert key_value(args, "order.customer_id") == "c1"
    assert key_value(args, "order.lines.0.sku") == "x"
    assert key_value(args, "order.missing") is None
    assert key_value(args, "n.deeper") is None


def test_buckets_are_per_task_or_per_key_value() -> None:
    assert bucket_name("vendor.call", None, {"customer_id": "c1"}) == "vendor.call"
    assert bucket_name("vendor.call", "customer_id", {"customer_id": "c1"}) == 'vendor.call:"c1"'
    assert bucket_name("vendor.call", "customer_id", {"customer_id": 7}) == "vendor.call:7"
    assert bucket_name("vendor.call", "customer_id", {}) == "vendor.call:null"
    long = bucket_name("vendor.call", "customer_id", {"customer_id": "x" * 500})
    assert long.startswith("vendor.call:sha256:") and len(long) < 100
