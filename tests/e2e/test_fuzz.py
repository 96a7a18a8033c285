"""The API fuzzed from its OpenAPI document and from raw bytes, on SQLite and on PostgreSQL.

Both runs (``tests/e2e/fuzz.py``) within a fixed budget, deterministic so a
failure reproduces: no 5xx, nothing stored for a refused request, ``/healthz``
answering throughout and gunicorn's worker the one it started with.
``make chaos`` runs them longer.
"""

from __future__ import annotations

from tests.e2e.api_server import ApiServer
from tests.e2e.fuzz import openapi_fuzz, raw_fuzz

#: Examples per operation and generation mode (schemathesis), and raw requests (hypothesis), per store.
OPENAPI_EXAMPLES = 12
RAW_EXAMPLES = 300
#: What one run may take; with the API's start, the module stays within about a minute.
BUDGET_S = 25.0


def test_openapi_fuzz_gets_no_5xx_and_a_refused_request_stores_nothing(api_server: ApiServer) -> None:
    run = openapi_fuzz(api_server, examples=OPENAPI_EXAMPLES)
    print(run.summary())
    assert not run.problems, "\n\n".join(run.problems)
    assert run.requests > 100 and run.health_checks > 0
    assert run.runtime_s < BUDGET_S


def test_raw_http_fuzz_gets_no_5xx_and_a_refused_request_stores_nothing(api_server: ApiServer) -> None:
    run = raw_fuzz(api_server, examples=RAW_EXAMPLES)
    print(run.summary())
    assert not run.problems, "\n\n".join(run.problems)
    # Most requests get an answer (a body the client cut short may get none), some of them a 2xx
    assert sum(count for status, count in run.answers.items() if status) > RAW_EXAMPLES // 2, run.answers
    assert any(200 <= status < 300 for status in run.answers), run.answers
    assert run.health_checks > 0
    assert run.runtime_s < BUDGET_S
