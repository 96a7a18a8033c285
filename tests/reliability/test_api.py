"""Fast form of scenarios 7 and 8 on a live API: hostile input, slow clients, tokens and scopes."""

from __future__ import annotations

from tests.reliability.api_faults import bad_input, security
from tests.reliability.cluster import Cluster


def test_hostile_input_gets_a_4xx_crashes_nothing_and_stores_nothing(cluster: Cluster) -> None:
    report = bad_input(cluster)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert not any(answer.startswith("5") for answer in report.answers)


def test_every_endpoint_refuses_bad_tokens_and_missing_scopes_and_no_token_leaks(cluster: Cluster) -> None:
    report = security(cluster)
    print(report.summary())
    assert report.violations == [], report.summary()
