"""A task's flow limits as declared on ``@task(...)``: how many may run at once, how many may start per period.

``concurrency=N`` caps the jobs of a task running at once across every worker;
``rate_limit="100/m"`` caps how often they start. Either may be per key: the
value found at ``concurrency_key`` / ``rate_limit_key`` in a job's arguments
(a top-level argument name, or a dotted path into nested objects) names the
bucket, so ``concurrency=1, concurrency_key="customer_id"`` lets one job per
customer run at a time. Limits are task-level: a submission cannot override them.

Parsed and checked once, when the task is declared (``shared/catalog.py``); the
worker's gate (``services/worker/middleware/flow.py``) reads them per message.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Seconds per unit of a rate: "/s", "/m", "/h" (and their long spellings).
_PERIODS_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
_KEY_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$")
#: Key values longer than this (as JSON) are named by their SHA-256 instead, to keep Redis keys short.
_MAX_KEY_CHARS = 100


class LimitError(ValueError):
    """A limit that cannot be declared; the catalog names the task in its ``TaskError``."""


@dataclass(frozen=True)
class Rate:
    """``count`` starts per ``period_s``: one every ``interval_s``."""

    count: int
    period_s: float
    text: str

    @property
    def interval_s(self) -> float:
        return self.period_s / self.count

    @property
    def per_s(self) -> float:
        return self.count / self.period_s


def parse_rate(text: str) -> Rate:
    """``"100/m"`` → 100 per 60 s; units ``s``, ``m``, ``h``. Raises ``LimitError`` saying what is wrong."""
    match = _RATE.fullmatch(text.lower()) if isinstance(text, str) else None
    if match is None:
        raise LimitError(f"rate_limit {text!r} must look like '100/m' (a whole number per s, m or h)")
    count, unit = int(match.group(1)), match.group(2)
    if unit not in _PERIODS_S:
        raise LimitError(f"rate_limit {text!r}: unknown unit {unit!r}; use s, m or h")
    if count < 1:
        raise LimitError(f"rate_limit {text!r} must allow at least 1 per {unit}")
    return Rate(count, _PERIODS_S[unit], text.strip())


@dataclass(frozen=True)
class FlowLimits:
    """The limits of one task (``None``: no such limit)."""

    task: str
    concurrency: int | None = None
    concurrency_key: str | None = None
    rate: Rate | None = None
    rate_key: str | None = None

    @property
    def any(self) -> bool:
        return self.concurrency is not None or self.rate is not None

    def concurrency_bucket(self, args: Mapping[str, Any]) -> str:
        """The name of the concurrency bucket of a job with these arguments."""
        return bucket_name(self.task, self.concurrency_key, args)

    def rate_bucket(self, args: Mapping[str, Any]) -> str:
        return bucket_name(self.task, self.rate_key, args)


def check_limits(
    task: str,
    *,
    concurrency: int | None,
    concurrency_key: str | None,
    rate_limit: str | None,
    rate_limit_key: str | None,
    parameters: Iterable[str],
) -> FlowLimits:
    """The limits of a task being declared; ``LimitError`` for any that makes no sense.

    A key path must start at one of the task's ``parameters``, so a typo fails at import.
    """
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)):
        raise LimitError(f"concurrency must be a whole number, not {concurrency!r}")
    if concurrency is not None and concurrency < 1:
        raise LimitError(f"concurrency must be at least 1, not {concurrency}")
    if concurrency_key is not None and concurrency is None:
        raise LimitError("concurrency_key needs concurrency=N (how many per key)")
    if rate_limit_key is not None and rate_limit is None:
        raise LimitError("rate_limit_key needs rate_limit='N/unit' (how many per key)")
    names = set(parameters)
    for option, path in (("concurrency_key", concurrency_key), ("rate_limit_key", rate_limit_key)):
        if path is None:
            continue
        if not isinstance(path, str) or not _KEY_PATH.fullmatch(path):
            raise LimitError(f"{option} {path!r} must be an argument name or a dotted path like 'order.customer_id'")
        if path.split(".")[0] not in names:
            raise LimitError(f"{option} {path!r} names no argument of the task (it has: {', '.join(sorted(names))})")
    rate = parse_rate(rate_limit) if rate_limit is not None else None
    return FlowLimits(task, concurrency, concurrency_key, rate, rate_limit_key)


def key_value(args: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` in a job's arguments; ``None`` where the path leads nowhere."""
    value: Any = args
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def bucket_name(task: str, path: str | None, args: Mapping[str, Any]) -> str:
    """``task`` alone, or ``task`` and the key's value as JSON (hashed when long).

    NOTE: jobs whose key is missing (``None``) share one bucket, ``<task>:null``: a key that is
    absent is still limited, never unlimited.
    """
    if path is None:
        return task
    text = json.dumps(key_value(args, path), sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > _MAX_KEY_CHARS:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return f"{task}:{text}"
