"""The pure arithmetic of Redlock: quorum, drift, validity and the retry backoff."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from locking import NO_RETRY, RetryPolicy, drift_ms, quorum, validity_ms
from locking.timing import DRIFT_FACTOR, DRIFT_FLOOR_MS


@pytest.mark.parametrize(
    ("nodes", "majority"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_quorum_is_a_strict_majority_of_configured_nodes(nodes: int, majority: int) -> None:
    assert quorum(nodes) == majority
    # Two disjoint groups can never both reach it.
    assert 2 * quorum(nodes) > nodes


@pytest.mark.parametrize("nodes", [0, -1, -3])
def test_quorum_refuses_a_non_positive_node_count(nodes: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        quorum(nodes)


@pytest.mark.parametrize(
    ("ttl_ms", "drift"), [(0, 2), (1, 2), (99, 2), (100, 3), (1000, 12), (30_000, 302)]
)
def test_drift_is_one_percent_of_the_ttl_plus_two_ms(ttl_ms: int, drift: int) -> None:
    assert DRIFT_FACTOR == 0.01 and DRIFT_FLOOR_MS == 2
    assert drift_ms(ttl_ms) == drift


def test_validity_subtracts_the_elapsed_time_and_the_drift() -> None:
    assert validity_ms(1000, 0.0) == 988.0
    assert validity_ms(1000, 100.5) == pytest.approx(887.5)
    assert validity_ms(10_000, 250.0) == 10_000 - 250 - 102
    # Spending the whole budget (or more) leaves nothing: the lease must not be used.
    assert validity_ms(1000, 988.0) == 0.0
    assert validity_ms(1000, 2000.0) < 0


@given(ttl=st.integers(1, 10**7), elapsed=st.floats(0, 10**7, allow_nan=False))
def test_validity_is_never_more_than_the_ttl_minus_the_drift(ttl: int, elapsed: float) -> None:
    assert validity_ms(ttl, elapsed) <= ttl - drift_ms(ttl)
    assert validity_ms(ttl, elapsed) == pytest.approx(ttl - drift_ms(ttl) - elapsed)


def test_backoff_is_full_jitter_under_a_capped_doubling_ceiling() -> None:
    policy = RetryPolicy(attempts=50, base_delay_ms=5.0, max_delay_ms=200.0)
    rng = random.Random(1234)
    for failed in range(1, 40):
        ceiling = min(200.0, 5.0 * 2 ** (failed - 1))
        samples = [policy.delay_ms(failed, rng) for _ in range(300)]
        assert all(0.0 <= sample <= ceiling for sample in samples), failed
        # Full jitter: the samples spread over the whole [0, ceiling] range.
        assert min(samples) < 0.1 * ceiling
        assert max(samples) > 0.9 * ceiling


def test_backoff_is_deterministic_for_a_seeded_random_source() -> None:
    policy = RetryPolicy()
    first = [policy.delay_ms(k, random.Random(7)) for k in range(1, 12)]
    second = [policy.delay_ms(k, random.Random(7)) for k in range(1, 12)]
    assert first == second
    assert first != [policy.delay_ms(k, random.Random(8)) for k in range(1, 12)]


@pytest.mark.parametrize("failed", [1024, 1025, 5000, 10**6])
def test_backoff_stays_finite_for_policies_with_thousands_of_attempts(failed: int) -> None:
    policy = RetryPolicy(attempts=10**7, base_delay_ms=1.0, max_delay_ms=50.0)
    delay = policy.delay_ms(failed, random.Random(3))
    assert math.isfinite(delay)
    assert 0.0 <= delay <= 50.0


def test_zero_base_delay_never_sleeps() -> None:
    policy = RetryPolicy(base_delay_ms=0.0, max_delay_ms=0.0)
    rng = random.Random(5)
    assert {policy.delay_ms(k, rng) for k in (1, 2, 10, 5000)} == {0.0}


def test_defaults_and_no_retry() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base_delay_ms, policy.max_delay_ms) == (10, 1.0, 30.0)
    assert policy.deadline_ms is None
    assert NO_RETRY.attempts == 1


def test_default_patience_is_bounded() -> None:
    """The default policy sleeps ~150 ms in the worst case, ~75 ms on average."""
    policy = RetryPolicy()
    ceilings = [
        min(policy.max_delay_ms, policy.base_delay_ms * 2 ** (k - 1))
        for k in range(1, policy.attempts)
    ]
    assert 100 < sum(ceilings) < 200, sum(ceilings)
    rng = random.Random(11)
    totals = [sum(policy.delay_ms(k, rng) for k in range(1, policy.attempts)) for _ in range(200)]
    assert 50 < sum(totals) / len(totals) < 100
    assert max(totals) < sum(ceilings)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": -2}, "attempts"),
        ({"base_delay_ms": -1.0}, "base_delay_ms"),
        ({"base_delay_ms": 10.0, "max_delay_ms": 5.0}, "base_delay_ms"),
        ({"base_delay_ms": math.nan}, "finite"),
        ({"max_delay_ms": math.inf}, "finite"),
        ({"deadline_ms": 0}, "deadline_ms"),
        ({"deadline_ms": -5.0}, "deadline_ms"),
        ({"deadline_ms": math.nan}, "deadline_ms"),
    ],
)
def test_invalid_retry_policies_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)
