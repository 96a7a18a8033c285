"""Retry decisions: full-jitter exponential backoff, max_retries, non-retryable errors, Retry()."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest

from services.worker.retry_policy import Decision, Retry, backoff_s, decide
from shared.catalog import Catalog, TaskDefinition


class PermanentError(Exception):
    """Declared non-retryable by the sample task."""


class VeryPermanentError(PermanentError):
    """A subclass of a non-retryable type."""


def make_definition(**options: object) -> TaskDefinition:
    """A task declared on a fresh catalog (never the module-level default catalog)."""
    catalog = Catalog()

    @catalog.task(name="tests.flaky", **options)  # type: ignore[arg-type]
    def flaky(n: int = 0) -> None:
        """A task that fails."""

    return catalog.get("tests.flaky")


def ceiling(attempt: int, min_s: float, max_s: float) -> float:
    return min(max_s, min_s * 2 ** max(0, attempt - 1))


# --- backoff_s ------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_s", "max_s"), [(1.0, 3600.0), (0.1, 5.0), (2.0, 60.0), (0.5, 0.5)])
def test_backoff_stays_within_full_jitter_bounds(min_s: float, max_s: float) -> None:
    rng = random.Random(1234)

    for attempt in range(1, 25):
        top = ceiling(attempt, min_s, max_s)
        for _ in range(200):
            delay = backoff_s(attempt, min_s=min_s, max_s=max_s, rng=rng)
            assert 0.0 <= delay <= top, (attempt, delay, top)


def test_backoff_ceiling_doubles_per_attempt_until_the_cap() -> None:
    # Given: many samples per attempt with min 1s and cap 60s
    rng = random.Random(42)
    largest = {
        attempt: max(backoff_s(attempt, min_s=1.0, max_s=60.0, rng=rng) for _ in range(2_000))
        for attempt in range(1, 10)
    }

    # Then: the largest sample approaches 1, 2, 4, 8, 16, 32, then stays at the 60s cap
    for attempt, top in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (9, 60.0)]:
        assert 0.95 * top <= largest[attempt] <= top


def test_backoff_is_spread_across_the_whole_range() -> None:
    # Given: attempt 5 with min 1s, so the ceiling is 16s
    rng = random.Random(7)

    # When: sampling many delays
    delays = [backoff_s(5, min_s=1.0, max_s=3600.0, rng=rng) for _ in range(2_000)]

    # Then: they are not constant but spread evenly over [0, 16]
    assert len(set(delays)) > 1_900
    assert min(delays) < 0.5
    assert max(delays) > 15.5
    assert 7.0 < statistics.mean(delays) < 9.0
    lower_half = sum(1 for delay in delays if delay < 8.0)
    assert 800 < lower_half < 1_200


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_s(n, min_s=1.0, max_s=300.0, rng=random.Random(99)) for n in range(1, 12)]
    second = [backoff_s(n, min_s=1.0, max_s=300.0, rng=random.Random(99)) for n in range(1, 12)]

    assert first == second


def test_backoff_without_an_rng_uses_the_global_random() -> None:
    delays = [backoff_s(3, min_s=1.0, max_s=60.0) for _ in range(100)]

    assert all(0.0 <= delay <= 4.0 for delay in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize("attempt", [0, -1, -10])
def test_attempts_below_one_use_the_minimum_ceiling(attempt: int) -> None:
    rng = random.Random(3)

    delays = [backoff_s(attempt, min_s=2.0, max_s=60.0, rng=rng) for _ in range(500)]

    assert all(0.0 <= delay <= 2.0 for delay in delays)
    assert max(delays) > 1.9


def test_zero_minimum_backoff_means_no_delay() -> None:
    rng = random.Random(5)

    assert {backoff_s(attempt, min_s=0.0, max_s=60.0, rng=rng) for attempt in range(1, 20)} == {0.0}


@pytest.mark.parametrize("attempt", [1_024, 1_025, 1_100, 5_000])
def test_backoff_for_very_late_attempts_is_capped_not_an_overflow(attempt: int) -> None:
    """A task may declare any max_retries; late attempts must still get a delay within the cap."""
    delay = backoff_s(attempt, min_s=1.0, max_s=60.0, rng=random.Random(11))

    assert 0.0 <= delay <= 60.0


# --- decide: max_retries ----------------------------------------------------------------------


def test_attempts_up_to_max_retries_are_retried() -> None:
    definition = make_definition(max_retries=3)

    for attempts in (1, 2, 3):
        decision = decide(definition, RuntimeError("boom"), attempts=attempts, max_retries=3, rng=random.Random(0))
        assert decision.retry is True, attempts
        assert decision.retryable is True


def test_the_attempt_after_max_retries_fails() -> None:
    definition = make_definition(max_retries=3)

    for attempts in (4, 5, 100):
        decision = decide(definition, RuntimeError("boom"), attempts=attempts, max_retries=3)
        assert decision == Decision(retry=False, delay_s=0.0, retryable=True)


def test_max_retries_zero_never_retries() -> None:
    decision = decide(make_definition(max_retries=0), RuntimeError("boom"), attempts=1, max_retries=0)

    assert decision == Decision(retry=False, retryable=True)


def test_the_max_retries_argument_wins_over_the_spec() -> None:
    """A job may override its task's max_retries; decide() follows the job."""
    definition = make_definition(max_retries=0)

    decision = decide(definition, RuntimeError("boom"), attempts=2, max_retries=5)

    assert decision.retry is True


def test_a_retry_follows_the_spec_backoff() -> None:
    definition = make_definition(min_backoff_s=0.25, max_backoff_s=2.0)
    rng = random.Random(21)

    for attempts in range(1, 10):
        for _ in range(50):
            decision = decide(definition, RuntimeError("boom"), attempts=attempts, max_retries=100, rng=rng)
            assert decision.retry is True
            assert 0.0 <= decision.delay_s <= ceiling(attempts, 0.25, 2.0)


def test_the_delay_is_the_backoff_of_this_attempt() -> None:
    definition = make_definition(min_backoff_s=0.5, max_backoff_s=30.0)

    for attempts in (1, 3, 6):
        decision = decide(definition, ValueError("x"), attempts=attempts, max_retries=10, rng=random.Random(8))
        expected = backoff_s(attempts, min_s=0.5, max_s=30.0, rng=random.Random(8))
        assert decision.delay_s == expected


# --- decide: non-retryable ----------------------------------------------------------------------


def test_non_retryable_errors_fail_at_once() -> None:
    definition = make_definition(max_retries=10, non_retryable=(PermanentError,))

    decision = decide(definition, PermanentError("card declined"), attempts=1, max_retries=10)

    assert decision == Decision(retry=False, delay_s=0.0, retryable=False)


def test_subclasses_of_non_retryable_errors_fail_at_once() -> None:
    definition = make_definition(non_retryable=(PermanentError,))

    decision = decide(definition, VeryPermanentError("still"), attempts=1, max_retries=3)

    assert decision.retry is False
    assert decision.retryable is False


def test_non_retryable_wins_even_when_retries_are_exhausted() -> None:
    definition = make_definition(non_retryable=(PermanentError, KeyError))

    decision = decide(definition, KeyError("k"), attempts=9, max_retries=3)

    assert decision.retryable is False


def test_other_errors_are_still_retried_when_some_are_non_retryable() -> None:
    definition = make_definition(non_retryable=(PermanentError,))

    decision = decide(definition, RuntimeError("transient"), attempts=1, max_retries=3)

    assert decision.retry is True
    assert decision.retryable is True


def test_a_retry_request_of_a_non_retryable_type_is_not_retried() -> None:
    definition = make_definition(non_retryable=(Exception,))

    decision = decide(definition, Retry(after_s=5.0), attempts=1, max_retries=3)

    assert decision == Decision(retry=False, retryable=False)


# --- decide: Retry ------------------------------------------------------------------------------


def test_retry_after_is_honoured() -> None:
    definition = make_definition(min_backoff_s=1.0, max_backoff_s=2.0)

    decision = decide(definition, Retry(after_s=42.5), attempts=1, max_retries=3)

    assert decision == Decision(retry=True, delay_s=42.5, retryable=True)


def test_retry_after_zero_and_negative_mean_now() -> None:
    definition = make_definition()

    assert decide(definition, Retry(after_s=0.0), attempts=1, max_retries=3).delay_s == 0.0
    assert decide(definition, Retry(after_s=-5.0), attempts=1, max_retries=3).delay_s == 0.0


def test_retry_without_after_uses_the_backoff() -> None:
    definition = make_definition(min_backoff_s=3.0, max_backoff_s=100.0)

    decision = decide(definition, Retry(), attempts=2, max_retries=3, rng=random.Random(4))

    assert decision.retry is True
    assert decision.delay_s == backoff_s(2, min_s=3.0, max_s=100.0, rng=random.Random(4))


def test_retry_counts_as_an_attempt() -> None:
    decision = decide(make_definition(), Retry(after_s=1.0), attempts=4, max_retries=3)

    assert decision == Decision(retry=False, retryable=True)


def test_retry_carries_its_message() -> None:
    assert str(Retry()) == "retry requested"
    assert str(Retry(after_s=1.0, message="rate limited")) == "rate limited"
    assert Retry().after_s is None


# --- decide: no definition ----------------------------------------------------------------------


def test_without_a_definition_the_default_backoff_applies() -> None:
    for attempts in (1, 2, 5, 30):
        decision = decide(None, RuntimeError("boom"), attempts=attempts, max_retries=50, rng=random.Random(6))
        assert decision.retry is True
        assert decision.delay_s == backoff_s(attempts, min_s=1.0, max_s=3600.0, rng=random.Random(6))
        assert 0.0 <= decision.delay_s <= ceiling(attempts, 1.0, 3600.0)


def test_without_a_definition_nothing_is_non_retryable() -> None:
    decision = decide(None, PermanentError("x"), attempts=1, max_retries=1)

    assert decision.retry is True
    assert decision.retryable is True


def test_without_a_definition_max_retries_still_applies() -> None:
    assert decide(None, RuntimeError("boom"), attempts=2, max_retries=1) == Decision(retry=False)


def test_without_a_definition_retry_after_is_honoured() -> None:
    assert decide(None, Retry(after_s=7.0), attempts=1, max_retries=1) == Decision(retry=True, delay_s=7.0)


def test_decision_is_frozen() -> None:
    decision = Decision(retry=True, delay_s=1.0)

    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.retry = False  # type: ignore[misc]
