"""The pure arithmetic of Redlock: quorum, clock drift, validity and retry backoff.

Nothing here performs I/O or reads a clock, so every rule of the distlock spec
that is a formula can be tested on its own.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

#: The spec's clock-drift allowance: 1% of the TTL ...
DRIFT_FACTOR = 0.01
#: ... plus 2 ms for the resolution of the nodes' expiry timers.
DRIFT_FLOOR_MS = 2
#: The longest TTL the lock asks a node for (2**40 ms, about 35 years). Redis refuses
#: an expiry that overflows its millisecond clock (about 2**63 ms minus the time now)
#: with an error reply, which would cost a held lease on extend: refused up front.
MAX_TTL_MS = 2**40


def quorum(node_count: int) -> int:
    """Return how many of ``node_count`` configured nodes form a majority.

    :param node_count: the number of configured nodes (not the reachable ones).
    """
    if node_count < 1:
        raise ValueError(f"node_count must be positive, got {node_count!r}")
    return node_count // 2 + 1


def drift_ms(ttl_ms: int) -> int:
    """Return the clock-drift allowance for a lease of ``ttl_ms`` milliseconds."""
    return int(ttl_ms * DRIFT_FACTOR) + DRIFT_FLOOR_MS


def validity_ms(ttl_ms: int, elapsed_ms: float) -> float:
    """Return how long a lease stays valid after it was granted, in milliseconds.

    :param ttl_ms: the TTL each node was asked to keep the key for.
    :param elapsed_ms: monotonic time spent from sending the first request to
        reading the last reply. A result <= 0 means the lease is not held.
    """
    return ttl_ms - elapsed_ms - drift_ms(ttl_ms)


def check_ttl(ttl_ms: object) -> None:
    """Raise `ValueError` unless ``ttl_ms`` is an int TTL larger than its drift and at
    most `MAX_TTL_MS`."""
    if (
        not isinstance(ttl_ms, int)
        or isinstance(ttl_ms, bool)
        or not drift_ms(ttl_ms) < ttl_ms <= MAX_TTL_MS
    ):
        raise ValueError(
            f"ttl_ms must be an int larger than the drift and at most {MAX_TTL_MS}, got {ttl_ms!r}"
        )


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How an acquisition retries: bounded count, capped exponential backoff, full jitter.

    :param attempts: total attempts, the first included (the spec's retry count).
    :param base_delay_ms: the backoff ceiling before the second attempt.
    :param max_delay_ms: the cap on any one sleep.
    :param deadline_ms: optional bound on the whole acquisition, sleeps included.
    :param wake_on_release: while the lock is held elsewhere, spend each backoff
        waiting for its release (`Redlock.wait_released`), which ends the backoff
        at once, instead of sleeping through it; the backoff stays the longest
        wait. Off by default: with 8 processes on one key and a one-INCR critical
        section on 2 loaded cores it was fairer (max/min 1.1-1.2 against 1.5-1.9)
        but slower (0.48-0.93 of the sleeping backoff's acquisitions/s in three
        recorded runs, bench/results/2026-12-01-lock.md): each wake-up is one more
        process to schedule. Meant for holders that keep the lock longer than the
        backoff's ceilings (not measured).

    The defaults (10 attempts, as the reference implementation) wait about 75 ms on
    average before giving up (at most ~150 ms) when no release ends a backoff. The cap
    is low on purpose: the holder that just released retries at once while a waiter's
    ceiling grows with its failures, so with a high cap the lock stays with whoever
    holds it and the longest waiters sleep longest. Measured with 8 processes on one key
    for 3-5 s on 2 shared cores, max/min acquisitions per process: 2.1-28, median ~5,
    with the former 5/200 ms (39 runs); 1.4-5.8, median ~2, with 2/50 ms (34 runs);
    1.3-2.8, median ~1.6, at most 2 in 28 of 32 runs, with 1/20-30 ms, for the same
    throughput within the noise. Callers that expect contention should pass more
    attempts rather than a higher cap. See the Lock section of BENCHMARKS.md.
    """

    attempts: int = 10
    base_delay_ms: float = 1.0
    max_delay_ms: float = 30.0
    deadline_ms: float | None = None
    wake_on_release: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts!r}")
        if not (math.isfinite(self.base_delay_ms) and math.isfinite(self.max_delay_ms)):
            raise ValueError("base_delay_ms and max_delay_ms must be finite")
        if self.base_delay_ms < 0 or self.max_delay_ms < self.base_delay_ms:
            raise ValueError("need 0 <= base_delay_ms <= max_delay_ms")
        if self.deadline_ms is not None and not self.deadline_ms > 0:  # NaN too
            raise ValueError(f"deadline_ms must be positive, got {self.deadline_ms!r}")

    def delay_ms(self, failed_attempts: int, rng: random.Random) -> float:
        """Return the sleep before the next attempt ("full jitter" backoff).

        :param failed_attempts: attempts that already failed (>= 1).
        :param rng: the random source, injected so tests are deterministic.
        """
        # 2 ** (k - 1) overflows a float past k = 1024; long before that the cap wins,
        # so bounding the exponent only matters to policies with thousands of attempts.
        exponent = min(max(failed_attempts - 1, 0), 1000)
        ceiling = min(self.max_delay_ms, self.base_delay_ms * 2.0**exponent)
        return rng.uniform(0.0, ceiling)


#: A single attempt, for callers that poll or decide on their own what to do next.
NO_RETRY = RetryPolicy(attempts=1)
