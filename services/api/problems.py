"""The problem+json body (RFC 9457), with no dependency beyond the standard library.

Gunicorn's master imports the worker class, which writes these bodies too, before it
forks: a Redis or SQL driver imported there would escape gevent's patching.
"""

from __future__ import annotations

from typing import Any

PROBLEM = "application/problem+json"


def problem_body(status: int, title: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"https://jobrelay.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
